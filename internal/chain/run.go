package chain

import (
	"context"
	"encoding/json"
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
	JSON     bool
	Units    Units     // systemd; DialBus when nil
	Stdout   io.Writer // os.Stdout when nil
}

func (o Options) out() io.Writer {
	if o.Stdout != nil {
		return o.Stdout
	}
	return os.Stdout
}

// Show prints each phase's combined state (its unit from systemd, its
// state file) as console lines or JSON, and fails unless the chain is
// ready (ChainExit).
func Show(o Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	units := o.Units
	var err error
	if units == nil {
		var bus *Bus
		if bus, err = DialBus(ctx); err == nil {
			defer bus.Close()
			units = bus
		}
	}
	ps := Collect(ctx, units, o.StateDir)
	if o.JSON {
		enc := json.NewEncoder(o.out())
		enc.SetIndent("", "  ")
		out := struct {
			Ready  bool          `json:"ready"`
			Phases []PhaseStatus `json:"phases"`
			Error  string        `json:"systemd_error,omitempty"`
		}{Ready: ChainExit(ps) == 0, Phases: ps}
		if err != nil {
			out.Error = err.Error()
		}
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		now := time.Now()
		for _, s := range ps {
			fmt.Fprintln(o.out(), Line(phaseOf(s), s.State, s.Summary(now)))
		}
		if err != nil {
			fmt.Fprintf(o.out(), "(unit states unknown: %v)\n", err)
		}
	}
	if code := ChainExit(ps); code != 0 {
		return cli.Exit(code, errNotReady)
	}
	return nil
}

func phaseOf(s PhaseStatus) Phase {
	p, _ := Lookup(s.Phase)
	return p
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
	u := &Unit{Result: "unknown"} // still say which phase failed; the journal has the rest
	if bus, err := DialBus(ctx); err == nil {
		if got, err := bus.Unit(ctx, p.Unit); err == nil {
			u = got
		}
		bus.Close()
	}
	line := FailedLine(p, u)
	fmt.Fprintln(o.out(), line)
	log := sd.NewLogger("status", false)
	log.Error("boot phase failed", sd.ChainPhaseFailed.Attr(), "unit", p.Unit,
		"result", u.Result, "status", u.ExecMainStatus, "status_text", u.StatusText)
	return WriteIssue(o.IssueDir, p, line)
}
