package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
)

// Limits of the executor.
const (
	MaxIDLength   = 256
	DefaultKeep   = 10000 // job records kept for de-duplication
	DefaultWorker = 8     // jobs running at once; more wait their turn
)

// Record is what the executor keeps on disk per job id: written before the
// job runs (so a job never runs twice, even across a restart of the
// session) and again when it finished, until its result was posted.
type Record struct {
	ID         string           `json:"id"`
	Kind       string           `json:"kind"`
	State      string           `json:"state"` // running | finished
	ReceivedAt time.Time        `json:"received_at"`
	Result     *acapi.JobResult `json:"result,omitempty"`
	Posted     bool             `json:"posted"`
}

// Executor runs jobs once each and hands their results to the session.
type Executor struct {
	dir     string
	env     *Env
	keep    int
	workers chan struct{}

	// Finished, if set, is called once per job after its result is on
	// disk (the session queues a job.finished event from it).
	Finished func(job acapi.Job, res acapi.JobResult)

	mu      sync.Mutex
	nodeID  string
	pending map[string]acapi.JobResult // id → result not yet posted
	records int                        // files in dir
	notify  chan struct{}
	running sync.WaitGroup
	active  atomic.Int32 // jobs in running
}

// NewExecutor keeps its records in dir (created). Records of jobs that were
// running when the previous process stopped become "failed" results: the
// job is not run again, and the controller learns why.
func NewExecutor(dir string, env *Env) (*Executor, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	e := &Executor{dir: dir, env: env, keep: DefaultKeep, workers: make(chan struct{}, DefaultWorker),
		pending: map[string]acapi.JobResult{}, notify: make(chan struct{}, 1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".json") || strings.HasPrefix(ent.Name(), ".") {
			continue
		}
		e.records++
		path := filepath.Join(dir, ent.Name())
		rec, err := readRecord(path)
		if err == nil && (e.path(rec.ID) != path || rec.Result != nil && (rec.Result.ID != rec.ID || rec.Result.State == "")) {
			// Not this file's job (planted or garbled): reporting it would
			// answer for some other job.
			err = fmt.Errorf("job record %s: holds job %.64q, whose record is another file, or a result for another job", path, rec.ID)
		}
		if err != nil {
			// A record we cannot read cannot be trusted for de-duplication
			// either; keep the file for the operator and move on.
			env.logf("jobs: %v", err)
			continue
		}
		switch {
		case rec.State == "running":
			now := time.Now().UTC()
			res := acapi.JobResult{ID: rec.ID, State: acapi.JobFailed, ExitCode: -1, StartedAt: rec.ReceivedAt, FinishedAt: now,
				Error: "interrupted: g8-acsession stopped while the job ran; it is not run again"}
			rec.State, rec.Result = "finished", &res
			if err := writeRecord(path, rec); err != nil {
				return nil, fmt.Errorf("jobs: %w", err)
			}
			e.pending[rec.ID] = res
		case !rec.Posted && rec.Result != nil:
			e.pending[rec.ID] = *rec.Result
		}
	}
	if len(e.pending) > 0 {
		e.signal()
	}
	return e, nil
}

func (env *Env) logf(format string, a ...any) {
	if env != nil && env.Log != nil {
		env.Log.Warn(fmt.Sprintf(format, a...))
	}
}

func (e *Executor) path(id string) string {
	// Ids come from the network: hash them into file names so no id can
	// name a path outside dir.
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(e.dir, hex.EncodeToString(sum[:16])+".json")
}

// SetNodeID sets the node id jobs see in their Env (it can change when the
// node is re-enrolled).
func (e *Executor) SetNodeID(id string) {
	e.mu.Lock()
	e.nodeID = id
	e.mu.Unlock()
}

// Outcome says what Submit did with a job.
type Outcome int

const (
	Started   Outcome = iota // runs in the background; its result will be pending
	Rejected                 // not run; a rejected result is pending
	Duplicate                // seen before; not run again
	Dropped                  // no id to answer to; nothing will be posted
)

func (o Outcome) String() string {
	return [...]string{"started", "rejected", "duplicate", "dropped"}[o]
}

// Submit takes a job from the controller. A job with a known id is never
// run again: while its first run is going or its result is unposted the
// repeat is ignored (the real result follows); after that a "rejected"
// result says it is a duplicate. Malformed jobs and unknown kinds get a
// "rejected" result. ctx bounds the job's run (the session's lifetime).
func (e *Executor) Submit(ctx context.Context, job acapi.Job) (Outcome, error) {
	now := time.Now().UTC()
	reject := func(err error) (Outcome, error) {
		e.addPending(acapi.JobResult{ID: job.ID, State: acapi.JobRejected, ExitCode: -1, Error: err.Error(), StartedAt: now, FinishedAt: now})
		return Rejected, err
	}
	if job.ID == "" {
		return Dropped, fmt.Errorf("job without id (kind %q): cannot answer it", job.Kind)
	}
	if len(job.ID) > MaxIDLength {
		return Dropped, fmt.Errorf("job id longer than %d bytes: cannot answer it", MaxIDLength)
	}
	path := e.path(job.ID)
	e.mu.Lock()
	_, unposted := e.pending[job.ID]
	e.mu.Unlock()
	if rec, err := readRecord(path); err == nil {
		if rec.State == "running" || unposted {
			return Duplicate, fmt.Errorf("job %s: duplicate id, first run still %s", job.ID, rec.State)
		}
		first := "unknown"
		if rec.Result != nil {
			first = fmt.Sprintf("%s at %s", rec.Result.State, rec.Result.FinishedAt.Format(time.RFC3339))
		}
		err := fmt.Errorf("job %s: duplicate id: already ran (%s); not run again", job.ID, first)
		e.addPending(acapi.JobResult{ID: job.ID, State: acapi.JobRejected, ExitCode: -1, Error: err.Error(), StartedAt: now, FinishedAt: now})
		return Duplicate, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Duplicate, fmt.Errorf("job %s: %w; not run, to be safe", job.ID, err)
	}
	kind, ok := lookup(job.Kind)
	if !ok {
		return reject(fmt.Errorf("job %s: unknown kind %q (this node runs: %s)", job.ID, job.Kind, strings.Join(Kinds(), ", ")))
	}
	timeout := time.Duration(job.Timeout)
	switch {
	case timeout < 0:
		return reject(fmt.Errorf("job %s: negative timeout %v", job.ID, timeout))
	case timeout == 0:
		timeout = acapi.DefaultJobTimeout
	case timeout > acapi.MaxJobTimeout:
		return reject(fmt.Errorf("job %s: timeout %v is over the maximum %v", job.ID, timeout, acapi.MaxJobTimeout))
	}
	// Recorded before it runs: if we crash mid-run, the restarted session
	// reports the job as interrupted instead of running it a second time.
	if err := writeRecord(path, &Record{ID: job.ID, Kind: job.Kind, State: "running", ReceivedAt: now}); err != nil {
		return Dropped, fmt.Errorf("job %s: %w; not run", job.ID, err)
	}
	e.mu.Lock()
	e.records++
	e.mu.Unlock()
	e.running.Add(1)
	e.active.Add(1)
	go e.run(ctx, kind, job, timeout, path)
	return Started, nil
}

func (e *Executor) run(ctx context.Context, kind Kind, job acapi.Job, timeout time.Duration, path string) {
	defer e.running.Done()
	defer e.active.Add(-1)
	res := acapi.JobResult{ID: job.ID}
	select {
	case e.workers <- struct{}{}:
		defer func() { <-e.workers }()
		res = e.runKind(ctx, kind, job, timeout)
	case <-ctx.Done():
		now := time.Now().UTC()
		res = acapi.JobResult{ID: job.ID, State: acapi.JobFailed, ExitCode: -1, Error: "session stopped before the job could start", StartedAt: now, FinishedAt: now}
	}
	rec := &Record{ID: job.ID, Kind: job.Kind, State: "finished", ReceivedAt: res.StartedAt, Result: &res}
	if err := writeRecord(path, rec); err != nil {
		e.env.logf("jobs: %v", err)
	}
	e.addPending(res)
	if e.Finished != nil {
		e.Finished(job, res)
	}
	e.prune()
}

func (e *Executor) runKind(ctx context.Context, kind Kind, job acapi.Job, timeout time.Duration) (res acapi.JobResult) {
	res = acapi.JobResult{ID: job.ID, StartedAt: time.Now().UTC()}
	jctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			res.State, res.ExitCode, res.Error = acapi.JobFailed, -1, fmt.Sprintf("job %s: %s: internal error: %v", job.ID, job.Kind, p)
		}
		res.FinishedAt = time.Now().UTC()
	}()
	env := Env{}
	if e.env != nil {
		env = *e.env
	}
	e.mu.Lock()
	if e.nodeID != "" {
		env.NodeID = e.nodeID
	}
	e.mu.Unlock()
	err := kind.Run(jctx, &env, &job, &res)
	switch {
	case err == nil:
		res.State = acapi.JobOK
	case isRejected(err):
		res.State, res.ExitCode, res.Error = acapi.JobRejected, -1, err.Error()
	case errors.Is(jctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		res.State, res.Error = acapi.JobTimeout, fmt.Sprintf("timed out after %v: %v", timeout, err)
	default:
		res.State, res.Error = acapi.JobFailed, err.Error()
		if res.ExitCode == 0 {
			res.ExitCode = -1
		}
	}
	return res
}

func (e *Executor) addPending(res acapi.JobResult) {
	e.mu.Lock()
	e.pending[res.ID] = res
	e.mu.Unlock()
	e.signal()
}

func (e *Executor) signal() {
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// Ready fires when a result becomes pending.
func (e *Executor) Ready() <-chan struct{} { return e.notify }

// Pending returns the results not yet posted, oldest first.
func (e *Executor) Pending() []acapi.JobResult {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]acapi.JobResult, 0, len(e.pending))
	for _, r := range e.pending {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].FinishedAt.Before(out[j].FinishedAt) })
	return out
}

// Posted records that the controller has res: it is not posted again, and
// the record keeps only what de-duplication needs.
func (e *Executor) Posted(res acapi.JobResult) error {
	e.mu.Lock()
	cur, ok := e.pending[res.ID]
	if ok && cur.State == res.State && cur.FinishedAt.Equal(res.FinishedAt) {
		delete(e.pending, res.ID)
	}
	e.mu.Unlock()
	path := e.path(res.ID)
	rec, err := readRecord(path)
	if err != nil || rec.Posted || rec.Result == nil || rec.Result.State != res.State || !rec.Result.FinishedAt.Equal(res.FinishedAt) {
		return nil // a duplicate's answer: the record stays as it was
	}
	slim := *rec.Result
	slim.Stdout, slim.Stderr, slim.Output = nil, nil, nil
	rec.Result, rec.Posted = &slim, true
	return writeRecord(path, rec)
}

// Wait waits for running jobs to end (after their ctx was cancelled).
func (e *Executor) Wait() { e.running.Wait() }

// Running is how many jobs run now.
func (e *Executor) Running() int { return int(e.active.Load()) }

// WaitFor waits at most d for the running jobs to end by themselves and
// reports whether they did.
func (e *Executor) WaitFor(d time.Duration) bool {
	done := make(chan struct{})
	go func() { e.running.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// prune keeps the record count near keep by removing the oldest posted
// records; de-duplication covers the last keep jobs.
func (e *Executor) prune() {
	e.mu.Lock()
	over := e.records - e.keep
	e.mu.Unlock()
	if over <= 0 {
		return
	}
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		return
	}
	type aged struct {
		path string
		t    time.Time
	}
	var old []aged
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".json") {
			continue
		}
		if info, err := ent.Info(); err == nil {
			old = append(old, aged{filepath.Join(e.dir, ent.Name()), info.ModTime()})
		}
	}
	sort.Slice(old, func(i, j int) bool { return old[i].t.Before(old[j].t) })
	removed := 0
	for _, a := range old {
		if removed >= over+e.keep/10 { // remove a tenth more, so this runs rarely
			break
		}
		if rec, err := readRecord(a.path); err == nil && rec.Posted {
			if os.Remove(a.path) == nil {
				removed++
			}
		}
	}
	e.mu.Lock()
	e.records -= removed
	e.mu.Unlock()
}

func readRecord(path string) (*Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("job record %s: malformed: %w", path, err)
	}
	return &r, nil
}

// writeRecord replaces path atomically and durably: temp file, fsync,
// rename, fsync of the directory.
func writeRecord(path string, r *Record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
