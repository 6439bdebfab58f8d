package ac

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/server"
	"github.com/g8os/boot/internal/acapi"
	"github.com/zeebo/blake3"
)

func TestJobQueueLongPollAndResult(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:01:01")
	_, otherCert := ac.enroll("52:54:00:00:01:02")
	node := ac.client(cert)
	st := ac.store()

	// Nothing queued: the poll waits and answers an empty list.
	start := time.Now()
	jobs, err := node.Jobs(ctx, 300*time.Millisecond)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("empty poll: %v %v", err, jobs)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("empty poll returned before its wait")
	}

	// A job queued by another process while the node waits is delivered
	// within that wait.
	got := make(chan []acapi.Job, 1)
	go func() {
		js, err := node.Jobs(ctx, 20*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- js
	}()
	time.Sleep(300 * time.Millisecond)
	args := json.RawMessage(`{"argv":["uname","-a"]}`)
	job, err := st.CreateJob(ctx, "52:54:00:00:01:01", "exec", args, 5*time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var js []acapi.Job
	select {
	case js = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("the long-poll did not deliver the job queued during its wait")
	}
	if len(js) != 1 || js[0].ID != job.ID || js[0].Kind != "exec" || string(js[0].Args) != string(args) || time.Duration(js[0].Timeout) != 5*time.Second {
		t.Fatalf("delivered %+v, want %+v", js, job.Job)
	}
	if j, _ := st.Job(ctx, job.ID); j.State != acapi.JobRunning || j.StartedAt.IsZero() {
		t.Fatalf("delivered job is %s, want running", j.State)
	}
	// Delivered once.
	if again, _ := node.Jobs(ctx, 0); len(again) != 0 {
		t.Fatalf("job delivered twice: %+v", again)
	}

	// Another node cannot post this job's result.
	other := ac.client(otherCert)
	res := &acapi.JobResult{ID: job.ID, State: acapi.JobOK, Stdout: []byte("Linux\n"), StartedAt: time.Now(), FinishedAt: time.Now()}
	if err := other.PostResult(ctx, res); !acapi.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("result from another node: want 404, got %v", err)
	}
	if err := node.PostResult(ctx, res); err != nil {
		t.Fatal(err)
	}
	// A retried post (lost answer) changes nothing.
	dup := *res
	dup.Stdout = []byte("changed")
	if err := node.PostResult(ctx, &dup); err != nil {
		t.Fatalf("repeated result: %v", err)
	}
	j, _ := st.Job(ctx, job.ID)
	if j.State != acapi.JobOK || j.Result == nil || string(j.Result.Stdout) != "Linux\n" || j.ResultBy != "node" {
		t.Fatalf("stored job: %+v result %+v", j, j.Result)
	}
	if js, _ := st.Jobs(ctx, resp.NodeID); len(js) != 1 {
		t.Fatalf("jobs of node: %d", len(js))
	}
	if err := node.PostResult(ctx, &acapi.JobResult{ID: "j-nosuchjob", State: acapi.JobOK}); !acapi.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("result for an unknown job: want 404, got %v", err)
	}
}

func TestSilentJobTimesOutAndLateResultWins(t *testing.T) {
	ac := newTestAC(t, ServeOptions{JobGrace: 50 * time.Millisecond})
	_, cert := ac.enroll("52:54:00:00:01:03")
	st := ac.store()
	job, err := st.CreateJob(ctx, "52:54:00:00:01:03", "ping", nil, 100*time.Millisecond, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if js, err := ac.client(cert).Jobs(ctx, 0); err != nil || len(js) != 1 {
		t.Fatalf("poll: %v %v", err, js)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, _ := st.Job(ctx, job.ID)
		if j.State == acapi.JobTimeout {
			if j.ResultBy != "controller" || j.Result == nil || j.Result.ID != job.ID {
				t.Fatalf("expired job: %+v %+v", j, j.Result)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %s long after its timeout", j.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := ac.client(cert).PostResult(ctx, &acapi.JobResult{ID: job.ID, State: acapi.JobOK}); err != nil {
		t.Fatal(err)
	}
	if j, _ := st.Job(ctx, job.ID); j.State != acapi.JobOK || j.ResultBy != "node" {
		t.Fatalf("late result did not replace the controller's timeout: %s by %s", j.State, j.ResultBy)
	}
}

func TestShutdownAnswersPendingLongPoll(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	_, cert := ac.enroll("52:54:00:00:01:04")
	done := make(chan error, 1)
	go func() {
		_, err := ac.client(cert).Jobs(ctx, time.Minute)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	ac.stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pending poll at shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("pending poll not answered at shutdown")
	}
	if time.Since(start) > 9*time.Second {
		t.Fatalf("shutdown waited for the long-poll (%v)", time.Since(start))
	}
}

func TestEventsStoredExactlyOnce(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:01:05")
	node := ac.client(cert)
	ev := func(seq uint64, kind string) acapi.Event {
		return acapi.Event{Seq: seq, Kind: kind, Time: time.Unix(1700000000+int64(seq), 0).UTC(), Data: json.RawMessage(`{"n":` + string(rune('0'+seq)) + `}`)}
	}
	r, err := node.PostEvents(ctx, []acapi.Event{ev(1, "phase.ready"), ev(2, "net.changed"), ev(3, "job.finished")})
	if err != nil || r.Acked != 3 {
		t.Fatalf("first batch: %v %+v", err, r)
	}
	// The node resends 2 and 3 (the answer was lost) together with 4.
	r, err = node.PostEvents(ctx, []acapi.Event{ev(2, "DUPLICATE"), ev(3, "DUPLICATE"), ev(4, "phase.ready")})
	if err != nil || r.Acked != 4 {
		t.Fatalf("second batch: %v %+v", err, r)
	}
	r, err = node.PostEvents(ctx, []acapi.Event{})
	if err != nil || r.Acked != 4 {
		t.Fatalf("empty batch: %v %+v", err, r)
	}
	evs, err := ac.store().Events(ctx, resp.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, ",") != "phase.ready,net.changed,job.finished,phase.ready" {
		t.Fatalf("stored events: %v", kinds)
	}
	if !evs[0].Time.Equal(time.Unix(1700000001, 0)) || string(evs[0].Data) != `{"n":1}` {
		t.Fatalf("event 1 stored as %+v", evs[0])
	}
}

func TestContentStore(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	_, cert := ac.enroll("52:54:00:00:01:06")
	token := readTok(t, ac)
	chunk := bytes.Repeat([]byte("g8os chunk "), 1000)
	sum := blake3.Sum256(chunk)
	hash := hex.EncodeToString(sum[:])
	anon := ac.client(nil).HTTP
	nodeHC := ac.client(cert).HTTP

	do := func(hc *http.Client, method, hash string, body []byte, tok string) (int, []byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, ac.url+acapi.PathStore+hash, bytes.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header
	}

	if code, _, _ := do(anon, "PUT", hash, chunk, ""); code != 401 {
		t.Fatalf("PUT without token: %d", code)
	}
	if code, _, _ := do(anon, "PUT", hash, chunk, strings.Repeat("0", len(token))); code != 401 {
		t.Fatalf("PUT with a wrong token: %d", code)
	}
	if code, _, _ := do(nodeHC, "PUT", hash, chunk, ""); code != 401 {
		t.Fatalf("PUT by a node: %d", code)
	}
	if code, b, _ := do(anon, "PUT", hash, append(chunk, 'x'), token); code != 400 || !bytes.Contains(b, []byte("hashes to")) {
		t.Fatalf("PUT with a body of another hash: %d %s", code, b)
	}
	if code, _, _ := do(anon, "HEAD", hash, nil, token); code != 404 {
		t.Fatalf("a rejected PUT left a chunk behind: HEAD %d", code)
	}
	if code, _, _ := do(anon, "PUT", strings.ToUpper(hash), chunk, token); code != 400 {
		t.Fatalf("PUT upper-case hex: %d", code)
	}
	if code, b, _ := do(anon, "PUT", hash, chunk, token); code != 201 {
		t.Fatalf("PUT: %d %s", code, b)
	}
	if code, b, _ := do(anon, "PUT", hash, chunk, token); code != 200 {
		t.Fatalf("PUT again: %d %s", code, b)
	}
	if code, b, h := do(nodeHC, "GET", hash, nil, ""); code != 200 || !bytes.Equal(b, chunk) || h.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("GET by node: %d, %d bytes, equal %v", code, len(b), bytes.Equal(b, chunk))
	}
	if code, b, h := do(nodeHC, "HEAD", hash, nil, ""); code != 200 || len(b) != 0 || h.Get("Content-Length") != "11000" {
		t.Fatalf("HEAD by node: %d, len %s", code, h.Get("Content-Length"))
	}
	if code, b, _ := do(anon, "GET", hash, nil, token); code != 200 || !bytes.Equal(b, chunk) {
		t.Fatalf("GET by admin: %d", code)
	}
	if code, _, _ := do(anon, "GET", hash, nil, ""); code != 401 {
		t.Fatalf("GET without identity: %d", code)
	}
	missing := strings.Repeat("ab", 32)
	if code, _, _ := do(nodeHC, "GET", missing, nil, ""); code != 404 {
		t.Fatalf("GET missing: %d", code)
	}
	if code, _, _ := do(nodeHC, "GET", "../../admin.token", nil, ""); code != 400 && code != 404 {
		t.Fatalf("GET a path: %d", code)
	}
	big := make([]byte, server.MaxChunk+1)
	bs := blake3.Sum256(big)
	if code, _, _ := do(anon, "PUT", hex.EncodeToString(bs[:]), big, token); code != 413 {
		t.Fatalf("PUT over 16 MiB: %d", code)
	}
	// Refused uploads leave no temporary files behind.
	leftovers, _ := filepath.Glob(filepath.Join(ac.dir, ChunkDir, "*", ".put-*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left in the store: %v", leftovers)
	}
	ac.setState("52:54:00:00:01:06", "revoked")
	within(t, time.Second, func() error {
		if code, _, _ := do(ac.client(cert).HTTP, "GET", hash, nil, ""); code != 403 {
			return fmt.Errorf("GET by a revoked node: %d", code)
		}
		return nil
	})
}

func readTok(t *testing.T, ac *testAC) string {
	t.Helper()
	b, err := readToken(ac.dir + "/" + AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLongPollWakesOnlyTheNodeWithWork(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	_, certA := ac.enroll("52:54:00:00:01:07")
	_, certB := ac.enroll("52:54:00:00:01:08")
	type polled struct {
		jobs []acapi.Job
		took time.Duration
		err  error
	}
	poll := func(c *acapi.Client, wait time.Duration) <-chan polled {
		ch := make(chan polled, 1)
		go func() {
			start := time.Now()
			js, err := c.Jobs(ctx, wait)
			ch <- polled{js, time.Since(start), err}
		}()
		return ch
	}
	a := poll(ac.client(certA), 20*time.Second)
	b := poll(ac.client(certB), 3*time.Second)
	time.Sleep(300 * time.Millisecond)
	// Unrelated commits (a heartbeat) must not end B's wait early.
	if _, err := ac.client(certB).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	job, err := ac.store().CreateJob(ctx, "52:54:00:00:01:07", "ping", nil, time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-a:
		if p.err != nil || len(p.jobs) != 1 || p.jobs[0].ID != job.ID {
			t.Fatalf("node A: %v %+v", p.err, p.jobs)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("node A was not woken by its job")
	}
	p := <-b
	if p.err != nil || len(p.jobs) != 0 || p.took < 3*time.Second {
		t.Fatalf("node B: %v %+v after %v; want [] after its full wait", p.err, p.jobs, p.took)
	}
}
