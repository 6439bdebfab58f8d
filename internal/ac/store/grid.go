package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// AppJobs lists the grid's app.* jobs created since a time, plus every
// one still queued or running however old, oldest first: what the grid's
// reconcile needs to see jobs in flight and to back off after failures.
func (s *Store) AppJobs(ctx context.Context, since time.Time) ([]*Job, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+jobCols+` FROM jobs
		WHERE kind LIKE 'app.%' AND (created_at >= ? OR state IN (?, ?))
		ORDER BY created_at, id`, ts(since), acapi.JobQueued, acapi.JobRunning)
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

// NewJob is one job of a batch for CreateJobs.
type NewJob struct {
	NodeID  string // a node id (not a MAC)
	Kind    string
	Args    json.RawMessage
	Timeout time.Duration
}

// CreateJobs queues a batch of jobs in one transaction and returns their
// ids in order: the grid queues thousands at once when a fleet converges,
// and one transaction each would cost a commit each. Either every job is
// queued or none.
func (s *Store) CreateJobs(ctx context.Context, jobs []NewJob, now time.Time) ([]string, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	ins, err := tx.PrepareContext(ctx, "INSERT INTO jobs(id, node_id, kind, args, timeout_ns, state, created_at) VALUES(?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		return nil, err
	}
	defer ins.Close()
	ids := make([]string, 0, len(jobs))
	for _, j := range jobs {
		switch {
		case j.Kind == "":
			return nil, errors.New("job: empty kind")
		case len(j.Args) > 0 && !json.Valid(j.Args):
			return nil, errors.New("job: args are not valid JSON")
		case j.Timeout <= 0:
			return nil, errors.New("job: timeout must be positive")
		}
		if err := checkArgsSize(j.Kind, j.Args); err != nil {
			return nil, err
		}
		id := newID("j-", 6)
		// The foreign key on node_id refuses a node that does not exist.
		if _, err := ins.ExecContext(ctx, id, j.NodeID, j.Kind, string(j.Args), int64(j.Timeout), acapi.JobQueued, ts(now)); err != nil {
			return nil, fmt.Errorf("job for node %s: %w", j.NodeID, err)
		}
		ids = append(ids, id)
	}
	return ids, tx.Commit()
}
