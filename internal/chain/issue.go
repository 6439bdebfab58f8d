package chain

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

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

// ReadyLine is the console line of a phase that reported READY, from its
// state file in stateDir.
func ReadyLine(stateDir string, p Phase) string {
	f := p.New()
	if err := state.Read(stateDir, f); err != nil {
		return Line(p, "ready", "(no state file: "+err.Error()+")")
	}
	return Line(p, "ready", Describe(f))
}

// StartLine is the console line of a phase that is starting.
func StartLine(p Phase) string {
	return Line(p, "starting", "(systemctl status "+p.Unit+" says what it waits for)")
}

// ShowUnit asks systemd for a unit's properties.
func ShowUnit(ctx context.Context, unit string, props ...string) (UnitState, error) {
	out, err := exec.CommandContext(ctx, "systemctl", "show", unit, "--property="+strings.Join(props, ",")).Output()
	if err != nil {
		return nil, fmt.Errorf("systemctl show %s: %w", unit, err)
	}
	return parseShow(string(out)), nil
}

func parseShow(out string) UnitState {
	u := UnitState{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			u[k] = v
		}
	}
	return u
}
