package ac

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
)

// gridFixture is a controller data directory with a real store holding two
// approved nodes, and a grid repository placing app "web" on both.
type gridFixture struct {
	t     *testing.T
	data  string
	repo  string
	st    *store.Store
	nodes []*store.Node
}

func newGridFixture(t *testing.T) *gridFixture {
	f := &gridFixture{t: t, data: t.TempDir(), repo: t.TempDir()}
	st, err := store.Open(filepath.Join(f.data, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.st = st
	ctx := context.Background()
	for _, mac := range []string{"52:54:00:00:00:01", "52:54:00:00:00:02"} {
		n, err := st.AddNode(ctx, []string{mac}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		f.nodes = append(f.nodes, n)
	}
	f.write("nodes/n1.toml", "mac = \"52:54:00:00:00:01\"\nlabels = { role = \"web\" }\n")
	f.write("nodes/n2.toml", "id = \""+f.nodes[1].ID+"\"\nlabels = { role = \"web\" }\n")
	f.write("apps/web.toml", "flist = \"web.flist\"\ncommand = [\"/bin/httpd\", \"-f\"]\n")
	f.write("links/web.toml", "app = \"web\"\nselector = { role = \"web\" }\n")
	return f
}

func (f *gridFixture) write(name, data string) {
	p := filepath.Join(f.repo, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *gridFixture) g8ac(args ...string) (int, string) {
	var out, errb bytes.Buffer
	code := Command(&out, &errb).Execute(append(args, "--data", f.data), &out, &errb)
	return code, out.String() + errb.String()
}

// heartbeat records the node's report of its apps, as the server does.
func (f *gridFixture) heartbeat(n *store.Node, apps ...acapi.AppStatus) {
	if err := f.st.RecordHeartbeat(context.Background(), n.ID, "10.0.0.1", &acapi.Heartbeat{NodeID: n.ID, Apps: apps}, time.Now()); err != nil {
		f.t.Fatal(err)
	}
}

// runJobs plays the node's session: claim its jobs and answer them ok,
// returning them.
func (f *gridFixture) runJobs(n *store.Node) []acapi.Job {
	ctx := context.Background()
	jobs, err := f.st.ClaimJobs(ctx, n.ID, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, j := range jobs {
		if err := f.st.FinishJob(ctx, n.ID, &acapi.JobResult{ID: j.ID, State: acapi.JobOK}, time.Now()); err != nil {
			f.t.Fatal(err)
		}
	}
	return jobs
}

func TestGridApplyQueuesJobsInTheStore(t *testing.T) {
	f := newGridFixture(t)
	f.heartbeat(f.nodes[0])
	f.heartbeat(f.nodes[1])

	code, out := f.g8ac("grid", "diff", "--repo", f.repo)
	if code != 0 || strings.Count(out, "would queue install web") != 2 {
		t.Fatalf("diff exit %d:\n%s", code, out)
	}
	if jobs, _ := f.st.AppJobs(context.Background(), time.Time{}); len(jobs) != 0 {
		t.Fatalf("diff queued %d jobs", len(jobs))
	}

	code, out = f.g8ac("grid", "apply", "--repo", f.repo)
	if code != 0 || strings.Count(out, "queued install web") != 2 {
		t.Fatalf("apply exit %d:\n%s", code, out)
	}
	var spec string
	for _, n := range f.nodes {
		jobs := f.runJobs(n)
		if len(jobs) != 1 || jobs[0].Kind != acapi.JobAppInstall {
			t.Fatalf("node %s got %+v", n.ID, jobs)
		}
		var a acapi.AppInstallArgs
		if err := json.Unmarshal(jobs[0].Args, &a); err != nil || a.Spec.Name != "web" || a.Spec.Command[0] != "/bin/httpd" {
			t.Fatalf("install args %s: %v", jobs[0].Args, err)
		}
		spec = a.Spec.Hash()
	}

	// A second apply before the nodes report again queues nothing twice.
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("apply right after: exit %d\n%s", code, out)
	}

	// The nodes report the app; node 2's later fails.
	time.Sleep(10 * time.Millisecond)
	f.heartbeat(f.nodes[0], acapi.AppStatus{Name: "web", State: acapi.AppRunning, Spec: spec, Since: time.Now()})
	f.heartbeat(f.nodes[1], acapi.AppStatus{Name: "web", State: acapi.AppFailed, Spec: spec, Restarts: 5, Error: "exited with status 1"})
	code, out = f.g8ac("grid", "status", "--repo", f.repo)
	if code != 0 || !strings.Contains(out, "running") || !strings.Contains(out, "exited with status 1") || !strings.Contains(out, "start") {
		t.Fatalf("status exit %d:\n%s", code, out)
	}
	code, out = f.g8ac("grid", "apply", "--repo", f.repo)
	if code != 0 || !strings.Contains(out, "queued start web on n2") || strings.Contains(out, "on n1") {
		t.Fatalf("apply after a failure: exit %d\n%s", code, out)
	}
}

func TestGridApplyInvalidRepoQueuesNothing(t *testing.T) {
	f := newGridFixture(t)
	f.heartbeat(f.nodes[0])
	f.write("apps/web.toml", "flist = \"web.flist\"\ncommand = [\"httpd\"]\nrestart = \"sometimes\"\n")
	code, out := f.g8ac("grid", "apply", "--repo", f.repo)
	if code != cli.ExitConfig || !strings.Contains(out, "apps/web.toml: command[0]") || !strings.Contains(out, "apps/web.toml: restart") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if jobs, _ := f.st.AppJobs(context.Background(), time.Time{}); len(jobs) != 0 {
		t.Fatalf("invalid repo queued %d jobs", len(jobs))
	}
}

func TestGridOfflineNodeWaits(t *testing.T) {
	f := newGridFixture(t)
	f.heartbeat(f.nodes[0]) // node 2 never sent a heartbeat
	code, out := f.g8ac("grid", "apply", "--repo", f.repo)
	if code != 0 || strings.Contains(out, "on n2") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	_, out = f.g8ac("grid", "status", "--repo", f.repo)
	if !strings.Contains(out, "offline") || !strings.Contains(out, "install when back") {
		t.Fatalf("status:\n%s", out)
	}
}

func TestAppCommandsNeedNodeAndApp(t *testing.T) {
	f := newGridFixture(t)
	if code, _ := f.g8ac("app", "logs", f.nodes[0].ID); code != cli.ExitUsage {
		t.Errorf("app logs with one argument: exit %d", code)
	}
	// The job is queued for the node; no session runs it, so the wait gives up.
	code, out := f.g8ac("app", "restart", f.nodes[0].ID, "web", "--wait-timeout", "300ms")
	if code != ExitJobPending {
		t.Fatalf("app restart without a node session: exit %d\n%s", code, out)
	}
	jobs, _ := f.st.AppJobs(context.Background(), time.Time{})
	if len(jobs) != 1 || jobs[0].Kind != acapi.JobAppRestart || !strings.Contains(string(jobs[0].Args), `"web"`) {
		t.Fatalf("queued %+v", jobs)
	}
}

// An app is named on a node by the node's name in the repository, as grid
// status shows it: a MAC-keyed node and an id-keyed one.
func TestAppCommandsTakeRepositoryNodeNames(t *testing.T) {
	f := newGridFixture(t)
	for i, name := range []string{"n1", "n2"} {
		code, out := f.g8ac("app", "restart", name, "web", "--repo", f.repo, "--wait-timeout", "100ms")
		if code != ExitJobPending {
			t.Fatalf("app restart %s: exit %d\n%s", name, code, out)
		}
		jobs, _ := f.st.Jobs(context.Background(), f.nodes[i].ID)
		if len(jobs) != 1 || jobs[0].Kind != acapi.JobAppRestart {
			t.Fatalf("%s: jobs of %s: %+v", name, f.nodes[i].ID, jobs)
		}
	}
	if code, out := f.g8ac("app", "logs", "n9", "web", "--repo", f.repo, "--wait-timeout", "100ms"); code != ExitNotFound {
		t.Errorf("app logs on a node neither in the repository nor the store: exit %d\n%s", code, out)
	}
}

// A job result carrying the app's state shows in grid status at once,
// before the node's next heartbeat; the finished job does not hold back
// the next correction.
func TestGridStatusFromJobResult(t *testing.T) {
	f := newGridFixture(t)
	f.heartbeat(f.nodes[0])
	f.heartbeat(f.nodes[1])
	if code, out := f.g8ac("grid", "apply", "--repo", f.repo); code != 0 {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}
	ctx := context.Background()
	jobs, err := f.st.ClaimJobs(ctx, f.nodes[0].ID, time.Now())
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claimed %v, %v", jobs, err)
	}
	var args acapi.AppInstallArgs
	json.Unmarshal(jobs[0].Args, &args)
	st, _ := json.Marshal(acapi.AppStatus{Name: "web", State: acapi.AppFailed, Spec: args.Hash, Error: "exited with status 7", Since: time.Now()})
	if err := f.st.FinishJob(ctx, f.nodes[0].ID, &acapi.JobResult{ID: jobs[0].ID, State: acapi.JobOK, Output: st}, time.Now().Add(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	code, out := f.g8ac("grid", "status", "--repo", f.repo)
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "n1 ") {
			row = l
		}
	}
	if code != 0 || !strings.Contains(row, "failed") || !strings.Contains(row, "exited with status 7") || !strings.Contains(row, "start") {
		t.Fatalf("grid status right after the job: exit %d, n1 row %q\n%s", code, row, out)
	}
}

// A batch is queued whole or not at all: a job for a node that does not
// exist leaves the queue as it was.
func TestCreateJobsIsAllOrNothing(t *testing.T) {
	f := newGridFixture(t)
	ctx := context.Background()
	args := json.RawMessage(`{"name":"web"}`)
	_, err := f.st.CreateJobs(ctx, []store.NewJob{
		{NodeID: f.nodes[0].ID, Kind: acapi.JobAppStart, Args: args, Timeout: time.Minute},
		{NodeID: "n-nosuchnode", Kind: acapi.JobAppStart, Args: args, Timeout: time.Minute},
	}, time.Now())
	if err == nil || !strings.Contains(err.Error(), "n-nosuchnode") {
		t.Fatalf("err = %v", err)
	}
	if jobs, _ := f.st.AppJobs(ctx, time.Time{}); len(jobs) != 0 {
		t.Fatalf("a failed batch queued %d jobs", len(jobs))
	}
	ids, err := f.st.CreateJobs(ctx, []store.NewJob{
		{NodeID: f.nodes[0].ID, Kind: acapi.JobAppStart, Args: args, Timeout: time.Minute},
		{NodeID: f.nodes[1].ID, Kind: acapi.JobAppRemove, Args: args, Timeout: time.Minute},
	}, time.Now())
	if err != nil || len(ids) != 2 {
		t.Fatalf("batch: %v %v", ids, err)
	}
	if jobs, _ := f.st.AppJobs(ctx, time.Time{}); len(jobs) != 2 || jobs[0].NodeID == jobs[1].NodeID {
		t.Fatalf("queued %+v", jobs)
	}
}

// grid status shows a node's app error quoted, never its escapes raw
// (stored before the controller refused non-printable heartbeat text).
func TestGridStatusQuotesNodeText(t *testing.T) {
	f := newGridFixture(t)
	f.heartbeat(f.nodes[0], acapi.AppStatus{Name: "web", State: acapi.AppFailed + "\x1b[8m", Error: "exit 1\x1b]52;c;cm0gLXJmIH4K\x07"})
	code, out := f.g8ac("grid", "status", "--repo", f.repo)
	if code != 0 || strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `\x1b]52;c;cm0gLXJmIH4K\a`) {
		t.Fatalf("grid status: exit %d\n%q", code, out)
	}
}
