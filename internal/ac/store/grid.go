package store

import (
	"context"
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
