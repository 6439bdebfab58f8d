package store

import (
	"context"
	"database/sql"
	"time"
)

// maxGroup bounds one group commit, so a flood of requests still sees
// commits (and answers) at a steady pace.
const maxGroup = 512

// writeReq is one caller's part of a group commit.
type writeReq struct {
	fn   func(ctx context.Context, tx *sql.Tx) error
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
	r := &writeReq{fn: fn, done: make(chan error, 1)}
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
		s.commitGroup(group)
	}
}

// prepared returns q prepared on the pool: database/sql prepares it once
// per connection and reuses it, where a plain query is parsed by SQLite
// on every call (a tenth of the server's CPU at 1000 nodes). For the
// statements every request runs.
func (s *Store) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	s.smu.Lock()
	defer s.smu.Unlock()
	if st := s.stmts[q]; st != nil {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if s.stmts == nil {
		s.stmts = map[string]*sql.Stmt{}
	}
	s.stmts[q] = st
	return st, nil
}

// txExec runs a prepared q in tx.
func (s *Store) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := s.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

// txQueryRow runs a prepared single-row q in tx.
func (s *Store) txQueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	st, err := s.prepared(ctx, q)
	if err != nil {
		// A Row carrying the error: QueryRowContext on a closed-over tx
		// would hide it, so run the query unprepared and let it fail there.
		return tx.QueryRowContext(ctx, q, args...)
	}
	return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}

func (s *Store) commitGroup(group []*writeReq) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make([]error, len(group))
	err := func() error {
		tx, err := s.db.BeginTx(ctx, nil)
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
