package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/tests/testenv"
)

// buildStatic builds a Go package statically (no libc in a sandbox) with
// `go build`, or its test binary with `go test -c`, into the node's root.
func buildStatic(t *testing.T, root *testenv.NodeRoot, out string, args ...string) {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{args[0], "-o", root.Path(out)}, args[1:]...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// runInMachine runs internal/apps' real-systemd tests matching pattern
// inside the machine and fails unless each named test passed.
func runInMachine(t *testing.T, m *testenv.Machine, pattern string, mustPass ...string) {
	t.Helper()
	out, err := m.Exec("env", "G8_APPS_SYSTEMD=/srv/sandbox", "G8_APPS_RECORDS=/var/lib/g8-apps-test",
		"/usr/local/bin/apps.test", "-test.run", pattern, "-test.v", "-test.count=1")
	if err != nil {
		t.Fatalf("apps tests in the machine: %v\n%s", err, out)
	}
	for _, name := range mustPass {
		if !strings.Contains(out, "--- PASS: "+name) {
			t.Fatalf("%s did not pass in the machine:\n%s", name, out)
		}
	}
}

// TestGridAppsOnRealSystemd runs the node's app runner (internal/apps)
// against real systemd in a booted node: an app starts as the transient
// unit g8-app-<name>.service chrooted into its sandbox; killing its process
// gets it restarted and counted; installing the same spec again starts
// nothing; a new spec rolls it; a crash loop ends failed and a start
// counts; a command missing from the sandbox fails the install; removing
// it leaves no unit; and after a reboot the recorded app comes back once.
//
// The sandbox here is a plain directory: g8-fs's part (the FUSE mount
// added on reload) is tested by internal/apps against a g8-fs stand-in and
// by g8-fs's own tests.
func TestGridAppsOnRealSystemd(t *testing.T) {
	testenv.RequireRoot(t, "systemd-nspawn", "go")
	tp := testenv.NewTopology(t)
	h := tp.Host("node")
	root := testenv.NewNodeRoot(t)
	buildStatic(t, root, "usr/local/bin/apps.test", "test", "-c", "./internal/apps")
	root.MkdirAll("srv/sandbox/bin")
	buildStatic(t, root, "srv/sandbox/bin/app", "build", "./internal/apps/testdata/app")

	m := h.Boot(root)
	runInMachine(t, m, "^TestRealSystemd(Lifecycle|CrashLoop|MissingCommand|InstallForReboot)$",
		"TestRealSystemdLifecycle", "TestRealSystemdCrashLoop", "TestRealSystemdMissingCommand", "TestRealSystemdInstallForReboot")
	if p := m.Show("g8-app-survivor.service", "ActiveState", "Description"); p["ActiveState"] != "active" ||
		!strings.Contains(p["Description"], "g8os grid app survivor") {
		t.Fatalf("systemctl show g8-app-survivor: %v", p)
	}
	if j := m.Journal("g8-app-survivor.service"); !strings.Contains(j, "app: serving hello survivor") {
		t.Fatalf("the app's output is not in its journal:\n%s", j)
	}

	m.Poweroff()
	m = h.Boot(root)
	runInMachine(t, m, "^TestRealSystemdRestoreAfterReboot$", "TestRealSystemdRestoreAfterReboot")
}
