package testenv

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/state"
)

// The booted chain, as the end-to-end tests (tests/e2e, tests/restart)
// check it inside a Machine.

// ChainUnits are the node's phases, in boot order.
var ChainUnits = []string{"g8-netup.service", "g8-unlock.service", "g8-acsession.service", "g8-sshd.service", "g8-fs.service"}

// The sandbox a chain site's controller serves (Site.PublishSandbox) and
// what an operator reads from it.
const (
	SandboxMount = "/opt/g8/hello"
	SandboxFile  = "greeting.txt"
	SandboxText  = "hello from the g8os content store\n"
)

// WaitChain waits until g8os.target is active and every phase is active,
// and returns each unit's properties.
func WaitChain(t testing.TB, m *Machine) map[string]map[string]string {
	t.Helper()
	m.MustWaitUnit("g8os.target", "active", 120*time.Second)
	props := map[string]map[string]string{}
	for _, u := range ChainUnits {
		// After a restart the units that require the restarted one come
		// back one after the other; g8os.target is already active then.
		props[u] = m.MustWaitUnit(u, "active", 30*time.Second)
	}
	return props
}

// ReadState reads a phase's state file inside the machine.
func ReadState(t testing.TB, m *Machine, f state.File) {
	t.Helper()
	out := m.MustExec("cat", state.Path(state.DefaultDir, f))
	if err := json.Unmarshal([]byte(out), f); err != nil {
		t.Fatalf("%s: %v\n%s", state.Path(state.DefaultDir, f), err, out)
	}
}

// MountsAt counts the mounts at path inside the machine.
func MountsAt(t testing.TB, m *Machine, path string) int {
	t.Helper()
	out, _ := m.Exec("findmnt", "-n", "-o", "TARGET", "--mountpoint", path)
	return len(strings.Fields(out))
}

// Eventually polls cond every 200 ms until it returns "" or timeout passes,
// then fails with its last complaint.
func Eventually(t testing.TB, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// BuildStatic builds a Go package of the module statically (no libc in a
// sandbox) with `go build`, or its test binary with `go test -c`, into the
// node's root.
func BuildStatic(t testing.TB, root *NodeRoot, out string, args ...string) {
	t.Helper()
	dir, err := ModuleRoot()
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
