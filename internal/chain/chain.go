// Package chain describes the boot chain as a whole for operators: one
// console line per phase (shown at the login prompt through /run/issue.d),
// the report of a failed phase, and the boot timeline. It reads the phases'
// state files and systemd's view of their units; it never changes either.
package chain

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Phase is one step of the chain and the unit that runs it.
type Phase struct {
	Name  string // state file and console name: net, unlock, ...
	Unit  string // systemd unit
	Issue string // file in the issue directory (g8-netup writes its live search status into its own)
	New   func() state.File
}

// Phases in boot order.
var Phases = []Phase{
	{"net", "g8-netup.service", "g8-netup.issue", func() state.File { return &state.Net{} }},
	{"unlock", "g8-unlock.service", "g8-unlock.issue", func() state.File { return &state.Unlock{} }},
	{"acsession", "g8-acsession.service", "g8-acsession.issue", func() state.File { return &state.ACSession{} }},
	{"sshd", "g8-sshd.service", "g8-sshd.issue", func() state.File { return &state.SSHD{} }},
	{"fs", "g8-fs.service", "g8-fs.issue", func() state.File { return &state.FS{} }},
}

// Lookup finds a phase by its name or its unit name.
func Lookup(name string) (Phase, error) {
	for _, p := range Phases {
		if name == p.Name || name == p.Unit || name+".service" == p.Unit {
			return p, nil
		}
	}
	names := make([]string, len(Phases))
	for i, p := range Phases {
		names[i] = p.Name
	}
	return Phase{}, fmt.Errorf("unknown phase %q (one of %s)", name, strings.Join(names, ", "))
}

// Line is the one console line for a phase in a given state.
func Line(p Phase, status, detail string) string { return sd.ConsoleLine(p.Name, status, detail) }

// Describe says in a few words what a phase decided, from its state file.
func Describe(f state.File) string {
	switch s := f.(type) {
	case *state.Net:
		d := fmt.Sprintf("%s %s via %s, controller %s", s.Interface, s.Address, s.Method, s.Controller)
		if s.MAC != "" {
			d = fmt.Sprintf("%s (%s) %s", s.Interface, s.MAC, d[len(s.Interface)+1:])
		}
		return d
	case *state.Unlock:
		d := fmt.Sprintf("node %s, %s mounted (%s)", s.NodeID, s.Mountpoint, s.Backend)
		if s.Enrolled {
			d += ", enrolled this boot"
		}
		return d
	case *state.ACSession:
		d := "not connected to " + s.Controller
		if s.Connected {
			d = fmt.Sprintf("connected to %s as node %s", s.Controller, s.NodeID)
		}
		if len(s.Controllers) > 1 {
			d += fmt.Sprintf(" (%d controllers listed, %d failovers)", len(s.Controllers), s.Failovers)
		}
		if !s.Connected && s.LastError != "" {
			d += ": " + s.LastError
		}
		return d
	case *state.SSHD:
		d := fmt.Sprintf("listening on %s, %d authorized keys", strings.Join(s.Listen, " "), s.AuthorizedKeys)
		if len(s.HostKeys) > 0 {
			d += ", host key " + s.HostKeys[0]
		}
		return d
	case *state.FS:
		var ok, bad []string
		for _, sb := range s.Sandboxes {
			if sb.State == "mounted" {
				ok = append(ok, sb.Name)
			} else if sb.State == "failed" {
				bad = append(bad, fmt.Sprintf("%s (%s)", sb.Name, sb.Error))
			}
		}
		d := fmt.Sprintf("%d sandboxes mounted", len(ok))
		if len(ok) > 0 {
			d += ": " + strings.Join(ok, ", ")
		}
		if len(bad) > 0 {
			d += "; failed: " + strings.Join(bad, ", ")
		}
		return d
	}
	return ""
}

// times returns when a phase started and became ready (zero if unknown).
func times(f state.File) (started, ready time.Time) {
	switch s := f.(type) {
	case *state.Net:
		return s.StartedAt, s.ReadyAt
	case *state.Unlock:
		return s.StartedAt, s.ReadyAt
	case *state.ACSession:
		return s.StartedAt, s.ReadyAt
	case *state.SSHD:
		return s.StartedAt, s.ReadyAt
	case *state.FS:
		return s.StartedAt, s.ReadyAt
	}
	return time.Time{}, time.Time{}
}

// StopLine is the console line after a unit's main process ended, from the
// variables systemd passes to ExecStopPost= (SERVICE_RESULT, EXIT_CODE,
// EXIT_STATUS; see systemd.exec(5)).
func StopLine(p Phase, result, code, status string) string {
	if result == "" || result == "success" {
		return Line(p, "stopped", "")
	}
	how := result
	if code != "" {
		how = fmt.Sprintf("%s, %s %s", result, code, status)
	}
	return Line(p, "FAILED", fmt.Sprintf("(%s): journalctl -b -u %s", how, p.Unit))
}

// FailedLine is the report of a phase whose unit entered the failed state.
func FailedLine(p Phase, u *Unit) string {
	if u.ActiveState != "failed" {
		// OnFailure= also fires when the start job fails because a unit
		// this one requires failed; the unit itself never ran.
		return Line(p, "FAILED", "(not started: a unit it requires failed) systemctl --failed")
	}
	how := u.Result
	if u.ExecMainStatus != 0 {
		how += fmt.Sprintf(", status %d", u.ExecMainStatus)
	}
	d := fmt.Sprintf("(%s)", how)
	if st := u.StatusText; st != "" {
		d += " " + st + ";"
	}
	return Line(p, "FAILED", d+" journalctl -b -u "+p.Unit)
}

// Step is one row of the boot timeline.
type Step struct {
	Phase   Phase
	Started time.Time
	Ready   time.Time
	Detail  string
	Trace   []string // what the phase tried on the way (g8-netup's search)
	Err     error    // the state file could not be read (not run yet, ...)
}

// Timeline reads every phase's state file in dir.
func Timeline(dir string) []Step {
	var steps []Step
	for _, p := range Phases {
		f := p.New()
		s := Step{Phase: p}
		if err := state.Read(dir, f); err != nil {
			s.Err = err
		} else {
			s.Started, s.Ready = times(f)
			s.Detail = Describe(f)
			if n, ok := f.(*state.Net); ok {
				s.Trace = n.Trace
			}
		}
		steps = append(steps, s)
	}
	return steps
}

// FormatTimeline renders steps as a table with times relative to the first
// phase's start.
func FormatTimeline(steps []Step) string {
	var t0 time.Time
	for _, s := range steps {
		if !s.Started.IsZero() && (t0.IsZero() || s.Started.Before(t0)) {
			t0 = s.Started
		}
	}
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmt.Sprintf("+%.3fs", t.Sub(t0).Seconds())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-9s %-9s %s\n", "phase", "started", "ready", "decision")
	order := append([]Step(nil), steps...)
	sort.SliceStable(order, func(i, j int) bool {
		a, c := order[i].Ready, order[j].Ready
		return !a.IsZero() && (c.IsZero() || a.Before(c))
	})
	for _, s := range order {
		detail := s.Detail
		if s.Err != nil {
			detail = "not ready: " + s.Err.Error()
		}
		fmt.Fprintf(&b, "%-10s %-9s %-9s %s\n", s.Phase.Name, rel(s.Started), rel(s.Ready), detail)
		for _, tr := range s.Trace {
			fmt.Fprintf(&b, "%-30s %s\n", "", sd.ConsoleSafe(tr))
		}
	}
	return b.String()
}
