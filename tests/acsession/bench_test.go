//go:build bench

// The benchmark behind bench/controllers.sh: a node's real g8-acsession
// against three controllers on one PostgreSQL, beside the same node against
// one controller on its SQLite file, measured in the same run: how long
// the session is down when the controller in use is killed (the baseline
// restarts the only controller at once, as Restart=on-failure would
// without its RestartSec), a job's round trip, and over 20 kills whether
// any job or event was lost or doubled.
package acsession_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/pgtest"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

const benchTrips = 15

// benchKills is 20 (the figure); G8_BENCH_KILLS overrides it for a
// quick look.
var benchKills = func() int {
	if n, err := strconv.Atoi(os.Getenv("G8_BENCH_KILLS")); err == nil && n > 0 {
		return n
	}
	return 20
}()

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

// fleetRun is one node's session against ctrls, with the measurements.
type fleetRun struct {
	ctrls    []*testenv.Controller
	n        *node
	ran      string
	ids      []string
	downs    []time.Duration // kill → session up again
	trips    []time.Duration // job run --wait ping
	lost     int             // jobs not run, or run twice, and events lost or doubled
	jobsSeen int
}

func newFleetRun(t *testing.T, ctrls []*testenv.Controller, mac string) *fleetRun {
	f := &fleetRun{ctrls: ctrls, n: newNode(t, ctrls[0], nil, mac), ran: filepath.Join(t.TempDir(), "ran")}
	writeNetList(t, f.n.StateDir, ctrls...)
	f.n.start(t)
	f.n.waitState(t, "connected", 30*time.Second, connected)
	return f
}

// trip times job run --wait of a ping through the fleet.
func (f *fleetRun) trip(t *testing.T) {
	start := time.Now()
	v := runJob(t, f.ctrls[0], f.n.NodeID, "ping", "", 10*time.Second)
	if v.State != acapi.JobOK {
		t.Fatalf("ping: %+v", v)
	}
	f.trips = append(f.trips, time.Since(start))
}

// kill queues two jobs, kills the controller in use with SIGKILL, waits
// for the session to be up again and brings the killed one back.
func (f *fleetRun) kill(t *testing.T, i int, single bool) {
	st := f.n.state(t)
	var used *testenv.Controller
	for _, c := range f.ctrls {
		if c.URL == st.Controller {
			used = c
		}
	}
	for k := range 2 {
		args, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d-%d >> %s", i, k, f.ran)}})
		f.ids = append(f.ids, strings.TrimSpace(f.ctrls[len(f.ctrls)-1].CLI(t, "job", "run", f.n.NodeID, "exec", string(args))))
	}
	used.Kill(t)
	killed := time.Now()
	if single {
		used.Restart(t) // the baseline: the one controller back at once
	}
	up := f.n.waitState(t, "up again", 2*acsession.DefaultRetry.Max, func(s state.ACSession) bool {
		return s.Connected && s.ConnectedSince.After(killed)
	})
	f.downs = append(f.downs, up.ConnectedSince.Sub(killed))
	if !single {
		used.Restart(t)
	}
}

// check counts jobs not run exactly once and events lost or doubled.
func (f *fleetRun) check(t *testing.T) {
	for _, id := range f.ids {
		if v := waitJob(t, f.ctrls[0], id, 60*time.Second); v.State != acapi.JobOK {
			t.Errorf("job %s ended %s", id, v.State)
			f.lost++
		}
	}
	data, _ := os.ReadFile(f.ran)
	counts := map[string]int{}
	for _, l := range strings.Fields(string(data)) {
		counts[l]++
	}
	for i := range benchKills {
		for k := range 2 {
			if c := counts[fmt.Sprintf("%d-%d", i, k)]; c != 1 {
				t.Errorf("job %d-%d ran %d times", i, k, c)
				f.lost++
			}
		}
	}
	f.n.waitState(t, "queue drained", 60*time.Second, func(s state.ACSession) bool { return s.Connected && s.QueueDepth == 0 })
	evs := events(t, f.ctrls[0], f.n.NodeID)
	finished := map[string]int{}
	for i, e := range evs {
		if i > 0 && e.Seq != evs[i-1].Seq+1 {
			t.Errorf("event seq %d follows %d", e.Seq, evs[i-1].Seq)
			f.lost++
		}
		if e.Kind == acapi.EventJobFinished {
			var d acapi.JobFinishedData
			_ = json.Unmarshal(e.Data, &d)
			finished[d.ID]++
		}
	}
	for _, id := range f.ids {
		if finished[id] != 1 {
			t.Errorf("job %s: %d job.finished events", id, finished[id])
			f.lost++
		}
	}
	f.jobsSeen = len(f.ids)
}

func TestBenchControllers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a real PostgreSQL)")
	}
	db := pgtest.Shared(t).NewDatabase(t)
	testenv.Bin(t, "g8-ac") // build before any clock starts

	first := testenv.StartController(t, nil, testenv.ControllerOptions{Database: db})
	pg := newFleetRun(t, []*testenv.Controller{first, first.Peer(t, nil), first.Peer(t, nil)}, "52:54:00:be:10:01")
	single := testenv.StartController(t, nil, testenv.ControllerOptions{})
	lite := newFleetRun(t, []*testenv.Controller{single}, "52:54:00:be:10:02")

	for range benchTrips { // interleaved, so both see the same machine load
		pg.trip(t)
		lite.trip(t)
	}
	for i := range benchKills {
		pg.kill(t, i, false)
		lite.kill(t, i, true)
	}
	pg.check(t)
	lite.check(t)

	capx2 := 2 * acsession.DefaultRetry.Max
	fmt.Printf("| controllers: failover, SIGKILL of the controller in use to session up (median of %d; baseline: the single SQLite controller restarted at once) | %s | %s | %.2f | ≤ %s (2 × backoff cap) |\n",
		benchKills, ms(median(pg.downs)), ms(median(lite.downs)), float64(median(pg.downs))/float64(median(lite.downs)), capx2)
	fmt.Printf("| controllers: failover, slowest of %d kills | %s | %s | %.2f | ≤ %s |\n",
		benchKills, ms(slices.Max(pg.downs)), ms(slices.Max(lite.downs)), float64(slices.Max(pg.downs))/float64(slices.Max(lite.downs)), capx2)
	fmt.Printf("| controllers: job round trip, g8-ac job run --wait ping, 3 controllers on PostgreSQL vs 1 on SQLite (median of %d) | %s | %s | %.2f | ≤ 1.5 |\n",
		benchTrips, ms(median(pg.trips)), ms(median(lite.trips)), float64(median(pg.trips))/float64(median(lite.trips)))
	fmt.Printf("| controllers: jobs and events lost or doubled across %d kills (%d jobs each) | %d | %d | | 0 |\n",
		benchKills, pg.jobsSeen, pg.lost, lite.lost)
	if max := slices.Max(pg.downs); max > capx2 {
		t.Errorf("a failover took %v, over 2 × the backoff cap", max)
	}
}
