package chain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/g8os/boot/internal/state"
)

// States of a phase as g8-status, the console and the heartbeat report
// it. Only StateReady counts towards a ready chain.
const (
	StateReady      = "ready"       // unit active and its state file says the job is done
	StateStarting   = "starting"    // unit starting (before READY=1): STATUS= says what it waits for
	StateWaiting    = "waiting"     // unit active but the phase lost what it had (controller, session)
	StateRestarting = "restarting"  // unit exited and systemd restarts it (Restart=)
	StateDegraded   = "degraded"    // unit active, part of its job failed (a sandbox)
	StateFailed     = "failed"      // unit failed for good: a person must act
	StateNotStarted = "not-started" // unit inactive: queued behind a phase it requires, or disabled
	StateUnknown    = "unknown"     // no systemd to ask and no state file to read
)

// Unit is systemd's view of a phase's unit (org.freedesktop.systemd1.Unit
// and .Service properties).
type Unit struct {
	ActiveState    string    // active | activating | failed | inactive | deactivating | reloading
	SubState       string    // running | start | auto-restart | dead | ...
	Result         string    // success | exit-code | signal | timeout | ...
	ExecMainStatus int       // exit status of the last main process
	StatusText     string    // the phase's last STATUS=
	NRestarts      int       // automatic restarts since the unit was started by hand
	StateChange    time.Time // when ActiveState/SubState last changed
	RestartDelay   time.Duration
}

// PhaseStatus is one phase's combined truth: its unit's state and its
// state file. It is what g8-status prints (and as JSON), what the console
// line says and what the heartbeat sends to the controller.
type PhaseStatus struct {
	Phase       string    `json:"phase"`
	Unit        string    `json:"unit"`
	State       string    `json:"state"` // one of the State* constants
	ActiveState string    `json:"active_state,omitempty"`
	SubState    string    `json:"sub_state,omitempty"`
	Detail      string    `json:"detail"`               // what it decided, or what it waits for
	LastError   string    `json:"last_error,omitempty"` // why it is not ready
	NextRetry   time.Time `json:"next_retry,omitempty"` // when it tries again (when known)
	Restarts    int       `json:"restarts"`
}

// Summary is the status in one line, without the state word: what the
// phase decided or waits for, its last error and next try.
func (s PhaseStatus) Summary(now time.Time) string {
	line := s.Detail
	if s.LastError != "" && !strings.Contains(s.Detail, s.LastError) {
		line += "; last error: " + s.LastError
	}
	if !s.NextRetry.IsZero() {
		line += fmt.Sprintf("; next try in %v", max(s.NextRetry.Sub(now), 0).Round(time.Second))
	}
	return line
}

// Combine decides a phase's state from its unit (nil when systemd cannot
// be asked) and its state file f (ferr when it could not be read). Pure:
// g8-status, the console line and the heartbeat all go through it.
func Combine(p Phase, u *Unit, f state.File, ferr error) PhaseStatus {
	s := PhaseStatus{Phase: p.Name, Unit: p.Unit}
	if u != nil {
		s.ActiveState, s.SubState, s.Restarts = u.ActiveState, u.SubState, u.NRestarts
	}
	ended := func() string {
		how := u.Result
		if u.ExecMainStatus != 0 {
			how += fmt.Sprintf(", status %d", u.ExecMainStatus)
		}
		return how
	}
	switch {
	case u == nil && errors.Is(ferr, state.ErrNotRun):
		s.State, s.Detail = StateNotStarted, "has not run (no state file; no systemd to ask)"
		return s
	case u == nil && ferr != nil:
		s.State, s.Detail = StateUnknown, "state file unreadable ("+ferr.Error()+") and no systemd to ask"
		return s
	case u == nil:
		s.State, s.Detail = fileState(f)
		s.LastError, s.NextRetry = fileRetry(f)
		return s
	case u.ActiveState == "failed":
		s.State, s.Detail = StateFailed, fmt.Sprintf("unit failed (%s): journalctl -b -u %s", ended(), p.Unit)
		s.LastError = u.StatusText
		if s.LastError == "" {
			s.LastError = ended()
		}
		return s
	case u.SubState == "auto-restart":
		s.State, s.Detail = StateRestarting, fmt.Sprintf("exited (%s), restart %d", ended(), u.NRestarts+1)
		s.LastError = u.StatusText
		if s.LastError == "" {
			s.LastError = ended()
		}
		if !u.StateChange.IsZero() {
			s.NextRetry = u.StateChange.Add(u.RestartDelay)
		}
		return s
	case u.ActiveState == "activating":
		s.State, s.Detail = StateStarting, u.StatusText
		if s.Detail == "" {
			s.Detail = "starting (" + u.SubState + ")"
		}
		return s
	case u.ActiveState == "active" || u.ActiveState == "reloading":
		if ferr != nil {
			// READY=1 comes after the state file; its absence is a bug or
			// a removed file, not a phase at work.
			s.State, s.Detail = StateUnknown, "unit active but no state file: "+ferr.Error()
			return s
		}
		s.State, s.Detail = fileState(f)
		s.LastError, s.NextRetry = fileRetry(f)
		return s
	default: // inactive, deactivating
		s.State, s.Detail = StateNotStarted, "unit "+u.ActiveState
		if u.Result != "" && u.Result != "success" {
			s.Detail += " (last run: " + ended() + ")"
		}
		return s
	}
}

// fileState is the state a phase's own file gives it once its unit is up.
func fileState(f state.File) (string, string) {
	d := Describe(f)
	switch s := f.(type) {
	case *state.Net:
		if !s.ControllerOK && s.CheckFailures > 0 {
			return StateWaiting, d
		}
	case *state.ACSession:
		if !s.Connected {
			if s.Status != "" {
				return StateWaiting, s.Status
			}
			return StateWaiting, d
		}
	case *state.FS:
		for _, sb := range s.Sandboxes {
			if sb.State != "mounted" {
				return StateDegraded, d
			}
		}
	}
	return StateReady, d
}

// fileRetry is the last error and next attempt a phase's file records.
func fileRetry(f state.File) (string, time.Time) {
	switch s := f.(type) {
	case *state.Net:
		if !s.ControllerOK {
			return s.LastError, time.Time{}
		}
	case *state.ACSession:
		if !s.Connected {
			return s.LastError, s.NextAttempt
		}
	case *state.FS:
		var errs []string
		for _, sb := range s.Sandboxes {
			if sb.State != "mounted" && sb.Error != "" {
				errs = append(errs, fmt.Sprintf("%s (%s)", sb.Name, sb.Error))
			}
		}
		return strings.Join(errs, "; "), time.Time{}
	}
	return "", time.Time{}
}

// Units asks systemd for a unit's state; Bus is the real one.
type Units interface {
	Unit(ctx context.Context, name string) (*Unit, error)
}

// Collect combines every phase's unit (units may be nil: no systemd) and
// state file in dir.
func Collect(ctx context.Context, units Units, dir string) []PhaseStatus {
	out := make([]PhaseStatus, 0, len(Phases))
	for _, p := range Phases {
		f := p.New()
		ferr := state.Read(dir, f)
		var u *Unit
		if units != nil {
			var err error
			if u, err = units.Unit(ctx, p.Unit); err != nil {
				u = nil
			}
		}
		out = append(out, Combine(p, u, f, ferr))
	}
	return out
}

// Exit codes of g8-status.
const (
	ExitNotReady = 10 // a phase is starting, waiting, restarting or not started
	ExitFailed   = 11 // a phase failed or is degraded: a person must act
)

// ChainExit is g8-status's exit status for phases: 0 only when every phase
// is ready.
func ChainExit(ps []PhaseStatus) int {
	code := 0
	for _, s := range ps {
		switch s.State {
		case StateReady:
		case StateFailed, StateDegraded:
			return ExitFailed
		default:
			code = ExitNotReady
		}
	}
	return code
}

var errNotReady = errors.New("the boot chain is not ready")
