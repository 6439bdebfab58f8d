package grid

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// rolloutRepos is web on all three example nodes with an update block,
// at its v1 command and its v2 command.
func rolloutRepos(t *testing.T, update string) (v1, v2 *Repo) {
	t.Helper()
	web := exampleRepo["apps/web.toml"] + "[update]\n" + update + "\n"
	link := map[string]string{"links/web-on-edge.toml": "app = \"web\"\nnodes = [\"edge-1\", \"edge-2\", \"db-1\"]\n"}
	link["apps/web.toml"] = web
	link["links/backup.toml"] = ""
	v1 = loadExample(t, link)
	link["apps/web.toml"] = strings.Replace(web, `"-p", "8080"]`, `"-p", "8080", "-v"]`, 1)
	v2 = loadExample(t, link)
	if v1.Apps["web"].Hash == v2.Apps["web"].Hash {
		t.Fatal("v1 and v2 have the same spec")
	}
	return v1, v2
}

// webOn is web as a node reports it: on r's spec, in state, for age.
func webOn(r *Repo, state string, age time.Duration) acapi.AppStatus {
	st := running(r, "web")
	st.State, st.Since = state, t0.Add(-age)
	return st
}

// goodState is web's rollout state once v1 ran everywhere.
func goodState(t *testing.T, v1 *Repo) RolloutState {
	t.Helper()
	all := webOn(v1, acapi.AppRunning, time.Hour)
	p := Reconcile(v1, Observed{Nodes: fleet(map[string][]acapi.AppStatus{"node-0001": {all}, "node-0002": {all}, "node-0003": {all}})}, t0.Add(-time.Hour/2), testPolicy)
	for _, s := range p.States {
		if s.App == "web" {
			if s.Good != v1.Apps["web"].Hash || s.GoodSpec == nil || s.Phase() != "done" {
				t.Fatalf("v1 everywhere: state %+v", s)
			}
			return s
		}
	}
	t.Fatal("no rollout state for web")
	return RolloutState{}
}

func install(r *Repo, node, state string, ago time.Duration) JobObs {
	j := JobObs{ID: "j-" + node, Node: node, Kind: acapi.JobAppInstall, App: "web", Spec: r.Apps["web"].Hash,
		State: state, Created: t0.Add(-ago), Finished: t0.Add(-ago + time.Second)}
	if state == acapi.JobFailed {
		j.Error = "sandbox web.flist: not in the store"
	}
	return j
}

// The rollout state machine, one round at a time: the canary batch, the
// batches after it, a failed batch stopping the rollout or reverting it,
// the operator's pause, and a revert that holds until the repository
// moves on.
func TestRolloutStateMachine(t *testing.T) {
	const canary = "max_parallel = 2\ncanary = 1\nmin_healthy_time = \"10s\"\nhealthy_deadline = \"2m\""
	const revert = "max_parallel = 1\nmin_healthy_time = \"10s\"\nhealthy_deadline = \"2m\"\nauto_revert = true"
	// The state the last round left, from v1 good everywhere and v2's hash.
	type state = func(good RolloutState, v2 string) RolloutState
	fresh := func(g RolloutState, v2 string) RolloutState {
		g.Spec, g.Since, g.Done = v2, t0.Add(-time.Hour), 0
		return g
	}
	for _, tc := range []struct {
		name    string
		update  string
		prev    state
		n1      func(v1, v2 *Repo) acapi.AppStatus // edge-1's web; the others run v1
		jobs    func(v1, v2 *Repo) []JobObs
		want    []string // actions
		phase   string
		failed  string // in the state's Failed
		backTo1 bool   // the actions install v1
		next2   string // edge-2's row's Next
	}{
		{name: "the canary batch goes first", update: canary, prev: fresh,
			n1:   func(v1, v2 *Repo) acapi.AppStatus { return webOn(v1, acapi.AppRunning, time.Hour) },
			want: []string{"roll web@node-0003"}, phase: "canary", // db-1: nodes go in name order
			next2: "roll after the canary batch is healthy (canary 1)"},
		{name: "the rollout waits at the canary until it is healthy long enough", update: canary, prev: fresh,
			n1:    func(v1, v2 *Repo) acapi.AppStatus { return webOn(v2, acapi.AppRunning, 5*time.Second) },
			jobs:  func(v1, v2 *Repo) []JobObs { return []JobObs{install(v2, "node-0001", acapi.JobOK, 30*time.Second)} },
			phase: "canary", next2: "roll after the canary batch is healthy (canary 1)"},
		{name: "a healthy canary lets max_parallel go", update: canary, prev: fresh,
			n1:   func(v1, v2 *Repo) acapi.AppStatus { return webOn(v2, acapi.AppRunning, 11*time.Second) },
			jobs: func(v1, v2 *Repo) []JobObs { return []JobObs{install(v2, "node-0001", acapi.JobOK, 30*time.Second)} },
			want: []string{"roll web@node-0002", "roll web@node-0003"}, phase: "rolling", next2: "roll"},
		{name: "paused: nothing new rolls", update: canary,
			prev: func(g RolloutState, v2 string) RolloutState {
				g, err := fresh(g, v2).Pause()
				if err != nil {
					t.Fatal(err)
				}
				return g
			},
			n1:    func(v1, v2 *Repo) acapi.AppStatus { return webOn(v2, acapi.AppRunning, 11*time.Second) },
			jobs:  func(v1, v2 *Repo) []JobObs { return []JobObs{install(v2, "node-0001", acapi.JobOK, 30*time.Second)} },
			phase: "paused", next2: "roll when the rollout is resumed (paused)"},
		{name: "a failed install in the first batch reverts; the old version still runs there", update: revert, prev: fresh,
			n1: func(v1, v2 *Repo) acapi.AppStatus { return webOn(v1, acapi.AppRunning, time.Hour) },
			jobs: func(v1, v2 *Repo) []JobObs {
				return []JobObs{install(v2, "node-0001", acapi.JobFailed, 30*time.Second)}
			},
			phase: "reverted", failed: "node edge-1: app.install failed: sandbox web.flist: not in the store"},
		{name: "an instance not healthy by the deadline reverts: it rolls back", update: revert, prev: fresh,
			n1:   func(v1, v2 *Repo) acapi.AppStatus { return webOn(v2, acapi.AppStarting, 5*time.Second) },
			jobs: func(v1, v2 *Repo) []JobObs { return []JobObs{install(v2, "node-0001", acapi.JobOK, 3*time.Minute)} },
			want: []string{"roll web@node-0001"}, backTo1: true,
			phase: "reverted", failed: "node edge-1: not running and healthy 2m0s after its roll (starting)"},
		{name: "before the deadline a starting instance is only rolling", update: revert, prev: fresh,
			n1:    func(v1, v2 *Repo) acapi.AppStatus { return webOn(v2, acapi.AppStarting, 5*time.Second) },
			jobs:  func(v1, v2 *Repo) []JobObs { return []JobObs{install(v2, "node-0001", acapi.JobOK, time.Minute)} },
			phase: "rolling", next2: "roll after the instances rolling now (max_parallel 1)"},
		{name: "without auto_revert a failure stops the rollout", update: canary, prev: fresh,
			n1: func(v1, v2 *Repo) acapi.AppStatus { return webOn(v1, acapi.AppRunning, time.Hour) },
			jobs: func(v1, v2 *Repo) []JobObs {
				return []JobObs{install(v2, "node-0001", acapi.JobFailed, 30*time.Second)}
			},
			want:  []string{"roll web@node-0001"}, // the failed node's own roll is retried with backoff
			phase: "failed", failed: "node edge-1: app.install failed", next2: "none: the rollout failed (grid rollout resume or revert)"},
		{name: "a reverted rollout stays reverted while the repository keeps the spec", update: revert,
			prev: func(g RolloutState, v2 string) RolloutState {
				g.Spec, g.Since, g.Failed, g.Reverted = v2, t0.Add(-time.Minute), "node edge-1: x", RevertAuto
				return g
			},
			n1:    func(v1, v2 *Repo) acapi.AppStatus { return webOn(v1, acapi.AppRunning, time.Hour) },
			phase: "reverted", failed: "node edge-1: x"},
		{name: "a failure before a resume does not count", update: revert,
			prev: func(g RolloutState, v2 string) RolloutState {
				g.Spec, g.Since = v2, t0.Add(-time.Minute)
				return g
			},
			n1: func(v1, v2 *Repo) acapi.AppStatus { return webOn(v1, acapi.AppRunning, time.Hour) },
			jobs: func(v1, v2 *Repo) []JobObs {
				return []JobObs{install(v2, "node-0001", acapi.JobFailed, 10*time.Minute)}
			},
			want: []string{"roll web@node-0001"}, phase: "rolling"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v1, v2 := rolloutRepos(t, tc.update)
			prev := tc.prev(goodState(t, v1), v2.Apps["web"].Hash)
			var jobs []JobObs
			if tc.jobs != nil {
				jobs = tc.jobs(v1, v2)
			}
			old := webOn(v1, acapi.AppRunning, time.Hour)
			apps := map[string][]acapi.AppStatus{"node-0001": {tc.n1(v1, v2)}, "node-0002": {old}, "node-0003": {old}}
			p := Reconcile(v2, Observed{Nodes: fleet(apps), Jobs: jobs, Rollouts: map[string]RolloutState{"web": prev}}, t0, testPolicy)
			if got := actions(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions = %q, want %q", got, tc.want)
			}
			for _, a := range p.Actions {
				if want := map[bool]string{true: v1.Apps["web"].Hash, false: v2.Apps["web"].Hash}[tc.backTo1]; a.Hash != want {
					t.Errorf("%s installs %s, want %s", a, a.Hash, want)
				}
			}
			var s RolloutState
			for _, st := range p.States {
				if st.App == "web" {
					s = st
				}
			}
			if ph := s.Phase(); ph != tc.phase {
				t.Errorf("phase %q, want %q (state %+v)", ph, tc.phase, s)
			}
			if !strings.Contains(s.Failed, tc.failed) || (tc.failed == "") != (s.Failed == "") {
				t.Errorf("failed %q, want %q", s.Failed, tc.failed)
			}
			if s.Good != v1.Apps["web"].Hash {
				t.Errorf("good %s, want v1's %s", s.Good, v1.Apps["web"].Hash)
			}
			if tc.next2 != "" {
				if row := findRow(p, "node-0002", "web"); row == nil || row.Next != tc.next2 {
					t.Errorf("edge-2's row %+v, want Next %q", row, tc.next2)
				}
			}
		})
	}
}

// Once the new spec runs healthy everywhere it becomes the good one.
func TestRolloutDoneMakesSpecGood(t *testing.T) {
	v1, v2 := rolloutRepos(t, "auto_revert = true")
	all := webOn(v2, acapi.AppRunning, time.Minute)
	apps := map[string][]acapi.AppStatus{"node-0001": {all}, "node-0002": {all}, "node-0003": {all}}
	p := Reconcile(v2, Observed{Nodes: fleet(apps), Rollouts: map[string]RolloutState{"web": goodState(t, v1)}}, t0, testPolicy)
	if len(p.States) != 1 || p.States[0].Good != v2.Apps["web"].Hash || p.States[0].Phase() != "done" || len(p.Rollouts) != 0 {
		t.Errorf("states %+v rollouts %+v", p.States, p.Rollouts)
	}
}

// The operator's commands on a rollout state.
func TestRolloutOperator(t *testing.T) {
	v1, v2 := rolloutRepos(t, "")
	good := goodState(t, v1)
	if _, err := (RolloutState{App: "web", Spec: v2.Apps["web"].Hash}).Revert(t0); err != ErrNoGoodSpec {
		t.Errorf("revert without a good spec: %v", err)
	}
	if _, err := good.Revert(t0); err != ErrAlreadyGood {
		t.Errorf("revert of the good spec itself: %v", err)
	}
	if _, err := good.Pause(); err != ErrNothingToPause {
		t.Errorf("pause of a done rollout: %v", err)
	}
	// v2 half rolled: the operator reverts, edge-1 goes back to v1.
	onV2 := webOn(v2, acapi.AppRunning, time.Minute)
	old := webOn(v1, acapi.AppRunning, time.Hour)
	apps := map[string][]acapi.AppStatus{"node-0001": {onV2}, "node-0002": {old}, "node-0003": {old}}
	obs := Observed{Nodes: fleet(apps), Rollouts: map[string]RolloutState{"web": good}}
	s := Reconcile(v2, obs, t0, testPolicy).States[0]
	s, err := s.Revert(t0)
	if err != nil || s.Reverted != RevertOperator {
		t.Fatalf("revert: %+v %v", s, err)
	}
	obs.Rollouts["web"] = s
	p := Reconcile(v2, obs, t0, testPolicy)
	if got := actions(p); !reflect.DeepEqual(got, []string{"roll web@node-0001"}) || p.Actions[0].Hash != v1.Apps["web"].Hash {
		t.Errorf("after revert: %q", got)
	}
	// Resume: v2 rolls again, where edge-1 left it (db-1 first).
	obs.Rollouts["web"] = p.States[0].Resume(t0)
	p = Reconcile(v2, obs, t0, testPolicy)
	if got := actions(p); !reflect.DeepEqual(got, []string{"roll web@node-0003"}) || p.Actions[0].Hash != v2.Apps["web"].Hash {
		t.Errorf("after resume: %q", got)
	}
}
