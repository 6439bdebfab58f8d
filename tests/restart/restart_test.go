// Package restart is issue 15's end-to-end proof that restarting or
// upgrading any phase leaves what the node runs undisturbed: the package
// booted under real systemd in a network-namespace site (tests/testenv, as
// tests/e2e), with a grid app reading its sandbox and an operator's
// OpenSSH session open through upgrades, restarts, daemon-reexec and
// kill -9. Its own package because it is long: tests/e2e stays well under
// a package's test timeout. Root only; skipped with a message otherwise.
package restart

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestRestartsKeepTheNodeRunning is issue 15's goal on a booted node: a
// grid app reads the files of its g8-fs sandbox (served by the controller)
// in a loop and an operator's OpenSSH session prints in a loop while the
// package is upgraded with pacman -U to a rebuild with another version,
// every g8-* unit is restarted one after the other, then all at once,
// systemd re-executes itself, and g8-fs and g8-sshd are killed with
// SIGKILL. The app sees no error and is never restarted, the session keeps
// printing, the session to the controller is back within its backoff cap
// after each step, and every job and phase.ready event reaches the
// controller once.
func TestRestartsKeepTheNodeRunning(t *testing.T) {
	s := testenv.NewGridSite(t)
	key := s.OperatorKey()
	upgrade := testenv.RebuiltPackage(t, "upgrade")

	// The app's sandbox: the app and files of several sizes (one spans
	// many chunks) for it to read.
	src := t.TempDir()
	for _, d := range []string{"bin", "data/sub"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testenv.BuildStatic(t, &testenv.NodeRoot{Dir: src}, "bin/app", "build", "./internal/apps/testdata/app")
	for i, size := range []int{0, 1, 4095, 4096, 65537, 1 << 20} {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(j*7 + i)
		}
		if err := os.WriteFile(filepath.Join(src, "data", fmt.Sprintf("f%d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "data/sub/note"), []byte("in a subdirectory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flist := s.BuildFlist(t, src)

	root := s.NodeRoot(testenv.NetConfig{Static: true})
	pkgInNode := "/var/tmp/" + filepath.Base(upgrade)
	data, err := os.ReadFile(upgrade)
	if err != nil {
		t.Fatal(err)
	}
	root.WriteFile(pkgInNode, data, 0o644)
	m := s.Node.Boot(root)
	testenv.WaitChain(t, m)
	addr := strings.Split(testenv.SiteStaticAddr, "/")[0]
	nodeID := s.Nodes()[0].ID

	s.Write(t, "nodes/n1.toml", fmt.Sprintf("mac = %q\nlabels = { role = \"web\" }\n", s.Node.MAC("eth0")))
	s.Write(t, "apps/web.toml", fmt.Sprintf("flist = %q\ncommand = [\"/bin/app\", \"read\", \"/data\"]\n", flist))
	s.Write(t, "links/web.toml", "app = \"web\"\nselector = { role = \"web\" }\n")
	app := testenv.AppRunning(t, m, s.SpecHash(t, "web"), 60*time.Second)
	testenv.Eventually(t, 15*time.Second, func() string {
		if !strings.Contains(m.Journal(testenv.AppUnit), "app: reading 7 files in /data") {
			return "the app did not start reading:\n" + m.Journal(testenv.AppUnit)
		}
		return ""
	})

	ssh, sshLines := sshSession(t, s.LAN, key, addr)

	var (
		ticks      int
		reads      int
		readyAts   = map[string]bool{} // phase + " " + ready_at the controller must get as phase.ready
		jobs       = map[string]string{}
		timeline   []string
		reconnects []string
		// Restarts systemd itself made, after a kill -9: allowed.
		killed = map[string]int{}
	)
	// steady checks what must hold after every step.
	steady := func(t *testing.T, step string, since time.Time) {
		t.Helper()
		props := testenv.WaitChain(t, m)
		for _, u := range testenv.ChainUnits {
			if n, _ := strconv.Atoi(props[u]["NRestarts"]); n > killed[u] {
				t.Errorf("%s: systemd restarted %s %d times (a failure, not our restart)", step, u, n)
			}
		}
		// The session to the controller is back within its backoff cap
		// (a step that restarts g8-acsession makes it connect afresh).
		fresh := step == "upgrade" || step == "all at once" || strings.Contains(step, "g8-acsession")
		var ac state.ACSession
		testenv.Eventually(t, acsession.DefaultRetry.Max+5*time.Second, func() string {
			testenv.ReadState(t, m, &ac)
			if !ac.Connected || fresh && ac.ConnectedSince.Before(since) {
				return fmt.Sprintf("%s: session to the controller: %+v", step, ac)
			}
			return ""
		})
		if fresh {
			// From the new process's start: the upgrade restarts the
			// other phases before it.
			took := ac.ConnectedSince.Sub(ac.StartedAt)
			if took > acsession.DefaultRetry.Max {
				t.Errorf("%s: the session to the controller was back after %v, over its backoff cap %v", step, took, acsession.DefaultRetry.Max)
			}
			reconnects = append(reconnects, fmt.Sprintf("%s %v", step, took.Round(time.Millisecond)))
		}
		// The app: same process, no restart, no error, still reading.
		q := m.Show(testenv.AppUnit, "ActiveState", "MainPID", "NRestarts")
		if q["ActiveState"] != "active" || q["MainPID"] != app["MainPID"] || q["NRestarts"] != "0" {
			t.Fatalf("%s: the app was disturbed: %v, was pid %s", step, q, app["MainPID"])
		}
		var last string
		testenv.Eventually(t, 10*time.Second, func() string {
			j := m.Journal(testenv.AppUnit)
			if strings.Contains(j, "app: read error") {
				t.Fatalf("%s: the app saw errors:\n%s", step, j)
			}
			rs := regexp.MustCompile(`app: reads=(\d+) errors=(\d+) max_ms=(\d+)`).FindAllStringSubmatch(j, -1)
			if len(rs) == 0 {
				return "no report from the app"
			}
			r := rs[len(rs)-1]
			last = r[0]
			n, _ := strconv.Atoi(r[1])
			if r[2] != "0" {
				t.Fatalf("%s: the app counts errors: %s\n%s", step, r[0], j)
			}
			if n <= reads {
				return fmt.Sprintf("%s: the app stopped reading: %s, had %d", step, r[0], reads)
			}
			reads = n
			return ""
		})
		// The operator's session keeps printing.
		testenv.Eventually(t, 10*time.Second, func() string {
			select {
			case <-ssh.Done():
				t.Fatalf("%s: the SSH session ended: %v\n%s", step, ssh.Err(), ssh.Output())
			default:
			}
			n := sshLines()
			if n <= ticks {
				return fmt.Sprintf("%s: the SSH session stopped printing after %d lines", step, n)
			}
			ticks = n
			return ""
		})
		for _, mp := range []string{"/mnt/etc", testenv.SandboxMount, "/run/g8os/apps/app-web"} {
			if got := testenv.MountsAt(t, m, mp); got != 1 {
				t.Errorf("%s: %s mounted %d times", step, mp, got)
			}
		}
		// Each phase's current ready time is a phase.ready event the
		// controller must get.
		for _, f := range []state.File{&state.Net{}, &state.Unlock{}, &state.ACSession{}, &state.SSHD{}, &state.FS{}} {
			testenv.ReadState(t, m, f)
			b, _ := json.Marshal(f)
			var v struct {
				ReadyAt time.Time `json:"ready_at"`
			}
			_ = json.Unmarshal(b, &v)
			readyAts[f.PhaseName()+" "+v.ReadyAt.UTC().Format(time.RFC3339Nano)] = true
		}
		timeline = append(timeline, fmt.Sprintf("%s: %s, ssh lines %d", step, last, ticks))
	}
	// exec runs a command in the machine, failing the step on error.
	exec := func(t *testing.T, name string, args ...string) string {
		t.Helper()
		out, err := m.Exec(name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// job queues an exec job, which must finish once with its output.
	job := func(t *testing.T, step string) {
		word := "job-" + strings.NewReplacer(" ", "-", "*", "all").Replace(step)
		args, _ := json.Marshal(map[string]any{"argv": []string{"sh", "-c", "sleep 1; echo " + word}})
		jobs[strings.TrimSpace(s.AC.CLI(t, "job", "run", nodeID, "exec", string(args)))] = word + "\n"
	}
	step := func(name string, f func(t *testing.T)) {
		if t.Failed() {
			return
		}
		t.Run(name, func(t *testing.T) {
			since := time.Now()
			job(t, name)
			f(t)
			steady(t, name, since)
		})
	}
	steady(t, "booted", time.Now())
	before := m.MustExec("g8-fs", "--version")
	// pacman -Q: "g8os-boot VERSION-REL".
	installed := func(t *testing.T) string {
		f := strings.Fields(exec(t, "pacman", "-Q", "g8os-boot"))
		if len(f) != 2 {
			t.Fatalf("pacman -Q g8os-boot: %q", f)
		}
		return f[1]
	}
	wasInstalled := installed(t)

	step("upgrade", func(t *testing.T) {
		out, err := m.ExecWithin(5*time.Minute, "pacman", "-U", "--noconfirm", "-dd", pkgInNode)
		if err != nil {
			t.Fatalf("pacman -U: %v", err)
		}
		for _, u := range testenv.ChainUnits {
			if !strings.Contains(out, "restarting "+u) {
				t.Errorf("the upgrade did not restart %s:\n%s", u, out)
			}
		}
		after := exec(t, "g8-fs", "--version")
		if after == before || !strings.Contains(after, ".upgrade") {
			t.Errorf("g8-fs --version: %q before the upgrade, %q after", before, after)
		}
		// A real upgrade, as pacman orders versions: not a reinstall or
		// a downgrade.
		now := installed(t)
		if cmp, err := osexec.Command("vercmp", now, wasInstalled).Output(); err != nil || strings.TrimSpace(string(cmp)) != "1" {
			t.Errorf("g8os-boot %s after the upgrade from %s: vercmp %q (%v), want newer", now, wasInstalled, cmp, err)
		}
		t.Logf("upgraded g8os-boot %s -> %s", wasInstalled, now)
		// Every phase runs the new binary (the old one's inode is gone).
		for _, u := range testenv.ChainUnits {
			pid := m.Show(u, "MainPID")["MainPID"]
			if exe, _ := m.Exec("readlink", "/proc/"+pid+"/exe"); strings.Contains(exe, "(deleted)") {
				t.Errorf("%s still runs the old binary: %s", u, exe)
			}
		}
	})
	for _, u := range testenv.ChainUnits {
		step("restart "+u, func(t *testing.T) { exec(t, "systemctl", "restart", u) })
	}
	step("all at once", func(t *testing.T) { exec(t, "systemctl", append([]string{"restart"}, testenv.ChainUnits...)...) })
	step("daemon-reexec", func(t *testing.T) { exec(t, "systemctl", "daemon-reexec") })
	for _, u := range []string{"g8-fs", "g8-sshd"} {
		step("kill -9 "+u, func(t *testing.T) {
			pid := m.Show(u+".service", "MainPID")["MainPID"]
			exec(t, "sh", "-c", "kill -9 "+pid) // the shell's kill: minbase has no procps
			killed[u+".service"]++
			testenv.Eventually(t, 30*time.Second, func() string {
				if p := m.Show(u+".service", "ActiveState", "MainPID"); p["ActiveState"] != "active" || p["MainPID"] == pid {
					return fmt.Sprintf("%s after kill -9 of pid %s: %v", u, pid, p)
				}
				return ""
			})
		})
	}
	if t.Failed() {
		return
	}
	t.Logf("timeline:\n%s\nsession to the controller back after: %s", strings.Join(timeline, "\n"), strings.Join(reconnects, ", "))

	t.Run("no job or event lost", func(t *testing.T) {
		for id, want := range jobs {
			var v struct {
				State  string           `json:"state"`
				Result *acapi.JobResult `json:"result"`
			}
			testenv.Eventually(t, 60*time.Second, func() string {
				if err := json.Unmarshal([]byte(s.AC.CLI(t, "job", "show", id)), &v); err != nil {
					t.Fatal(err)
				}
				if v.Result == nil || v.State == acapi.JobQueued || v.State == acapi.JobRunning {
					return fmt.Sprintf("job %s (%q) is %s", id, want, v.State)
				}
				return ""
			})
			if v.State != acapi.JobOK || string(v.Result.Stdout) != want {
				t.Errorf("job %s: %s, stdout %q, want ok %q (%s; ran %s to %s)", id, v.State, v.Result.Stdout, want, v.Result.Error,
					v.Result.StartedAt.Format(time.StampMilli), v.Result.FinishedAt.Format(time.StampMilli))
			}
		}
		if t.Failed() {
			t.Logf("--- g8-acsession ---\n%s", m.Journal("g8-acsession.service"))
		}
		var evs []acapi.Event
		testenv.Eventually(t, 60*time.Second, func() string {
			evs = evs[:0]
			for _, l := range strings.Split(strings.TrimSpace(s.AC.CLI(t, "events", nodeID, "--json")), "\n") {
				var e acapi.Event
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("events: %v: %q", err, l)
				}
				evs = append(evs, e)
			}
			got := map[string]bool{}
			for _, e := range evs {
				var d acapi.PhaseReadyData
				if e.Kind == acapi.EventPhaseReady && json.Unmarshal(e.Data, &d) == nil {
					got[d.Phase+" "+d.ReadyAt.UTC().Format(time.RFC3339Nano)] = true
				}
			}
			for want := range readyAts {
				if !got[want] {
					return "the controller has no phase.ready event for " + want
				}
			}
			return ""
		})
		for i, e := range evs {
			if e.Seq != uint64(i+1) {
				t.Fatalf("event %d has seq %d: the controller's events are not 1..%d without a gap", i, e.Seq, len(evs))
			}
		}
		t.Logf("%d jobs finished once each; %d events, seqs 1..%d, %d phase.ready times all delivered", len(jobs), len(evs), len(evs), len(readyAts))
	})

}

// sshSession opens the operator's interactive session: the real OpenSSH
// client from the LAN with a terminal (-tt), typing a loop that prints the
// node's clock every 200 ms. Its input stays open until the test ends. It
// returns the client and the count of lines printed so far.
func sshSession(t *testing.T, lan *testenv.Host, key, addr string) (*testenv.Process, func() int) {
	t.Helper()
	typed, typing, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { typing.Close(); typed.Close() })
	cmd := lan.Command(context.Background(), "ssh", "-tt", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
		"-o", "ServerAliveInterval=5", "root@"+addr)
	cmd.Stdin = typed
	ssh := lan.StartCmd(cmd, "ssh")
	if _, err := typing.WriteString("while :; do echo tick $(date +%s%N); sleep 0.2; done\n"); err != nil {
		t.Fatal(err)
	}
	tick := regexp.MustCompile(`tick \d{19}`) // not the echo of the typed line
	lines := func() int { return len(tick.FindAllString(ssh.Output(), -1)) }
	testenv.Eventually(t, 15*time.Second, func() string {
		if lines() == 0 {
			return "the SSH session prints nothing:\n" + ssh.Output()
		}
		return ""
	})
	return ssh, lines
}

// connProcs lists g8-sshd's connection processes in the machine (minbase
// has no pgrep).
func connProcs(t *testing.T, m *testenv.Machine) string {
	t.Helper()
	out, _ := m.Exec("sh", "-c", `for p in /proc/[0-9]*; do tr '\0' ' ' <$p/cmdline 2>/dev/null | grep -q '^g8-sshd connection ' && echo "${p#/proc/} $(cat $p/cgroup)"; done`)
	return strings.TrimSpace(out)
}

// TestSSHDStopEndsSessions is g8-sshd's stop path under real systemd
// (KillMode=process, a process per connection): a restart and a kill -9
// of the listener leave an open interactive session running, and
// `systemctl stop g8-sshd` then ends it after the grace (--shutdown-grace,
// 20 s) and leaves no connection process behind.
func TestSSHDStopEndsSessions(t *testing.T) {
	testenv.RequireRoot(t, "ssh")
	s := testenv.NewGridSite(t)
	key := s.OperatorKey()
	m := s.Node.Boot(s.NodeRoot(testenv.NetConfig{Static: true}))
	testenv.WaitChain(t, m)
	ssh, lines := sshSession(t, s.LAN, key, strings.Split(testenv.SiteStaticAddr, "/")[0])
	goesOn := func(step string) {
		t.Helper()
		n := lines()
		testenv.Eventually(t, 10*time.Second, func() string {
			select {
			case <-ssh.Done():
				t.Fatalf("%s ended the SSH session: %v\n%s\n--- g8-sshd ---\n%s", step, ssh.Err(), ssh.Output(), m.Journal("g8-sshd.service"))
			default:
			}
			if lines() <= n {
				return step + ": the SSH session stopped printing"
			}
			return ""
		})
	}
	m.MustExec("systemctl", "restart", "g8-sshd.service")
	m.MustWaitUnit("g8-sshd.service", "active", 30*time.Second)
	goesOn("systemctl restart g8-sshd")
	pid := m.Show("g8-sshd.service", "MainPID")["MainPID"]
	m.MustExec("sh", "-c", "kill -9 "+pid)
	testenv.Eventually(t, 30*time.Second, func() string {
		if p := m.Show("g8-sshd.service", "ActiveState", "MainPID"); p["ActiveState"] != "active" || p["MainPID"] == pid {
			return fmt.Sprintf("g8-sshd after kill -9 of %s: %v", pid, p)
		}
		return ""
	})
	goesOn("kill -9 of the listener")
	before := connProcs(t, m)

	start := time.Now()
	m.MustExec("systemctl", "stop", "g8-sshd.service")
	stopped := time.Since(start)
	select {
	case <-ssh.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the SSH session outlived systemctl stop g8-sshd (returned after %v) by 10 s; connection processes before: %s; after: %s\n--- g8-sshd ---\n%s",
			stopped.Round(100*time.Millisecond), before, connProcs(t, m), m.Journal("g8-sshd.service"))
	}
	if left := connProcs(t, m); left != "" {
		t.Errorf("connection processes left after the stop: %s", left)
	}
	t.Logf("systemctl stop g8-sshd returned after %v; the session had ended %v after the stop began",
		stopped.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
}
