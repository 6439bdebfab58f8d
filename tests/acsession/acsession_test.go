// Package acsession_test runs the real g8-acsession binary against the real
// g8-ac: on loopback for the session and job behaviour, and across network
// namespaces for the controller outage.
package acsession_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// node is one g8-acsession process with its state directory and identity.
type node struct {
	*testenv.Enrolled
	StateDir string
	Notify   *testenv.Notify
	Proc     *testenv.Process
	args     []string
	host     *testenv.Host
}

// newNode enrolls a node with ac and points its net.json at controller
// (ac.URL when empty). It does not start the session.
func newNode(t *testing.T, ac *testenv.Controller, via *testenv.Host, mac string) *node {
	t.Helper()
	n := &node{Enrolled: testenv.EnrollNode(t, ac, via, mac), StateDir: t.TempDir(), host: via}
	writeNet(t, n.StateDir, ac.URL, "10.0.0.2/24")
	return n
}

func writeNet(t *testing.T, dir, controller, addr string) {
	t.Helper()
	now := time.Now().UTC()
	if err := state.Write(dir, &state.Net{Controller: controller, Interface: "eth0", Method: "static", Address: addr,
		StartedAt: now.Add(-time.Second), ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
}

// start runs g8-acsession for n with a fake systemd notify socket and the
// watchdog enabled.
func (n *node) start(t *testing.T, extra ...string) {
	t.Helper()
	if n.Notify == nil {
		n.Notify = testenv.NotifySocket(t)
	}
	args := append([]string{"--state-dir", n.StateDir, "--config-root", n.ConfigRoot, "--heartbeat", "1s", "--debug"}, extra...)
	n.args = args
	bin := testenv.Bin(t, "g8-acsession")
	var cmd *exec.Cmd
	if n.host != nil {
		cmd = n.host.Command(t.Context(), bin, args...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Env = append(os.Environ(), n.Notify.Env(), "WATCHDOG_USEC=2000000")
	if n.host != nil {
		n.Proc = n.host.StartCmd(cmd, "g8-acsession")
	} else {
		n.Proc = testenv.StartLocalCmd(t, cmd, "g8-acsession")
	}
}

func (n *node) state(t *testing.T) state.ACSession {
	t.Helper()
	var st state.ACSession
	if err := state.Read(n.StateDir, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitState waits until the session's state file satisfies ok.
func (n *node) waitState(t *testing.T, what string, timeout time.Duration, ok func(state.ACSession) bool) state.ACSession {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var st state.ACSession
	for time.Now().Before(deadline) {
		if err := state.Read(n.StateDir, &st); err == nil && ok(st) {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("session never got %s within %v; state: %+v\nlog:\n%s", what, timeout, st, n.Proc.Output())
	return st
}

func connected(st state.ACSession) bool { return st.Connected }

// runJob queues a job with `g8-ac job run --wait` and returns its view.
func runJob(t *testing.T, ac *testenv.Controller, nodeID, kind, args string, timeout time.Duration) jobView {
	t.Helper()
	cli := []string{"job", "run", "--wait", "--timeout", timeout.String(), "--wait-timeout", (timeout + 30*time.Second).String(), nodeID, kind}
	if args != "" {
		cli = append(cli, args)
	}
	out, errOut, code := ac.RunCLI(cli...)
	var v jobView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("g8-ac %s: exit %d, output %q %q", strings.Join(cli, " "), code, out, errOut)
	}
	if (code == 0) != (v.State == acapi.JobOK) {
		t.Fatalf("g8-ac job run exit %d for state %s", code, v.State)
	}
	return v
}

type jobView struct {
	ID     string           `json:"id"`
	State  string           `json:"state"`
	Result *acapi.JobResult `json:"result"`
}

type nodeView struct {
	ID       string           `json:"id"`
	LastSeen *time.Time       `json:"last_seen"`
	Status   *acapi.Heartbeat `json:"status"`
}

func nodeList(t *testing.T, ac *testenv.Controller, id string) nodeView {
	t.Helper()
	var nodes []nodeView
	if err := json.Unmarshal([]byte(ac.CLI(t, "node", "list", "--json")), &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == id {
			return n
		}
	}
	t.Fatalf("node %s not in node list", id)
	return nodeView{}
}

// TestSessionHeartbeatAndJobs: READY after the first verified round trip,
// heartbeats visible in `g8-ac node list`, the watchdog pinged, and every
// job kind answered through the real controller, bad jobs included.
func TestSessionHeartbeatAndJobs(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, ac, nil, "52:54:00:5e:00:01")
	n.start(t)
	ready := n.Notify.Wait(t, "READY=1", 20*time.Second)
	if !strings.Contains(ready, "connected to "+ac.URL) {
		t.Errorf("READY status: %q", ready)
	}
	st := n.waitState(t, "connected", 5*time.Second, connected)
	if st.NodeID != n.NodeID || st.ReadyAt.IsZero() || st.Controller != ac.URL {
		t.Fatalf("state file: %+v", st)
	}

	// Heartbeats every second: last seen moves, and the status carries the
	// phases and the host's figures.
	first := nodeList(t, ac, n.NodeID)
	if first.LastSeen == nil || first.Status == nil {
		t.Fatalf("node list: no heartbeat: %+v", first)
	}
	time.Sleep(2500 * time.Millisecond)
	later := nodeList(t, ac, n.NodeID)
	if !later.LastSeen.After(*first.LastSeen) {
		t.Fatalf("last seen did not move: %v then %v", first.LastSeen, later.LastSeen)
	}
	hb := later.Status
	if hb.NodeID != n.NodeID || hb.BootID == "" || hb.MemTotal == 0 || hb.Uptime <= 0 || !strings.Contains(hb.Phases["net"], "ready: eth0 10.0.0.2/24 via static") || !strings.HasPrefix(hb.Phases["fs"], "not-started: has not run") {
		t.Fatalf("heartbeat content: %+v", hb)
	}
	if table := ac.CLI(t, "node", "list"); !strings.Contains(table, n.NodeID) || strings.Contains(strings.Split(table, n.NodeID)[1], "never") {
		t.Fatalf("node list table:\n%s", table)
	}
	if pings := n.Notify.Count("WATCHDOG=1"); pings < 2 {
		t.Errorf("%d watchdog pings with WatchdogSec=2s", pings)
	}

	v := runJob(t, ac, n.NodeID, "ping", "", 10*time.Second)
	var pong acapi.PingOutput
	if v.State != acapi.JobOK || json.Unmarshal(v.Result.Output, &pong) != nil || pong.NodeID != n.NodeID {
		t.Fatalf("ping: %+v", v)
	}

	v = runJob(t, ac, n.NodeID, "info", "", 10*time.Second)
	var info acapi.InfoOutput
	if v.State != acapi.JobOK || json.Unmarshal(v.Result.Output, &info) != nil || info.Threads == 0 || len(info.NICs) == 0 {
		t.Fatalf("info: %+v", v)
	}

	out, errOut, code := ac.RunCLI("job", "exec", n.NodeID, "--", "sh", "-c", "echo out; echo err >&2; exit 4")
	if code == 0 || out != "out\n" || !strings.HasPrefix(errOut, "err\n") || !strings.Contains(errOut, "exit status 4") {
		t.Fatalf("exec: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	v = runJob(t, ac, n.NodeID, "exec", `{"argv": ["head", "-c", "1000000", "/dev/zero"], "max_output": 1000}`, 10*time.Second)
	if v.State != acapi.JobOK || len(v.Result.Stdout) != 1000 || !v.Result.Truncated {
		t.Fatalf("huge output: state %s, %d bytes, truncated %v", v.State, len(v.Result.Stdout), v.Result != nil && v.Result.Truncated)
	}

	for _, c := range []struct{ kind, args, want string }{
		{"reboot", "", `unknown kind "reboot"`},
		{"exec", `{"argv": "ls"}`, "exec args"},
		{"exec", `{"argv": ["ls"], "shell": true}`, `unknown field "shell"`},
		{"journal", `{"unit": "--since=yesterday"}`, "not a unit name"},
	} {
		v := runJob(t, ac, n.NodeID, c.kind, c.args, 10*time.Second)
		if v.State != acapi.JobRejected || !strings.Contains(v.Result.Error, c.want) {
			t.Errorf("%s %s: got %s %+v, want rejected with %q", c.kind, c.args, v.State, v.Result, c.want)
		}
	}
	// The session stayed up through all of it.
	if st := n.state(t); !st.Connected || st.JobsRun < 4 {
		t.Fatalf("after bad jobs: %+v", st)
	}
	events := ac.CLI(t, "events", n.NodeID)
	for _, want := range []string{"phase.ready", "job.finished", `"kind":"ping"`} {
		if !strings.Contains(events, want) {
			t.Errorf("events lack %s:\n%s", want, events)
		}
	}
}

// TestExecTimeoutKillsTheTree: an exec job whose command forked a
// grandchild is killed as a whole when it times out.
func TestExecTimeoutKillsTheTree(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, ac, nil, "52:54:00:5e:00:02")
	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)

	pidfile := filepath.Join(t.TempDir(), "grandchild")
	script := fmt.Sprintf(`sh -c 'sleep 1000 & echo $! > %s; wait' & wait`, pidfile)
	args, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"sh", "-c", script}})
	start := time.Now()
	v := runJob(t, ac, n.NodeID, "exec", string(args), 2*time.Second)
	if v.State != acapi.JobTimeout || !strings.Contains(v.Result.Error, "timed out after 2s") {
		t.Fatalf("got %+v", v)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("timeout reported after %v", took)
	}
	data, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d survived the timeout", pid)
	}
}

// alive reports whether pid runs (a zombie nobody reaped does not).
func alive(pid int) bool {
	for i := 0; i < 40; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestDuplicateJobIDRunsOnce: a controller restored from a backup hands out
// a job the node already ran. The node does not run it again and answers
// that it is a duplicate; the session stays up.
func TestDuplicateJobIDRunsOnce(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, ac, nil, "52:54:00:5e:00:03")
	counter := filepath.Join(t.TempDir(), "runs")
	args, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"sh", "-c", "echo run >> " + counter}})

	// Queue the job while the server is down, and back up the store.
	ac.Stop()
	id := strings.TrimSpace(ac.CLI(t, "job", "run", n.NodeID, "exec", string(args)))
	backup := t.TempDir()
	copyDB(t, ac.DataDir, backup)
	ac.Restart(t)

	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)
	first := waitJob(t, ac, id, 20*time.Second)
	if first.State != acapi.JobOK {
		t.Fatalf("first run: %+v", first)
	}

	// Restore the backup: the job is queued again under the same id.
	ac.Stop()
	copyDB(t, backup, ac.DataDir)
	ac.Restart(t)
	again := waitJob(t, ac, id, 30*time.Second)
	if again.State != acapi.JobRejected || !strings.Contains(again.Result.Error, "duplicate id") || !strings.Contains(again.Result.Error, "already ran (ok") {
		t.Fatalf("redelivered job: %+v", again.Result)
	}
	runs, _ := os.ReadFile(counter)
	if c := strings.Count(string(runs), "run"); c != 1 {
		t.Fatalf("the command ran %d times", c)
	}
	if v := runJob(t, ac, n.NodeID, "ping", "", 10*time.Second); v.State != acapi.JobOK {
		t.Fatalf("session after the duplicate: %+v", v)
	}
}

func copyDB(t *testing.T, from, to string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(to, "ac.db*"))
	for _, f := range files {
		os.Remove(f)
	}
	files, _ = filepath.Glob(filepath.Join(from, "ac.db*"))
	if len(files) == 0 {
		t.Fatalf("no store in %s", from)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(f)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func waitJob(t *testing.T, ac *testenv.Controller, id string, timeout time.Duration) jobView {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var v jobView
	for time.Now().Before(deadline) {
		if err := json.Unmarshal([]byte(ac.CLI(t, "job", "show", id)), &v); err != nil {
			t.Fatal(err)
		}
		if v.Result != nil && v.State != acapi.JobRunning && v.State != acapi.JobQueued {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("job %s not finished within %v: %+v", id, timeout, v)
	return v
}

// TestRevokedCertificate: the controller refuses a revoked node. The
// session says so, stays down, retries only slowly, and comes back once
// the node is approved again.
func TestRevokedCertificate(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, ac, nil, "52:54:00:5e:00:04")
	n.start(t, "--refused-retry", "4s")
	n.waitState(t, "connected", 20*time.Second, connected)

	ac.CLI(t, "node", "revoke", n.NodeID)
	st := n.waitState(t, "refused", 10*time.Second, func(s state.ACSession) bool {
		return !s.Connected && strings.Contains(s.Status, "refused this node's certificate")
	})
	if !strings.Contains(st.Status, "revoked") || !strings.Contains(st.LastError, "403") {
		t.Fatalf("refusal not explained: status %q, error %q", st.Status, st.LastError)
	}
	const refusal = "the controller refused this node's certificate"
	before := strings.Count(n.Proc.Output(), refusal)
	time.Sleep(2 * time.Second)
	if after := strings.Count(n.Proc.Output(), refusal); after != before || before == 0 {
		t.Fatalf("refused node: %d refusals, then %d more within 2s", before, after-before)
	}
	if !strings.Contains(n.Proc.Output(), "never falling back to an unauthenticated channel") {
		t.Errorf("log does not explain the refusal:\n%s", n.Proc.Output())
	}

	ac.CLI(t, "node", "approve", n.NodeID)
	n.waitState(t, "reconnected after approval", 15*time.Second, connected)
}

// TestFollowsNetJSON: when g8-netup names another controller address, the
// session moves there and reports the change.
func TestFollowsNetJSON(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{Listen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	n := newNode(t, ac, nil, "52:54:00:5e:00:05")
	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)

	writeNet(t, n.StateDir, ac.URLs[1], "10.0.0.3/24")
	n.waitState(t, "on the second address", 10*time.Second, func(s state.ACSession) bool { return s.Connected && s.Controller == ac.URLs[1] })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(ac.CLI(t, "events", n.NodeID), "net.changed") {
		if time.Now().After(deadline) {
			t.Fatalf("no net.changed event:\n%s", ac.CLI(t, "events", n.NodeID))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestControllerOutageEventsArriveInOrderOnce runs node and controller in
// their own network namespaces. The controller is killed; meanwhile the
// node's phases report ready, its network changes and the session itself
// restarts. When the controller is back the session resumes and the
// events arrive in order, each exactly once — also when the node re-sends
// a batch whose acknowledgement it never got.
func TestControllerOutageEventsArriveInOrderOnce(t *testing.T) {
	testenv.RequireRoot(t, "curl")
	tp := testenv.NewTopology(t)
	nodeHost, acHost := tp.Host("node"), tp.Host("ac")
	tp.Link(nodeHost, "eth0", acHost, "eth0")
	acHost.Addr("eth0", "10.0.0.1/24")
	nodeHost.Addr("eth0", "10.0.0.2/24")
	ac := testenv.StartController(t, acHost, testenv.ControllerOptions{Names: []string{"10.0.0.1"}, Listen: []string{"0.0.0.0:8443"}})
	n := newNode(t, ac, nodeHost, nodeHost.MAC("eth0"))
	n.start(t)
	n.waitState(t, "connected and drained", 20*time.Second, func(s state.ACSession) bool { return s.Connected && s.QueueDepth == 0 && s.EventsAcked > 0 })
	var before []acapi.Event
	deadline := time.Now().Add(15 * time.Second)
	for !slices.ContainsFunc(before, func(e acapi.Event) bool { return describe(e) == "phase.ready acsession" }) {
		if time.Now().After(deadline) {
			t.Fatalf("the session's own ready time never arrived: %v", before)
		}
		time.Sleep(100 * time.Millisecond)
		before = events(t, ac, n.NodeID)
	}

	if err := ac.Process().Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ac.Process().Done()
	n.waitState(t, "disconnected", 15*time.Second, func(s state.ACSession) bool { return !s.Connected })

	// One change at a time, each queued before the next, so their order is known.
	queued := func(depth int) {
		n.waitState(t, fmt.Sprintf("%d events queued", depth), 10*time.Second, func(s state.ACSession) bool { return s.QueueDepth >= depth })
	}
	now := time.Now().UTC()
	if err := state.Write(n.StateDir, &state.SSHD{Listen: []string{":22"}, StartedAt: now, ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
	queued(1)
	if err := state.Write(n.StateDir, &state.FS{StartedAt: now, ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
	queued(2)
	var netState state.Net // g8-netup changes its decision, not its ready time
	if err := state.Read(n.StateDir, &netState); err != nil {
		t.Fatal(err)
	}
	netState.Address, netState.Method = "10.0.0.22/24", "dhcp"
	if err := state.Write(n.StateDir, &netState); err != nil {
		t.Fatal(err)
	}
	queued(3)

	// The unit restarts while the controller is still away: the queue is on disk.
	n.Proc.Stop()
	snapshot := filepath.Join(t.TempDir(), "events")
	copyDir(t, filepath.Join(n.StateDir, "acsession", "events"), snapshot)
	n.start(t)
	if err := state.Write(n.StateDir, &state.Unlock{NodeID: n.NodeID, Backend: "encfs", StartedAt: now, ReadyAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	queued(4)

	ac.Restart(t)
	n.waitState(t, "resumed and drained", 40*time.Second, func(s state.ACSession) bool { return s.Connected && s.QueueDepth == 0 })
	// The restarted session's own ready time is queued at a heartbeat
	// after it connected: a drained queue may come before it.
	after := events(t, ac, n.NodeID)
	for deadline := time.Now().Add(20 * time.Second); !slices.ContainsFunc(after[len(before):], func(e acapi.Event) bool {
		return describe(e) == "phase.ready acsession"
	}) && time.Now().Before(deadline); after = events(t, ac, n.NodeID) {
		time.Sleep(100 * time.Millisecond)
	}
	got := after[len(before):]
	var order []string
	for _, e := range got {
		order = append(order, describe(e))
	}
	// The session's restart made it ready again, after the controller came back.
	want := []string{"phase.ready sshd", "phase.ready fs", "net.changed", "phase.ready unlock", "phase.ready acsession"}
	if strings.Join(order, ", ") != strings.Join(want, ", ") {
		t.Fatalf("events delivered during the outage: %v, want %v", order, want)
	}
	checkSeqs(t, after)

	// Replay: the node lost the acknowledgement and sends the same batch
	// again (its queue as it was during the outage). Nothing is stored twice.
	n.Proc.Stop()
	os.RemoveAll(filepath.Join(n.StateDir, "acsession", "events"))
	copyDir(t, snapshot, filepath.Join(n.StateDir, "acsession", "events"))
	n.start(t)
	n.waitState(t, "replayed and drained", 20*time.Second, func(s state.ACSession) bool { return s.Connected && s.QueueDepth == 0 })
	replayed := events(t, ac, n.NodeID)
	checkSeqs(t, replayed)
	// Only the restarted session's new ready time is new; the replayed batch is not.
	for _, e := range replayed[len(after):] {
		if describe(e) != "phase.ready acsession" {
			t.Fatalf("replay stored %s (seq %d) again", describe(e), e.Seq)
		}
	}
	// A new event after the replay is stored, not mistaken for an old one.
	if err := state.Write(n.StateDir, &state.SSHD{Listen: []string{":22"}, StartedAt: now, ReadyAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		evs := events(t, ac, n.NodeID)
		if last := evs[len(evs)-1]; describe(last) == "phase.ready sshd" && last.Seq > replayed[len(replayed)-1].Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an event queued after the replay never arrived")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func events(t *testing.T, ac *testenv.Controller, id string) []acapi.Event {
	t.Helper()
	var out []acapi.Event
	for _, line := range strings.Split(strings.TrimSpace(ac.CLI(t, "events", "--json", id)), "\n") {
		if line == "" {
			continue
		}
		var e acapi.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func describe(e acapi.Event) string {
	if e.Kind != acapi.EventPhaseReady {
		return e.Kind
	}
	var d acapi.PhaseReadyData
	_ = json.Unmarshal(e.Data, &d)
	return e.Kind + " " + d.Phase
}

// checkSeqs: strictly increasing, so no event was stored twice.
func checkSeqs(t *testing.T, evs []acapi.Event) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq <= evs[i-1].Seq {
			t.Fatalf("seq %d after %d", evs[i].Seq, evs[i-1].Seq)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o750); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCommandLine: help with exit codes, version, refused flags (exit 2),
// and an unusable state directory (exit 10, naming the path).
func TestCommandLine(t *testing.T) {
	bin := testenv.Bin(t, "g8-acsession")
	run := func(args ...string) (string, int) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	help, code := run("--help")
	for _, want := range []string{"--state-dir", "--config-root", "--heartbeat", "--queue-max", "--refused-retry", "Exit codes:", " 10  "} {
		if code != 0 || !strings.Contains(help, want) {
			t.Errorf("--help (exit %d) lacks %q:\n%s", code, want, help)
		}
	}
	if out, code := run("--version"); code != 0 || !strings.HasPrefix(out, "g8-acsession ") {
		t.Errorf("--version: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"--heartbeat", "10ms"}, {"--queue-max", "0"}, {"--refused-retry", "0s"}, {"extra"}, {"--no-such-flag"}} {
		if out, code := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, out)
		}
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run("--state-dir", notDir); code != 10 || !strings.Contains(out, notDir) {
		t.Errorf("state dir that is a file: exit %d, want 10 naming it: %s", code, out)
	}
}

// TestNetworkOutage: the link to the controller goes down without a word
// (no RST, no FIN). The session notices within a request timeout, keeps
// trying, and is back soon after the link returns.
func TestNetworkOutage(t *testing.T) {
	testenv.RequireRoot(t, "curl")
	tp := testenv.NewTopology(t)
	nodeHost, acHost := tp.Host("node"), tp.Host("ac")
	tp.Link(nodeHost, "eth0", acHost, "eth0")
	acHost.Addr("eth0", "10.0.0.1/24")
	nodeHost.Addr("eth0", "10.0.0.2/24")
	ac := testenv.StartController(t, acHost, testenv.ControllerOptions{Names: []string{"10.0.0.1"}, Listen: []string{"0.0.0.0:8443"}})
	n := newNode(t, ac, nodeHost, nodeHost.MAC("eth0"))
	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)

	// Drop everything on the controller's side: packets vanish.
	acHost.MustRun("ip", "link", "set", "eth0", "down")
	down := time.Now()
	st := n.waitState(t, "disconnected", 30*time.Second, func(s state.ACSession) bool { return !s.Connected })
	t.Logf("loss noticed after %v: %s", time.Since(down).Round(time.Second), st.LastError)
	acHost.MustRun("ip", "link", "set", "eth0", "up")
	up := time.Now()
	n.waitState(t, "reconnected", 45*time.Second, connected)
	t.Logf("back %v after the link", time.Since(up).Round(time.Second))
	if v := runJob(t, ac, n.NodeID, "ping", "", 20*time.Second); v.State != acapi.JobOK {
		t.Fatalf("ping after the outage: %+v", v)
	}
}

// TestSSHHostCertificate: the session has the node's SSH host key signed by
// the controller, and the OpenSSH client then accepts g8-sshd with nothing
// but the line `g8-ac ssh-ca` prints in known_hosts (issue 18.5).
func TestSSHHostCertificate(t *testing.T) {
	testenv.RequireRoot(t, "ssh", "ssh-keygen")
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, ac, nil, "52:54:00:5e:00:31")
	keys := testenv.NewSSHKeys(t)
	// The ssh dir of the unlocked config, as enrolment leaves it.
	copyDir(t, keys.SSHDir, filepath.Join(n.ConfigRoot, "ssh"))
	keys.SSHDir = filepath.Join(n.ConfigRoot, "ssh")
	n.start(t)
	certFile := filepath.Join(keys.SSHDir, "ssh_host_ed25519_key-cert.pub")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(certFile); err == nil && len(b) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no host certificate after 30s:\n%s", n.Proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.Proc.WaitOutput(t, "SSH host certificate renewed", 10*time.Second)
	if !strings.Contains(n.Proc.Output(), "principals="+n.NodeID+",127.0.0.1") {
		t.Errorf("principals not the node id and its address:\n%s", n.Proc.Output())
	}

	sshdState := t.TempDir()
	testenv.StartLocal(t, testenv.Bin(t, "g8-sshd"), "--ssh-dir", keys.SSHDir, "--listen", "127.0.0.1:0", "--state-dir", sshdState, "--shell", "/bin/sh")
	var st state.SSHD
	deadline = time.Now().Add(20 * time.Second)
	for state.Read(sshdState, &st) != nil || len(st.Listen) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("g8-sshd did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	line := strings.TrimSpace(ac.CLI(t, "ssh-ca"))
	if !strings.HasPrefix(line, "@cert-authority * ssh-ed25519 ") {
		t.Fatalf("g8-ac ssh-ca: %q", line)
	}
	if err := os.WriteFile(keys.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := keys.SSH(st.Listen[0], "", "echo trusted-by-ca").CombinedOutput()
	if err != nil || string(out) != "trusted-by-ca\n" {
		t.Fatalf("ssh with only the controller's CA in known_hosts: %v: %s", err, out)
	}

	// A restarted session does not ask again while the certificate is
	// fresh.
	before, _ := os.ReadFile(certFile)
	n.Proc.Stop()
	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)
	time.Sleep(500 * time.Millisecond)
	if after, _ := os.ReadFile(certFile); string(after) != string(before) || strings.Contains(n.Proc.Output(), "SSH host certificate renewed") {
		t.Error("a fresh host certificate was replaced at the next session start")
	}
}
