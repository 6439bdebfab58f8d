package acsession

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/state"
)

// Each phase reads as g8-status's line for it: its state, what it decided,
// why it is not ready, or the error that makes its file unreadable, so the
// controller sees it. (Without systemd, as here, from the file alone; the
// e2e tests check the unit states on a booted node.)
func TestPhaseSummaries(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UTC()
	if err := state.Write(dir, &state.Net{Interface: "eth1", Method: "dhcp", Address: "10.0.0.5/24", Controller: "https://ac", ReadyAt: now, ControllerOK: true}); err != nil {
		t.Fatal(err)
	}
	if err := state.Write(dir, &state.FS{Sandboxes: []state.Sandbox{{Name: "web", State: "mounted"}, {Name: "db", State: "failed", Error: "flist not found"}}}); err != nil {
		t.Fatal(err)
	}
	if err := state.Write(dir, &state.ACSession{Controller: "https://ac", LastError: "connection refused", NextAttempt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sshd.json"), []byte("{broken"), 0o640); err != nil {
		t.Fatal(err)
	}
	views := readPhases(dir)
	got := phaseSummaries(context.Background(), nil, dir)
	want := map[string]string{
		"net":       "ready: eth1 10.0.0.5/24 via dhcp, controller https://ac",
		"fs":        "degraded: 1 sandboxes mounted: web; failed: db (flist not found)",
		"acsession": "waiting: not connected to https://ac: connection refused; next try in 1m0s",
	}
	for phase, w := range want {
		if got[phase] != w {
			t.Errorf("%s: %q, want %q", phase, got[phase], w)
		}
	}
	if !strings.HasPrefix(got["unlock"], "not-started: has not run") {
		t.Errorf("unlock that has not run: %q", got["unlock"])
	}
	if !strings.HasPrefix(got["sshd"], "unknown: ") || !strings.Contains(got["sshd"], "sshd.json") {
		t.Errorf("broken sshd.json: %q", got["sshd"])
	}
	for _, v := range views {
		if v.Phase == "net" && !v.ReadyAt.Equal(now) {
			t.Errorf("net ready at %v, want %v", v.ReadyAt, now)
		}
	}
}

func TestHostSystemReportsThisMachine(t *testing.T) {
	var hb acapi.Heartbeat
	h := &HostSystem{}
	defer h.Close()
	h.Status(context.Background(), &hb)
	if hb.BootID == "" || hb.Uptime <= 0 || hb.MemTotal == 0 || hb.DiskTotal == 0 {
		t.Fatalf("heartbeat: %+v", hb)
	}
	// Without a system bus (as here, PID 1 is not systemd) units stay
	// empty and the reason is kept.
	if _, err := os.Stat("/run/systemd/system"); err != nil && (hb.Units != nil || h.BusError() == nil) {
		t.Fatalf("no systemd: units %v, bus error %v", hb.Units, h.BusError())
	}
}
