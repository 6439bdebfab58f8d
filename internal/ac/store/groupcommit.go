package store

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// maxGroup bounds one group commit, so a flood of requests still sees
// commits (and answers) at a steady pace.
const maxGroup = 512

// writeReq is one caller's part of a group commit.
type writeReq struct {
	fn   func(ctx context.Context, tx *sql.Tx) error
	soft bool // softWrite
	done chan error
}

// groupWrite runs fn in a transaction shared with whatever other writes
// arrive meanwhile: with thousands of nodes a commit (and fsync) per
// heartbeat or event post serialises every request on SQLite's single
// write lock, while one commit for all of them costs about one. Each fn
// runs in its own savepoint, so one caller's error undoes only its own
// changes. It returns once fn's changes are committed (or failed). fn must
// not keep ctx: it gets the batch's.
func (s *Store) groupWrite(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.queueWrite(ctx, fn, false)
}

// softWrite is groupWrite for writes that a crash may take back without
// harm, committed without waiting for the disk (Engine.BeginWrite): a
// heartbeat, which the node repeats within its
// interval, and a certificate's promotion, made again at the
// certificate's next use. They are most of a fleet's writes, and a sync
// per commit made them wait on the disk: on a disk busy with other work a
// sync took seconds, and the nodes of a fleet coming up gave up on their
// first requests. A soft commit is never reordered with a durable one: a
// durable commit after it makes it durable too. Soft and durable writes
// queued together go in two commits, the soft one first.
func (s *Store) softWrite(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.queueWrite(ctx, fn, true)
}

func (s *Store) queueWrite(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error, soft bool) error {
	r := &writeReq{fn: fn, soft: soft, done: make(chan error, 1)}
	s.gmu.Lock()
	s.pending = append(s.pending, r)
	if !s.writing {
		s.writing = true
		go s.writeGroups()
	}
	s.gmu.Unlock()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// The write may still happen; callers' writes are idempotent
		// (a node repeats a heartbeat, events are deduplicated by seq,
		// a result posted again changes nothing).
		return ctx.Err()
	}
}

// GroupCommits is how many group commits this Store made.
func (s *Store) GroupCommits() int64 { return s.commits.Load() }

func (s *Store) writeGroups() {
	for {
		s.gmu.Lock()
		n := min(len(s.pending), maxGroup)
		if n == 0 {
			s.writing = false
			s.gmu.Unlock()
			return
		}
		group := s.pending[:n:n]
		s.pending = append([]*writeReq(nil), s.pending[n:]...)
		s.gmu.Unlock()
		var soft, durable []*writeReq
		for _, r := range group {
			if r.soft {
				soft = append(soft, r)
			} else {
				durable = append(durable, r)
			}
		}
		if len(soft) > 0 {
			s.commitGroup(soft, true)
		}
		if len(durable) > 0 {
			s.commitGroup(durable, false)
		}
	}
}

// stmtCache holds statements prepared on one pool: database/sql prepares
// each once per connection and reuses it, where a plain query is parsed
// by SQLite on every call (a tenth of the server's CPU at 1000 nodes).
// For the statements every request runs.
type stmtCache struct {
	mu    sync.Mutex
	db    *sql.DB
	stmts map[string]*sql.Stmt
}

func (c *stmtCache) get(ctx context.Context, q string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.stmts[q]; st != nil {
		return st, nil
	}
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if c.stmts == nil {
		c.stmts = map[string]*sql.Stmt{}
	}
	c.stmts[q] = st
	return st, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.stmts {
		st.Close()
	}
	c.stmts = nil
}

// prepared returns q prepared on the pool (reads outside group commits).
func (s *Store) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	return s.reads.get(ctx, q)
}

// txExec runs a prepared q in tx, a group commit's.
func (s *Store) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := s.writes.get(ctx, q)
	if err != nil {
		return nil, err
	}
	return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

// txQueryRow runs a prepared single-row q in tx, a group commit's.
func (s *Store) txQueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	st, err := s.writes.get(ctx, q)
	if err != nil {
		// A Row carrying the error: QueryRowContext on a closed-over tx
		// would hide it, so run the query unprepared and let it fail there.
		return tx.QueryRowContext(ctx, q, args...)
	}
	return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}

func (s *Store) commitGroup(group []*writeReq, soft bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make([]error, len(group))
	err := func() error {
		// The group commits' own pool (Store.wdb): taking a connection
		// from the pool that serves reads, the writer queued behind every
		// reader (a freed connection goes to a random waiter), and while
		// a fleet came up, with hundreds of node lookups waiting for
		// connections, single commits waited 10-20 s for one.
		conn, err := s.wdb.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		tx, err := s.eng.BeginWrite(ctx, conn, soft)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		commit := func() error {
			if err := tx.Commit(); err != nil {
				return err
			}
			s.commits.Add(1)
			return nil
		}
		if len(group) == 1 {
			// Alone in its transaction: no savepoint needed, its error
			// rolls back only its own changes.
			if errs[0] = group[0].fn(ctx, tx); errs[0] != nil {
				return nil
			}
			return commit()
		}
		for i, r := range group {
			if _, err := s.txExec(ctx, tx, "SAVEPOINT w"); err != nil {
				return err
			}
			if errs[i] = r.fn(ctx, tx); errs[i] != nil {
				if _, err := s.txExec(ctx, tx, "ROLLBACK TO w"); err != nil {
					return err
				}
			}
			if _, err := s.txExec(ctx, tx, "RELEASE w"); err != nil {
				return err
			}
		}
		return commit()
	}()
	for i, r := range group {
		if err != nil {
			r.done <- err
		} else {
			r.done <- errs[i]
		}
	}
}
