package sshd

import (
	"errors"
	"os"
	"slices"
	"testing"
)

func TestEndSessionsOnTerm(t *testing.T) {
	for _, tc := range []struct {
		mode StopSessions
		job  string
		err  error
		end  bool
	}{
		{StopSessionsAuto, "stop", nil, true},
		{StopSessionsAuto, "restart", nil, false},
		{StopSessionsAuto, "try-restart", nil, false},
		{StopSessionsAuto, "reload-or-restart", nil, false},
		{StopSessionsAuto, "", nil, false},                      // kill by hand, upgrade script, kill -TERM
		{StopSessionsAuto, "stop", errors.New("no bus"), false}, // cannot tell: keep the operators' sessions
		{StopSessionsAuto, "start", nil, false},                 // unexpected: keep
		{StopSessionsAlways, "restart", nil, true},
		{StopSessionsAlways, "", errors.New("no bus"), true},
		{StopSessionsNever, "stop", nil, false},
	} {
		end, why := endSessionsOnTerm(tc.mode, tc.job, tc.err)
		if end != tc.end || why == "" {
			t.Errorf("%s, job %q, err %v: end %v (%q), want %v", tc.mode, tc.job, tc.err, end, why, tc.end)
		}
	}
	for _, v := range []string{"auto", "always", "never"} {
		if m, err := ParseStopSessions(v); err != nil || string(m) != v {
			t.Errorf("%s: %v", v, err)
		}
	}
	if _, err := ParseStopSessions("sometimes"); err == nil {
		t.Error("bad --stop-sessions accepted")
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"PATH=/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=1", "LISTEN_FDS=1", "LANG=C"})
	if len(got) != 2 || got[0] != "PATH=/bin" || got[1] != "LANG=C" {
		t.Errorf("childEnv: %q", got)
	}
}

// A stop ends the connections of earlier listeners by finding them in the
// unit's cgroup. The unified (v2) hierarchy is not always at
// /sys/fs/cgroup: on a hybrid system (v1 controllers there, as on the
// machines the e2e tests boot under) it is /sys/fs/cgroup/unified, where
// the stop used to find nothing and leave every session running.
func TestUnitProcsFindsThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip("no /proc/self/cgroup")
	}
	pids, err := unitProcs()
	if err != nil {
		t.Fatalf("unitProcs: %v", err)
	}
	if !slices.Contains(pids, os.Getpid()) {
		t.Fatalf("unitProcs() = %v, does not hold this process %d", pids, os.Getpid())
	}
}
