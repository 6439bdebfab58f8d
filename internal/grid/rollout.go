package grid

import (
	"errors"
	"fmt"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// RolloutState is what the grid keeps of one app's rollout between rounds
// and across controller restarts: what the heartbeats and jobs cannot say
// once the repository has moved on (the last spec that ran everywhere, to
// revert to) and what an operator decided (pause, revert).
type RolloutState struct {
	App  string `json:"app"`
	Spec string `json:"spec"` // the repository's spec hash being rolled out
	// Since is when Spec started rolling (or was resumed): failures before
	// it belong to an earlier attempt.
	Since time.Time `json:"since"`
	// Good is the last spec that ran healthy on every linked node, and
	// GoodSpec the spec itself: what a revert installs.
	Good     string         `json:"good,omitempty"`
	GoodSpec *acapi.AppSpec `json:"good_spec,omitempty"`
	// Progress towards the spec the grid installs now (Good once
	// reverted).
	Nodes   int `json:"nodes"`
	Done    int `json:"done"`
	Rolling int `json:"rolling"`
	// The app's update block when last stepped, for Phase.
	MaxParallel int `json:"max_parallel"`
	Canary      int `json:"canary,omitempty"`

	Paused bool `json:"paused,omitempty"`
	// Failed is why the rollout stopped: its first failed instance.
	Failed   string    `json:"failed,omitempty"`
	FailedAt time.Time `json:"failed_at,omitzero"`
	// Reverted is who sent the app back to Good: RevertAuto or
	// RevertOperator; empty while rolling Spec.
	Reverted string `json:"reverted,omitempty"`

	// Version is the store's, for compare-and-swap: a round's write loses
	// to an operator's pause that came in between.
	Version int64 `json:"-"`
}

// Who reverted a rollout.
const (
	RevertAuto     = "auto_revert"
	RevertOperator = "operator"
)

// Phase is one word for the rollout: reverted, failed, paused, canary,
// rolling or done.
func (s RolloutState) Phase() string {
	switch {
	case s.Reverted != "":
		return "reverted"
	case s.Failed != "":
		return "failed"
	case s.Paused:
		return "paused"
	case s.Spec != "" && s.Good == s.Spec:
		return "done"
	case s.Done < s.Canary:
		return "canary"
	}
	return "rolling"
}

// target is the app as the grid installs it now: the repository's, or
// the last good spec once reverted.
func (s RolloutState) target(app *App) *App {
	if s.Reverted == "" || s.GoodSpec == nil {
		return app
	}
	t := *app
	t.Spec, t.Hash = *s.GoodSpec, s.Good
	return &t
}

// limit is how many instances may be rolling at once now.
func (s RolloutState) limit(app *App) int {
	switch {
	case s.Paused || (s.Failed != "" && s.Reverted == ""):
		return 0
	case s.Reverted == "" && s.Done < app.Canary:
		// The canary batch: the rest waits until it is healthy.
		return app.Canary - s.Done
	}
	return app.MaxParallel
}

// Errors of the operator's rollout commands.
var (
	ErrNoGoodSpec     = errors.New("no earlier spec ran on every node: nothing to revert to")
	ErrAlreadyGood    = errors.New("the repository's spec is the last good one: nothing to revert")
	ErrNothingToPause = errors.New("the rollout is done: nothing to pause")
)

// Pause stops new instances from rolling; those rolling finish.
func (s RolloutState) Pause() (RolloutState, error) {
	if s.Phase() == "done" {
		return s, ErrNothingToPause
	}
	s.Paused = true
	return s, nil
}

// Resume rolls the repository's spec again: after a pause, a failure or a
// revert (a failed spec gets a new attempt; earlier failures no longer
// count).
func (s RolloutState) Resume(now time.Time) RolloutState {
	if s.Failed != "" || s.Reverted != "" {
		s.Since = now
	}
	s.Paused, s.Failed, s.FailedAt, s.Reverted = false, "", time.Time{}, ""
	return s
}

// Revert sends the app back to the last good spec until the repository
// has a new one (or Resume).
func (s RolloutState) Revert(now time.Time) (RolloutState, error) {
	switch {
	case s.GoodSpec == nil:
		return s, ErrNoGoodSpec
	case s.Good == s.Spec:
		return s, ErrAlreadyGood
	}
	if s.Failed == "" {
		s.Failed, s.FailedAt = "reverted by the operator", now
	}
	s.Reverted = RevertOperator
	return s, nil
}

// instance is one linked node's side of a rollout.
type instance struct {
	node    string // the repository's name
	st      acapi.AppStatus
	present bool
	online  bool
	jobs    []JobObs // the (node, app) jobs, oldest first
}

// stepRollout advances an app's rollout from its last state and what the
// linked nodes show. A new repository spec starts a new rollout; a rollout
// whose spec ran healthy everywhere makes it the good one; the first
// instance that fails (its install of the spec failed, or it is not
// running and healthy HealthyDeadline after its install was queued) stops
// it, and with auto_revert sends the app back to the good spec.
func stepRollout(prev RolloutState, app *App, ins []instance, now time.Time) RolloutState {
	s := prev
	if s.Spec != app.Hash {
		s = RolloutState{Spec: app.Hash, Since: now, Good: prev.Good, GoodSpec: prev.GoodSpec, Version: prev.Version}
	}
	s.App, s.MaxParallel, s.Canary = app.Name, app.MaxParallel, app.Canary
	done := 0
	for _, in := range ins {
		if healthy(app, in.st, in.present, now) {
			done++
		}
	}
	if s.Reverted == "" && len(ins) > 0 && done == len(ins) {
		spec := app.Spec
		s.Good, s.GoodSpec, s.Failed, s.FailedAt = app.Hash, &spec, "", time.Time{}
		return s
	}
	if s.Failed != "" {
		return s
	}
	for _, in := range ins {
		why := failure(app, in, s.Since, now)
		if why == "" {
			continue
		}
		s.Failed, s.FailedAt = "node "+in.node+": "+why, now
		switch {
		case !app.AutoRevert:
		case s.GoodSpec == nil || s.Good == s.Spec:
			s.Failed += " (auto_revert: " + ErrNoGoodSpec.Error() + ")"
		default:
			s.Reverted = RevertAuto
		}
		break
	}
	return s
}

// healthy: the instance runs app's spec and has for min_healthy_time.
func healthy(app *App, st acapi.AppStatus, present bool, now time.Time) bool {
	return present && st.Spec == app.Hash && st.State == acapi.AppRunning && now.Sub(st.Since) >= app.MinHealthyTime
}

// failure says why one instance fails its batch, or "".
func failure(app *App, in instance, since, now time.Time) string {
	if healthy(app, in.st, in.present, now) || !in.online {
		return ""
	}
	var first *JobObs
	for i := range in.jobs {
		j := &in.jobs[i]
		if j.Kind != acapi.JobAppInstall || j.Spec != app.Hash || j.Created.Before(since) {
			continue
		}
		if first == nil {
			first = j
		}
		if i == len(in.jobs)-1 && j.failed() {
			return fmt.Sprintf("app.install %s: %s", j.State, orDash(j.Error))
		}
	}
	if first == nil || now.Sub(first.Created) <= app.HealthyDeadline {
		return ""
	}
	state := "absent"
	if in.present {
		state = in.st.State
		if in.st.Spec != app.Hash {
			state += " on spec " + orDash(in.st.Spec)
		}
		if in.st.Error != "" {
			state += ": " + in.st.Error
		}
	}
	return fmt.Sprintf("not running and healthy %s after its roll (%s)", app.HealthyDeadline, state)
}
