package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// appFlist builds the test app (internal/apps/testdata/app: serves its
// greeting over HTTP) into a sandbox in the controller's content store and
// returns its flist reference.
func (s *gridSite) appFlist(t *testing.T) string {
	t.Helper()
	app := t.TempDir()
	if err := os.MkdirAll(filepath.Join(app, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(app, "bin", "app"), "./internal/apps/testdata/app")
	cmd.Dir, _ = filepath.Abs("../..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the app: %v\n%s", err, out)
	}
	return s.BuildFlist(t, app)
}

// probeAll asks every url from the LAN, all at once every 100 ms, until
// the returned func is called, which says how many rounds there were and
// the most instances down in one round, with that round's answers.
func (s *gridSite) probeAll(t *testing.T, urls []string) func() (rounds, mostDown int, worst string) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	var rounds, mostDown int
	var worst string
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			answers := make([]string, len(urls))
			var wg sync.WaitGroup
			for i, u := range urls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					out, err := s.LAN.Run("curl", "-sS", "--max-time", "2", u)
					answers[i] = strings.TrimSpace(out)
					if err != nil {
						answers[i] = "down (" + strings.TrimSpace(out) + ")"
					}
				}()
			}
			wg.Wait()
			down := 0
			for _, a := range answers {
				if a != "v1" && a != "v2" {
					down++
				}
			}
			rounds++
			if down > mostDown {
				mostDown, worst = down, fmt.Sprintf("%q at %s", answers, time.Now().Format(time.RFC3339Nano))
			}
		}
	}()
	var once sync.Once
	end := func() (int, int, string) {
		once.Do(func() { close(stop); <-done })
		return rounds, mostDown, worst
	}
	t.Cleanup(func() { end() })
	return end
}

// TestGridRollout is the rolling update end to end with two booted nodes
// under one real controller running the grid: a new spec with
// max_parallel 1 rolls one node, then the other once the first ran it for
// min_healthy_time, and an HTTP probe of both from the LAN never finds
// both down; a new spec whose flist cannot be mounted fails its first
// batch and is reverted automatically, the second node never gets a job,
// grid status and grid rollout status say why, and the revert holds
// across a controller restart.
func TestGridRollout(t *testing.T) {
	s := newGridSite(t)
	flist := s.appFlist(t)
	// n1 is the site's node, n2 one more on the LAN.
	hosts := []*testenv.Host{s.Node, s.AddNode("node2")}
	addrs := []string{"10.0.0.5", "10.0.0.6"}
	s.AC.ApproveMAC(t, hosts[1].MAC("eth0"))
	var ms []*testenv.Machine
	for i, h := range hosts {
		root := s.NodeRoot(testenv.NetConfig{Static: true, Addr: addrs[i] + "/24"})
		ms = append(ms, h.Boot(root))
	}
	for _, m := range ms {
		testenv.WaitChain(t, m)
	}
	for i, h := range hosts {
		s.Write(t, fmt.Sprintf("nodes/n%d.toml", i+1), fmt.Sprintf("mac = %q\nlabels = { role = \"web\" }\n", h.MAC("eth0")))
	}
	webApp := func(flist, version string) string {
		return fmt.Sprintf("flist = %q\ncommand = [\"/bin/app\", \"serve\", %q]\nrestart_sec = \"500ms\"\n[env]\nAPP_GREETING = %q\nAPP_HTTP = \":8080\"\n"+
			"[update]\nmax_parallel = 1\nmin_healthy_time = \"5s\"\nhealthy_deadline = \"60s\"\nauto_revert = true\n", flist, version, version)
	}
	s.Write(t, "apps/web.toml", webApp(flist, "v1"))
	s.Write(t, "links/web.toml", "app = \"web\"\nselector = { role = \"web\" }\n")
	v1 := s.SpecHash(t, "web")

	dump := func() {
		out, _ := s.AC.GridCLI("grid", "status", "--repo", s.Repo)
		ro, _ := s.AC.GridCLI("grid", "rollout", "status", "web")
		jobs, _ := s.AC.GridCLI("job", "list")
		t.Logf("--- grid status ---\n%s\n--- rollout ---\n%s\n--- jobs ---\n%s", out, ro, jobs)
		for i, m := range ms {
			t.Logf("--- n%d g8-acsession ---\n%s\n--- n%d %s ---\n%s", i+1, m.Journal("g8-acsession.service"), i+1, testenv.AppUnit, m.Journal(testenv.AppUnit))
		}
	}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			dump()
			t.FailNow()
		}
	}
	urls := []string{"http://" + addrs[0] + ":8080/", "http://" + addrs[1] + ":8080/"}

	step("v1 runs on both nodes", func(t *testing.T) {
		for _, m := range ms {
			testenv.AppRunning(t, m, v1, 90*time.Second)
		}
		// Both healthy for min_healthy_time: v1 is the rollout's last good spec.
		testenv.Eventually(t, 30*time.Second, func() string {
			if out, code := s.AC.GridCLI("grid", "rollout", "status", "web"); code != 0 || !strings.Contains(out, "last good:  "+v1) {
				return fmt.Sprintf("grid rollout status: exit %d\n%s", code, out)
			}
			return ""
		})
	})

	var v2 string
	step("max_parallel 1: one node at a time, never both down", func(t *testing.T) {
		probe := s.probeAll(t, urls)
		time.Sleep(time.Second)
		s.Write(t, "apps/web.toml", webApp(flist, "v2"))
		v2 = s.SpecHash(t, "web")
		for _, m := range ms {
			testenv.AppRunning(t, m, v2, 90*time.Second)
		}
		time.Sleep(time.Second)
		rounds, mostDown, worst := probe()
		if mostDown > 1 {
			t.Fatalf("%d of 2 instances down at once during the rollout: %s", mostDown, worst)
		}
		if rounds < 20 {
			t.Fatalf("only %d probe rounds", rounds)
		}
		t.Logf("%d probe rounds of both nodes during the rollout, at most %d down at once (%s)", rounds, mostDown, worst)
		// Healthy on both for min_healthy_time: v2 is now the last good
		// spec (until then a revert would go back to v1).
		testenv.Eventually(t, 30*time.Second, func() string {
			if out, code := s.AC.GridCLI("grid", "rollout", "status", "web"); code != 0 || !strings.Contains(out, "phase:      done") || !strings.Contains(out, "last good:  "+v2) {
				return fmt.Sprintf("grid rollout status: exit %d\n%s", code, out)
			}
			return ""
		})
	})

	step("a bad spec is reverted after its first batch, the other node untouched", func(t *testing.T) {
		before := ms[1].Show(testenv.AppUnit, "MainPID")["MainPID"]
		jobsBefore := nodeAppJobs(t, s, hosts[1].MAC("eth0"))
		s.Write(t, "apps/web.toml", webApp("blake3:"+strings.Repeat("0", 64), "v3"))
		v3 := s.SpecHash(t, "web")
		testenv.Eventually(t, 60*time.Second, func() string {
			out, code := s.AC.GridCLI("grid", "rollout", "status", "web")
			if code != 14 || !strings.Contains(out, "reverted (by auto_revert)") || !strings.Contains(out, "node n1: app.install failed") {
				return fmt.Sprintf("grid rollout status: exit %d\n%s", code, out)
			}
			return ""
		})
		out, _ := s.AC.GridCLI("grid", "status", "--repo", s.Repo)
		if !strings.Contains(out, "rollout of web to spec "+v3+" reverted (by auto_revert) to spec "+v2+": node n1: app.install failed") {
			t.Fatalf("grid status does not say the rollout was reverted and why:\n%s", out)
		}
		t.Logf("grid status after the revert:\n%s", out)
		time.Sleep(3 * time.Second) // three more grid rounds
		for i, m := range ms {
			if q := m.Show(testenv.AppUnit, "ActiveState", "Description"); q["ActiveState"] != "active" || !strings.Contains(q["Description"], v2) {
				t.Fatalf("n%d after the revert: %v, want v2 running", i+1, q)
			}
		}
		if q := ms[1].Show(testenv.AppUnit, "MainPID"); q["MainPID"] != before {
			t.Fatalf("n2's app was restarted (pid %s, was %s)", q["MainPID"], before)
		}
		if after := nodeAppJobs(t, s, hosts[1].MAC("eth0")); after != jobsBefore {
			t.Fatalf("n2 got app jobs during the bad rollout: %d before, %d after", jobsBefore, after)
		}
	})

	step("the revert holds across a controller restart", func(t *testing.T) {
		s.AC.Restart(t)
		time.Sleep(4 * time.Second) // rounds of the restarted controller
		out, code := s.AC.GridCLI("grid", "rollout", "status", "web")
		if code != 14 || !strings.Contains(out, "reverted (by auto_revert)") {
			t.Fatalf("after the restart: exit %d\n%s", code, out)
		}
		for i, m := range ms {
			if q := m.Show(testenv.AppUnit, "ActiveState", "Description"); q["ActiveState"] != "active" || !strings.Contains(q["Description"], v2) {
				t.Fatalf("n%d after the controller restart: %v, want v2 running", i+1, q)
			}
		}
	})
}

// nodeAppJobs counts the controller's app jobs for the node with mac.
func nodeAppJobs(t *testing.T, s *gridSite, mac string) int {
	t.Helper()
	out, code := s.AC.GridCLI("job", "list", mac)
	if code != 0 {
		t.Fatalf("job list: exit %d\n%s", code, out)
	}
	return strings.Count(out, "app.")
}
