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
	"github.com/g8os/boot/internal/pgtest"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

// writeNetList plays g8-netup with several controllers of one fleet, the
// first one in use.
func writeNetList(t *testing.T, dir string, controllers ...*testenv.Controller) {
	t.Helper()
	now := time.Now().UTC()
	var urls []string
	for _, c := range controllers {
		urls = append(urls, c.URL)
	}
	if err := state.Write(dir, &state.Net{Controller: urls[0], Controllers: urls, Interface: "eth0", Method: "static",
		Address: "10.0.0.2/24", StartedAt: now.Add(-time.Second), ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
}

// Two controllers share one SQLite file on this machine; the session is
// on the first when it is killed.
func TestFailoverSharedSQLite(t *testing.T) {
	a := testenv.StartController(t, nil, testenv.ControllerOptions{})
	b := a.Peer(t, nil)
	n := newNode(t, a, nil, "52:54:00:5e:00:0f")
	failover(t, n, a, b)
}

// Three controllers in network namespaces on one PostgreSQL (reached
// through its unix socket); the node in its own namespace.
func TestFailoverPostgresThreeControllers(t *testing.T) {
	testenv.RequireRoot(t, "curl")
	db := pgtest.Shared(t).NewDatabase(t)
	tp := testenv.NewTopology(t)
	nodeHost, acHost := tp.Host("node"), tp.Host("ac")
	tp.Link(nodeHost, "eth0", acHost, "eth0")
	nodeHost.Addr("eth0", "10.0.0.2/24")
	addrs := []string{"10.0.0.1", "10.0.0.3", "10.0.0.4"}
	for _, a := range addrs {
		acHost.Addr("eth0", a+"/24")
	}
	first := testenv.StartController(t, acHost, testenv.ControllerOptions{Database: db, Names: addrs, Listen: []string{addrs[0] + ":8443"}})
	ctrls := []*testenv.Controller{first, first.Peer(t, acHost, addrs[1]+":8443"), first.Peer(t, acHost, addrs[2]+":8443")}
	n := newNode(t, first, nodeHost, nodeHost.MAC("eth0"))
	failover(t, n, ctrls...)
}

// failover: the node's session is on ctrls[0]. Jobs keep being queued
// (each appends its number to a file and ends in a job.finished event)
// while that controller is killed with SIGKILL. The session moves to
// another well within its backoff cap, every job runs exactly once, and
// every event arrives once and in order.
func failover(t *testing.T, n *node, ctrls ...*testenv.Controller) {
	writeNetList(t, n.StateDir, ctrls...)
	n.start(t)
	var urls []string
	for _, c := range ctrls {
		urls = append(urls, c.URL)
	}
	n.waitState(t, "connected to the first controller", 20*time.Second, func(s state.ACSession) bool {
		return s.Connected && s.Controller == ctrls[0].URL && slices.Equal(s.Controllers, urls)
	})

	ran := filepath.Join(t.TempDir(), "ran")
	const jobs, killAt = 24, 8
	ids := make([]string, 0, jobs)
	cli := ctrls[len(ctrls)-1]
	var killed time.Time
	for i := range jobs {
		if i == killAt {
			ctrls[0].Kill(t)
			killed = time.Now()
		}
		args, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d >> %s", i, ran)}})
		ids = append(ids, strings.TrimSpace(cli.CLI(t, "job", "run", n.NodeID, "exec", string(args))))
		time.Sleep(30 * time.Millisecond)
	}
	st := n.waitState(t, "moved to another controller", acsession.DefaultRetry.Max, func(s state.ACSession) bool {
		return s.Connected && s.Controller != ctrls[0].URL
	})
	t.Logf("session on %s %v after the kill (failovers %d)", st.Controller, st.ConnectedSince.Sub(killed).Round(time.Millisecond), st.Failovers)
	if st.Failovers != 1 {
		t.Errorf("failovers = %d, want 1", st.Failovers)
	}
	for _, id := range ids {
		if v := waitJob(t, cli, id, 30*time.Second); v.State != acapi.JobOK {
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
	evs := events(t, cli, n.NodeID)
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
