package store

import (
	"context"
	"encoding/json"
	"errors"
)

// Rollout is one app's grid rollout state, opaque to the store, and its
// version: each write names the version it read, so of two writers (the
// grid's round, an operator's pause) the later one loses instead of
// undoing the other.
type Rollout struct {
	App     string
	State   json.RawMessage
	Version int64 // 0: not stored yet
}

// ErrRolloutChanged is SaveRollout's answer when the row is no longer at
// the version read.
var ErrRolloutChanged = errors.New("rollout state changed meanwhile")

// Rollouts reads every app's rollout state.
func (s *Store) Rollouts(ctx context.Context) ([]Rollout, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT app, state, version FROM grid_rollouts ORDER BY app")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Rollout
	for rows.Next() {
		var r Rollout
		var st string
		if err := rows.Scan(&r.App, &st, &r.Version); err != nil {
			return nil, err
		}
		r.State = json.RawMessage(st)
		out = append(out, r)
	}
	return out, rows.Err()
}

// SaveRollout writes r.State if the stored row is still at r.Version (no
// row for 0) and returns the new version, or ErrRolloutChanged.
func (s *Store) SaveRollout(ctx context.Context, r Rollout) (int64, error) {
	if !json.Valid(r.State) {
		return 0, errors.New("rollout state: not valid JSON")
	}
	q, args := "INSERT INTO grid_rollouts(app, state, version) VALUES(?, ?, 1) ON CONFLICT (app) DO NOTHING", []any{r.App, string(r.State)}
	if r.Version > 0 {
		q, args = "UPDATE grid_rollouts SET state = ?, version = version + 1 WHERE app = ? AND version = ?", []any{string(r.State), r.App, r.Version}
	}
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return 0, errors.Join(ErrRolloutChanged, err)
	}
	return r.Version + 1, nil
}
