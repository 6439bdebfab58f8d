package ac

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// A spec whose first batch fails is reverted by the grid on its own,
// through the real store: the other node is never touched, grid status
// and grid rollout status say why, and the operator's commands act on the
// stored state (each g8-ac run opens the store afresh, as after a
// controller restart).
func TestGridRolloutAutoRevertThroughTheStore(t *testing.T) {
	f := newGridFixture(t)
	ctx := context.Background()
	f.heartbeat(f.nodes[0])
	f.heartbeat(f.nodes[1])
	if code, out := f.g8ac("grid", "rollout", "status", "web"); code != ExitNotFound {
		t.Fatalf("status before any round: exit %d\n%s", code, out)
	}
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 {
		t.Fatalf("apply v1: exit %d\n%s", code, out)
	}
	var v1 string
	for _, n := range f.nodes {
		jobs := f.runJobs(n)
		var a acapi.AppInstallArgs
		json.Unmarshal(jobs[0].Args, &a)
		v1 = a.Hash
	}
	time.Sleep(10 * time.Millisecond)
	for _, n := range f.nodes {
		f.heartbeat(n, acapi.AppStatus{Name: "web", State: acapi.AppRunning, Spec: v1, Since: time.Now().Add(-time.Hour)})
	}
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("apply on v1 everywhere: exit %d\n%s", code, out)
	}
	if code, out := f.g8ac("grid", "rollout", "status", "web"); code != 0 || !strings.Contains(out, "phase:      done") || !strings.Contains(out, "last good:  "+v1) {
		t.Fatalf("status on v1 everywhere: exit %d\n%s", code, out)
	}
	if code, out := f.g8ac("grid", "rollout", "pause", "web"); code != ExitRolloutRefused || !strings.Contains(out, "nothing to pause") {
		t.Fatalf("pause of a done rollout: exit %d\n%s", code, out)
	}

	f.write("apps/web.toml", "flist = \"web-2.flist\"\ncommand = [\"/bin/httpd\", \"-f\"]\n[update]\nauto_revert = true\n")
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || !strings.Contains(out, "queued roll web on n1") || strings.Contains(out, "on n2") {
		t.Fatalf("apply v2: exit %d\n%s", code, out)
	}
	jobs, err := f.st.ClaimJobs(ctx, f.nodes[0].ID, time.Now())
	if err != nil || len(jobs) != 1 {
		t.Fatalf("n1 claimed %v, %v", jobs, err)
	}
	if err := f.st.FinishJob(ctx, f.nodes[0].ID, &acapi.JobResult{ID: jobs[0].ID, State: acapi.JobFailed,
		Error: "sandbox web-2.flist: not in the store"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("apply after the failed batch: exit %d\n%s", code, out)
	}
	code, out := f.g8ac("grid", "status", "--repo", f.repo)
	if code != 0 || !strings.Contains(out, "reverted (by auto_revert) to spec "+v1+": node n1: app.install failed: sandbox web-2.flist: not in the store") {
		t.Fatalf("grid status after the revert: exit %d\n%s", code, out)
	}
	code, out = f.g8ac("grid", "rollout", "status", "web")
	if code != ExitRolloutStopped || !strings.Contains(out, "phase:      reverted (by auto_revert)") || !strings.Contains(out, "2 of 2 nodes on "+v1) {
		t.Fatalf("rollout status after the revert: exit %d\n%s", code, out)
	}
	if n2 := f.runJobs(f.nodes[1]); len(n2) != 0 {
		t.Errorf("n2 got jobs during the failed rollout: %+v", n2)
	}

	// Resume gives v2 another attempt (after the failed roll's backoff);
	// pause holds it; a name with no rollout is not found.
	if code, out := f.g8ac("grid", "rollout", "resume", "web"); code != 0 || !strings.Contains(out, "web: resumed") {
		t.Fatalf("resume: exit %d\n%s", code, out)
	}
	if code, out := f.g8ac("grid", "rollout", "pause", "web"); code != 0 {
		t.Fatalf("pause: exit %d\n%s", code, out)
	}
	time.Sleep(2100 * time.Millisecond) // DefaultPolicy's first backoff
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || strings.Contains(out, "queued roll") {
		t.Fatalf("apply while paused: exit %d\n%s", code, out)
	}
	f.g8ac("grid", "rollout", "resume", "web")
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || !strings.Contains(out, "queued roll web on n1") {
		t.Fatalf("apply after resume: exit %d\n%s", code, out)
	}
	if code, out := f.g8ac("grid", "rollout", "revert", "nosuch"); code != ExitNotFound {
		t.Fatalf("revert of an unknown app: exit %d\n%s", code, out)
	}
}
