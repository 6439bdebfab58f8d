package grid

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// NodeObs is what the controller knows about one node: its identity and
// its last heartbeat's app statuses.
type NodeObs struct {
	ID       string
	MACs     []string
	Hostname string
	Online   bool      // the controller heard from it recently
	LastSeen time.Time // last heartbeat
	Apps     []acapi.AppStatus
}

// JobObs is one app.* job the controller holds for a node, queued or done.
type JobObs struct {
	ID       string
	Node     string // node id
	Kind     string // acapi.JobApp*
	App      string
	State    string // acapi.Job* states
	Spec     string // AppSpec.Hash of an app.install
	Created  time.Time
	Finished time.Time // zero while queued or running
	Error    string
	// Status is the app's state the node put in the job's result (every
	// app job but app.logs carries it): fresher than the last heartbeat
	// when the job finished after it. Nil when the node sent none.
	Status *acapi.AppStatus
}

func (j JobObs) pending() bool { return j.State == acapi.JobQueued || j.State == acapi.JobRunning }

func (j JobObs) failed() bool {
	return j.State == acapi.JobFailed || j.State == acapi.JobTimeout || j.State == acapi.JobRejected
}

// Observed is the fleet as the controller sees it.
type Observed struct {
	Nodes []NodeObs
	Jobs  []JobObs // the app.* jobs of the last Policy.Window at least
	// Rollouts is the rollout state the store kept, by app name.
	Rollouts map[string]RolloutState
}

// Policy tunes how patiently the grid corrects a node.
type Policy struct {
	// Base and Cap bound the wait before another corrective job for the
	// same (node, app) after a failed job or after starting a failed app:
	// Base, 2×Base, 4×Base ... up to Cap.
	Base, Cap time.Duration
	// Window is how far back jobs count towards that backoff.
	Window time.Duration
}

// DefaultPolicy is what g8-ac uses.
var DefaultPolicy = Policy{Base: 2 * time.Second, Cap: 5 * time.Minute, Window: 15 * time.Minute}

// ActionKind is what the grid asks a node to do for one app.
type ActionKind string

const (
	ActInstall ActionKind = "install" // not on the node: mount, start
	ActRoll    ActionKind = "roll"    // runs another spec: replace it
	ActStart   ActionKind = "start"   // installed, not running
	ActRemove  ActionKind = "remove"  // no longer linked: stop, unmount, forget
)

// Action is one job to enqueue.
type Action struct {
	NodeID string // the controller's node id
	Node   string // the repository's node name
	App    string
	Kind   ActionKind
	Spec   *acapi.AppSpec // install and roll
	Hash   string         // Spec's hash, install and roll
	Reason string
}

func (k ActionKind) jobKind() string {
	switch k {
	case ActInstall, ActRoll:
		return acapi.JobAppInstall
	case ActStart:
		return acapi.JobAppStart
	case ActRemove:
		return acapi.JobAppRemove
	}
	panic("grid: unknown action " + string(k))
}

// Job returns the job kind and args that carry out a.
func (a Action) Job() (kind string, args json.RawMessage) {
	var v any = acapi.AppArgs{Name: a.App}
	kind = a.Kind.jobKind()
	if kind == acapi.JobAppInstall {
		v = acapi.AppInstallArgs{Spec: *a.Spec, Hash: a.Hash}
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic("grid: job args are always encodable: " + err.Error())
	}
	return kind, b
}

func (a Action) String() string {
	s := fmt.Sprintf("%s %s on %s", a.Kind, a.App, a.Node)
	if a.NodeID != "" && a.NodeID != a.Node {
		s += " (" + a.NodeID + ")"
	}
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

// Row is one (node, app) line of `g8-ac grid status`.
type Row struct {
	Node     string // repository name, or the node id of an unmanaged node
	NodeID   string
	App      string
	Linked   bool
	State    string // the node's report, or offline | unknown-node | absent
	Since    time.Time
	Restarts int
	Error    string // the app's error, else the last failed job's
	Next     string // what the grid does about it: "", "install", "wait 8s", "pending app.install"
}

// Plan is the outcome of one reconcile.
type Plan struct {
	Actions []Action
	Rows    []Row
	// Unmatched are repository nodes the controller has never seen;
	// they converge once they enroll.
	Unmatched []string
	// Unmanaged are controller nodes no repository node matches; the grid
	// leaves whatever runs on them alone.
	Unmanaged []string
	// Rollouts is the progress of every app not yet on its repository
	// spec everywhere, or stopped, by app name.
	Rollouts []Rollout
	// States is every linked app's rollout state after this round, by app
	// name: what the store keeps for the next.
	States []RolloutState
}

// Rollout is how far an app's repository spec has gone across the nodes
// it is linked to.
type Rollout struct {
	App         string
	Spec        string // the repository's spec hash
	Nodes       int    // linked nodes the controller knows
	Done        int    // running the spec for min_healthy_time
	Rolling     int    // on their way (see rolling)
	MaxParallel int
	State       RolloutState
	Phase       string // RolloutState.Phase
}

type jobKey struct{ node, app string }

// Reconcile is the grid's whole decision, without side effects: for every
// repository node the controller knows and that is online, the actions
// that move its apps toward the repository. An (node, app) with a job in
// flight gets none (one job at a time, so order never matters); one whose
// last jobs failed waits out a backoff; an offline node waits until it is
// back. Calling it again with the same inputs gives the same plan.
func Reconcile(repo *Repo, obs Observed, now time.Time, pol Policy) Plan {
	var p Plan
	desired := repo.Desired()

	byID := make(map[string]*NodeObs, len(obs.Nodes))
	byMAC := make(map[string]*NodeObs, len(obs.Nodes))
	for i := range obs.Nodes {
		n := &obs.Nodes[i]
		byID[n.ID] = n
		for _, m := range n.MACs {
			byMAC[strings.ToLower(m)] = n
		}
	}
	jobs := map[jobKey][]JobObs{}
	for _, j := range obs.Jobs {
		// An operator reading logs changes nothing on the node: it must
		// not hold back a correction.
		if j.Kind == acapi.JobAppLogs {
			continue
		}
		if j.pending() || now.Sub(j.Created) <= pol.Window {
			k := jobKey{j.Node, j.App}
			jobs[k] = append(jobs[k], j)
		}
	}
	for _, js := range jobs {
		sort.Slice(js, func(a, b int) bool { return js[a].Created.Before(js[b].Created) })
	}

	type nodeView struct {
		name string
		on   *NodeObs
		want map[string]*App
		have map[string]acapi.AppStatus
	}
	var views []nodeView
	matched := map[string]bool{}
	for _, name := range sortedKeys(repo.Nodes) {
		rn := repo.Nodes[name]
		var on *NodeObs
		if rn.ID != "" {
			on = byID[rn.ID]
		} else {
			on = byMAC[rn.MAC]
		}
		want := desired[name]
		if on == nil {
			p.Unmatched = append(p.Unmatched, name)
			for _, app := range sortedKeys(want) {
				p.Rows = append(p.Rows, Row{Node: name, App: app, Linked: true, State: "unknown-node"})
			}
			continue
		}
		matched[on.ID] = true
		have := make(map[string]acapi.AppStatus, len(on.Apps))
		for _, a := range on.Apps {
			have[a.Name] = a
		}
		fresher(have, on, want, jobs)
		views = append(views, nodeView{name, on, want, have})
	}
	// Rollouts: each linked app's state steps on what its nodes show, and
	// says which spec the grid installs (the repository's, or the last
	// good one once reverted).
	instances := map[string][]instance{}
	for _, v := range views {
		for app := range v.want {
			st, present := v.have[app]
			instances[app] = append(instances[app], instance{node: v.name, st: st, present: present,
				online: v.on.Online, jobs: jobs[jobKey{v.on.ID, app}]})
		}
	}
	states := make(map[string]RolloutState, len(instances))
	for app, ins := range instances {
		states[app] = stepRollout(obs.Rollouts[app], repo.Apps[app], ins, now)
	}
	for _, v := range views {
		for app, d := range v.want {
			v.want[app] = states[app].target(d)
		}
	}
	// Rolling updates: per app, how many more instances may start rolling
	// now (the rollout's limit: max_parallel, the canary batch, none while
	// paused or failed; less those on their way).
	progress := map[string]*Rollout{}
	for _, v := range views {
		for app, d := range v.want {
			ro := progress[app]
			if ro == nil {
				ro = &Rollout{App: app, Spec: d.Hash, MaxParallel: d.MaxParallel}
				progress[app] = ro
			}
			ro.Nodes++
			st, present := v.have[app]
			switch {
			case rolling(d, st, present, jobs[jobKey{v.on.ID, app}], now):
				ro.Rolling++
			case present && st.Spec == d.Hash:
				ro.Done++
			}
		}
	}
	budget := map[string]int{}
	for _, app := range sortedKeys(progress) {
		ro, s := progress[app], states[app]
		s.Nodes, s.Done, s.Rolling = ro.Nodes, ro.Done, ro.Rolling
		states[app] = s
		ro.State, ro.Phase = s, s.Phase()
		budget[app] = s.limit(repo.Apps[app]) - ro.Rolling
		if ro.Done < ro.Nodes || ro.Phase != "done" {
			p.Rollouts = append(p.Rollouts, *ro)
		}
		p.States = append(p.States, s)
	}
	for _, v := range views {
		name, on, want, have := v.name, v.on, v.want, v.have
		apps := map[string]bool{}
		for a := range want {
			apps[a] = true
		}
		for a := range have {
			apps[a] = true
		}
		for _, app := range sortedKeys(apps) {
			desired, linked := want[app]
			st, present := have[app]
			row := Row{Node: name, NodeID: on.ID, App: app, Linked: linked, State: "absent"}
			if present {
				row.State, row.Since, row.Restarts, row.Error = st.State, st.Since, st.Restarts, st.Error
			}
			act := decide(desired, st, present)
			if !on.Online {
				if present {
					row.State = "offline (" + st.State + ")"
				} else {
					row.State = "offline"
				}
				if act != "" {
					row.Next = string(act) + " when back"
				}
				p.Rows = append(p.Rows, row)
				continue
			}
			// The last job's failure, while nothing newer replaced it: what
			// the operator needs to act (a roll that failed and is retried).
			if js := jobs[jobKey{on.ID, app}]; row.Error == "" && len(js) > 0 && js[len(js)-1].failed() {
				row.Error = js[len(js)-1].Kind + ": " + js[len(js)-1].Error
			}
			if act == "" {
				p.Rows = append(p.Rows, row)
				continue
			}
			if wait, why := gate(jobs[jobKey{on.ID, app}], act, desired, on.LastSeen, now, pol); why != "" {
				row.Next = why
				if wait > 0 {
					row.Next = fmt.Sprintf("%s in %s", act, wait.Round(time.Second))
				}
				p.Rows = append(p.Rows, row)
				continue
			}
			// An instance already counted as rolling (a failed roll retried)
			// holds its place in the budget, unless the rollout is paused:
			// then no roll goes out, not even a retry.
			if act == ActRoll && (states[app].Paused || !rolling(desired, st, present, jobs[jobKey{on.ID, app}], now)) {
				if budget[app] <= 0 {
					row.Next = holdReason(states[app], desired)
					p.Rows = append(p.Rows, row)
					continue
				}
				budget[app]--
			}
			a := Action{NodeID: on.ID, Node: name, App: app, Kind: act, Reason: reason(act, desired, st)}
			if act == ActInstall || act == ActRoll {
				a.Spec, a.Hash = &desired.Spec, desired.Hash
			}
			row.Next = string(act)
			p.Actions = append(p.Actions, a)
			p.Rows = append(p.Rows, row)
		}
	}
	for _, n := range obs.Nodes {
		if !matched[n.ID] {
			p.Unmanaged = append(p.Unmanaged, n.ID)
		}
	}
	sort.Strings(p.Unmanaged)
	return p
}

// rolling reports whether one instance of app is on its way to the
// repository's spec and not there yet, which holds back the next roll of
// that app: a pending install of the spec; the spec installed but not yet
// running for the app's min_healthy_time (starting, failed, unhealthy); or
// a roll to the spec that failed and is being retried (the rollout stops
// at the first node that cannot take the spec; its old version keeps
// running).
func rolling(app *App, st acapi.AppStatus, present bool, js []JobObs, now time.Time) bool {
	for _, j := range js {
		if j.pending() && j.Kind == acapi.JobAppInstall && j.Spec == app.Hash {
			return true
		}
	}
	if present && st.Spec == app.Hash {
		return st.State != acapi.AppRunning || now.Sub(st.Since) < app.MinHealthyTime
	}
	if n := len(js); present && n > 0 && js[n-1].failed() && js[n-1].Kind == acapi.JobAppInstall && js[n-1].Spec == app.Hash {
		return true
	}
	return false
}

// fresher updates a node's reported apps with the results of app jobs
// that finished after its last heartbeat: the state the node put in the
// result, or, for a remove, the app gone. Status then shows a job's
// outcome at once, and the next decision need not wait for a heartbeat.
func fresher(have map[string]acapi.AppStatus, on *NodeObs, want map[string]*App, jobs map[jobKey][]JobObs) {
	names := make([]string, 0, len(have)+len(want))
	for a := range have {
		names = append(names, a)
	}
	for a := range want {
		if _, ok := have[a]; !ok {
			names = append(names, a)
		}
	}
	for _, app := range names {
		k := jobKey{on.ID, app}
		js := jobs[k]
		if len(js) == 0 {
			continue
		}
		last := js[len(js)-1]
		if last.State != acapi.JobOK || !last.Finished.After(on.LastSeen) {
			continue
		}
		switch {
		case last.Kind == acapi.JobAppRemove:
			delete(have, k.app)
		case last.Status != nil && last.Status.Name == k.app:
			have[k.app] = *last.Status
		}
	}
}

// reported says whether a job's result already shows its outcome (so the
// grid need not wait for the node's next heartbeat).
func (j JobObs) reported() bool { return j.Status != nil || j.Kind == acapi.JobAppRemove }

// decide compares one app's desired spec (nil when unlinked) with what the
// node reports.
func decide(app *App, st acapi.AppStatus, present bool) ActionKind {
	switch {
	case app == nil && present:
		return ActRemove
	case app == nil:
		return ""
	case !present:
		return ActInstall
	case st.Spec != app.Hash:
		return ActRoll
	case st.State == acapi.AppFailed || st.State == acapi.AppStopped:
		return ActStart
	}
	// running, starting (systemd restarts it), unhealthy (the node
	// restarts it), installing: the node is on it.
	return ""
}

func reason(act ActionKind, app *App, st acapi.AppStatus) string {
	switch act {
	case ActInstall:
		return "linked, not on the node"
	case ActRoll:
		return fmt.Sprintf("spec %s on the node, %s in the repository", orDash(st.Spec), app.Hash)
	case ActStart:
		if st.Error != "" {
			return st.State + ": " + st.Error
		}
		return st.State
	case ActRemove:
		return "no longer linked"
	}
	return ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// gate decides whether an action may go out now. It returns a non-empty
// why when it may not, with the remaining wait when that is a backoff.
func gate(js []JobObs, act ActionKind, app *App, lastSeen, now time.Time, pol Policy) (time.Duration, string) {
	if len(js) == 0 {
		return 0, ""
	}
	for _, j := range js {
		if j.pending() {
			return 0, "pending " + j.Kind
		}
	}
	last := js[len(js)-1]
	// The job succeeded but the node has not reported since: its next
	// heartbeat shows the result, so deciding again now would repeat it.
	if last.State == acapi.JobOK && last.Finished.After(lastSeen) && !last.reported() {
		return 0, "waiting for heartbeat after " + last.Kind
	}
	// Attempts at this same correction: failed jobs of the same kind (and,
	// for installs, the same spec: a new spec in the repository is a new
	// attempt), and every start, since each start means the app had failed.
	kind := act.jobKind()
	hash := ""
	if app != nil && kind == acapi.JobAppInstall {
		hash = app.Hash
	}
	attempts := 0
	var from time.Time
	for _, j := range js {
		if j.Kind != kind || !(j.failed() || kind == acapi.JobAppStart) || (hash != "" && j.Spec != hash) {
			continue
		}
		attempts++
		from = j.Finished
		if from.IsZero() {
			from = j.Created
		}
	}
	if attempts == 0 {
		return 0, ""
	}
	wait := pol.Cap
	if attempts <= 30 {
		if w := pol.Base << (attempts - 1); w > 0 && w < pol.Cap {
			wait = w
		}
	}
	if left := from.Add(wait).Sub(now); left > 0 {
		return left, "backoff"
	}
	return 0, ""
}

// holdReason is the Next of an instance whose roll waits.
func holdReason(s RolloutState, app *App) string {
	switch s.Phase() {
	case "paused":
		return "roll when the rollout is resumed (paused)"
	case "failed":
		return "none: the rollout failed (grid rollout resume or revert)"
	case "canary":
		return fmt.Sprintf("roll after the canary batch is healthy (canary %d)", app.Canary)
	}
	return fmt.Sprintf("roll after the instances rolling now (max_parallel %d)", app.MaxParallel)
}
