package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

func newExecutor(t *testing.T, dir string) *Executor {
	t.Helper()
	e, err := NewExecutor(dir, &Env{NodeID: "node-1", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// result waits until a result for id is pending and returns it.
func result(t *testing.T, e *Executor, id string) acapi.JobResult {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		for _, r := range e.Pending() {
			if r.ID == id {
				return r
			}
		}
		select {
		case <-e.Ready():
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no result for job %s", id)
		}
	}
}

func job(id, kind string, args any, timeout time.Duration) acapi.Job {
	var raw json.RawMessage
	switch a := args.(type) {
	case nil:
	case string:
		raw = json.RawMessage(a)
	default:
		raw, _ = json.Marshal(a)
	}
	return acapi.Job{ID: id, Kind: kind, Args: raw, Timeout: acapi.Duration(timeout), CreatedAt: time.Now()}
}

func TestPingAnswersWithNodeID(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	if out, err := e.Submit(context.Background(), job("j1", "ping", nil, 0)); out != Started || err != nil {
		t.Fatalf("submit: %v %v", out, err)
	}
	r := result(t, e, "j1")
	var p acapi.PingOutput
	if err := json.Unmarshal(r.Output, &p); err != nil || r.State != acapi.JobOK || p.NodeID != "node-1" {
		t.Fatalf("ping result %+v (%v)", r, err)
	}
}

func TestBadJobsAreRejectedWithTheReason(t *testing.T) {
	cases := []struct {
		name string
		job  acapi.Job
		want string
	}{
		{"unknown kind", job("u1", "reboot-now", nil, 0), `unknown kind "reboot-now"`},
		{"malformed args", job("u2", "exec", `{"argv": "ls"}`, 0), "exec args"},
		{"unknown field", job("u3", "exec", `{"argv": ["true"], "shell": true}`, 0), `unknown field "shell"`},
		{"empty argv", job("u4", "exec", `{"argv": []}`, 0), "argv: empty"},
		{"bad env", job("u5", "exec", `{"argv": ["true"], "env": ["NOEQUALS"]}`, 0), "env[0]"},
		{"relative dir", job("u6", "exec", `{"argv": ["true"], "dir": "tmp"}`, 0), "dir"},
		{"huge cap", job("u7", "exec", `{"argv": ["true"], "max_output": 100000000}`, 0), "max_output"},
		{"timeout too long", job("u8", "ping", nil, 48*time.Hour), "over the maximum"},
		{"negative timeout", job("u9", "ping", nil, -time.Second), "negative timeout"},
		{"journal option smuggling", job("u10", "journal", `{"unit": "--since=x"}`, 0), "not a unit name"},
		{"journal glob", job("u11", "journal", `{"unit": "g8-*"}`, 0), "not a unit name"},
		{"journal lines", job("u12", "journal", `{"unit": "g8-netup.service", "lines": 100000}`, 0), "lines"},
		{"ping with args", job("u13", "ping", `{"x": 1}`, 0), "unknown field"},
		{"trailing data", job("u14", "info", `{} {}`, 0), "ping"},
	}
	cases[len(cases)-1].want = "info args"
	e := newExecutor(t, t.TempDir())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _ = e.Submit(context.Background(), c.job)
			r := result(t, e, c.job.ID)
			if r.State != acapi.JobRejected || !strings.Contains(r.Error, c.want) {
				t.Fatalf("got %s %q, want rejected mentioning %q", r.State, r.Error, c.want)
			}
		})
	}
}

func TestJobWithoutIDIsDroppedNotRun(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	out, err := e.Submit(context.Background(), job("", "ping", nil, 0))
	if out != Dropped || err == nil || len(e.Pending()) != 0 {
		t.Fatalf("got %v %v, pending %d", out, err, len(e.Pending()))
	}
	out, _ = e.Submit(context.Background(), job(strings.Repeat("x", MaxIDLength+1), "ping", nil, 0))
	if out != Dropped {
		t.Fatalf("overlong id: %v", out)
	}
}

// A job id names a file only through its hash: an id that looks like a
// path cannot write outside the records directory.
func TestHostileIDStaysInRecordsDir(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "jobs")
	e := newExecutor(t, dir)
	id := "../../escape"
	if out, err := e.Submit(context.Background(), job(id, "ping", nil, 0)); out != Started {
		t.Fatal(out, err)
	}
	_ = result(t, e, id)
	e.Wait()
	if _, err := os.Stat(filepath.Join(root, "escape")); err == nil {
		t.Fatal("record written outside the records directory")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("records: %v", ents)
	}
}

// The same id delivered again runs once: while the first result is
// unposted the repeat is ignored; after it was posted the repeat gets a
// rejected result naming the first run; and all of this holds across a
// restart of the session.
func TestDuplicateIDRunsOnce(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(t.TempDir(), "runs")
	j := job("dup-1", "exec", acapi.ExecArgs{Argv: []string{"sh", "-c", "echo run >> " + counter}}, 0)
	e := newExecutor(t, dir)
	if out, _ := e.Submit(context.Background(), j); out != Started {
		t.Fatalf("first: %v", out)
	}
	first := result(t, e, "dup-1")
	if first.State != acapi.JobOK {
		t.Fatalf("first run: %+v", first)
	}
	if out, _ := e.Submit(context.Background(), j); out != Duplicate {
		t.Fatalf("repeat before post: %v", out)
	}
	if err := e.Posted(first); err != nil {
		t.Fatal(err)
	}
	if len(e.Pending()) != 0 {
		t.Fatalf("still pending after post: %+v", e.Pending())
	}
	e.Wait()

	e2 := newExecutor(t, dir) // the session restarted
	if len(e2.Pending()) != 0 {
		t.Fatalf("restart re-posts a posted result: %+v", e2.Pending())
	}
	out, err := e2.Submit(context.Background(), j)
	if out != Duplicate {
		t.Fatalf("repeat after restart: %v %v", out, err)
	}
	r := result(t, e2, "dup-1")
	if r.State != acapi.JobRejected || !strings.Contains(r.Error, "duplicate id") || !strings.Contains(r.Error, "already ran (ok") {
		t.Fatalf("duplicate's result: %+v", r)
	}
	// Posting the duplicate's answer leaves the first run's record intact.
	if err := e2.Posted(r); err != nil {
		t.Fatal(err)
	}
	if out, _ := e2.Submit(context.Background(), j); out != Duplicate {
		t.Fatalf("third delivery: %v", out)
	}
	e2.Wait()
	runs, _ := os.ReadFile(counter)
	if got := strings.Count(string(runs), "run"); got != 1 {
		t.Fatalf("command ran %d times", got)
	}
}

// A session killed mid-job reports the job as interrupted after its restart
// and does not run it again.
func TestInterruptedJobIsReportedNotRerun(t *testing.T) {
	dir := t.TempDir()
	e := newExecutor(t, dir)
	id := "crash-1"
	if err := writeRecord(e.path(id), &Record{ID: id, Kind: "exec", State: "running", ReceivedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	e2 := newExecutor(t, dir)
	r := result(t, e2, id)
	if r.State != acapi.JobFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("got %+v", r)
	}
	if out, _ := e2.Submit(context.Background(), job(id, "exec", acapi.ExecArgs{Argv: []string{"true"}}, 0)); out != Duplicate {
		t.Fatalf("redelivery: %v", out)
	}
}

func TestExecCapturesOutputExitCodeEnvAndStdin(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	args := acapi.ExecArgs{
		Argv:  []string{"sh", "-c", `read line; echo "$line $GREETING"; echo oops >&2; exit 3`},
		Env:   []string{"GREETING=world"},
		Stdin: []byte("hello\n"),
	}
	_, _ = e.Submit(context.Background(), job("e1", "exec", args, 0))
	r := result(t, e, "e1")
	if r.State != acapi.JobFailed || r.ExitCode != 3 || string(r.Stdout) != "hello world\n" || string(r.Stderr) != "oops\n" || r.Truncated {
		t.Fatalf("got %+v stdout %q stderr %q", r, r.Stdout, r.Stderr)
	}
	// The session's own environment does not leak into jobs.
	t.Setenv("G8_SECRETLESS_MARKER", "leak")
	_, _ = e.Submit(context.Background(), job("e2", "exec", acapi.ExecArgs{Argv: []string{"env"}}, 0))
	r = result(t, e, "e2")
	if r.State != acapi.JobOK || strings.Contains(string(r.Stdout), "G8_SECRETLESS_MARKER") || !strings.Contains(string(r.Stdout), "PATH=") {
		t.Fatalf("env: %+v %q", r, r.Stdout)
	}
	_, _ = e.Submit(context.Background(), job("e3", "exec", acapi.ExecArgs{Argv: []string{"no-such-command-g8"}}, 0))
	if r = result(t, e, "e3"); r.State != acapi.JobFailed || !strings.Contains(r.Error, "not found in PATH") {
		t.Fatalf("missing command: %+v", r)
	}
}

func TestExecHugeOutputIsCappedAndMarked(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	args := acapi.ExecArgs{Argv: []string{"sh", "-c", "head -c 10000000 /dev/zero"}, MaxOutput: 4096}
	_, _ = e.Submit(context.Background(), job("big", "exec", args, 0))
	r := result(t, e, "big")
	if r.State != acapi.JobOK || len(r.Stdout) != 4096 || !r.Truncated {
		t.Fatalf("state %s, %d bytes, truncated %v (%s)", r.State, len(r.Stdout), r.Truncated, r.Error)
	}
	if b, _ := json.Marshal(r); len(b) > acapi.MaxBody {
		t.Fatalf("result of %d bytes does not fit a request", len(b))
	}
}

// The timeout kills the whole tree: a child that forked a grandchild (which
// would otherwise outlive it and hold the output pipe) is gone too.
func TestExecTimeoutKillsTheWholeTree(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	pidfile := filepath.Join(t.TempDir(), "grandchild")
	script := fmt.Sprintf(`sh -c 'sleep 1000 & echo $! > %s; wait' & wait`, pidfile)
	start := time.Now()
	_, _ = e.Submit(context.Background(), job("slow", "exec", acapi.ExecArgs{Argv: []string{"sh", "-c", script}}, 1500*time.Millisecond))
	r := result(t, e, "slow")
	if r.State != acapi.JobTimeout || !strings.Contains(r.Error, "timed out after 1.5s") {
		t.Fatalf("got %+v", r)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("timeout took %v", took)
	}
	data, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	waitGone(t, pid)
}

// A command that exits while a member of its group still runs does not
// leave that member behind.
func TestExecLeavesNoStragglers(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	pidfile := filepath.Join(t.TempDir(), "straggler")
	script := fmt.Sprintf(`sleep 1000 >/dev/null 2>&1 & echo $! > %s`, pidfile)
	_, _ = e.Submit(context.Background(), job("bg", "exec", acapi.ExecArgs{Argv: []string{"sh", "-c", script}}, 0))
	if r := result(t, e, "bg"); r.State != acapi.JobOK {
		t.Fatalf("got %+v", r)
	}
	data, _ := os.ReadFile(pidfile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	waitGone(t, pid)
}

// waitGone waits until pid no longer runs (gone, or a zombie nobody reaped).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 1 {
		t.Fatalf("bad pid %d", pid)
	}
	for i := 0; i < 100; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// Field 3, after the parenthesised command name, is the state.
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	t.Fatalf("process %d survived its job", pid)
}

func TestInfoReportsInventory(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	_, _ = e.Submit(context.Background(), job("i1", "info", nil, 0))
	r := result(t, e, "i1")
	var out acapi.InfoOutput
	if err := json.Unmarshal(r.Output, &out); err != nil || r.State != acapi.JobOK {
		t.Fatalf("%+v %v", r, err)
	}
	if out.Threads < 1 || out.MemTotal == 0 || len(out.NICs) == 0 || out.Kernel == "" || len(out.Disks) == 0 {
		t.Fatalf("inventory incomplete: %+v", out)
	}
}

func TestJournalRunsJournalctlForOneUnit(t *testing.T) {
	if _, err := os.Stat("/usr/bin/journalctl"); err != nil {
		t.Skip("skipped: journalctl not installed")
	}
	e := newExecutor(t, t.TempDir())
	_, _ = e.Submit(context.Background(), job("jr", "journal", acapi.JournalArgs{Unit: "g8-netup.service", Lines: 5}, 0))
	r := result(t, e, "jr")
	// Without a journal here journalctl may answer "No entries" or fail to
	// open files; either way it ran with our argv and its answer came back.
	if r.State == acapi.JobRejected || (r.State == acapi.JobFailed && r.ExitCode == -1) {
		t.Fatalf("journalctl did not run: %+v", r)
	}
}

func TestPruneKeepsRecentRecords(t *testing.T) {
	dir := t.TempDir()
	e := newExecutor(t, dir)
	e.keep = 20
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("p%d", i)
		_, _ = e.Submit(context.Background(), job(id, "ping", nil, 0))
		if err := e.Posted(result(t, e, id)); err != nil {
			t.Fatal(err)
		}
		e.Wait()
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) > 22 || len(ents) < 10 {
		t.Fatalf("%d records kept, want about 20", len(ents))
	}
	// The newest ids are still remembered.
	if out, _ := e.Submit(context.Background(), job("p39", "ping", nil, 0)); out != Duplicate {
		t.Fatalf("newest id forgotten: %v", out)
	}
}

func FuzzDecodeExecArgs(f *testing.F) {
	f.Add([]byte(`{"argv":["ls","-l"],"env":["A=B"],"stdin":"aGk=","max_output":10}`))
	f.Add([]byte(`{"argv":[]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"argv":["x"]} trailing`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j := acapi.Job{ID: "f", Kind: "exec", Args: data}
		var a acapi.ExecArgs
		if err := DecodeArgs(&j, &a); err != nil && !isRejected(err) {
			t.Fatalf("decode error not marked rejected: %v", err)
		}
	})
}

// A restart of the session lets running jobs finish (WaitFor within the
// grace); a job longer than the grace is seen still running, and killed
// when its context ends.
func TestWaitForLetsJobsFinish(t *testing.T) {
	e := newExecutor(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _ = e.Submit(ctx, job("short", "exec", acapi.ExecArgs{Argv: []string{"sh", "-c", "sleep 0.3; echo done"}}, 0))
	_, _ = e.Submit(ctx, job("long", "exec", acapi.ExecArgs{Argv: []string{"sleep", "60"}}, 0))
	if n := e.Running(); n != 2 {
		t.Fatalf("Running() = %d, want 2", n)
	}
	if e.WaitFor(2 * time.Second) {
		t.Fatal("WaitFor reported every job done while one sleeps 60 s")
	}
	if r := result(t, e, "short"); r.State != acapi.JobOK || string(r.Stdout) != "done\n" {
		t.Fatalf("short job: %+v", r)
	}
	if n := e.Running(); n != 1 {
		t.Fatalf("Running() = %d after the short job, want 1", n)
	}
	cancel()
	if !e.WaitFor(10 * time.Second) {
		t.Fatal("the long job outlived its context")
	}
	if r := result(t, e, "long"); r.State != acapi.JobFailed || e.Running() != 0 {
		t.Fatalf("long job after cancel: %+v, running %d", r, e.Running())
	}
}
