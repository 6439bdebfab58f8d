package chain

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/state"
)

func phase(t *testing.T, name string) Phase {
	t.Helper()
	p, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDescribeSaysWhatEachPhaseDecided(t *testing.T) {
	cases := []struct {
		f    state.File
		want string
	}{
		{&state.Net{Interface: "eth1", MAC: "02:00:00:00:00:01", Address: "10.254.254.17/24", Method: "fallback", Controller: "https://10.254.254.254:8443"},
			"eth1 (02:00:00:00:00:01) 10.254.254.17/24 via fallback, controller https://10.254.254.254:8443"},
		{&state.Net{Interface: "eth0", Address: "10.0.0.5/24", Method: "dhcp", Controller: "https://ac:8443"},
			"eth0 10.0.0.5/24 via dhcp, controller https://ac:8443"},
		{&state.Unlock{NodeID: "n1", Mountpoint: "/mnt/etc", Backend: "encfs", Enrolled: true}, "node n1, /mnt/etc mounted (encfs), enrolled this boot"},
		{&state.Unlock{NodeID: "n1", Mountpoint: "/mnt/etc", Backend: "gocryptfs"}, "node n1, /mnt/etc mounted (gocryptfs)"},
		{&state.ACSession{Controller: "https://ac", NodeID: "n1", Connected: true}, "connected to https://ac as node n1"},
		{&state.ACSession{Controller: "https://ac", LastError: "connection refused"}, "not connected to https://ac: connection refused"},
		{&state.ACSession{Controller: "https://ac2", Controllers: []string{"https://ac2", "https://ac1"}, Failovers: 1, NodeID: "n1", Connected: true},
			"connected to https://ac2 as node n1 (2 controllers listed, 1 failovers)"},
		{&state.SSHD{Listen: []string{":22"}, AuthorizedKeys: 2, HostKeys: []string{"SHA256:abc"}}, "listening on :22, 2 authorized keys, host key SHA256:abc"},
		{&state.FS{Sandboxes: []state.Sandbox{{Name: "tools", State: "mounted"}, {Name: "js", State: "mounted"}, {Name: "ovs", State: "failed", Error: "hash mismatch"}}},
			"2 sandboxes mounted: tools, js; failed: ovs (hash mismatch)"},
		{&state.FS{}, "0 sandboxes mounted"},
	}
	for _, c := range cases {
		if got := Describe(c.f); got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.f.PhaseName(), got, c.want)
		}
	}
}

func TestLinesAreSafeForAgetty(t *testing.T) {
	got := Line(phase(t, "net"), "ready", "evil \\e[31m\x1b]0;x\x07 "+strings.Repeat("x", 300))
	if strings.ContainsAny(got, "\\\x1b\x07\n") {
		t.Errorf("escape or control character kept: %q", got)
	}
	if len(got) > 240 {
		t.Errorf("line of %d bytes", len(got))
	}
}

func TestStopAndFailedLinesNameTheJournal(t *testing.T) {
	p := phase(t, "g8-unlock.service")
	if got := StopLine(p, "success", "exited", "0"); got != "g8os unlock    stopped" {
		t.Errorf("clean stop: %q", got)
	}
	if got, want := StopLine(p, "exit-code", "exited", "11"), "g8os unlock    FAILED   (exit-code, exited 11): journalctl -b -u g8-unlock.service"; got != want {
		t.Errorf("failure:\n got %q\nwant %q", got, want)
	}
	u := &Unit{Result: "exit-code", ExecMainStatus: 11, StatusText: "denied by controller https://ac", ActiveState: "failed"}
	if got, want := FailedLine(p, u), "g8os unlock    FAILED   (exit-code, status 11) denied by controller https://ac; journalctl -b -u g8-unlock.service"; got != want {
		t.Errorf("failed:\n got %q\nwant %q", got, want)
	}
	dep := &Unit{Result: "success", ActiveState: "inactive"}
	if got, want := FailedLine(phase(t, "fs"), dep), "g8os fs        FAILED   (not started: a unit it requires failed) systemctl --failed"; got != want {
		t.Errorf("dependency:\n got %q\nwant %q", got, want)
	}
}

func TestLookupRejectsUnknownPhase(t *testing.T) {
	if _, err := Lookup("g8-foo"); err == nil || !strings.Contains(err.Error(), "net, unlock") {
		t.Errorf("got %v", err)
	}
}

func TestIssueEventsWriteOneLinePerPhase(t *testing.T) {
	stateDir, issueDir := t.TempDir(), filepath.Join(t.TempDir(), "issue.d")
	o := Options{StateDir: stateDir, IssueDir: issueDir}
	read := func() string {
		data, err := os.ReadFile(filepath.Join(issueDir, "g8-netup.issue"))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	o.Event = "start"
	if err := Issue(o, []string{"net"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !strings.Contains(got, "starting") || !strings.HasSuffix(got, "\n") {
		t.Errorf("start: %q", got)
	}
	if err := state.Write(stateDir, &state.Net{Interface: "eth0", Address: "10.0.0.5/24", Method: "static", Controller: "https://ac"}); err != nil {
		t.Fatal(err)
	}
	o.Event = "ready"
	if err := Issue(o, []string{"net"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "g8os net       ready    eth0 10.0.0.5/24 via static, controller https://ac\n" {
		t.Errorf("ready: %q", got)
	}
	t.Setenv("SERVICE_RESULT", "exit-code")
	t.Setenv("EXIT_CODE", "exited")
	t.Setenv("EXIT_STATUS", "3")
	o.Event = "stop"
	if err := Issue(o, []string{"net"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !strings.Contains(got, "FAILED") || !strings.Contains(got, "exited 3") {
		t.Errorf("stop: %q", got)
	}
	entries, _ := os.ReadDir(issueDir)
	if len(entries) != 1 {
		t.Errorf("issue dir holds %d files, want 1 (no temp files left)", len(entries))
	}
	o.Event = "bogus"
	if err := Issue(o, []string{"net"}); err == nil {
		t.Error("bogus event accepted")
	}
}

func TestTimelineOrdersByReadyAndShowsWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := state.Write(dir, &state.Net{Interface: "eth0", Address: "10.0.0.5/24", Method: "dhcp", Controller: "https://ac",
		StartedAt: t0, ReadyAt: t0.Add(400 * time.Millisecond), Trace: []string{"round 1: net.toml as written: no controller answered"}}); err != nil {
		t.Fatal(err)
	}
	if err := state.Write(dir, &state.Unlock{NodeID: "n1", Mountpoint: "/mnt/etc", Backend: "encfs",
		StartedAt: t0.Add(410 * time.Millisecond), ReadyAt: t0.Add(1200 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	out := FormatTimeline(Timeline(dir))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 {
		t.Fatalf("want header + 5 phases + 1 trace line:\n%s", out)
	}
	for i, want := range []string{"net        +0.000s   +0.400s   eth0", strings.Repeat(" ", 31) + "round 1: net.toml as written", "unlock     +0.410s   +1.200s   node n1", "acsession  -         -         not ready: "} {
		if !strings.HasPrefix(lines[i+1], want) {
			t.Errorf("line %d = %q, want prefix %q", i+1, lines[i+1], want)
		}
	}
	var b bytes.Buffer
	units := unitTable{"g8-netup.service": {ActiveState: "active"}, "g8-unlock.service": {ActiveState: "active"},
		"g8-acsession.service": {ActiveState: "activating", SubState: "start", StatusText: "waiting for the node identity"}}
	err := Show(Options{StateDir: dir, Stdout: &b, Units: units})
	var ec cli.ExitCode
	if !errors.As(err, &ec) || ec.ExitCode() != ExitNotReady {
		t.Errorf("show of a chain half up: %v, want exit %d", err, ExitNotReady)
	}
	for _, want := range []string{"g8os net       ready    eth0 10.0.0.5/24 via dhcp", "g8os acsession starting waiting for the node identity",
		"g8os fs        not-started unit inactive"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, b.String())
		}
	}
}

// unitTable stands in for systemd in the output tests; Combine's decisions
// are table-tested on their own and the e2e tests ask the real systemd.
type unitTable map[string]Unit

func (u unitTable) Unit(_ context.Context, name string) (*Unit, error) {
	v, ok := u[name]
	if !ok {
		v = Unit{ActiveState: "inactive", SubState: "dead"}
	}
	return &v, nil
}

func TestCombine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	net := &state.Net{Interface: "eth0", Address: "10.0.0.5/24", Method: "dhcp", Controller: "https://ac", ControllerOK: true}
	acOK := &state.ACSession{Controller: "https://ac", NodeID: "n1", Connected: true}
	acLost := &state.ACSession{Controller: "https://ac", NodeID: "n1", LastError: "heartbeat: connection refused",
		Status: "controller https://ac unreachable; next attempt in 4s", NextAttempt: t0.Add(4 * time.Second)}
	fsBad := &state.FS{Sandboxes: []state.Sandbox{{Name: "web", State: "mounted"}, {Name: "db", State: "failed", Error: "flist not found"}}}
	noFile := state.ErrNotRun
	for _, c := range []struct {
		name  string
		phase string
		u     *Unit
		f     state.File
		ferr  error
		state string
		want  PhaseStatus // only the fields set are compared
	}{
		{"ready", "net", &Unit{ActiveState: "active", SubState: "running"}, net, nil, StateReady, PhaseStatus{Detail: "eth0 10.0.0.5/24 via dhcp, controller https://ac"}},
		{"unit failed although its state file reads", "acsession", &Unit{ActiveState: "failed", Result: "exit-code", ExecMainStatus: 10, StatusText: "queue unusable"},
			acOK, nil, StateFailed, PhaseStatus{LastError: "queue unusable", Detail: "unit failed (exit-code, status 10): journalctl -b -u g8-acsession.service"}},
		{"active but not connected", "acsession", &Unit{ActiveState: "active"}, acLost, nil, StateWaiting,
			PhaseStatus{Detail: "controller https://ac unreachable; next attempt in 4s", LastError: "heartbeat: connection refused", NextRetry: t0.Add(4 * time.Second)}},
		{"controller checks failing", "net", &Unit{ActiveState: "active"}, &state.Net{Controller: "https://ac", CheckFailures: 2, LastError: "timeout"}, nil, StateWaiting, PhaseStatus{LastError: "timeout"}},
		{"starting: STATUS= says what it waits for", "unlock", &Unit{ActiveState: "activating", SubState: "start", StatusText: "waiting for approval of node 52:54:00:00:00:01"},
			&state.Unlock{}, noFile, StateStarting, PhaseStatus{Detail: "waiting for approval of node 52:54:00:00:00:01"}},
		{"restarting: last error and next try", "fs", &Unit{ActiveState: "activating", SubState: "auto-restart", Result: "exit-code", ExecMainStatus: 1,
			NRestarts: 2, StateChange: t0, RestartDelay: 5 * time.Second}, &state.FS{}, noFile, StateRestarting,
			PhaseStatus{Detail: "exited (exit-code, status 1), restart 3", LastError: "exit-code, status 1", NextRetry: t0.Add(5 * time.Second), Restarts: 2}},
		{"a sandbox failed", "fs", &Unit{ActiveState: "active"}, fsBad, nil, StateDegraded, PhaseStatus{LastError: "db (flist not found)"}},
		{"queued behind a failed phase", "sshd", &Unit{ActiveState: "inactive", SubState: "dead"}, &state.SSHD{}, noFile, StateNotStarted, PhaseStatus{Detail: "unit inactive"}},
		{"active without a state file", "sshd", &Unit{ActiveState: "active"}, &state.SSHD{}, noFile, StateUnknown, PhaseStatus{}},
		{"no systemd: the file alone", "net", nil, net, nil, StateReady, PhaseStatus{}},
		{"no systemd, no file", "net", nil, &state.Net{}, noFile, StateNotStarted, PhaseStatus{}},
		{"no systemd, a broken file", "net", nil, &state.Net{}, errors.New("net.json: unexpected end of JSON input"), StateUnknown, PhaseStatus{}},
	} {
		got := Combine(phase(t, c.phase), c.u, c.f, c.ferr)
		w := c.want
		if got.State != c.state || (w.Detail != "" && got.Detail != w.Detail) || (w.LastError != "" && got.LastError != w.LastError) ||
			!got.NextRetry.Equal(w.NextRetry) || got.Restarts != w.Restarts {
			t.Errorf("%s: got %+v\nwant state %s and %+v", c.name, got, c.state, w)
		}
	}
	if code := ChainExit([]PhaseStatus{{State: StateReady}, {State: StateReady}}); code != 0 {
		t.Errorf("all ready: exit %d", code)
	}
	if code := ChainExit([]PhaseStatus{{State: StateReady}, {State: StateStarting}}); code != ExitNotReady {
		t.Errorf("one starting: exit %d", code)
	}
	if code := ChainExit([]PhaseStatus{{State: StateNotStarted}, {State: StateFailed}}); code != ExitFailed {
		t.Errorf("one failed: exit %d", code)
	}
}
