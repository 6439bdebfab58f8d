package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/grid"
)

// runStore is the same fleet on the controller's real store (SQLite, as
// `g8-ac serve --grid-repo` uses it): the grid reads heartbeats and jobs
// from it and queues jobs into it; simulated nodes claim their jobs, post
// results and heartbeats through the store as the API server would.
func runStore(repoDir string, nNodes, instances int) error {
	dir, err := os.MkdirTemp("", "gridbench-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := store.Open(filepath.Join(dir, "ac.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Now()

	// The repository names nodes by id; the store makes its own ids, so
	// the nodes are rewritten by MAC.
	ids := make([]string, nNodes)
	apps := make([]map[string]acapi.AppStatus, nNodes)
	for i := 0; i < nNodes; i++ {
		mac := fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)
		n, err := st.AddNode(ctx, []string{mac}, true, now)
		if err != nil {
			return err
		}
		ids[i] = n.ID
		apps[i] = map[string]acapi.AppStatus{}
		data := fmt.Sprintf("mac = %q\nlabels = { group = \"g%d\", dc = \"dc%d\" }\n", mac, i%10, i%3)
		if err := os.WriteFile(filepath.Join(repoDir, "nodes", fmt.Sprintf("n%04d.toml", i)), []byte(data), 0o644); err != nil {
			return err
		}
	}
	heartbeat := func(i int, at time.Time) error {
		hb := &acapi.Heartbeat{NodeID: ids[i]}
		for _, s := range apps[i] {
			hb.Apps = append(hb.Apps, s)
		}
		return st.RecordHeartbeat(ctx, ids[i], "10.0.0.1", hb, at)
	}
	for i := range ids {
		if err := heartbeat(i, now); err != nil {
			return err
		}
	}
	clock := now
	fleet := &ac.StoreFleet{Store: st, Now: func() time.Time { return clock }}
	g := &grid.Grid{RepoDir: repoDir, Fleet: fleet, Now: fleet.Now}
	readState := func() error {
		if _, err := grid.LoadRepo(repoDir); err != nil {
			return err
		}
		_, err := fleet.Observe(ctx)
		return err
	}
	// nodesWork is every node taking its jobs, running them and reporting.
	nodesWork := func() error {
		clock = clock.Add(time.Second)
		for i := range ids {
			jobs, err := st.ClaimJobs(ctx, ids[i], clock)
			if err != nil {
				return err
			}
			for _, j := range jobs {
				var a acapi.AppInstallArgs
				if err := json.Unmarshal(j.Args, &a); err != nil {
					return err
				}
				apps[i][a.Spec.Name] = acapi.AppStatus{Name: a.Spec.Name, State: acapi.AppRunning, Since: clock, Spec: a.Hash}
				if err := st.FinishJob(ctx, ids[i], &acapi.JobResult{ID: j.ID, State: acapi.JobOK}, clock); err != nil {
					return err
				}
			}
			if err := heartbeat(i, clock.Add(time.Millisecond)); err != nil {
				return err
			}
		}
		clock = clock.Add(5 * time.Second)
		return nil
	}

	var conv, convBase meter
	rounds, jobs := 0, 0
	for ; rounds < 10; rounds++ {
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
		if err := nodesWork(); err != nil {
			return err
		}
	}
	if jobs != instances {
		return fmt.Errorf("store: converge queued %d jobs for %d instances", jobs, instances)
	}
	var steady, steadyBase meter
	const steadyRounds = 3
	for i := 0; i < steadyRounds; i++ {
		var p grid.Plan
		if err := steady.measure(func() (err error) { p, err = g.Apply(ctx); return err }); err != nil {
			return err
		}
		if len(p.Actions) != 0 {
			return fmt.Errorf("store: converged fleet got %d actions", len(p.Actions))
		}
		if err := steadyBase.measure(readState); err != nil {
			return err
		}
	}
	scale := fmt.Sprintf("100 apps × %d nodes, %d instances, SQLite store", nNodes, instances)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Printf("| grid converge (%s): controller CPU, %d rounds | %s (wall %s) | %s (wall %s): reading repo + store as often | %.2f× | ≤ 1 s CPU for 10,000 instances |\n",
		scale, rounds+1, ms(conv.cpu), ms(conv.wall), ms(convBase.cpu), ms(convBase.wall), ratio(conv.cpu, convBase.cpu))
	fmt.Printf("| grid steady-state round (%s): wall | %s | %s: reading repo + store | %.2f× | ≤ 2× |\n",
		scale, ms(steady.wall/steadyRounds), ms(steadyBase.wall/steadyRounds), ratio(steady.wall, steadyBase.wall))
	return nil
}
