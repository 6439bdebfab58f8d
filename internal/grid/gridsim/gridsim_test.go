package gridsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/grid"
	"github.com/g8os/boot/internal/sd"
)

func write(t *testing.T, dir, name, data string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// scenario is a grid over three simulated nodes and a repository in a
// temp dir, with a clock the test moves.
type scenario struct {
	t     *testing.T
	dir   string
	fleet *Fleet
	g     *grid.Grid
	now   time.Time
}

func newScenario(t *testing.T) *scenario {
	s := &scenario{t: t, dir: t.TempDir(), now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	s.fleet = New(3, func(i int) (string, []string) {
		return fmt.Sprintf("node-%d", i+1), []string{fmt.Sprintf("52:54:00:00:00:%02x", i+1)}
	})
	s.fleet.Now = func() time.Time { return s.now }
	s.g = &grid.Grid{RepoDir: s.dir, Fleet: s.fleet, Now: s.fleet.Now,
		Policy: grid.Policy{Base: 2 * time.Second, Cap: time.Minute, Window: 15 * time.Minute}}
	for i := 1; i <= 3; i++ {
		write(t, s.dir, fmt.Sprintf("nodes/n%d.toml", i), fmt.Sprintf("mac = \"52:54:00:00:00:%02x\"\nlabels = { role = \"edge\" }\n", i))
	}
	write(t, s.dir, "apps/web.toml", "flist = \"web.flist\"\ncommand = [\"/bin/httpd\"]\n")
	write(t, s.dir, "links/web.toml", "app = \"web\"\nselector = { role = \"edge\" }\n")
	return s
}

// converge applies and lets the nodes work until a round queues nothing
// and no roll waits for its turn; it returns the rounds that queued jobs.
func (s *scenario) converge() int {
	s.t.Helper()
	queued := 0
	for round := 0; round < 40; round++ {
		p, err := s.g.Apply(context.Background())
		if err != nil {
			s.t.Fatal(err)
		}
		waiting := false
		for _, r := range p.Rows {
			waiting = waiting || strings.HasPrefix(r.Next, "roll after")
		}
		if len(p.Actions) == 0 && !waiting {
			return queued
		}
		if len(p.Actions) > 0 {
			queued++
		}
		s.now = s.now.Add(time.Second)
		s.fleet.Step(s.now)
		s.now = s.now.Add(time.Second)
	}
	s.t.Fatal("no convergence in 40 rounds")
	return 0
}

func (s *scenario) apps(node string) map[string]string { return s.fleet.Apps(node) }

// A new spec rolls across the fleet max_parallel instances at a time: the
// next only once the previous run the new spec for min_healthy_time, so
// never more than max_parallel instances are between versions.
func TestRollingUpdate(t *testing.T) {
	for _, parallel := range []int{1, 2} {
		t.Run(fmt.Sprintf("max_parallel %d", parallel), func(t *testing.T) {
			s := newScenario(t)
			s.fleet = New(5, func(i int) (string, []string) {
				return fmt.Sprintf("node-%d", i+1), []string{fmt.Sprintf("52:54:00:00:00:%02x", i+1)}
			})
			s.fleet.Now = func() time.Time { return s.now }
			s.g.Fleet = s.fleet
			for i := 4; i <= 5; i++ {
				write(t, s.dir, fmt.Sprintf("nodes/n%d.toml", i), fmt.Sprintf("mac = \"52:54:00:00:00:%02x\"\nlabels = { role = \"edge\" }\n", i))
			}
			update := fmt.Sprintf("[update]\nmax_parallel = %d\nmin_healthy_time = \"5s\"\n", parallel)
			write(t, s.dir, "apps/web.toml", "flist = \"web.flist\"\ncommand = [\"/bin/httpd\"]\n"+update)
			s.converge()
			s.now = s.now.Add(time.Minute)
			write(t, s.dir, "apps/web.toml", "flist = \"web-2.flist\"\ncommand = [\"/bin/httpd\"]\n"+update)
			r, _ := grid.LoadRepo(s.dir)
			v2 := r.Apps["web"].Hash
			rolledAt := map[string]time.Time{}
			for round := 0; round < 60; round++ {
				if _, err := s.g.Apply(context.Background()); err != nil {
					t.Fatal(err)
				}
				s.now = s.now.Add(time.Second)
				s.fleet.Step(s.now)
				fresh := 0
				for i := 1; i <= 5; i++ {
					n := fmt.Sprintf("node-%d", i)
					if s.apps(n)["web"] == v2 {
						if _, ok := rolledAt[n]; !ok {
							rolledAt[n] = s.now
						}
						if s.now.Sub(rolledAt[n]) < 5*time.Second {
							fresh++
						}
					}
				}
				if fresh > parallel {
					t.Fatalf("round %d: %d instances rolled less than min_healthy_time ago, max_parallel %d", round, fresh, parallel)
				}
			}
			if len(rolledAt) != 5 {
				t.Fatalf("rolled %d of 5 nodes: %v", len(rolledAt), rolledAt)
			}
			// The batches are min_healthy_time apart.
			var times []time.Time
			for _, at := range rolledAt {
				times = append(times, at)
			}
			slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
			if span := times[4].Sub(times[0]); span < time.Duration((5-1)/parallel)*5*time.Second {
				t.Errorf("5 nodes rolled within %v with max_parallel %d: not in batches", span, parallel)
			}
		})
	}
}

func TestGridLifecycle(t *testing.T) {
	s := newScenario(t)
	if rounds := s.converge(); rounds != 1 {
		t.Errorf("fresh install took %d rounds, want 1", rounds)
	}
	v1 := s.apps("node-1")["web"]
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		if got := s.apps(n); len(got) != 1 || got["web"] != v1 {
			t.Fatalf("%s runs %v", n, got)
		}
	}

	// A crash the node could not recover from is started again, then with backoff.
	s.fleet.Crash("node-2", "web", s.now)
	p, _ := s.g.Apply(context.Background())
	if len(p.Actions) != 1 || p.Actions[0].Kind != grid.ActStart || p.Actions[0].NodeID != "node-2" {
		t.Fatalf("after a crash: %v", p.Actions)
	}
	s.now = s.now.Add(time.Second)
	s.fleet.Step(s.now)
	s.fleet.Crash("node-2", "web", s.now)
	s.now = s.now.Add(time.Second)
	if p, _ := s.g.Apply(context.Background()); len(p.Actions) != 0 {
		t.Fatalf("second crash right after a start must wait its backoff, got %v", p.Actions)
	}
	s.now = s.now.Add(3 * time.Second)
	if p, _ := s.g.Apply(context.Background()); len(p.Actions) != 1 || p.Actions[0].Kind != grid.ActStart {
		t.Fatalf("after the backoff: %v", p.Actions)
	}
	s.now = s.now.Add(time.Second)
	s.fleet.Step(s.now)

	// Editing the app rolls it everywhere; an offline node rolls when back.
	s.fleet.SetOnline("node-3", false)
	write(t, s.dir, "apps/web.toml", "flist = \"web-2.flist\"\ncommand = [\"/bin/httpd\", \"-v\"]\n")
	s.converge()
	v2 := s.apps("node-1")["web"]
	if v2 == v1 || s.apps("node-2")["web"] != v2 || s.apps("node-3")["web"] != v1 {
		t.Fatalf("after the edit: node-1 %v node-2 %v node-3 %v", s.apps("node-1"), s.apps("node-2"), s.apps("node-3"))
	}
	s.fleet.SetOnline("node-3", true)
	s.converge()
	if s.apps("node-3")["web"] != v2 {
		t.Fatalf("node-3 back online runs %v", s.apps("node-3"))
	}

	// An invalid repository changes nothing.
	write(t, s.dir, "links/web.toml", "app = \"web\"\nselector = { role = \"edge\" }\nnodez = [\"n1\"]\n")
	_, err := s.g.Apply(context.Background())
	var re *grid.RepoError
	if !errors.As(err, &re) || re.Errors[0].File != "links/web.toml" || re.Errors[0].Field != "nodez" {
		t.Fatalf("invalid repo: %v", err)
	}
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		if !reflect.DeepEqual(s.apps(n), map[string]string{"web": v2}) {
			t.Fatalf("invalid repo changed %s: %v", n, s.apps(n))
		}
	}

	// Unlinking removes it.
	os.Remove(filepath.Join(s.dir, "links/web.toml"))
	s.converge()
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		if len(s.apps(n)) != 0 {
			t.Fatalf("unlinked, %s still runs %v", n, s.apps(n))
		}
	}
}

func TestGridRunKeepsLastValidRepo(t *testing.T) {
	s := newScenario(t)
	s.converge()
	write(t, s.dir, "apps/web.toml", "flist = \"web.flist\"\n") // no command: invalid
	s.fleet.Crash("node-1", "web", s.now)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.g.Run(ctx, time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		obs, _ := s.fleet.Observe(ctx)
		if len(obs.Jobs) > 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not restart the crashed app while the repository was invalid")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	obs, _ := s.fleet.Observe(context.Background())
	last := obs.Jobs[len(obs.Jobs)-1]
	if last.Kind != "app.start" || last.Node != "node-1" {
		t.Fatalf("last job = %+v", last)
	}
}

// A converging fleet gets one summary line in the journal, not one per job.
func TestGridLogsASummaryForManyJobs(t *testing.T) {
	s := newScenario(t)
	for i := 4; i <= 30; i++ {
		write(t, s.dir, fmt.Sprintf("nodes/n%d.toml", i), fmt.Sprintf("mac = \"52:54:00:00:01:%02x\"\nlabels = { role = \"edge\" }\n", i))
	}
	s.fleet = New(30, func(i int) (string, []string) {
		if i < 3 {
			return fmt.Sprintf("node-%d", i+1), []string{fmt.Sprintf("52:54:00:00:00:%02x", i+1)}
		}
		return fmt.Sprintf("node-%d", i+1), []string{fmt.Sprintf("52:54:00:00:01:%02x", i+1)}
	})
	s.fleet.Now = func() time.Time { return s.now }
	s.g.Fleet = s.fleet
	var buf bytes.Buffer
	s.g.Log = sd.NewTextLogger(&buf, "ac", slog.LevelInfo)
	if _, err := s.g.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != 1 || !strings.Contains(buf.String(), "queueing 30 jobs: 30 install") {
		t.Fatalf("%d log lines:\n%s", lines, buf.String())
	}
}
