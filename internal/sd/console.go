package sd

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/g8os/boot/internal/atomicfile"
)

// A unit can ask its phase to mirror every STATUS= line into one file of
// the login prompt (agetty's issue.d), so an operator at the console sees
// what a phase waits for ("denied by ...", "no session yet: ...") without
// logging in. The units set both variables (docs/units.md); a phase needs
// no code for it, and outside such a unit nothing is written.
const (
	ConsoleFileEnv  = "G8_CONSOLE_FILE"  // e.g. /run/issue.d/g8-unlock.issue
	ConsolePhaseEnv = "G8_CONSOLE_PHASE" // e.g. unlock
)

// ConsoleLine is the one-line format of the chain's console lines:
// "g8os <phase> <state> <detail>", printable and free of agetty's
// backslash escapes (details come from the network and config files).
func ConsoleLine(phase, state, detail string) string {
	return ConsoleSafe(strings.TrimRight(fmt.Sprintf("g8os %-9s %-8s %s", phase, state, detail), " "))
}

// ConsoleSafe makes text fit for one console line: control characters
// become spaces, backslashes (agetty escapes) slashes, and it is cut at
// 240 bytes.
func ConsoleSafe(l string) string {
	var b strings.Builder
	for _, r := range l {
		switch {
		case r == '\\':
			b.WriteRune('/')
		case r < 0x20 || r == 0x7f:
			b.WriteRune(' ')
		default:
			b.WriteRune(r)
		}
	}
	out := b.String()
	if len(out) > 240 {
		out = out[:237] + "..."
	}
	return out
}

var console struct{ file, phase string }

func init() { loadConsole() }

// loadConsole takes the variables out of the environment, so that the
// phase's children (encfs, jobs, login shells) do not inherit them and
// write the phase's line.
func loadConsole() {
	console.file, console.phase = os.Getenv(ConsoleFileEnv), os.Getenv(ConsolePhaseEnv)
	os.Unsetenv(ConsoleFileEnv)
	os.Unsetenv(ConsolePhaseEnv)
}

// mirrorStatus writes the status to the console file if the unit asked for
// one. Errors are dropped like lost notifications: the console line must
// never stop a phase.
func mirrorStatus(ready bool, status string) {
	path, phase := console.file, console.phase
	if path == "" || phase == "" {
		return
	}
	state := "waiting"
	if ready {
		state = "ready"
	}
	if atomicfile.WriteUnsynced(path, []byte(ConsoleLine(phase, state, status)+"\n"), 0o644) == nil {
		redrawPrompt()
	}
}

// AgettyReload is the file every agetty watches (inotify, from its start)
// for `agetty --reload`; g8os.tmpfiles creates it before the gettys start.
// A variable only so that tests can point it elsewhere.
var AgettyReload = "/run/agetty.reload"

// redrawPrompt does what `agetty --reload` does, touching AgettyReload:
// every agetty still waiting at its login prompt prints its issue again,
// so a console shows the phases' lines as they are now, not as they were
// when the prompt was first drawn. A missing file (no getty here) is no
// error.
func redrawPrompt() {
	now := time.Now()
	_ = os.Chtimes(AgettyReload, now, now)
}
