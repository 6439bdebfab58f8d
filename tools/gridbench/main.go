// Command gridbench measures the grid manager's reconcile on a simulated
// fleet (internal/grid/gridsim): time and controller CPU to converge N apps
// over M nodes, a steady-state round, and the jobs an edit of one app
// costs, each beside a baseline measured in the same run. It prints
// markdown rows for `make bench`: | benchmark | g8 | baseline | ratio | target |
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/grid"
	"github.com/g8os/boot/internal/grid/gridsim"
)

var withStore bool

var (
	maxParallel     = flag.Int("max-parallel", 1, "the apps' update max_parallel for the converge and the edit")
	rolloutParallel = flag.Int("rollout-parallel", 50, "max_parallel of the rollout of every app")
	runs            = flag.Int("runs", 3, "runs of each rollout (the rows give medians)")
)

func main() {
	nApps := flag.Int("apps", 100, "apps in the repository")
	nNodes := flag.Int("nodes", 1000, "simulated nodes")
	groups := flag.Int("groups", 10, "label groups: app i is linked to group i%groups, so each node runs apps/groups apps")
	flag.BoolVar(&withStore, "store", true, "also run on the controller's real store (SQLite)")
	flag.Parse()
	if err := run(*nApps, *nNodes, *groups); err != nil {
		fmt.Fprintln(os.Stderr, "gridbench:", err)
		os.Exit(1)
	}
}

// cpu is the process's user+system CPU time.
func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type meter struct{ wall, cpu time.Duration }

func (m *meter) measure(f func() error) error {
	runtime.GC()
	w, c := time.Now(), cpu()
	err := f()
	m.wall += time.Since(w)
	m.cpu += cpu() - c
	return err
}

// writeRepo writes the repository: app 0 at version, the others at
// others ("" = "1"), every app with the update block's maxParallel.
func writeRepo(dir string, nApps, nNodes, groups int, version, others string, maxParallel int) error {
	for _, sub := range []string{"nodes", "apps", "links"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	for i := 0; i < nNodes; i++ {
		data := fmt.Sprintf("id = \"node-%04d\"\nlabels = { group = \"g%d\", dc = \"dc%d\" }\n", i, i%groups, i%3)
		if err := os.WriteFile(filepath.Join(dir, "nodes", fmt.Sprintf("n%04d.toml", i)), []byte(data), 0o644); err != nil {
			return err
		}
	}
	for i := 0; i < nApps; i++ {
		v := others
		if v == "" {
			v = "1"
		}
		if i == 0 {
			v = version
		}
		app := fmt.Sprintf(`flist = "blake3:%064d"
command = ["/bin/app%d", "--version", "%s"]
restart = "on-failure"
[env]
APP = "%d"
[limits]
memory_max = "256M"
cpu_quota = "50%%"
[update]
max_parallel = %d
min_healthy_time = "10s"
`, i, i, v, i, maxParallel)
		if err := os.WriteFile(filepath.Join(dir, "apps", fmt.Sprintf("a%03d.toml", i)), []byte(app), 0o644); err != nil {
			return err
		}
		link := fmt.Sprintf("app = \"a%03d\"\nselector = { group = \"g%d\" }\n", i, i%groups)
		if err := os.WriteFile(filepath.Join(dir, "links", fmt.Sprintf("a%03d.toml", i)), []byte(link), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func run(nApps, nNodes, groups int) error {
	dir, err := os.MkdirTemp("", "gridbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := writeRepo(dir, nApps, nNodes, groups, "1", "", *maxParallel); err != nil {
		return err
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	fleet := gridsim.New(nNodes, func(i int) (string, []string) {
		return fmt.Sprintf("node-%04d", i), []string{fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)}
	})
	fleet.Now = func() time.Time { return now }
	g := &grid.Grid{RepoDir: dir, Fleet: fleet, Now: fleet.Now}
	ctx := context.Background()

	// readState is the baseline: what any reconciler pays each round just to
	// read the desired state (parse and validate the repository) and the
	// observed one (every node's heartbeat and the job list).
	readState := func() error {
		if _, err := grid.LoadRepo(dir); err != nil {
			return err
		}
		_, err := fleet.Observe(ctx)
		return err
	}

	// Converge a fresh fleet: apply, let the nodes run their jobs and
	// heartbeat, until a round queues nothing.
	var conv, convBase meter
	rounds, jobs := 0, 0
	for ; rounds < 20; rounds++ {
		var p grid.Plan
		if err := conv.measure(func() (err error) { p, err = g.Apply(ctx); return err }); err != nil {
			return err
		}
		if err := convBase.measure(readState); err != nil {
			return err
		}
		if len(p.Actions) == 0 {
			break
		}
		jobs += len(p.Actions)
		now = now.Add(time.Second)
		fleet.Step(now)
		now = now.Add(10 * time.Second)
	}
	instances := nNodes / groups * nApps / groups * groups
	if jobs != instances {
		return fmt.Errorf("converge queued %d jobs for %d instances", jobs, instances)
	}

	// Steady state: a converged fleet, nothing to do.
	var steady, steadyBase meter
	const steadyRounds = 5
	for i := 0; i < steadyRounds; i++ {
		var p grid.Plan
		if err := steady.measure(func() (err error) { p, err = g.Apply(ctx); return err }); err != nil {
			return err
		}
		if len(p.Actions) != 0 {
			return fmt.Errorf("converged fleet got %d actions", len(p.Actions))
		}
		if err := steadyBase.measure(readState); err != nil {
			return err
		}
		now = now.Add(10 * time.Second)
	}

	// Edit one app: only its instances roll, max_parallel at a time.
	if err := writeRepo(dir, nApps, nNodes, groups, "2", "", *maxParallel); err != nil {
		return err
	}
	rollJobs := 0
	for i := 0; i < 3; i++ {
		p, err := g.Apply(ctx)
		if err != nil {
			return err
		}
		rollJobs += len(p.Actions)
		now = now.Add(time.Second)
		fleet.Step(now)
		now = now.Add(10 * time.Second)
	}

	// A rollout of a new spec of every app: rounds every 11 s (a round, the
	// jobs, a heartbeat), until every instance runs the new spec for
	// min_healthy_time; with max_parallel, and as today's all-at-once
	// reconcile did (max_parallel = every instance).
	rollout := func(version string, parallel int) (m meter, rounds int, simulated time.Duration, err error) {
		if err := writeRepo(dir, nApps, nNodes, groups, version, version, parallel); err != nil {
			return m, 0, 0, err
		}
		start := now
		for ; rounds < 200; rounds++ {
			var p grid.Plan
			if err := m.measure(func() (err error) { p, err = g.Apply(ctx); return err }); err != nil {
				return m, 0, 0, err
			}
			if len(p.Actions) == 0 && len(p.Rollouts) == 0 {
				return m, rounds, now.Sub(start), nil
			}
			now = now.Add(time.Second)
			fleet.Step(now)
			now = now.Add(10 * time.Second)
		}
		return m, rounds, 0, fmt.Errorf("rollout of %s (max_parallel %d) not done in %d rounds", version, parallel, rounds)
	}
	// Each rollout runs *runs times, the two kinds alternating, so both
	// see the same machine load; the rows give medians.
	type rolled struct {
		m         meter
		rounds    int
		simulated time.Duration
	}
	var rolls, alls []rolled
	for i := 0; i < *runs; i++ {
		for _, r := range []struct {
			out      *[]rolled
			parallel int
		}{{&rolls, *rolloutParallel}, {&alls, instances}} {
			m, rounds, sim, err := rollout(fmt.Sprintf("r%d-%d", i, r.parallel), r.parallel)
			if err != nil {
				return err
			}
			*r.out = append(*r.out, rolled{m, rounds, sim})
		}
	}
	median := func(rs []rolled) rolled {
		sort.Slice(rs, func(a, b int) bool { return rs[a].m.cpu < rs[b].m.cpu })
		return rs[len(rs)/2]
	}
	roll, all := median(rolls), median(alls)
	scale := fmt.Sprintf("%d apps × %d nodes, %d instances", nApps, nNodes, instances)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Printf("| grid converge (%s): controller CPU, %d rounds | %s (wall %s) | %s (wall %s): reading repo + fleet state as often | %.2f× | ≤ 1 s CPU for 10,000 instances |\n",
		scale, rounds+1, ms(conv.cpu), ms(conv.wall), ms(convBase.cpu), ms(convBase.wall), ratio(conv.cpu, convBase.cpu))
	fmt.Printf("| grid steady-state round (%s): wall | %s | %s: reading repo + fleet state | %.2f× | ≤ 2× |\n",
		scale, ms(steady.wall/steadyRounds), ms(steadyBase.wall/steadyRounds), ratio(steady.wall, steadyBase.wall))
	fmt.Printf("| grid edit of one app (%s, max_parallel %d): jobs queued in 3 rounds | %d | %d: naive re-push of every instance | %.3f× | ≤ 3 × max_parallel |\n",
		scale, *maxParallel, rollJobs, instances, float64(rollJobs)/float64(instances))
	fmt.Printf("| grid rollout of every app, max_parallel %d, rollout state kept (%s): controller CPU, median of %d | %s (wall %s; %d rounds, done in %s of rounds 11 s apart) | %s (wall %s; %d rounds, %s): all at once | %.2f× | ≤ 2× CPU per round |\n",
		*rolloutParallel, scale, *runs, ms(roll.m.cpu), ms(roll.m.wall), roll.rounds, roll.simulated, ms(all.m.cpu), ms(all.m.wall), all.rounds, all.simulated, ratio(roll.m.cpu, all.m.cpu))
	if !withStore {
		return nil
	}
	if err := writeRepo(dir, nApps, nNodes, groups, "1", "", *maxParallel); err != nil {
		return err
	}
	if nApps != 100 || groups != 10 {
		return fmt.Errorf("the store scenario uses 100 apps in 10 groups")
	}
	return runStore(dir, nNodes, instances)
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}
