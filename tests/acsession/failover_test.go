package acsession_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

// writeNetList plays g8-netup with several controllers of one fleet, the
// first one in use.
func writeNetList(t *testing.T, dir string, controllers ...string) {
	t.Helper()
	now := time.Now().UTC()
	if err := state.Write(dir, &state.Net{Controller: controllers[0], Controllers: controllers, Interface: "eth0", Method: "static",
		Address: "10.0.0.2/24", StartedAt: now.Add(-time.Second), ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
}

// TestFailoverJobsAndEventsExactlyOnce: two controllers share one store;
// the node's session is on the first. Jobs keep being queued (each one
// appends its number to a file on the node and ends in a job.finished
// event) while the controller in use is killed with SIGKILL. The session
// moves to the other one well within its backoff cap, every job runs
// exactly once, and every event arrives once and in order.
func TestFailoverJobsAndEventsExactlyOnce(t *testing.T) {
	a := testenv.StartController(t, nil, testenv.ControllerOptions{})
	b := a.Peer(t, nil)
	n := newNode(t, a, nil, "52:54:00:5e:00:0f")
	writeNetList(t, n.StateDir, a.URL, b.URL)
	n.start(t)
	n.waitState(t, "connected to the first controller", 20*time.Second, func(s state.ACSession) bool {
		return s.Connected && s.Controller == a.URL && slices.Equal(s.Controllers, []string{a.URL, b.URL})
	})

	ran := filepath.Join(t.TempDir(), "ran")
	const jobs, killAt = 24, 8
	ids := make([]string, 0, jobs)
	var killed time.Time
	for i := range jobs {
		if i == killAt {
			a.Kill(t)
			killed = time.Now()
		}
		args, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d >> %s", i, ran)}})
		ids = append(ids, strings.TrimSpace(b.CLI(t, "job", "run", n.NodeID, "exec", string(args))))
		time.Sleep(30 * time.Millisecond)
	}
	st := n.waitState(t, "moved to the second controller", acsession.DefaultRetry.Max, func(s state.ACSession) bool {
		return s.Connected && s.Controller == b.URL
	})
	t.Logf("session on %s %v after the kill (failovers %d)", b.URL, st.ConnectedSince.Sub(killed).Round(time.Millisecond), st.Failovers)
	if st.Failovers != 1 {
		t.Errorf("failovers = %d, want 1", st.Failovers)
	}
	for _, id := range ids {
		if v := waitJob(t, b, id, 30*time.Second); v.State != acapi.JobOK {
			t.Errorf("job %s: %s (%+v)", id, v.State, v.Result)
		}
	}
	data, _ := os.ReadFile(ran)
	counts := map[string]int{}
	for _, l := range strings.Fields(string(data)) {
		counts[l]++
	}
	for i := range jobs {
		if c := counts[fmt.Sprint(i)]; c != 1 {
			t.Errorf("job %d ran %d times", i, c)
		}
	}
	n.waitState(t, "queue drained", 20*time.Second, func(s state.ACSession) bool { return s.Connected && s.QueueDepth == 0 })
	evs := events(t, b, n.NodeID)
	finished := map[string]int{}
	for i, e := range evs {
		if i > 0 && e.Seq != evs[i-1].Seq+1 {
			t.Errorf("event seq %d follows %d: lost or doubled", e.Seq, evs[i-1].Seq)
		}
		if e.Kind == acapi.EventJobFinished {
			var d acapi.JobFinishedData
			_ = json.Unmarshal(e.Data, &d)
			finished[d.ID]++
		}
	}
	for _, id := range ids {
		if finished[id] != 1 {
			t.Errorf("job %s: %d job.finished events, want 1", id, finished[id])
		}
	}
}
