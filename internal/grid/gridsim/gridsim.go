// Package gridsim is a simulated fleet for the grid's convergence tests and
// benchmark: nodes that run app jobs the way g8-acsession does (install
// mounts and starts, roll replaces, remove forgets) and report their apps
// in heartbeats, without systemd or a network. It implements grid.Fleet.
package gridsim

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/grid"
)

// Fleet is a set of simulated nodes and the controller's job queue for them.
type Fleet struct {
	mu    sync.Mutex
	Now   func() time.Time // the clock Observe and Enqueue use through grid.Fleet
	nodes []*node
	byID  map[string]*node
	jobs  []*job
	seq   int
	// rollouts is the grid's rollout state, kept as the store keeps it.
	rollouts map[string]grid.RolloutState
}

type node struct {
	obs   grid.NodeObs
	apps  map[string]acapi.AppStatus
	queue []*job
}

type job struct {
	obs  grid.JobObs
	args json.RawMessage
}

// New makes n online nodes named by ident.
func New(n int, ident func(i int) (id string, macs []string)) *Fleet {
	f := &Fleet{byID: map[string]*node{}, Now: time.Now}
	for i := 0; i < n; i++ {
		id, macs := ident(i)
		nd := &node{obs: grid.NodeObs{ID: id, MACs: macs, Online: true}, apps: map[string]acapi.AppStatus{}}
		f.nodes = append(f.nodes, nd)
		f.byID[id] = nd
	}
	return f
}

// Observe implements grid.Fleet.
func (f *Fleet) Observe(context.Context) (grid.Observed, error) { return f.ObserveAt(f.Now()), nil }

// Enqueue implements grid.Fleet.
func (f *Fleet) Enqueue(_ context.Context, nodeID, kind string, args json.RawMessage) (string, error) {
	return f.EnqueueAt(nodeID, kind, args, f.Now())
}

// ObserveAt is the controller's view: each node's last heartbeat and every job.
func (f *Fleet) ObserveAt(time.Time) grid.Observed {
	f.mu.Lock()
	defer f.mu.Unlock()
	var o grid.Observed
	o.Nodes = make([]grid.NodeObs, 0, len(f.nodes))
	for _, n := range f.nodes {
		o.Nodes = append(o.Nodes, n.obs)
	}
	o.Jobs = make([]grid.JobObs, 0, len(f.jobs))
	for _, j := range f.jobs {
		o.Jobs = append(o.Jobs, j.obs)
	}
	o.Rollouts = make(map[string]grid.RolloutState, len(f.rollouts))
	for app, s := range f.rollouts {
		o.Rollouts[app] = s
	}
	return o
}

// SaveRollouts implements grid.RolloutFleet, with the store's
// compare-and-swap on versions.
func (f *Fleet) SaveRollouts(_ context.Context, states []grid.RolloutState) (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rollouts == nil {
		f.rollouts = map[string]grid.RolloutState{}
	}
	stale := map[string]bool{}
	for _, s := range states {
		if f.rollouts[s.App].Version != s.Version {
			stale[s.App] = true
			continue
		}
		s.Version++
		f.rollouts[s.App] = s
	}
	return stale, nil
}

// EnqueueAt queues a job for a node.
func (f *Fleet) EnqueueAt(nodeID, kind string, args json.RawMessage, now time.Time) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.byID[nodeID]
	if n == nil {
		return "", fmt.Errorf("no node %q", nodeID)
	}
	app, spec, ok := grid.JobApp(kind, args)
	if !ok {
		return "", fmt.Errorf("not an app job: %s", kind)
	}
	f.seq++
	j := &job{obs: grid.JobObs{ID: fmt.Sprintf("job-%d", f.seq), Node: nodeID, Kind: kind, App: app, Spec: spec,
		State: acapi.JobQueued, Created: now}, args: args}
	f.jobs = append(f.jobs, j)
	n.queue = append(n.queue, j)
	return j.obs.ID, nil
}

// Step lets every online node run its queued jobs and send a heartbeat.
func (f *Fleet) Step(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if !n.obs.Online {
			continue
		}
		for _, j := range n.queue {
			j.obs.State, j.obs.Error = acapi.JobOK, ""
			if err := n.run(j, now); err != nil {
				j.obs.State, j.obs.Error = acapi.JobFailed, err.Error()
			}
			j.obs.Finished = now
		}
		n.queue = nil
		n.heartbeat(now.Add(time.Millisecond)) // the heartbeat follows the job results
	}
}

func (n *node) heartbeat(now time.Time) {
	n.obs.LastSeen = now
	n.obs.Apps = make([]acapi.AppStatus, 0, len(n.apps))
	for _, name := range sortedNames(n.apps) {
		n.obs.Apps = append(n.obs.Apps, n.apps[name])
	}
}

func (n *node) run(j *job, now time.Time) error {
	app := j.obs.App
	switch j.obs.Kind {
	case acapi.JobAppInstall:
		var a acapi.AppInstallArgs
		if err := json.Unmarshal(j.args, &a); err != nil {
			return err
		}
		n.apps[app] = acapi.AppStatus{Name: app, State: acapi.AppRunning, Since: now, Spec: j.obs.Spec}
	case acapi.JobAppStart, acapi.JobAppRestart:
		st, ok := n.apps[app]
		if !ok {
			return fmt.Errorf("app %s is not installed", app)
		}
		st.State, st.Since, st.Error = acapi.AppRunning, now, ""
		n.apps[app] = st
	case acapi.JobAppStop:
		st := n.apps[app]
		st.State, st.Since = acapi.AppStopped, now
		n.apps[app] = st
	case acapi.JobAppRemove:
		delete(n.apps, app)
	}
	return nil
}

// Crash makes app fail on a node the way a unit that systemd gave up on does.
func (f *Fleet) Crash(nodeID, app string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.byID[nodeID]
	st, ok := n.apps[app]
	if !ok {
		return
	}
	st.State, st.Since, st.Error = acapi.AppFailed, now, "exit status 1"
	st.Restarts++
	n.apps[app] = st
	n.heartbeat(now)
}

// SetOnline takes a node off line or brings it back.
func (f *Fleet) SetOnline(nodeID string, online bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byID[nodeID].obs.Online = online
}

// Apps is what a node runs: app name → spec hash.
func (f *Fleet) Apps(nodeID string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for name, st := range f.byID[nodeID].apps {
		out[name] = st.Spec
	}
	return out
}

func sortedNames(m map[string]acapi.AppStatus) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
