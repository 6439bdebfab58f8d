package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/chain"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

// chainSite is a site whose controller knows the node, authorizes an
// operator key and serves one sandbox: what an operator sets up before
// powering a node on.
type chainSite struct {
	*testenv.Site
	key string // operator's private key
}

func newChainSite(t *testing.T, dhcp bool) *chainSite {
	t.Helper()
	testenv.RequireRoot(t, "systemd-nspawn", "ssh", "encfs")
	s := &chainSite{Site: testenv.NewSite(t)}
	s.StartController()
	if dhcp {
		s.StartDHCP()
	}
	s.AC.ApproveMAC(t, s.Node.MAC("eth0"))
	s.key = s.OperatorKey()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, testenv.SandboxFile), []byte(testenv.SandboxText), 0o644); err != nil {
		t.Fatal(err)
	}
	s.PublishSandbox("hello", src, testenv.SandboxMount)
	return s
}

func mono(t *testing.T, p map[string]string, key string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(p[key], 10, 64)
	if err != nil || v == 0 {
		t.Fatalf("%s = %q", key, p[key])
	}
	return v
}

// operatorCanWork checks what an operator relies on: root SSH from outside
// with the operator key, and the sandbox readable through it.
func (s *chainSite) operatorCanWork(t *testing.T, addr string) {
	t.Helper()
	out, err := s.SSH(s.key, addr, "cat", testenv.SandboxMount+"/"+testenv.SandboxFile)
	if err != nil {
		t.Fatalf("ssh root@%s: %v", addr, err)
	}
	if out != testenv.SandboxText {
		t.Fatalf("sandbox file read over ssh: %q, want %q", out, testenv.SandboxText)
	}
}

// Scenarios 1, 4 and 2 on one node: first boot, restarting each unit in
// turn, then a second boot of the same root.
func TestChainFirstBootRestartsAndSecondBoot(t *testing.T) {
	s := newChainSite(t, false)
	root := s.NodeRoot(testenv.NetConfig{Static: true})
	m := s.Node.Boot(root)
	addr := strings.Split(testenv.SiteStaticAddr, "/")[0]
	var nodeID string

	t.Run("first boot", func(t *testing.T) {
		props := testenv.WaitChain(t, m)
		// The controller's view follows the chain within seconds (a
		// heartbeat on change), not at the first heartbeat, sent before
		// the later units were up.
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			var n testenv.NodeView
			if ns := s.Nodes(); len(ns) == 1 {
				n = ns[0]
			}
			ok := n.Status != nil && len(n.Status.Phases) == len(testenv.ChainUnits)
			for _, u := range testenv.ChainUnits {
				ok = ok && n.Status.Units[u] == "active"
			}
			if ok {
				for p, line := range n.Status.Phases {
					ok = ok && strings.HasPrefix(line, "ready: ") && p != ""
				}
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("3 s after the chain was ready the controller shows %+v\n%s", n.Status, m.Journal("g8-acsession.service"))
			}
		}
		// Each phase became active after the one it is ordered after.
		for _, o := range [][2]string{
			{"g8-netup.service", "g8-unlock.service"},
			{"g8-unlock.service", "g8-acsession.service"},
			{"g8-acsession.service", "g8-sshd.service"},
			{"g8-unlock.service", "g8-fs.service"},
		} {
			a, b := mono(t, props[o[0]], "ActiveEnterTimestampMonotonic"), mono(t, props[o[1]], "ActiveEnterTimestampMonotonic")
			if a > b {
				t.Errorf("%s became active after %s", o[0], o[1])
			}
			if start := mono(t, props[o[1]], "InactiveExitTimestampMonotonic"); start < a {
				t.Errorf("%s started before %s was ready", o[1], o[0])
			}
		}
		for u, p := range props {
			if p["NRestarts"] != "0" {
				t.Errorf("%s restarted %s times on a clean first boot", u, p["NRestarts"])
			}
		}
		var (
			n  state.Net
			ul state.Unlock
			ac state.ACSession
			sh state.SSHD
			fs state.FS
		)
		for _, f := range []state.File{&n, &ul, &ac, &sh, &fs} {
			testenv.ReadState(t, m, f)
		}
		if n.Method != "static" || !ul.Enrolled || ul.NodeID == "" || !ac.Connected || ac.NodeID != ul.NodeID {
			t.Errorf("state: net %s, unlock enrolled=%v node %q, session connected=%v node %q", n.Method, ul.Enrolled, ul.NodeID, ac.Connected, ac.NodeID)
		}
		if len(fs.Sandboxes) != 1 || fs.Sandboxes[0].State != "mounted" {
			t.Errorf("fs.json sandboxes: %+v", fs.Sandboxes)
		}
		nodeID = ul.NodeID
		// The controller lists the node, with a heartbeat.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ns := s.Nodes()
			if len(ns) == 1 && ns[0].ID == nodeID && ns[0].LastSeen != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("controller's node list: %+v, want node %s with a heartbeat", ns, nodeID)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if got := testenv.MountsAt(t, m, "/mnt/etc"); got != 1 {
			t.Errorf("/mnt/etc mounted %d times", got)
		}
		s.operatorCanWork(t, addr)
		// g8-status: every phase ready, exit 0.
		if st, code := g8Status(t, m); code != 0 || !st.Ready {
			t.Errorf("g8-status --json on a ready chain: exit %d, %+v", code, st)
		}
		for i, u := range testenv.ChainUnits {
			line := issueLine(t, m, strconv.Itoa(41+i)+"-"+strings.TrimSuffix(u, ".service")+".issue")
			if !strings.Contains(line, "ready") {
				t.Errorf("console line of %s: %q", u, line)
			}
		}
	})
	if t.Failed() {
		return
	}

	// Reload re-reads keys (g8-sshd) and fs.toml (g8-fs) in place.
	for _, u := range []string{"g8-sshd.service", "g8-fs.service"} {
		t.Run("reload "+u, func(t *testing.T) {
			pid := m.Show(u, "MainPID")["MainPID"]
			m.MustExec("systemctl", "reload", u)
			p := m.MustWaitUnit(u, "active", 10*time.Second)
			if p["ExecMainPID"] != pid || p["NRestarts"] != "0" {
				t.Errorf("reload restarted %s (pid %s -> %s)", u, pid, p["ExecMainPID"])
			}
			if j := m.Journal(u); !strings.Contains(j, "Reloaded "+u) {
				t.Errorf("systemd did not log a successful reload of %s:\n%s", u, j)
			}
			if got := testenv.MountsAt(t, m, testenv.SandboxMount); got != 1 {
				t.Errorf("after reloading %s: %s mounted %d times", u, testenv.SandboxMount, got)
			}
			s.operatorCanWork(t, addr)
		})
	}

	// Scenario 4: restarting any one unit by hand is safe. Requires=
	// restarts the units that require it too; the chain must end healthy.
	for _, u := range []string{"g8-fs.service", "g8-sshd.service", "g8-acsession.service", "g8-unlock.service", "g8-netup.service"} {
		t.Run("restart "+u, func(t *testing.T) {
			m.MustExec("systemctl", "restart", u)
			testenv.WaitChain(t, m)
			for _, mp := range []string{"/mnt/etc", testenv.SandboxMount} {
				if got := testenv.MountsAt(t, m, mp); got != 1 {
					t.Errorf("after restarting %s: %s mounted %d times", u, mp, got)
				}
			}
			s.operatorCanWork(t, addr)
		})
	}

	// SSH must keep serving while the controller is unreachable: that is
	// when operators need it (g8-sshd only Wants the session).
	t.Run("controller down", func(t *testing.T) {
		sshd := m.Show("g8-sshd.service", "MainPID")["MainPID"]
		s.AC.Stop()
		deadline := time.Now().Add(60 * time.Second)
		for {
			var ac state.ACSession
			testenv.ReadState(t, m, &ac)
			if !ac.Connected {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("g8-acsession still reports a connection to a stopped controller")
			}
			time.Sleep(500 * time.Millisecond)
		}
		s.operatorCanWork(t, addr)
		if p := m.Show("g8-sshd.service", "ActiveState", "MainPID"); p["ActiveState"] != "active" || p["MainPID"] != sshd {
			t.Errorf("g8-sshd %s pid %s (was %s) while the controller is down", p["ActiveState"], p["MainPID"], sshd)
		}
		s.StartController()
		for {
			var ac state.ACSession
			testenv.ReadState(t, m, &ac)
			if ac.Connected {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("g8-acsession did not reconnect after the controller came back: %+v", ac)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	// The session pings the watchdog (WatchdogSec=30s) from its loop, so
	// systemd records a ping after READY without killing it.
	t.Run("watchdog", func(t *testing.T) {
		deadline := time.Now().Add(25 * time.Second)
		for {
			p := m.Show("g8-acsession.service", "WatchdogTimestampMonotonic", "ActiveEnterTimestampMonotonic", "NRestarts")
			wd, _ := strconv.ParseInt(p["WatchdogTimestampMonotonic"], 10, 64)
			ready, _ := strconv.ParseInt(p["ActiveEnterTimestampMonotonic"], 10, 64)
			if wd > ready+500_000 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("g8-acsession sent no watchdog ping after READY: %v", p)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("second boot", func(t *testing.T) {
		m.Poweroff()
		m2 := s.Node.Boot(root)
		testenv.WaitChain(t, m2)
		var ul state.Unlock
		testenv.ReadState(t, m2, &ul)
		if ul.Enrolled || ul.NodeID != nodeID {
			t.Errorf("second boot: enrolled=%v node %q; want the same node %q without enrolling again", ul.Enrolled, ul.NodeID, nodeID)
		}
		if ns := s.Nodes(); len(ns) != 1 {
			t.Errorf("controller lists %d nodes after a second boot: %+v", len(ns), ns)
		}
		s.operatorCanWork(t, addr)
	})
}

// Scenario 5: the whole chain over DHCP only, and over the fallback subnet
// only.
func TestChainCompletesOverDHCPAndFallback(t *testing.T) {
	for _, c := range []struct {
		name   string
		dhcp   bool
		method string
	}{{"dhcp", true, "dhcp"}, {"fallback", false, "fallback"}} {
		t.Run(c.name, func(t *testing.T) {
			s := newChainSite(t, c.dhcp)
			m := s.Node.Boot(s.NodeRoot(testenv.NetConfig{}))
			testenv.WaitChain(t, m)
			var n state.Net
			testenv.ReadState(t, m, &n)
			if n.Method != c.method {
				t.Fatalf("net.json method %q, want %s", n.Method, c.method)
			}
			// SSH goes over the LAN; on the fallback path only eth1 (the
			// controller's link) has an address, so go from there.
			addr := strings.Split(n.Address, "/")[0]
			if c.method == "fallback" {
				out, err := s.ACHost.Run("ssh", "-i", s.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
					"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@"+addr, "--", "cat", testenv.SandboxMount+"/"+testenv.SandboxFile)
				if err != nil || out != testenv.SandboxText {
					t.Fatalf("ssh over the fallback link: %q %v", out, err)
				}
				return
			}
			s.operatorCanWork(t, addr)
		})
	}
}

// Scenario 6: a phase that fails for good is obvious: systemctl --failed
// lists it, the console and the login prompt say so, and the units follow
// the graph (what requires it does not start, g8-netup keeps running).
func TestFailedPhaseIsVisible(t *testing.T) {
	s := newChainSite(t, false)
	root := s.NodeRoot(testenv.NetConfig{Static: true})
	// A private dir that is neither empty nor an encfs volume: g8-unlock
	// exits 11, which is not worth a restart.
	root.WriteFile("etc/g8os/private/garbage", []byte("not an encfs volume\n"), 0o600)
	m := s.Node.Boot(root)
	p := m.MustWaitUnit("g8-unlock.service", "failed", 60*time.Second)
	if p["ExecMainStatus"] != "11" {
		t.Errorf("g8-unlock exit status %s, want 11", p["ExecMainStatus"])
	}
	failed := m.MustExec("systemctl", "--failed", "--plain", "--no-legend")
	if !strings.Contains(failed, "g8-unlock.service") {
		t.Errorf("systemctl --failed does not list g8-unlock:\n%s", failed)
	}
	m.MustWaitUnit("g8-netup.service", "active", 10*time.Second)
	for _, u := range []string{"g8-acsession.service", "g8-sshd.service", "g8-fs.service"} {
		if st := m.Show(u, "ActiveState")["ActiveState"]; st == "active" || st == "activating" {
			t.Errorf("%s is %s although g8-unlock, which it requires, failed", u, st)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(m.Console(), "g8os unlock    FAILED") {
		if time.Now().After(deadline) {
			t.Fatalf("console does not show the failure:\n%s", m.Console())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// g8os-failed@ prints to the console before it rewrites the line.
	for line := ""; !strings.Contains(line, "FAILED") || !strings.Contains(line, "status 11"); {
		if time.Now().After(deadline) {
			t.Fatalf("login prompt line of the failed phase: %q", line)
		}
		time.Sleep(100 * time.Millisecond)
		line = issueLine(t, m, "42-g8-unlock.issue")
	}
	for out := ""; !strings.Contains(out, "boot phase failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("no chain.phase-failed journal entry for g8-unlock:\n%s", out)
		}
		out = m.MustExec("journalctl", "-b", "--no-pager", "-o", "cat", "MESSAGE_ID="+sd.ChainPhaseFailed.ID, "G_UNIT=g8-unlock.service")
		time.Sleep(100 * time.Millisecond)
	}
	journalExplainsTheFailure(t, m)

	// g8-status tells a script the same: not ready, unlock failed with
	// its error, what requires it not started, the network ready.
	st, code := g8Status(t, m)
	if code != chain.ExitFailed || st.Ready {
		t.Errorf("g8-status --json with a failed phase: exit %d, ready %v; want exit %d", code, st.Ready, chain.ExitFailed)
	}
	want := map[string]string{"net": chain.StateReady, "unlock": chain.StateFailed, "acsession": chain.StateNotStarted, "sshd": chain.StateNotStarted, "fs": chain.StateNotStarted}
	for _, p := range st.Phases {
		if p.State != want[p.Phase] {
			t.Errorf("g8-status: %s is %s (%+v), want %s", p.Phase, p.State, p, want[p.Phase])
		}
		if p.Phase == "unlock" && (p.ActiveState != "failed" || !strings.Contains(p.Detail, "exit-code, status 11") || p.LastError == "") {
			t.Errorf("g8-status: failed unlock reported as %+v", p)
		}
	}
	if out, _ := m.Exec("g8-status"); !strings.Contains(out, "g8os unlock    failed   unit failed (exit-code, status 11)") {
		t.Errorf("g8-status lines:\n%s", out)
	}
}

// g8Status runs g8-status --json in the machine and returns what it said
// and its exit status.
func g8Status(t *testing.T, m *testenv.Machine) (chainStatus, int) {
	t.Helper()
	out := m.MustExec("sh", "-c", "g8-status --json 2>/dev/null; echo EXIT=$?")
	i := strings.LastIndex(out, "EXIT=")
	code, err := strconv.Atoi(strings.TrimSpace(out[i+len("EXIT="):]))
	var st chainStatus
	if err != nil || json.Unmarshal([]byte(out[:i]), &st) != nil || len(st.Phases) != len(testenv.ChainUnits) {
		t.Fatalf("g8-status --json:\n%s", out)
	}
	return st, code
}

type chainStatus struct {
	Ready  bool                `json:"ready"`
	Phases []chain.PhaseStatus `json:"phases"`
}

// journalExplainsTheFailure: each binary logs under its own name, and
// journalctl -x explains an entry from the shipped catalog with the entry's
// own values in place of its @G_...@ references. The catalog database is
// rebuilt as Arch's systemd pacman hook does after an install.
func journalExplainsTheFailure(t *testing.T, m *testenv.Machine) {
	t.Helper()
	if out := m.MustExec("journalctl", "-b", "--no-pager", "-o", "cat", "-t", "g8-netup", "MESSAGE_ID="+sd.NetControllerFound.ID); !strings.Contains(out, "controller reached") {
		t.Errorf("journalctl -t g8-netup finds no controller-found entry:\n%s", out)
	}
	m.MustExec("journalctl", "--update-catalog")
	for _, c := range []struct {
		ident string
		msg   sd.MessageID
		want  []string
	}{
		{"g8-netup", sd.NetControllerFound, []string{"g8-netup reached a controller", "The controller in " + testenv.SiteControllerOn,
			"(static: static, dhcp or fallback)", sd.SupportURL}},
		{"g8-unlock", sd.UnlockCorrupt, []string{"The private directory (/etc/g8os/private) is neither empty"}},
		{"g8-status", sd.ChainPhaseFailed, []string{"The unit in g8-unlock.service entered the failed state", "status 11"}},
	} {
		out := m.MustExec("journalctl", "-b", "-x", "--no-pager", "-t", c.ident, "MESSAGE_ID="+c.msg.ID)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("journalctl -x -t %s MESSAGE_ID=%s (%s) lacks %q:\n%s", c.ident, c.msg.ID, c.msg.Name, w, out)
			}
		}
		if strings.Contains(out, "@G_") || strings.Contains(out, " G_") {
			t.Errorf("journalctl -x shows a field reference unfilled:\n%s", out)
		}
	}
}

// A node the controller denied waits (g8-unlock asks again slowly, an
// operator may still approve it) and says so in systemctl status and at the
// login prompt; nothing after it starts, and the network phase stays up.
func TestDeniedNodeWaitsAndSaysWhy(t *testing.T) {
	testenv.RequireRoot(t, "systemd-nspawn")
	s := testenv.NewSite(t)
	s.StartController()
	mac := s.Node.MAC("eth0")
	s.AC.CLI(t, "node", "add", "--mac", mac)
	s.AC.CLI(t, "node", "deny", mac)
	m := s.Node.Boot(s.NodeRoot(testenv.NetConfig{Static: true}))
	m.MustWaitUnit("g8-netup.service", "active", 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := m.Show("g8-unlock.service", "ActiveState", "StatusText")
		if p["ActiveState"] == "activating" && strings.Contains(p["StatusText"], "denied") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("g8-unlock of a denied node: %v\n%s", p, m.Journal("g8-unlock.service"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The login prompt says it too (the unit mirrors STATUS= there).
	for line := ""; !strings.Contains(line, "waiting  denied by "+testenv.SiteControllerOn); {
		if time.Now().After(deadline) {
			t.Fatalf("console line of a denied node: %q", line)
		}
		time.Sleep(200 * time.Millisecond)
		line = issueLine(t, m, "42-g8-unlock.issue")
	}
	for _, u := range []string{"g8-acsession.service", "g8-sshd.service", "g8-fs.service"} {
		if st := m.Show(u, "ActiveState")["ActiveState"]; st != "inactive" {
			t.Errorf("%s is %s while g8-unlock waits for approval; want inactive (queued)", u, st)
		}
	}
	if jobs := m.MustExec("systemctl", "list-jobs", "--plain", "--no-legend"); !strings.Contains(jobs, "g8-sshd.service") {
		t.Errorf("g8-sshd's start job is not waiting for g8-unlock:\n%s", jobs)
	}
}
