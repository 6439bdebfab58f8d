package ac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/grid"
	"github.com/g8os/boot/internal/sd"
)

// Grid defaults.
const (
	// DefaultOfflineAfter: a node silent for longer (3 heartbeats of
	// g8-acsession's 10 s, and some) gets no new app jobs until it is back.
	DefaultOfflineAfter = 45 * time.Second
	// DefaultGridInterval is how often `serve --grid-repo` reconciles.
	DefaultGridInterval = 5 * time.Second
	// AppJobTimeout bounds an app job on the node: an install may fetch
	// and mount a sandbox first.
	AppJobTimeout = 5 * time.Minute
)

// ExitRepoInvalid is grid apply/diff's exit code for an invalid repository.
const ExitRepoInvalid = cli.ExitConfig

// Exit codes of g8-ac grid rollout.
const (
	ExitRolloutRefused = 13 // pause/revert: nothing to pause or revert
	ExitRolloutStopped = 14 // status: the rollout failed or was reverted
)

var rolloutExitCodes = map[int]string{
	ExitNotFound:       "no rollout recorded for APP (serve --grid-repo records one per linked app)",
	ExitRolloutRefused: "pause: the rollout is done; revert: no earlier spec ran on every node, or the repository's spec is that one",
	ExitRolloutStopped: "status: the rollout failed or was reverted (the output says why)",
}

// StoreFleet is the grid's view of the controller's store (grid.Fleet):
// approved nodes with their last heartbeat, and the app jobs.
type StoreFleet struct {
	Store        *store.Store
	OfflineAfter time.Duration
	Window       time.Duration // how far back jobs are read; the grid policy's window
	Now          func() time.Time
}

func (f *StoreFleet) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// Observe implements grid.Fleet.
func (f *StoreFleet) Observe(ctx context.Context) (grid.Observed, error) {
	now := f.now()
	nodes, err := f.Store.Nodes(ctx)
	if err != nil {
		return grid.Observed{}, fmt.Errorf("nodes: %w", err)
	}
	offline := f.OfflineAfter
	if offline <= 0 {
		offline = DefaultOfflineAfter
	}
	var obs grid.Observed
	for _, n := range nodes {
		if n.State != store.StateApproved {
			continue
		}
		o := grid.NodeObs{ID: n.ID, MACs: n.MACs, Hostname: n.Hostname, LastSeen: n.LastSeen,
			Online: !n.LastSeen.IsZero() && now.Sub(n.LastSeen) < offline}
		if n.Status != nil {
			o.Apps = n.Status.Apps
		}
		obs.Nodes = append(obs.Nodes, o)
	}
	window := f.Window
	if window <= 0 {
		window = grid.DefaultPolicy.Window
	}
	jobs, err := f.Store.AppJobs(ctx, now.Add(-window))
	if err != nil {
		return grid.Observed{}, fmt.Errorf("jobs: %w", err)
	}
	for _, j := range jobs {
		app, spec, ok := grid.JobApp(j.Kind, j.Args)
		if !ok {
			continue
		}
		jo := grid.JobObs{ID: j.ID, Node: j.NodeID, Kind: j.Kind, App: app, Spec: spec, State: j.State,
			Created: j.CreatedAt, Finished: j.FinishedAt}
		if j.Result != nil {
			jo.Error = j.Result.Error
			var st acapi.AppStatus
			if j.State == acapi.JobOK && j.Kind != acapi.JobAppLogs && len(j.Result.Output) > 0 &&
				json.Unmarshal(j.Result.Output, &st) == nil && st.Name == app {
				jo.Status = &st
			}
		}
		obs.Jobs = append(obs.Jobs, jo)
	}
	if obs.Rollouts, err = loadRollouts(ctx, f.Store); err != nil {
		return grid.Observed{}, err
	}
	return obs, nil
}

// loadRollouts reads the stored rollout states, by app.
func loadRollouts(ctx context.Context, st *store.Store) (map[string]grid.RolloutState, error) {
	rows, err := st.Rollouts(ctx)
	if err != nil {
		return nil, fmt.Errorf("rollouts: %w", err)
	}
	out := make(map[string]grid.RolloutState, len(rows))
	for _, r := range rows {
		var s grid.RolloutState
		if err := json.Unmarshal(r.State, &s); err != nil {
			return nil, fmt.Errorf("rollout of %s: %w", r.App, err)
		}
		s.App, s.Version = r.App, r.Version
		out[r.App] = s
	}
	return out, nil
}

// SaveRollouts implements grid.RolloutFleet.
func (f *StoreFleet) SaveRollouts(ctx context.Context, states []grid.RolloutState) (map[string]bool, error) {
	stale := map[string]bool{}
	for _, s := range states {
		if _, err := saveRollout(ctx, f.Store, s); errors.Is(err, store.ErrRolloutChanged) {
			stale[s.App] = true
		} else if err != nil {
			return stale, fmt.Errorf("rollout of %s: %w", s.App, err)
		}
	}
	return stale, nil
}

func saveRollout(ctx context.Context, st *store.Store, s grid.RolloutState) (int64, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return 0, err
	}
	return st.SaveRollout(ctx, store.Rollout{App: s.App, State: b, Version: s.Version})
}

// Enqueue implements grid.Fleet.
func (f *StoreFleet) Enqueue(ctx context.Context, nodeID, kind string, args json.RawMessage) (string, error) {
	j, err := f.Store.CreateJob(ctx, nodeID, kind, args, AppJobTimeout, f.now())
	if err != nil {
		return "", err
	}
	return j.ID, nil
}

// EnqueueAll implements grid.BatchFleet: one transaction for the batch.
func (f *StoreFleet) EnqueueAll(ctx context.Context, jobs []grid.QueuedJob) ([]string, error) {
	batch := make([]store.NewJob, len(jobs))
	for i, j := range jobs {
		batch[i] = store.NewJob{NodeID: j.NodeID, Kind: j.Kind, Args: j.Args, Timeout: AppJobTimeout}
	}
	return f.Store.CreateJobs(ctx, batch, f.now())
}

// RunGrid reconciles the store's fleet with the repository at dir every
// interval until ctx ends; `serve --grid-repo` runs it beside the API.
func RunGrid(ctx context.Context, st *store.Store, dir string, interval, offlineAfter time.Duration, log *slog.Logger) error {
	g := &grid.Grid{RepoDir: dir, Fleet: &StoreFleet{Store: st, OfflineAfter: offlineAfter}, Policy: grid.DefaultPolicy, Log: log}
	return g.Run(ctx, interval)
}

type gridFlags struct {
	admin
	repo         string
	offlineAfter time.Duration
}

func (g *gridFlags) flags(fs *cli.FlagSet) {
	g.admin.flags(fs)
	fs.StringVar(&g.repo, "repo", "", "grid repository `DIR` (nodes/, apps/, links/; a git checkout works as is)")
	fs.DurationVar(&g.offlineAfter, "offline-after", DefaultOfflineAfter, "a node silent this long is offline: no jobs until it is back")
}

func (g *gridFlags) grid(args []string) (*grid.Grid, *store.Store, error) {
	rest := args
	if err := exactly(rest, 0, "no arguments"); err != nil {
		return nil, nil, err
	}
	if g.repo == "" {
		return nil, nil, cli.Usagef("--repo DIR is required")
	}
	st, err := g.open()
	if err != nil {
		return nil, nil, err
	}
	return &grid.Grid{RepoDir: g.repo, Fleet: &StoreFleet{Store: st, OfflineAfter: g.offlineAfter}, Policy: grid.DefaultPolicy}, st, nil
}

// repoErr gives an invalid repository its exit code.
func repoErr(err error) error {
	var re *grid.RepoError
	if errors.As(err, &re) {
		return cli.Exit(ExitRepoInvalid, err)
	}
	return err
}

func gridCmd(stdout io.Writer) *cli.Command {
	apply, diff, status := &gridFlags{}, &gridFlags{}, &gridFlags{}
	exit := map[int]string{ExitRepoInvalid: "the grid repository is invalid (every file and field at fault is listed); nothing was applied"}
	return &cli.Command{
		Name:    "g8-ac grid",
		Summary: "apply a repository of nodes, apps and links to the fleet",
		Details: `The repository (docs/grid.md) declares nodes (by id or MAC, with labels),
apps (sandbox flist, command, env, restart policy, health check, limits) and
links placing apps on nodes by name or label selector. serve --grid-repo
DIR reconciles continuously; these commands do one pass or show it.`,
		ExitCodes: exit,
		Sub: []*cli.Command{
			rolloutCmd(stdout),
			{
				Name:      "g8-ac grid apply",
				Summary:   "validate the repository and queue the jobs that move the fleet toward it",
				Details:   "Prints one line per queued job. An invalid repository queues nothing and exits 3.",
				ExitCodes: exit,
				Flags:     apply.flags,
				Run: func(args []string) error {
					g, st, err := apply.grid(args)
					if err != nil {
						return err
					}
					defer st.Close()
					p, err := g.Apply(context.Background())
					if err != nil && p.Actions == nil {
						return repoErr(err)
					}
					printActions(stdout, p, "queued")
					return err
				},
			},
			{
				Name:      "g8-ac grid diff",
				Summary:   "show what apply would do, doing nothing",
				ExitCodes: exit,
				Flags:     diff.flags,
				Run: func(args []string) error {
					g, st, err := diff.grid(args)
					if err != nil {
						return err
					}
					defer st.Close()
					p, err := g.Diff(context.Background())
					if err != nil {
						return repoErr(err)
					}
					printActions(stdout, p, "would queue")
					return nil
				},
			},
			{
				Name:      "g8-ac grid status",
				Summary:   "a table of nodes × apps: state, since, restarts, last error, what the grid does next",
				ExitCodes: exit,
				Flags:     status.flags,
				Run: func(args []string) error {
					g, st, err := status.grid(args)
					if err != nil {
						return err
					}
					defer st.Close()
					p, err := g.Diff(context.Background())
					if err != nil {
						return repoErr(err)
					}
					printStatus(stdout, p, time.Now())
					return nil
				},
			},
		},
	}
}

func rolloutCmd(stdout io.Writer) *cli.Command {
	status, pause, resume, revert := &admin{}, &admin{}, &admin{}, &admin{}
	op := func(a *admin, args []string, do func(grid.RolloutState) (grid.RolloutState, error), done string) error {
		st, rest, err := a.openArgs(args, 1, "APP")
		if err != nil {
			return err
		}
		defer st.Close()
		s, err := changeRollout(context.Background(), st, rest[0], do)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", acapi.QuoteText(s.App), done)
		return nil
	}
	return &cli.Command{
		Name:    "g8-ac grid rollout",
		Summary: "an app's rollout across the fleet: status, pause, resume, revert",
		Details: `serve --grid-repo keeps each linked app's rollout in the store: the spec
rolling out, the last spec that ran on every node, the batches done, a
pause, and why it failed. These commands read and change it; the next grid
round acts on the change (docs/grid.md "Rolling updates").`,
		ExitCodes: rolloutExitCodes,
		Sub: []*cli.Command{
			{
				Name:      "g8-ac grid rollout status",
				Args:      "APP",
				Summary:   "print APP's rollout: phase, specs, progress, why it stopped",
				ExitCodes: rolloutExitCodes,
				Flags:     status.flags,
				Run: func(args []string) error {
					st, rest, err := status.openArgs(args, 1, "APP")
					if err != nil {
						return err
					}
					defer st.Close()
					s, err := readRollout(context.Background(), st, rest[0])
					if err != nil {
						return err
					}
					printRollout(stdout, s)
					if ph := s.Phase(); ph == "failed" || ph == "reverted" {
						return cli.Exit(ExitRolloutStopped, fmt.Errorf("the rollout of %s %s", acapi.QuoteText(s.App), ph))
					}
					return nil
				},
			},
			{
				Name:      "g8-ac grid rollout pause",
				Args:      "APP",
				Summary:   "roll no more instances of APP; those rolling finish",
				ExitCodes: rolloutExitCodes,
				Flags:     pause.flags,
				Run: func(args []string) error {
					return op(pause, args, grid.RolloutState.Pause, "paused (resume continues)")
				},
			},
			{
				Name:      "g8-ac grid rollout resume",
				Args:      "APP",
				Summary:   "roll the repository's spec again: after a pause, a failure or a revert",
				Details:   "After a failure or a revert the spec gets a new attempt: earlier failures no longer count.",
				ExitCodes: rolloutExitCodes,
				Flags:     resume.flags,
				Run: func(args []string) error {
					return op(resume, args, func(s grid.RolloutState) (grid.RolloutState, error) { return s.Resume(time.Now()), nil }, "resumed")
				},
			},
			{
				Name:      "g8-ac grid rollout revert",
				Args:      "APP",
				Summary:   "send APP back to the last spec that ran on every node",
				Details:   "It stays there until the repository has a new spec for APP, or resume.",
				ExitCodes: rolloutExitCodes,
				Flags:     revert.flags,
				Run: func(args []string) error {
					return op(revert, args, func(s grid.RolloutState) (grid.RolloutState, error) { return s.Revert(time.Now()) }, "reverting to the last good spec")
				},
			},
		},
	}
}

func readRollout(ctx context.Context, st *store.Store, app string) (grid.RolloutState, error) {
	all, err := loadRollouts(ctx, st)
	if err != nil {
		return grid.RolloutState{}, err
	}
	s, ok := all[app]
	if !ok {
		return s, cli.Exit(ExitNotFound, fmt.Errorf("no rollout recorded for app %s", acapi.QuoteText(app)))
	}
	return s, nil
}

// changeRollout applies an operator's change to APP's stored state,
// again on a fresh read if the grid wrote it meanwhile.
func changeRollout(ctx context.Context, st *store.Store, app string, do func(grid.RolloutState) (grid.RolloutState, error)) (grid.RolloutState, error) {
	for try := 0; ; try++ {
		s, err := readRollout(ctx, st, app)
		if err != nil {
			return s, err
		}
		if s, err = do(s); err != nil {
			return s, cli.Exit(ExitRolloutRefused, fmt.Errorf("%s: %w", acapi.QuoteText(app), err))
		}
		if _, err = saveRollout(ctx, st, s); !errors.Is(err, store.ErrRolloutChanged) || try == 4 {
			return s, err
		}
	}
}

func printRollout(w io.Writer, s grid.RolloutState) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	phase := s.Phase()
	if s.Reverted != "" {
		phase += " (by " + s.Reverted + ")"
	}
	fmt.Fprintf(tw, "app:\t%s\n", acapi.QuoteText(s.App))
	fmt.Fprintf(tw, "phase:\t%s\n", phase)
	fmt.Fprintf(tw, "spec:\t%s (the repository's, rolling since %s)\n", s.Spec, s.Since.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "last good:\t%s\n", gridDash(s.Good))
	target := s.Spec
	if s.Reverted != "" {
		target = s.Good
	}
	fmt.Fprintf(tw, "progress:\t%d of %d nodes on %s, %d rolling (max_parallel %d, canary %d)\n", s.Done, s.Nodes, target, s.Rolling, s.MaxParallel, s.Canary)
	if s.Failed != "" {
		fmt.Fprintf(tw, "failed:\t%s (at %s)\n", gridOneLine(s.Failed, 200), s.FailedAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
}

func printActions(w io.Writer, p grid.Plan, verb string) {
	for _, a := range p.Actions {
		fmt.Fprintf(w, "%s %s\n", verb, a)
	}
	if len(p.Actions) == 0 {
		fmt.Fprintln(w, "nothing to do")
	}
	for _, n := range p.Unmatched {
		fmt.Fprintf(w, "node %s: not known to the controller yet (it converges once it enrolls)\n", n)
	}
}

func printStatus(w io.Writer, p grid.Plan, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPP\tSTATE\tSINCE\tRESTARTS\tLAST ERROR\tNEXT")
	for _, r := range p.Rows {
		node := r.Node
		if r.NodeID != "" && r.NodeID != r.Node {
			node += " (" + r.NodeID + ")"
		}
		app := r.App
		if !r.Linked {
			app += " (unlinked)"
		}
		since := "-"
		if !r.Since.IsZero() {
			since = ago(r.Since, now)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", acapi.QuoteText(node), acapi.QuoteText(app), acapi.QuoteText(r.State), since, r.Restarts,
			gridDash(gridOneLine(r.Error, 60)), acapi.QuoteText(gridDash(r.Next)))
	}
	tw.Flush()
	for _, ro := range p.Rollouts {
		s := ro.State
		switch ro.Phase {
		case "reverted":
			fmt.Fprintf(w, "\nrollout of %s to spec %s reverted (by %s) to spec %s: %s; %d of %d nodes back", ro.App, s.Spec, s.Reverted,
				s.Good, gridOneLine(s.Failed, 200), ro.Done, ro.Nodes)
		case "failed":
			fmt.Fprintf(w, "\nrollout of %s to spec %s failed: %s; %d of %d nodes done", ro.App, s.Spec, gridOneLine(s.Failed, 200), ro.Done, ro.Nodes)
		default:
			fmt.Fprintf(w, "\nrollout of %s to spec %s (%s): %d of %d nodes done, %d rolling (max_parallel %d)", ro.App, ro.Spec, ro.Phase,
				ro.Done, ro.Nodes, ro.Rolling, ro.MaxParallel)
		}
	}
	if len(p.Rollouts) > 0 {
		fmt.Fprintln(w)
	}
	if len(p.Unmanaged) > 0 {
		fmt.Fprintf(w, "\nnot in the repository (left alone): %s\n", strings.Join(p.Unmanaged, ", "))
	}
}

func gridDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// gridOneLine is s on one line of at most max bytes, quoted if a node put
// anything but printable text in it.
func gridOneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max-1], "") + "…"
	}
	return acapi.QuoteText(s)
}

func appCmd(stdout, stderr io.Writer) *cli.Command {
	logs, restart, show := &jobFlags{}, &jobFlags{}, &jobFlags{}
	var lines int
	var logsRepo, restartRepo, showRepo string
	repoFlag := func(fs *cli.FlagSet, p *string) {
		fs.StringVar(p, "repo", "", "grid repository `DIR`: NODE may then be its name there (what grid status shows)")
	}
	return &cli.Command{
		Name:      "g8-ac app",
		Summary:   "one grid app on one node: its logs, its boundary, a restart",
		ExitCodes: exitCodes,
		Sub: []*cli.Command{
			{
				Name:      "g8-ac app logs",
				Args:      "NODE APP",
				Summary:   "print the last lines of APP's journal on NODE (id, MAC, or its name in --repo)",
				Details:   "Queues an app.logs job and waits for it: the node must be online.",
				ExitCodes: exitCodes,
				Flags: func(fs *cli.FlagSet) {
					logs.flags(fs, false)
					repoFlag(fs, &logsRepo)
					fs.IntVar(&lines, "lines", 100, "how many journal lines")
				},
				Run: func(args []string) error {
					return appJob(stdout, stderr, logs, logsRepo, args, acapi.JobAppLogs, true, func(app string) any { return acapi.AppLogsArgs{Name: app, Lines: lines} })
				},
			},
			{
				Name:    "g8-ac app show",
				Args:    "NODE APP",
				Summary: "print systemd-analyze security of APP's unit on NODE (id, MAC, or its name in --repo)",
				Details: `Queues an app.show job and waits for it: the node must be online. The
table is systemd's own score of the boundary the app runs in, setting by
setting, with the overall exposure last (0 = locked down, 10 = none; the
default app is about 1).`,
				ExitCodes: exitCodes,
				Flags: func(fs *cli.FlagSet) {
					show.flags(fs, false)
					repoFlag(fs, &showRepo)
				},
				Run: func(args []string) error {
					return appJob(stdout, stderr, show, showRepo, args, acapi.JobAppShow, true, func(app string) any { return acapi.AppArgs{Name: app} })
				},
			},
			{
				Name:      "g8-ac app restart",
				Args:      "NODE APP",
				Summary:   "stop and start APP on NODE (id, MAC, or its name in --repo) and print the job's result",
				Details:   "The restart is counted in the app's restarts. Waits for the node to run it.",
				ExitCodes: exitCodes,
				Flags: func(fs *cli.FlagSet) {
					restart.flags(fs, false)
					repoFlag(fs, &restartRepo)
				},
				Run: func(args []string) error {
					return appJob(stdout, stderr, restart, restartRepo, args, acapi.JobAppRestart, false, func(app string) any { return acapi.AppArgs{Name: app} })
				},
			},
		},
	}
}

// appJob queues an app job for NODE APP, NODE named as gridNode takes it,
// and waits for it.
func appJob(stdout, stderr io.Writer, f *jobFlags, repo string, args []string, kind string, raw bool, jobArgs func(app string) any) error {
	rest, err := f.argsN(args, 2, "NODE APP")
	if err != nil {
		return err
	}
	node, err := gridNode(repo, rest[0])
	if err != nil {
		return err
	}
	a, _ := json.Marshal(jobArgs(rest[1]))
	f.wait = true
	return submit(stdout, stderr, f, node, kind, a, raw)
}

// gridNode turns a node's name in the grid repository (what grid status
// shows) into the id or MAC the repository gives it; any other ref (an id,
// a MAC) is returned as is for the store to resolve.
func gridNode(repo, ref string) (string, error) {
	if repo == "" {
		return ref, nil
	}
	r, err := grid.LoadRepo(repo)
	if err != nil {
		return "", repoErr(err)
	}
	if n := r.Nodes[ref]; n != nil {
		if n.ID != "" {
			return n.ID, nil
		}
		return n.MAC, nil
	}
	return ref, nil
}

// gridServe is serve's grid flags: with a repository, serve reconciles
// the fleet with it every interval.
type gridServe struct {
	repo         string
	interval     time.Duration
	offlineAfter time.Duration
	retry        time.Duration
}

func gridServeFlags(fs *cli.FlagSet, g *gridServe) {
	fs.StringVar(&g.repo, "grid-repo", "", "grid repository `DIR` to keep the fleet converged to (docs/grid.md); none: no grid")
	fs.DurationVar(&g.interval, "grid-interval", DefaultGridInterval, "how often the grid reconciles")
	fs.DurationVar(&g.offlineAfter, "offline-after", DefaultOfflineAfter, "a node silent this long is offline: no grid jobs until it is back")
	fs.DurationVar(&g.retry, "grid-retry", 2*time.Second, "with several controllers on one store, how often one that does not run the grid tries to take it over")
}

func (g *gridServe) start(ctx context.Context, c *Controller, log *slog.Logger) {
	if g.repo == "" {
		return
	}
	log.Info("grid: reconciling when this controller holds the grid lock", "repo", g.repo, "interval", g.interval.String())
	// Several controllers may share the store: one reconciles at a time,
	// or two would queue the same corrections twice.
	go c.store.Lead(ctx, "grid", g.retry, func(ctx context.Context) {
		if err := RunGrid(ctx, c.store, g.repo, g.interval, g.offlineAfter, log); err != nil && ctx.Err() == nil {
			log.Error("grid: reconcile stopped", sd.ACGridNotLeading.Attr(), "repo", g.repo, "error", err)
		}
	}, func(leading bool, err error) {
		switch {
		case leading:
			log.Info("grid: leading", sd.ACGridLeading.Attr(), "repo", g.repo)
		case err != nil:
			log.Warn("grid: cannot take the grid lock", sd.ACGridNotLeading.Attr(), "repo", g.repo, "error", err)
		default:
			log.Info("grid: no longer leading", sd.ACGridNotLeading.Attr(), "repo", g.repo, "error", "")
		}
	})
}
