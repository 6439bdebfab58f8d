package grid

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

var testPolicy = Policy{Base: 2 * time.Second, Cap: time.Minute, Window: 15 * time.Minute}

func loadExample(t *testing.T, changes map[string]string) *Repo {
	t.Helper()
	files := map[string][]byte{}
	for k, v := range with(exampleRepo, changes) {
		files[k] = []byte(v)
	}
	r, err := ParseRepo("test", files)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// running reports app as the node would once it runs spec.
func running(r *Repo, app string) acapi.AppStatus {
	return acapi.AppStatus{Name: app, State: acapi.AppRunning, Since: t0.Add(-time.Hour), Spec: r.Apps[app].Spec.Hash()}
}

// fleet is the example's three nodes, online, heard from a second ago;
// edge-2 is known by its MAC only.
func fleet(apps map[string][]acapi.AppStatus) []NodeObs {
	return []NodeObs{
		{ID: "node-0001", MACs: []string{"52:54:00:aa:bb:01"}, Online: true, LastSeen: t0.Add(-time.Second), Apps: apps["node-0001"]},
		{ID: "node-0002", MACs: []string{"52:54:00:AA:BB:02"}, Online: true, LastSeen: t0.Add(-time.Second), Apps: apps["node-0002"]},
		{ID: "node-0003", MACs: []string{"52:54:00:aa:bb:03"}, Online: true, LastSeen: t0.Add(-time.Second), Apps: apps["node-0003"]},
	}
}

// converged is the example fully applied.
func converged(r *Repo) map[string][]acapi.AppStatus {
	return map[string][]acapi.AppStatus{
		"node-0001": {running(r, "backup"), running(r, "web")},
		"node-0002": {running(r, "web")},
		"node-0003": {running(r, "backup")},
	}
}

func actions(p Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, fmt.Sprintf("%s %s@%s", a.Kind, a.App, a.NodeID))
	}
	sort.Strings(out)
	return out
}

func TestReconcile(t *testing.T) {
	r := loadExample(t, nil)
	webV1 := running(r, "web")
	webV1.Spec = "0123456789abcdef"
	failedBackup := running(r, "backup")
	failedBackup.State, failedBackup.Error, failedBackup.Restarts = acapi.AppFailed, "exit status 3", 5
	ok := func(id, kind, app string, ago time.Duration) JobObs {
		return JobObs{ID: id, Node: "node-0003", Kind: kind, App: app, State: acapi.JobOK,
			Created: t0.Add(-ago - time.Second), Finished: t0.Add(-ago)}
	}
	failed := func(j JobObs, spec string) JobObs {
		j.State, j.Error, j.Spec = acapi.JobFailed, "flist not found", spec
		return j
	}

	for _, tc := range []struct {
		name    string
		repo    *Repo
		apps    map[string][]acapi.AppStatus
		offline string // node id
		jobs    []JobObs
		want    []string
		next    string // Row.Next of backup@node-0003, when set
		state   string // Row.State of backup@node-0003, when set
	}{
		{name: "fresh fleet installs everything linked",
			want: []string{"install backup@node-0001", "install backup@node-0003", "install web@node-0001", "install web@node-0002"}},
		{name: "converged fleet does nothing", apps: converged(r)},
		{name: "a node running an older spec rolls",
			apps: with2(converged(r), "node-0002", webV1), want: []string{"roll web@node-0002"}},
		{name: "an unlinked app is removed",
			repo: loadExample(t, map[string]string{"links/backup.toml": "app = \"backup\"\nnodes = [\"db-1\"]\n"}),
			apps: converged(r), want: []string{"remove backup@node-0001"}},
		{name: "relabelled node loses the selected app",
			repo: loadExample(t, map[string]string{"nodes/edge-2.toml": "mac = \"52:54:00:aa:bb:02\"\nlabels = { role = \"db\" }\n"}),
			apps: converged(r), want: []string{"remove web@node-0002"}},
		{name: "a failed app is started",
			apps: with2(converged(r), "node-0003", failedBackup), want: []string{"start backup@node-0003"}},
		{name: "a failed app started a moment ago waits its backoff",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{ok("j1", acapi.JobAppStart, "backup", time.Second)}, next: "start in 1s"},
		{name: "the backoff doubles with each start",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{ok("j1", acapi.JobAppStart, "backup", 20*time.Second), ok("j2", acapi.JobAppStart, "backup", 3*time.Second)},
			next: "start in 1s"},
		{name: "after the backoff the app is started again",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{ok("j1", acapi.JobAppStart, "backup", 20*time.Second), ok("j2", acapi.JobAppStart, "backup", 5*time.Second)},
			want: []string{"start backup@node-0003"}},
		{name: "an app with a job in flight gets no second one",
			jobs: []JobObs{{ID: "j1", Node: "node-0003", Kind: acapi.JobAppInstall, App: "backup", State: acapi.JobQueued, Created: t0.Add(-time.Hour)}},
			want: []string{"install backup@node-0001", "install web@node-0001", "install web@node-0002"},
			next: "pending app.install"},
		{name: "a job done since the last heartbeat waits for the next one",
			jobs: []JobObs{ok("j1", acapi.JobAppInstall, "backup", 0)},
			want: []string{"install backup@node-0001", "install web@node-0001", "install web@node-0002"},
			next: "waiting for heartbeat after app.install"},
		{name: "a job's result shows the app's state before the next heartbeat",
			jobs:  []JobObs{withStatus(ok("j1", acapi.JobAppInstall, "backup", 0), running(r, "backup"))},
			want:  []string{"install backup@node-0001", "install web@node-0001", "install web@node-0002"},
			state: acapi.AppRunning},
		{name: "a started app that failed again in the job's result waits its backoff, not a heartbeat",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{withStatus(ok("j1", acapi.JobAppStart, "backup", 0), failedBackup)},
			next: "start in 2s", state: acapi.AppFailed},
		{name: "a removed app is gone at once",
			repo: loadExample(t, map[string]string{"links/backup.toml": "app = \"backup\"\nnodes = [\"db-1\"]\n"}),
			apps: converged(r),
			jobs: []JobObs{{ID: "j1", Node: "node-0001", Kind: acapi.JobAppRemove, App: "backup", State: acapi.JobOK, Created: t0.Add(-time.Second), Finished: t0}}},
		{name: "an operator's app.logs job holds back nothing",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{{ID: "j1", Node: "node-0003", Kind: acapi.JobAppLogs, App: "backup", State: acapi.JobRunning, Created: t0.Add(-time.Second)},
				{ID: "j0", Node: "node-0003", Kind: acapi.JobAppLogs, App: "backup", State: acapi.JobOK, Created: t0.Add(-time.Second), Finished: t0}},
			want: []string{"start backup@node-0003"}},
		{name: "a failed install waits its backoff",
			apps: with2(converged(r), "node-0003"),
			jobs: []JobObs{failed(ok("j1", acapi.JobAppInstall, "backup", time.Second), r.Apps["backup"].Spec.Hash())},
			next: "install in 1s"},
		{name: "a failed install of an older spec does not delay the new one",
			apps: with2(converged(r), "node-0003"),
			jobs: []JobObs{failed(ok("j1", acapi.JobAppInstall, "backup", time.Second), "0123456789abcdef")},
			want: []string{"install backup@node-0003"}},
		{name: "jobs older than the window are forgotten",
			apps: with2(converged(r), "node-0003", failedBackup),
			jobs: []JobObs{ok("j1", acapi.JobAppStart, "backup", time.Hour)},
			want: []string{"start backup@node-0003"}},
		{name: "an offline node waits until it is back",
			offline: "node-0003", next: "install when back",
			want: []string{"install backup@node-0001", "install web@node-0001", "install web@node-0002"}},
		{name: "a crash-looping app that systemd restarts is left to systemd",
			apps: with2(converged(r), "node-0003", acapi.AppStatus{Name: "backup", State: acapi.AppStarting, Restarts: 3, Spec: r.Apps["backup"].Spec.Hash()})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := tc.repo
			if repo == nil {
				repo = r
			}
			nodes := fleet(tc.apps)
			for i := range nodes {
				if nodes[i].ID == tc.offline {
					nodes[i].Online = false
				}
			}
			p := Reconcile(repo, Observed{Nodes: nodes, Jobs: tc.jobs}, t0, testPolicy)
			if got := actions(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions = %q\nwant      %q", got, tc.want)
			}
			if tc.next != "" {
				row := findRow(p, "node-0003", "backup")
				if row == nil || row.Next != tc.next {
					t.Errorf("backup@node-0003 row = %+v, want next %q", row, tc.next)
				}
			}
			if tc.state != "" {
				if row := findRow(p, "node-0003", "backup"); row == nil || row.State != tc.state {
					t.Errorf("backup@node-0003 row = %+v, want state %q", row, tc.state)
				}
			}
			// The same inputs give the same plan.
			if again := Reconcile(repo, Observed{Nodes: nodes, Jobs: tc.jobs}, t0, testPolicy); !reflect.DeepEqual(again, p) {
				t.Errorf("reconcile is not deterministic")
			}
		})
	}
}

func withStatus(j JobObs, st acapi.AppStatus) JobObs {
	j.Status = &st
	return j
}

func with2(apps map[string][]acapi.AppStatus, node string, sts ...acapi.AppStatus) map[string][]acapi.AppStatus {
	out := map[string][]acapi.AppStatus{}
	for k, v := range apps {
		out[k] = v
	}
	var keep []acapi.AppStatus
	replaced := map[string]bool{}
	for _, s := range sts {
		replaced[s.Name] = true
	}
	for _, s := range apps[node] {
		if !replaced[s.Name] && len(sts) > 0 {
			keep = append(keep, s)
		}
	}
	out[node] = append(keep, sts...)
	return out
}

func findRow(p Plan, node, app string) *Row {
	for i := range p.Rows {
		if p.Rows[i].NodeID == node && p.Rows[i].App == app {
			return &p.Rows[i]
		}
	}
	return nil
}

func TestReconcileInstallCarriesTheSpec(t *testing.T) {
	r := loadExample(t, nil)
	p := Reconcile(r, Observed{Nodes: fleet(nil)}, t0, testPolicy)
	for _, a := range p.Actions {
		kind, args := a.Job()
		app, spec, ok := JobApp(kind, args)
		if kind != acapi.JobAppInstall || !ok || app != a.App || spec != r.Apps[a.App].Spec.Hash() {
			t.Errorf("%s: job %s %s decodes to %q %q %v", a, kind, args, app, spec, ok)
		}
	}
}

func TestReconcileUnknownAndUnmanagedNodes(t *testing.T) {
	r := loadExample(t, nil)
	nodes := fleet(nil)
	// edge-1 never enrolled; a stranger runs an app the grid must not touch.
	nodes[0] = NodeObs{ID: "stranger", Online: true, Apps: []acapi.AppStatus{{Name: "web", State: acapi.AppRunning}}}
	p := Reconcile(r, Observed{Nodes: nodes}, t0, testPolicy)
	if !reflect.DeepEqual(p.Unmatched, []string{"edge-1"}) || !reflect.DeepEqual(p.Unmanaged, []string{"stranger"}) {
		t.Errorf("unmatched %v unmanaged %v", p.Unmatched, p.Unmanaged)
	}
	for _, a := range p.Actions {
		if a.NodeID == "stranger" {
			t.Errorf("acted on an unmanaged node: %s", a)
		}
	}
	if row := findRow(p, "", "web"); row == nil || row.Node != "edge-1" || row.State != "unknown-node" {
		t.Errorf("edge-1's web row = %+v", row)
	}
}

func TestReconcileRowsShowFailures(t *testing.T) {
	r := loadExample(t, nil)
	j := JobObs{ID: "j1", Node: "node-0003", Kind: acapi.JobAppInstall, App: "backup", State: acapi.JobFailed,
		Error: "sandbox backup.flist: not in the store", Spec: r.Apps["backup"].Spec.Hash(), Created: t0.Add(-2 * time.Second), Finished: t0.Add(-time.Second)}
	p := Reconcile(r, Observed{Nodes: fleet(nil), Jobs: []JobObs{j}}, t0, testPolicy)
	row := findRow(p, "node-0003", "backup")
	if row == nil || row.State != "absent" || !strings.Contains(row.Error, "not in the store") {
		t.Errorf("row = %+v", row)
	}
}

// A new spec goes to max_parallel nodes at a time; the next roll waits
// until those run it for min_healthy_time, or stops at a failed roll.
func TestReconcileRollsMaxParallel(t *testing.T) {
	r := loadExample(t, nil)
	old := running(r, "web")
	old.Spec = "0123456789abcdef"
	onNew := func(age time.Duration, state string) acapi.AppStatus {
		st := running(r, "web")
		st.State, st.Since = state, t0.Add(-age)
		return st
	}
	failedRoll := JobObs{ID: "j1", Node: "node-0001", Kind: acapi.JobAppInstall, App: "web", Spec: r.Apps["web"].Hash,
		State: acapi.JobFailed, Error: "roll to spec x failed", Created: t0.Add(-time.Minute), Finished: t0.Add(-time.Minute)}
	for _, tc := range []struct {
		name          string
		n1            acapi.AppStatus
		jobs          []JobObs
		want          []string
		done, rolling int
	}{
		{name: "one node at a time", n1: old, want: []string{"roll web@node-0001"}},
		{name: "the next waits while the first is not healthy long enough", n1: onNew(5*time.Second, acapi.AppRunning), rolling: 1},
		{name: "the next waits while the first is starting", n1: onNew(time.Minute, acapi.AppStarting), rolling: 1},
		{name: "the next goes once the first ran min_healthy_time", n1: onNew(11*time.Second, acapi.AppRunning),
			want: []string{"roll web@node-0002"}, done: 1},
		{name: "a failed roll stops the rollout", n1: old, jobs: []JobObs{failedRoll}, rolling: 1,
			want: []string{"roll web@node-0001"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apps := with2(with2(converged(r), "node-0001", tc.n1), "node-0002", old)
			p := Reconcile(r, Observed{Nodes: fleet(apps), Jobs: tc.jobs}, t0, testPolicy)
			if got := actions(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions = %q, want %q", got, tc.want)
			}
			var ro *Rollout
			for i := range p.Rollouts {
				if p.Rollouts[i].App == "web" {
					ro = &p.Rollouts[i]
				}
			}
			if ro == nil || ro.Nodes != 2 || ro.Done != tc.done || ro.Rolling != tc.rolling || ro.MaxParallel != 1 {
				t.Errorf("rollout %+v, want 2 nodes, %d done, %d rolling", ro, tc.done, tc.rolling)
			}
			if len(tc.want) == 0 || tc.want[0] != "roll web@node-0002" {
				if row := findRow(p, "node-0002", "web"); row == nil || !strings.HasPrefix(row.Next, "roll after") {
					t.Errorf("node-0002's row %+v, want its roll waiting", row)
				}
			}
		})
	}
}
