package chain

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
)

// Options are g8-status's flags.
type Options struct {
	StateDir string
	IssueDir string
	Event    string
	Stdout   io.Writer // os.Stdout when nil
}

func (o Options) out() io.Writer {
	if o.Stdout != nil {
		return o.Stdout
	}
	return os.Stdout
}

// Show prints one line per phase from its state file.
func Show(o Options) error {
	for _, s := range Timeline(o.StateDir) {
		if s.Err != nil {
			fmt.Fprintln(o.out(), Line(s.Phase, "-", "not ready ("+s.Phase.Unit+")"))
			continue
		}
		fmt.Fprintln(o.out(), Line(s.Phase, "ready", s.Detail))
	}
	return nil
}

// PrintTimeline prints the boot timeline.
func PrintTimeline(o Options) error {
	_, err := io.WriteString(o.out(), FormatTimeline(Timeline(o.StateDir)))
	return err
}

// Issue writes a phase's login prompt line for a unit event.
func Issue(o Options, args []string) error {
	if len(args) != 1 {
		return cli.Usagef("issue: want one PHASE, got %d arguments", len(args))
	}
	p, err := Lookup(args[0])
	if err != nil {
		return cli.Usagef("issue: %v", err)
	}
	var line string
	switch o.Event {
	case "start":
		line = StartLine(p)
	case "ready":
		line = ReadyLine(o.StateDir, p)
	case "stop":
		line = StopLine(p, os.Getenv("SERVICE_RESULT"), os.Getenv("EXIT_CODE"), os.Getenv("EXIT_STATUS"))
	default:
		return cli.Usagef("issue: --event %q: want start, ready or stop", o.Event)
	}
	return WriteIssue(o.IssueDir, p, line)
}

// Failed reports a failed unit: on stdout (the unit sends it to the journal
// and the console), as a journal entry with a fixed MESSAGE_ID, and as the
// phase's login prompt line.
func Failed(o Options, args []string) error {
	if len(args) != 1 {
		return cli.Usagef("failed: want one UNIT, got %d arguments", len(args))
	}
	p, err := Lookup(args[0])
	if err != nil {
		return cli.Usagef("failed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := ShowUnit(ctx, p.Unit, "Result", "ExecMainStatus", "StatusText", "ActiveState")
	if err != nil {
		// Still say which phase failed; the journal has the rest.
		u = UnitState{"Result": "unknown"}
	}
	line := FailedLine(p, u)
	fmt.Fprintln(o.out(), line)
	log := sd.NewLogger("status", false)
	log.Error("boot phase failed", sd.ChainPhaseFailed.Attr(), "unit", p.Unit,
		"result", u["Result"], "status", u["ExecMainStatus"], "status_text", u["StatusText"])
	return WriteIssue(o.IssueDir, p, line)
}
