package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// testBinaryNode makes a node root holding the test binary of pkg at bin
// (the package's real-systemd tests run in the booted node) and the host
// to boot it on.
func testBinaryNode(t *testing.T, pkg, bin string) (*testenv.Host, *testenv.NodeRoot) {
	t.Helper()
	testenv.RequireRoot(t, "systemd-nspawn", "go")
	h := testenv.NewTopology(t).Host("node")
	root := testenv.NewNodeRoot(t)
	testenv.BuildStatic(t, root, bin, "test", "-c", pkg)
	return h, root
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
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "overall exposure") {
			t.Log("in the machine:", strings.TrimSpace(l))
		}
	}
}

// TestGridAppsOnRealSystemd runs the node's app runner (internal/apps)
// against real systemd in a booted node: an app starts as the transient
// unit g8-app-<name>.service chrooted into its sandbox; killing its process
// gets it restarted and counted; installing the same spec again starts
// nothing; a new spec rolls it; a crash loop ends failed and a start
// counts; a command missing from the sandbox fails the install; the argv
// and environment reach the process byte for byte; the app's boundary,
// checked from inside it (read-only root, no capabilities, no /dev/fuse,
// systemd-analyze security at most 3.0); removing
// it leaves no unit; and after a reboot the recorded app comes back once.
//
// The sandbox here is a plain directory: g8-fs's part (the FUSE mount
// added on reload) is tested by internal/apps against a g8-fs stand-in and
// by g8-fs's own tests.
func TestGridAppsOnRealSystemd(t *testing.T) {
	h, root := testBinaryNode(t, "./internal/apps", "usr/local/bin/apps.test")
	// A sandbox with var/ and tmp/ of its own, where systemd mounts the
	// app's private /tmp, /var/tmp and state directory.
	for _, d := range []string{"srv/sandbox/bin", "srv/sandbox/etc", "srv/sandbox/tmp", "srv/sandbox/run", "srv/sandbox/var/log", "srv/sandbox/var/lib"} {
		root.MkdirAll(d)
	}
	testenv.BuildStatic(t, root, "srv/sandbox/bin/app", "build", "./internal/apps/testdata/app")

	m := h.Boot(root)
	runInMachine(t, m, "^TestRealSystemd(Lifecycle|CrashLoop|MissingCommand|HealthRestarts|ExactArgv|Boundary|InstallForReboot)$",
		"TestRealSystemdLifecycle", "TestRealSystemdCrashLoop", "TestRealSystemdMissingCommand", "TestRealSystemdHealthRestarts",
		"TestRealSystemdExactArgv", "TestRealSystemdBoundary", "TestRealSystemdInstallForReboot")
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

// gridSite is testenv's grid site with what the grid tests ask of it.
type gridSite struct{ *testenv.GridSite }

func newGridSite(t *testing.T) *gridSite { return &gridSite{testenv.NewGridSite(t)} }

// probeHTTP asks url from the LAN every 100 ms until the returned func is
// called, which says how many answers held want and the first that did
// not ("" if none).
func (s *gridSite) probeHTTP(t *testing.T, url, want string) func() (int, string) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	var ok int
	var failed string
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			out, err := s.LAN.Run("curl", "-sS", "--max-time", "2", url)
			if err != nil || strings.TrimSpace(out) != want {
				failed = fmt.Sprintf("%q (%v) at %s", out, err, time.Now().Format(time.RFC3339Nano))
				return
			}
			ok++
		}
	}()
	var once sync.Once
	end := func() (int, string) {
		once.Do(func() { close(stop); <-done })
		return ok, failed
	}
	t.Cleanup(func() { end() })
	return end
}

// statusRow is the app's line of `g8-ac grid status`.
func (s *gridSite) statusRow(t *testing.T) string {
	t.Helper()
	out, code := s.AC.GridCLI("grid", "status", "--repo", s.Repo)
	if code != 0 {
		t.Fatalf("grid status: exit %d\n%s", code, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "n1" {
			return l
		}
	}
	return ""
}

// TestGridConvergesANode is the grid end to end: the real controller runs
// the grid on a repository; a node boots the whole chain under real
// systemd; linking an app makes it run on the node within seconds, in its
// own g8-fs sandbox; killing its process gets it restarted and counted in
// grid status; editing the app rolls it; a reboot brings it back without
// the controller doing anything; an invalid repository changes nothing;
// unlinking stops it and unmounts its sandbox, leaving the node's other
// sandbox alone.
func TestGridConvergesANode(t *testing.T) {
	s := newGridSite(t)
	flist := s.appFlist(t)

	root := s.NodeRoot(testenv.NetConfig{Static: true})
	m := s.Node.Boot(root)
	testenv.WaitChain(t, m)

	s.Write(t, "nodes/n1.toml", fmt.Sprintf("mac = %q\nlabels = { role = \"web\" }\n", s.Node.MAC("eth0")))
	// web serves HTTP on the node's LAN address: the probe of the rolls.
	webApp := func(flist, version string) string {
		return fmt.Sprintf("flist = %q\ncommand = [\"/bin/app\", \"serve\", %q]\nrestart_sec = \"500ms\"\n[env]\nAPP_GREETING = %q\nAPP_HTTP = \":8080\"\n", flist, version, version)
	}
	s.Write(t, "apps/web.toml", webApp(flist, "v1"))
	s.Write(t, "links/web.toml", "app = \"web\"\nselector = { role = \"web\" }\n")
	v1 := s.SpecHash(t, "web")

	// dump shows what the grid and the node did, when a step failed.
	dump := func() {
		out, _ := s.AC.GridCLI("grid", "status", "--repo", s.Repo)
		jobs, _ := s.AC.GridCLI("job", "list")
		t.Logf("--- grid status ---\n%s\n--- jobs ---\n%s\n--- g8-acsession ---\n%s\n--- g8-fs ---\n%s\n--- %s ---\n%s",
			out, jobs, m.Journal("g8-acsession.service"), m.Journal("g8-fs.service"), testenv.AppUnit, m.Journal(testenv.AppUnit))
	}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			dump()
			t.FailNow()
		}
	}

	var p map[string]string
	step("linked app runs in its sandbox", func(t *testing.T) {
		p = testenv.AppRunning(t, m, v1, 60*time.Second)
		if p["RootDirectory"] != "/run/g8os/apps/app-web.root" || testenv.MountsAt(t, m, "/run/g8os/apps/app-web") != 1 {
			t.Fatalf("unit %v; sandbox mounts %d", p, testenv.MountsAt(t, m, "/run/g8os/apps/app-web"))
		}
		testenv.Eventually(t, 10*time.Second, func() string {
			if j := m.Journal(testenv.AppUnit); !strings.Contains(j, "app: serving v1") {
				return "app output not in its journal:\n" + j
			}
			return ""
		})
	})

	step("operator sees the app's boundary, by the node's repository name", func(t *testing.T) {
		out, code := s.AC.GridCLI("app", "show", "n1", "web", "--repo", s.Repo)
		m := regexp.MustCompile(`Overall exposure level for g8-app-web.service: (\d+\.\d+)`).FindStringSubmatch(out)
		if code != 0 || m == nil {
			t.Fatalf("g8-ac app show: exit %d\n%s", code, out)
		}
		if score, _ := strconv.ParseFloat(m[1], 64); score > 3.0 {
			t.Fatalf("the default app's exposure is %.1f, want at most 3.0:\n%s", score, out)
		}
		t.Logf("g8-ac app show n1 web: exposure %s", m[1])
	})

	step("killed app is restarted and counted", func(t *testing.T) {
		m.MustExec("systemctl", "kill", "--signal=KILL", testenv.AppUnit)
		testenv.Eventually(t, 30*time.Second, func() string {
			q := m.Show(testenv.AppUnit, "ActiveState", "MainPID", "NRestarts")
			if q["ActiveState"] != "active" || q["NRestarts"] != "1" || q["MainPID"] == p["MainPID"] {
				return fmt.Sprintf("after the kill: %v (was pid %s)", q, p["MainPID"])
			}
			return ""
		})
		testenv.Eventually(t, 30*time.Second, func() string {
			row := s.statusRow(t)
			if f := strings.Fields(row); len(f) < 5 || !strings.Contains(row, "running") || f[len(f)-3] != "1" {
				return "grid status does not show one restart: " + row
			}
			return ""
		})
	})

	step("operator reads its logs and restarts it", func(t *testing.T) {
		out, code := s.AC.GridCLI("app", "logs", "n1", "web", "--repo", s.Repo, "--lines", "50")
		if code != 0 || !strings.Contains(out, "app: serving v1") {
			t.Fatalf("g8-ac app logs: exit %d\n%s", code, out)
		}
		before := m.Show(testenv.AppUnit, "MainPID")["MainPID"]
		if out, code := s.AC.GridCLI("app", "restart", s.Node.MAC("eth0"), "web"); code != 0 {
			t.Fatalf("g8-ac app restart: exit %d\n%s", code, out)
		}
		if q := m.Show(testenv.AppUnit, "ActiveState", "MainPID"); q["ActiveState"] != "active" || q["MainPID"] == before {
			t.Fatalf("after app restart: %v (was pid %s)", q, before)
		}
		testenv.Eventually(t, 30*time.Second, func() string {
			row := s.statusRow(t)
			if f := strings.Fields(row); len(f) < 5 || !strings.Contains(row, "running") || f[len(f)-3] != "2" {
				return "grid status does not count the restart: " + row
			}
			return ""
		})
	})

	s.Write(t, "apps/web.toml", webApp(flist, "v2"))
	v2 := s.SpecHash(t, "web")
	step("edited app rolls", func(t *testing.T) {
		p = testenv.AppRunning(t, m, v2, 30*time.Second)
		testenv.Eventually(t, 10*time.Second, func() string {
			if j := m.Journal(testenv.AppUnit); !strings.Contains(j, "app: serving v2") {
				return "rolled app's output not in its journal"
			}
			return ""
		})
	})

	step("a roll to a flist that cannot be mounted keeps the old version serving", func(t *testing.T) {
		before := m.Show(testenv.AppUnit, "MainPID")["MainPID"]
		probe := s.probeHTTP(t, "http://10.0.0.5:8080/", "v2")
		s.Write(t, "apps/web.toml", webApp("blake3:"+strings.Repeat("0", 64), "v3"))
		// The node tries, fails, says why; the grid backs off and retries.
		testenv.Eventually(t, 90*time.Second, func() string {
			row := s.statusRow(t)
			if !strings.Contains(row, "running") || !strings.Contains(row, "roll to spec") || !strings.Contains(row, "roll in") {
				return "grid status does not show the failed roll and its retry: " + row
			}
			return ""
		})
		// Through the grid's retry (2 s, then 4 s backoff).
		time.Sleep(5 * time.Second)
		ok, failed := probe()
		if failed != "" || ok < 10 {
			t.Fatalf("the app stopped serving during the roll: %d answers, then %s", ok, failed)
		}
		if q := m.Show(testenv.AppUnit, "ActiveState", "MainPID", "Description"); q["ActiveState"] != "active" || q["MainPID"] != before || !strings.Contains(q["Description"], v2) {
			t.Fatalf("after the failed roll: %v, want v2 still running as pid %s", q, before)
		}
		t.Logf("%d HTTP answers from the old version during the failed roll; grid status: %s", ok, s.statusRow(t))
		s.Write(t, "apps/web.toml", webApp(flist, "v2"))
	})

	step("reboot brings it back", func(t *testing.T) {
		m.Poweroff()
		m = s.Node.Boot(root)
		testenv.WaitChain(t, m)
		p = testenv.AppRunning(t, m, v2, 60*time.Second)
		if j := m.Journal(testenv.AppUnit); strings.Count(j, "Started g8-app-web.service") != 1 {
			t.Fatalf("the app was started %d times this boot:\n%s", strings.Count(j, "Started g8-app-web.service"), j)
		}
	})

	step("invalid repository changes nothing", func(t *testing.T) {
		s.Write(t, "apps/web.toml", fmt.Sprintf("flist = %q\ncommand = [\"bin/app\"]\n", flist))
		out, code := s.AC.GridCLI("grid", "apply", "--repo", s.Repo)
		if code != 3 || !strings.Contains(out, "apps/web.toml: command[0]") {
			t.Fatalf("grid apply of an invalid repository: exit %d\n%s", code, out)
		}
		time.Sleep(3 * time.Second) // three rounds of the controller's grid loop
		if q := m.Show(testenv.AppUnit, "ActiveState", "MainPID", "Description"); q["MainPID"] != p["MainPID"] || !strings.Contains(q["Description"], v2) {
			t.Fatalf("the invalid repository changed the app: %v, was %v", q, p)
		}
	})

	step("unlinked app is stopped and its sandbox unmounted", func(t *testing.T) {
		s.Write(t, "apps/web.toml", webApp(flist, "v2"))
		if err := os.Remove(filepath.Join(s.Repo, "links/web.toml")); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, func() string {
			q := m.Show(testenv.AppUnit, "ActiveState", "LoadState")
			if q["ActiveState"] == "active" || testenv.MountsAt(t, m, "/run/g8os/apps/app-web") != 0 {
				return fmt.Sprintf("after unlink: %v, sandbox mounts %d", q, testenv.MountsAt(t, m, "/run/g8os/apps/app-web"))
			}
			return ""
		})
		if testenv.MountsAt(t, m, testenv.SandboxMount) != 1 {
			t.Fatalf("the node's other sandbox %s was disturbed", testenv.SandboxMount)
		}
	})
}
