package chain

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/state"
)

// WriteIssue replaces a phase's line in the issue directory atomically, so
// agetty never shows half a line.
func WriteIssue(dir string, p Phase, line string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	if err := atomicfile.WriteUnsynced(filepath.Join(dir, p.Issue), []byte(line+"\n"), 0o644); err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	return nil
}

// ReadyLine is the console line of a phase that reported READY (its unit
// is active: ExecStartPost= runs then), from its state file in stateDir
// through Combine, so it says what g8-status says.
func ReadyLine(stateDir string, p Phase) string {
	f := p.New()
	s := Combine(p, &Unit{ActiveState: "active", SubState: "running"}, f, state.Read(stateDir, f))
	return Line(p, s.State, s.Summary(time.Now()))
}

// StartLine is the console line of a phase that is starting.
func StartLine(p Phase) string {
	return Line(p, "starting", "(systemctl status "+p.Unit+" says what it waits for)")
}
