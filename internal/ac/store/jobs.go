package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Job is a unit of work queued for one node. The controller does not know
// what kinds mean: the node's session runs them (exec, ping, app lifecycle,
// ...), so new kinds need no change here.
type Job struct {
	acapi.Job
	NodeID     string
	State      string
	Result     *acapi.JobResult // nil until finished
	ResultBy   string           // "node", or "controller" when it timed the job out
	StartedAt  time.Time
	FinishedAt time.Time
}

// Finished reports whether the job reached a final state.
func (j *Job) Finished() bool {
	switch j.State {
	case acapi.JobOK, acapi.JobFailed, acapi.JobTimeout, acapi.JobRejected:
		return true
	}
	return false
}

const jobCols = "id, node_id, kind, args, timeout_ns, state, result, result_by, created_at, started_at, finished_at"

func scanJob(row interface{ Scan(...any) error }) (*Job, error) {
	var j Job
	var args, result string
	var timeout, created, started, finished int64
	if err := row.Scan(&j.ID, &j.NodeID, &j.Kind, &args, &timeout, &j.State, &result, &j.ResultBy, &created, &started, &finished); err != nil {
		return nil, err
	}
	if args != "" {
		j.Args = json.RawMessage(args)
	}
	j.Timeout = acapi.Duration(timeout)
	j.CreatedAt, j.StartedAt, j.FinishedAt = fromTS(created).UTC(), fromTS(started), fromTS(finished)
	if result != "" {
		var r acapi.JobResult
		if err := json.Unmarshal([]byte(result), &r); err == nil {
			j.Result = &r
		}
	}
	return &j, nil
}

// CreateJob queues a job for the node named by ref (id or MAC).
func (s *Store) CreateJob(ctx context.Context, ref, kind string, args json.RawMessage, timeout time.Duration, now time.Time) (*Job, error) {
	if kind == "" {
		return nil, errors.New("job: empty kind")
	}
	if len(args) > 0 && !json.Valid(args) {
		return nil, errors.New("job: args are not valid JSON")
	}
	if timeout <= 0 {
		return nil, errors.New("job: timeout must be positive")
	}
	if err := checkArgsSize(kind, args); err != nil {
		return nil, err
	}
	n, err := s.Node(ctx, ref)
	if err != nil {
		return nil, err
	}
	id := newID("j-", 6)
	// The state check is part of the insert, so a revoke committed in
	// between cannot leave a job queued for a node that may not run it.
	res, err := s.db.ExecContext(ctx, `INSERT INTO jobs(id, node_id, kind, args, timeout_ns, state, created_at)
		SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM nodes WHERE id = ? AND state = ?)`,
		id, n.ID, kind, string(args), int64(timeout), acapi.JobQueued, ts(now), n.ID, StateApproved)
	if err != nil {
		return nil, err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return nil, fmt.Errorf("node %s is not approved; jobs are queued only for approved nodes: %w", n.ID, ErrConflict)
	}
	return s.Job(ctx, id)
}

// checkArgsSize refuses args a poll answer could not carry (the node would
// refuse the answer, and every job in it would stay running until it
// expires).
func checkArgsSize(kind string, args json.RawMessage) error {
	if len(args) <= acapi.MaxJobArgs {
		return nil
	}
	hint := ""
	if kind == acapi.KindExec {
		hint = " (an exec's stdin travels base64-encoded: at most about " + fmt.Sprint(acapi.MaxJobArgs*3/4>>10) + " KiB of it)"
	}
	return fmt.Errorf("job %s: args are %d bytes, over the %d-byte limit of one job%s", kind, len(args), acapi.MaxJobArgs, hint)
}

// Job reads one job.
func (s *Store) Job(ctx context.Context, id string) (*Job, error) {
	j, err := scanJob(s.db.QueryRowContext(ctx, "SELECT "+jobCols+" FROM jobs WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	return j, err
}

// Jobs lists jobs, oldest first; ref (node id or MAC) "" means all nodes.
func (s *Store) Jobs(ctx context.Context, ref string) ([]*Job, error) {
	q, args := "SELECT "+jobCols+" FROM jobs ORDER BY created_at, id", []any{}
	if ref != "" {
		n, err := s.Node(ctx, ref)
		if err != nil {
			return nil, err
		}
		q, args = "SELECT "+jobCols+" FROM jobs WHERE node_id = ? ORDER BY created_at, id", []any{n.ID}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// ClaimJobs hands the node's queued jobs to it, oldest first, marking them
// running. Claiming is one statement, so two concurrent polls never get the
// same job.
func (s *Store) ClaimJobs(ctx context.Context, nodeID string, now time.Time) ([]acapi.Job, error) {
	// Almost every poll finds nothing: a read answers that without taking
	// the write lock and syncing a commit.
	var one int
	probe, err := s.prepared(ctx, "SELECT 1 FROM jobs WHERE node_id = ? AND state = ? LIMIT 1")
	if err != nil {
		return nil, err
	}
	err = probe.QueryRowContext(ctx, nodeID, acapi.JobQueued).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return []acapi.Job{}, nil
	}
	if err != nil {
		return nil, err
	}
	// The oldest jobs, while the answer stays within acapi.ClaimBudget;
	// the rest wait for the next poll.
	rows, err := s.db.QueryContext(ctx, `SELECT id, kind, args, timeout_ns, created_at FROM jobs
		WHERE node_id = ? AND state = ? ORDER BY created_at, id`, nodeID, acapi.JobQueued)
	if err != nil {
		return nil, err
	}
	var picked []acapi.Job
	size := 0
	for rows.Next() {
		var j acapi.Job
		var args string
		var timeout, created int64
		if err := rows.Scan(&j.ID, &j.Kind, &args, &timeout, &created); err != nil {
			rows.Close()
			return nil, err
		}
		cost := len(args) + acapi.JobEnvelope
		if len(picked) > 0 && size+cost > acapi.ClaimBudget {
			break
		}
		size += cost
		if args != "" {
			j.Args = json.RawMessage(args)
		}
		j.Timeout, j.CreatedAt = acapi.Duration(timeout), fromTS(created).UTC()
		picked = append(picked, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(picked) == 0 {
		return []acapi.Job{}, nil
	}
	// Claiming is one statement (the engine's), and only takes jobs still
	// queued: two concurrent polls, through one controller or several,
	// never get the same job. Only an approved node takes jobs, checked in
	// the same statement: a revoke committed before it leaves nothing to
	// hand out.
	q := s.eng.ClaimJobsSQL(len(picked))
	qargs := []any{acapi.JobRunning, ts(now), acapi.JobQueued, nodeID, StateApproved}
	for _, j := range picked {
		qargs = append(qargs, j.ID)
	}
	claimedRows, err := s.db.QueryContext(ctx, q, qargs...)
	if err != nil {
		return nil, err
	}
	defer claimedRows.Close()
	claimed := map[string]bool{}
	for claimedRows.Next() {
		var id string
		if err := claimedRows.Scan(&id); err != nil {
			return nil, err
		}
		claimed[id] = true
	}
	if err := claimedRows.Err(); err != nil {
		return nil, err
	}
	out := []acapi.Job{}
	for _, j := range picked {
		if claimed[j.ID] {
			out = append(out, j)
		}
	}
	// RETURNING gives no order guarantee.
	sortJobs(out)
	return out, nil
}

// RunningJobs is the node's jobs handed out and not finished, oldest
// first, for a new session of the node (GET jobs?resume=1).
func (s *Store) RunningJobs(ctx context.Context, nodeID string) ([]acapi.Job, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, kind, args, timeout_ns, created_at FROM jobs WHERE node_id = ? AND state = ?",
		nodeID, acapi.JobRunning)
	if err != nil {
		return nil, err
	}
	return scanClaimed(rows)
}

// scanClaimed reads (id, kind, args, timeout_ns, created_at) rows, sorted
// oldest first.
func scanClaimed(rows *sql.Rows) ([]acapi.Job, error) {
	defer rows.Close()
	out := []acapi.Job{}
	for rows.Next() {
		var j acapi.Job
		var args string
		var timeout, created int64
		if err := rows.Scan(&j.ID, &j.Kind, &args, &timeout, &created); err != nil {
			return nil, err
		}
		if args != "" {
			j.Args = json.RawMessage(args)
		}
		j.Timeout, j.CreatedAt = acapi.Duration(timeout), fromTS(created).UTC()
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// RETURNING gives no order guarantee.
	sortJobs(out)
	return out, nil
}

func sortJobs(js []acapi.Job) {
	sort.Slice(js, func(a, b int) bool {
		if !js[a].CreatedAt.Equal(js[b].CreatedAt) {
			return js[a].CreatedAt.Before(js[b].CreatedAt)
		}
		return js[a].ID < js[b].ID
	})
}

// FinishJob records a node's result. Posting a result again (the node
// retries when an answer is lost) changes nothing. A result arriving after
// the controller gave up on the job replaces the controller's timeout.
func (s *Store) FinishJob(ctx context.Context, nodeID string, r *acapi.JobResult, now time.Time) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.groupWrite(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return s.finishJob(ctx, tx, nodeID, r, data, now)
	})
}

func (s *Store) finishJob(ctx context.Context, tx *sql.Tx, nodeID string, r *acapi.JobResult, data []byte, now time.Time) error {
	var owner, state, by string
	err := s.txQueryRow(ctx, tx, "SELECT node_id, state, result_by FROM jobs WHERE id = ?", r.ID).Scan(&owner, &state, &by)
	if errors.Is(err, sql.ErrNoRows) || err == nil && owner != nodeID {
		return fmt.Errorf("job %s of node %s: %w", r.ID, nodeID, ErrNotFound)
	}
	if err != nil {
		return err
	}
	j := &Job{State: state}
	if j.Finished() && by != "controller" {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, result_by = 'node', finished_at = ?,
		started_at = CASE WHEN started_at = 0 THEN ? ELSE started_at END WHERE id = ?`,
		r.State, string(data), ts(now), ts(now), r.ID); err != nil {
		return err
	}
	return nil
}

// ExpireJobs marks running jobs whose node has not answered within their
// timeout plus grace as timed out, and returns them.
func (s *Store) ExpireJobs(ctx context.Context, now time.Time, grace time.Duration) ([]string, error) {
	// The result names its job: its JSON is cut where the id goes and the
	// row's id (hex, nothing to escape) put in by the statement itself.
	res := mustJSON(acapi.JobResult{ID: idMark, State: acapi.JobTimeout, Error: "no result from the node within the job's timeout", FinishedAt: now.UTC()})
	before, after, found := strings.Cut(res, idMark)
	if !found {
		return nil, fmt.Errorf("expire jobs: no id mark in %s", res)
	}
	rows, err := s.db.QueryContext(ctx, `UPDATE jobs SET state = ?, result_by = 'controller', finished_at = ?,
		result = ? || id || ?
		WHERE state = ? AND started_at + timeout_ns + ? < ? RETURNING id`,
		acapi.JobTimeout, ts(now), before, after, acapi.JobRunning, int64(grace), ts(now))
	return scanIDs(rows, err)
}

// scanIDs reads the one-column rows of a query.
func scanIDs(rows *sql.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// idMark stands for a job's id in a result JSON built before the id is
// known (nothing in it that JSON escapes).
const idMark = "@@job-id@@"

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// StoredEvent is an event as the controller keeps it.
type StoredEvent struct {
	acapi.Event
	NodeID     string
	ReceivedAt time.Time
}

// AddEvents stores the node's events it has not stored yet and returns the
// highest seq stored. Events at or below that are duplicates of a delivery
// whose answer was lost, and are skipped. A node holds at most quota
// events (0: no limit): beyond it its oldest go first, counted in one
// events.dropped record by the controller in their place, so one node
// cannot fill the controller's disk.
func (s *Store) AddEvents(ctx context.Context, nodeID string, evs []acapi.Event, quota int, now time.Time) (uint64, error) {
	if len(evs) == 0 {
		// A session's first post of each connection only asks where the
		// node's events stand: a read, not a place in a commit.
		st, err := s.prepared(ctx, "SELECT events_acked FROM nodes WHERE id = ?")
		if err != nil {
			return 0, err
		}
		var acked int64
		err = st.QueryRowContext(ctx, nodeID).Scan(&acked)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
		}
		return uint64(acked), err
	}
	var high uint64
	err := s.groupWrite(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		high, err = s.addEvents(ctx, tx, nodeID, evs, quota, now)
		return err
	})
	if err != nil {
		return 0, err
	}
	return high, nil
}

// MinEventQuota is the smallest per-node event quota: the dropped record
// and at least a few events.
const MinEventQuota = 16

func (s *Store) addEvents(ctx context.Context, tx *sql.Tx, nodeID string, evs []acapi.Event, quota int, now time.Time) (uint64, error) {
	var acked, stored int64
	if err := s.txQueryRow(ctx, tx, "SELECT events_acked, events_stored FROM nodes WHERE id = ?", nodeID).Scan(&acked, &stored); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
		}
		return 0, err
	}
	high := uint64(acked)
	added := int64(0)
	for _, e := range evs {
		if e.Seq <= high {
			continue
		}
		if _, err := s.txExec(ctx, tx, "INSERT INTO events(node_id, seq, time, kind, data, received_at) VALUES(?, ?, ?, ?, ?, ?)",
			nodeID, int64(e.Seq), ts(e.Time), e.Kind, string(e.Data), ts(now)); err != nil {
			return 0, err
		}
		high = e.Seq
		added++
	}
	if added == 0 {
		return high, nil
	}
	stored += added
	if quota > 0 && stored > int64(max(quota, MinEventQuota)) {
		var err error
		if stored, err = s.dropOldestEvents(ctx, tx, nodeID, stored, int64(max(quota, MinEventQuota)), now); err != nil {
			return 0, err
		}
	}
	if _, err := s.txExec(ctx, tx, "UPDATE nodes SET events_acked = ?, events_stored = ? WHERE id = ?", int64(high), stored, nodeID); err != nil {
		return 0, err
	}
	return high, nil
}

// dropOldestEvents brings node id from stored events down to quota: the
// oldest go, and one events.dropped record by the controller takes their
// place, ahead of every event kept (the record of an earlier drop grows
// instead). It returns the count now stored.
func (s *Store) dropOldestEvents(ctx context.Context, tx *sql.Tx, id string, stored, quota int64, now time.Time) (int64, error) {
	var prevSeq int64
	var prev acapi.EventsDroppedData
	var kind, data string
	err := s.txQueryRow(ctx, tx, "SELECT seq, kind, data FROM events WHERE node_id = ? ORDER BY seq LIMIT 1", id).Scan(&prevSeq, &kind, &data)
	if err != nil {
		return 0, err
	}
	if kind != acapi.EventEventsDropped || json.Unmarshal([]byte(data), &prev) != nil || prev.By != acapi.DroppedByController {
		prev, prevSeq = acapi.EventsDroppedData{}, -1
	}
	drop := stored - quota
	if prevSeq < 0 {
		drop++ // room for the record
	}
	var first, last int64
	err = s.txQueryRow(ctx, tx, "SELECT seq FROM events WHERE node_id = ? AND seq > ? ORDER BY seq LIMIT 1 OFFSET ?", id, prevSeq, drop-1).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		// The count was off (it is only recounted by Prune): take the
		// real one, and drop at the next post if still over.
		err = s.txQueryRow(ctx, tx, "SELECT count(*) FROM events WHERE node_id = ?", id).Scan(&stored)
		return stored, err
	}
	if err != nil {
		return 0, err
	}
	if err := s.txQueryRow(ctx, tx, "SELECT min(seq) FROM events WHERE node_id = ? AND seq > ?", id, prevSeq).Scan(&first); err != nil {
		return 0, err
	}
	res, err := s.txExec(ctx, tx, "DELETE FROM events WHERE node_id = ? AND seq > ? AND seq <= ?", id, prevSeq, last)
	if err != nil {
		return 0, err
	}
	gone, _ := res.RowsAffected()
	rec := acapi.EventsDroppedData{Count: prev.Count + uint64(gone), First: uint64(first), Last: uint64(last), By: acapi.DroppedByController}
	if prevSeq >= 0 {
		rec.First = prev.First
		_, err = s.txExec(ctx, tx, "UPDATE events SET time = ?, data = ?, received_at = ? WHERE node_id = ? AND seq = ?", ts(now), mustJSON(rec), ts(now), id, prevSeq)
		return stored - gone, err
	}
	_, err = s.txExec(ctx, tx, "INSERT INTO events(node_id, seq, time, kind, data, received_at) VALUES(?, ?, ?, ?, ?, ?)",
		id, first, ts(now), acapi.EventEventsDropped, mustJSON(rec), ts(now))
	return stored - gone + 1, err
}

// Events lists a node's (by id or MAC) stored events in seq order.
func (s *Store) Events(ctx context.Context, ref string) ([]StoredEvent, error) {
	n, err := s.Node(ctx, ref)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, "SELECT seq, time, kind, data, received_at FROM events WHERE node_id = ? ORDER BY seq", n.ID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StoredEvent
	for rows.Next() {
		var e StoredEvent
		var seq, t, recv int64
		var data string
		if err := rows.Scan(&seq, &t, &e.Kind, &data, &recv); err != nil {
			return nil, err
		}
		e.NodeID, e.Seq, e.Time, e.ReceivedAt = n.ID, uint64(seq), fromTS(t).UTC(), fromTS(recv)
		if data != "" {
			e.Data = json.RawMessage(data)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// ChangeWatch notices commits to the database made through any other
// connection, this process's or another's (the admin CLI, another
// controller), the engine's way: SQLite's data_version, PostgreSQL's
// LISTEN/NOTIFY.
type ChangeWatch struct {
	conn *sql.Conn
	wait func(ctx context.Context, d time.Duration) (bool, error)
}

// NewChangeWatch holds a dedicated connection.
func (s *Store) NewChangeWatch(ctx context.Context) (*ChangeWatch, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	wait, err := s.eng.Watch(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &ChangeWatch{conn: conn, wait: wait}, nil
}

// Wait waits up to d for a commit elsewhere; true when one may have
// happened since the last call.
func (w *ChangeWatch) Wait(ctx context.Context, d time.Duration) (bool, error) {
	return w.wait(ctx, d)
}

// Counters reads the change counters: nodes moves when any node's state
// changes or a node is deleted, jobs when a job is queued.
func (w *ChangeWatch) Counters(ctx context.Context) (nodes, jobs int64, err error) {
	rows, err := w.conn.QueryContext(ctx, "SELECT what, n FROM changes")
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var what string
		var n int64
		if err := rows.Scan(&what, &n); err != nil {
			return 0, 0, err
		}
		switch what {
		case "nodes":
			nodes = n
		case "jobs":
			jobs = n
		}
	}
	return nodes, jobs, rows.Err()
}

// ChangedNodes is the nodes whose state or certificate changed, or that
// were deleted, since the nodes counter read since.
func (w *ChangeWatch) ChangedNodes(ctx context.Context, since int64) ([]string, error) {
	return scanIDs(w.conn.QueryContext(ctx, "SELECT id FROM node_changes WHERE n > ?", since))
}

// Close releases the connection.
func (w *ChangeWatch) Close() error { return w.conn.Close() }

// NodesWithQueuedJobs is the set of nodes that have work waiting.
func (s *Store) NodesWithQueuedJobs(ctx context.Context) (map[string]bool, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT node_id FROM jobs WHERE state = ?", acapi.JobQueued)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// CancelJob withdraws a job the node has not taken yet (it ends
// rejected, by the controller). A job already running cannot be called
// back: the protocol has no cancel, the node finishes it.
func (s *Store) CancelJob(ctx context.Context, id string, now time.Time) (*Job, error) {
	res := acapi.JobResult{ID: id, State: acapi.JobRejected, Error: "cancelled by the operator before the node took it", FinishedAt: now.UTC()}
	r, err := s.db.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, result_by = 'controller', finished_at = ?
		WHERE id = ? AND state = ?`, acapi.JobRejected, mustJSON(res), ts(now), id, acapi.JobQueued)
	if err != nil {
		return nil, err
	}
	j, err := s.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return j, fmt.Errorf("job %s is %s, not queued: %w", id, j.State, ErrConflict)
	}
	return j, nil
}

// Prune deletes finished jobs and events older than before. Nodes keep
// their highest event seq, so exactly-once delivery is unaffected.
func (s *Store) Prune(ctx context.Context, before time.Time) (jobs, events int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	r, err := tx.ExecContext(ctx, "DELETE FROM jobs WHERE state NOT IN (?, ?) AND finished_at > 0 AND finished_at < ?",
		acapi.JobQueued, acapi.JobRunning, ts(before))
	if err != nil {
		return 0, 0, err
	}
	jobs, _ = r.RowsAffected()
	r, err = tx.ExecContext(ctx, "DELETE FROM events WHERE received_at < ?", ts(before))
	if err != nil {
		return 0, 0, err
	}
	events, _ = r.RowsAffected()
	if events > 0 {
		if _, err := tx.ExecContext(ctx, "UPDATE nodes SET events_stored = (SELECT count(*) FROM events WHERE events.node_id = nodes.id) WHERE events_stored > 0"); err != nil {
			return 0, 0, err
		}
	}
	return jobs, events, tx.Commit()
}
