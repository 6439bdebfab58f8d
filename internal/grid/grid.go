package grid

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
)

// Fleet is what the grid needs from the controller's store: the nodes with
// their last heartbeat, the app jobs, and a way to queue one.
type Fleet interface {
	Observe(ctx context.Context) (Observed, error)
	Enqueue(ctx context.Context, nodeID, kind string, args json.RawMessage) (jobID string, err error)
}

// BatchFleet is a Fleet that queues many jobs at once (one transaction
// for a whole converging fleet); Grid uses it when the Fleet has it.
type BatchFleet interface {
	EnqueueAll(ctx context.Context, jobs []QueuedJob) (jobIDs []string, err error)
}

// QueuedJob is one job of a batch.
type QueuedJob struct {
	NodeID, Kind string
	Args         json.RawMessage
}

// RolloutFleet is a Fleet that keeps each app's rollout state between
// rounds (Observed.Rollouts) so that a revert, a pause and the last good
// spec survive a restart; without it every round starts afresh.
type RolloutFleet interface {
	// SaveRollouts writes states, each only if its stored version is
	// still the state's Version, and returns the apps whose state changed
	// meanwhile (an operator's command): this round's decision about
	// them is stale.
	SaveRollouts(ctx context.Context, states []RolloutState) (stale map[string]bool, err error)
}

// maxLoggedActions is how many jobs a round logs one by one at info level.
const maxLoggedActions = 20

// Grid applies a repository to a fleet.
type Grid struct {
	RepoDir string
	Fleet   Fleet
	Policy  Policy
	Log     *slog.Logger
	Now     func() time.Time // time.Now when nil

	last *Repo // last valid repository, kept while the checkout is invalid
}

// Diff loads the repository and says what Apply would do, doing nothing.
func (g *Grid) Diff(ctx context.Context) (Plan, error) {
	repo, err := LoadRepo(g.RepoDir)
	if err != nil {
		return Plan{}, err
	}
	p, _, err := g.plan(ctx, repo)
	return p, err
}

// Apply loads and validates the repository, then queues the jobs that move
// the fleet toward it. An invalid repository queues nothing.
func (g *Grid) Apply(ctx context.Context) (Plan, error) {
	repo, err := LoadRepo(g.RepoDir)
	if err != nil {
		return Plan{}, err
	}
	g.last = repo
	return g.apply(ctx, repo)
}

// Run reconciles every interval until ctx ends. When the repository turns
// invalid (a bad commit pulled into the checkout) it logs why and keeps
// converging to the last valid one, so crashed apps are still restarted.
func (g *Grid) Run(ctx context.Context, interval time.Duration) error {
	var lastErr string
	for {
		repo, err := LoadRepo(g.RepoDir)
		switch {
		case err != nil && g.last == nil:
			if err.Error() != lastErr {
				g.log().Error("grid: repository invalid, nothing applied", sd.GridRepoInvalid.Attr(), "repo", g.RepoDir, "error", err)
			}
			lastErr = err.Error()
		case err != nil:
			if err.Error() != lastErr {
				g.log().Error("grid: repository invalid, keeping the last valid one", sd.GridRepoInvalid.Attr(), "repo", g.RepoDir, "error", err)
			}
			lastErr = err.Error()
			repo = g.last
		default:
			lastErr = ""
			g.last = repo
		}
		if repo != nil {
			if _, err := g.apply(ctx, repo); err != nil && ctx.Err() == nil {
				g.log().Warn("grid: reconcile failed", "error", err)
			}
		}
		if err := backoff.Sleep(ctx, interval); err != nil {
			return nil
		}
	}
}

func (g *Grid) plan(ctx context.Context, repo *Repo) (Plan, Observed, error) {
	obs, err := g.Fleet.Observe(ctx)
	if err != nil {
		return Plan{}, obs, fmt.Errorf("grid: observe fleet: %w", err)
	}
	pol := g.Policy
	if pol == (Policy{}) {
		pol = DefaultPolicy
	}
	return Reconcile(repo, obs, g.now(), pol), obs, nil
}

func (g *Grid) apply(ctx context.Context, repo *Repo) (Plan, error) {
	p, obs, err := g.plan(ctx, repo)
	if err != nil {
		return p, err
	}
	if err := g.saveRollouts(ctx, &p, obs); err != nil {
		p.Actions = nil
		return p, err
	}
	// One journal line per job, unless a round queues many (a fleet
	// converging): then one summary line, the jobs at debug level.
	level := slog.LevelInfo
	if len(p.Actions) > maxLoggedActions {
		level = slog.LevelDebug
		counts := map[ActionKind]int{}
		for _, a := range p.Actions {
			counts[a.Kind]++
		}
		g.log().Info(fmt.Sprintf("grid: queueing %d jobs: %d install, %d roll, %d start, %d remove", len(p.Actions),
			counts[ActInstall], counts[ActRoll], counts[ActStart], counts[ActRemove]), sd.GridAction.Attr())
	}
	logged := func(a Action, id string) {
		g.log().Log(ctx, level, "grid: "+a.String(), sd.GridAction.Attr(), "node", a.NodeID, "app", a.App,
			"action", string(a.Kind), "job", id)
	}
	if bf, ok := g.Fleet.(BatchFleet); ok && len(p.Actions) > 1 {
		batch := make([]QueuedJob, len(p.Actions))
		for i, a := range p.Actions {
			kind, args := a.Job()
			batch[i] = QueuedJob{NodeID: a.NodeID, Kind: kind, Args: args}
		}
		ids, err := bf.EnqueueAll(ctx, batch)
		if err != nil {
			return p, fmt.Errorf("grid: enqueue %d jobs: %w", len(batch), err)
		}
		for i, a := range p.Actions {
			logged(a, ids[i])
		}
		return p, nil
	}
	var errs []error
	for _, a := range p.Actions {
		kind, args := a.Job()
		id, err := g.Fleet.Enqueue(ctx, a.NodeID, kind, args)
		if err != nil {
			errs = append(errs, fmt.Errorf("grid: %s: enqueue %s: %w", a.NodeID, kind, err))
			continue
		}
		logged(a, id)
	}
	return p, errors.Join(errs...)
}

// saveRollouts stores the rollout states the round changed, before any
// job goes out, and drops the actions of an app whose state an operator
// changed meanwhile: the next round decides them again.
func (g *Grid) saveRollouts(ctx context.Context, p *Plan, obs Observed) error {
	rf, ok := g.Fleet.(RolloutFleet)
	if !ok {
		return nil
	}
	var changed []RolloutState
	for _, s := range p.States {
		prev, _ := json.Marshal(obs.Rollouts[s.App])
		now, _ := json.Marshal(s)
		if _, known := obs.Rollouts[s.App]; !known || string(prev) != string(now) {
			changed = append(changed, s)
		}
	}
	for _, s := range changed {
		if s.Reverted != "" && obs.Rollouts[s.App].Reverted == "" {
			g.log().Warn("grid: rollout of "+s.App+" reverted to spec "+s.Good+": "+s.Failed, sd.GridRollout.Attr(),
				"app", s.App, "spec", s.Spec, "good", s.Good, "by", s.Reverted)
		} else if s.Failed != "" && obs.Rollouts[s.App].Failed == "" {
			g.log().Warn("grid: rollout of "+s.App+" failed: "+s.Failed, sd.GridRollout.Attr(), "app", s.App, "spec", s.Spec)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	stale, err := rf.SaveRollouts(ctx, changed)
	if err != nil {
		return fmt.Errorf("grid: save rollout state: %w", err)
	}
	if len(stale) == 0 {
		return nil
	}
	kept := p.Actions[:0]
	for _, a := range p.Actions {
		if !stale[a.App] {
			kept = append(kept, a)
		}
	}
	p.Actions = kept
	return nil
}

func (g *Grid) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

func (g *Grid) log() *slog.Logger {
	if g.Log != nil {
		return g.Log
	}
	return slog.New(slog.DiscardHandler)
}

// JobApp reads which app an app.* job is about and, for an install, the
// hash of the spec it installs. ok is false for other jobs.
func JobApp(kind string, args json.RawMessage) (app, spec string, ok bool) {
	switch kind {
	case acapi.JobAppInstall:
		var a acapi.AppInstallArgs
		if json.Unmarshal(args, &a) != nil {
			return "", "", false
		}
		if a.Hash != "" {
			return a.Spec.Name, a.Hash, true
		}
		return a.Spec.Name, a.Spec.Hash(), true
	case acapi.JobAppStart, acapi.JobAppStop, acapi.JobAppRestart, acapi.JobAppRemove, acapi.JobAppLogs:
		var a acapi.AppArgs
		if json.Unmarshal(args, &a) != nil {
			return "", "", false
		}
		return a.Name, "", true
	}
	return "", "", false
}
