package store

import (
	"context"
	"fmt"
	"time"
)

// RecoveryKey is one generation of the controller's recovery master key.
// Wrapped is the secret sealed under the controller's key-encryption key, a
// file that never enters the database (docs/unlock.md): a copy of the
// database alone does not hold a usable key.
type RecoveryKey struct {
	KID       string
	Wrapped   []byte
	CreatedAt time.Time
	Nodes     int // nodes whose last recovery used this key
}

// AddRecoveryKey stores a new generation; the newest is the current one.
func (s *Store) AddRecoveryKey(ctx context.Context, kid string, wrapped []byte, now time.Time) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO recovery_keys(kid, wrapped, created_at) VALUES (?, ?, ?)", kid, wrapped, now.UnixNano())
	if err != nil {
		return fmt.Errorf("recovery key %s: %w", kid, err)
	}
	return nil
}

// RecoveryKeys lists every generation, newest first, with how many nodes
// still recover through each.
func (s *Store) RecoveryKeys(ctx context.Context) ([]RecoveryKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT k.kid, k.wrapped, k.created_at,
		(SELECT COUNT(*) FROM nodes n WHERE n.recovery_kid = k.kid)
		FROM recovery_keys k ORDER BY k.created_at DESC, k.kid`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RecoveryKey
	for rows.Next() {
		var k RecoveryKey
		var created int64
		if err := rows.Scan(&k.KID, &k.Wrapped, &created, &k.Nodes); err != nil {
			return nil, err
		}
		k.CreatedAt = time.Unix(0, created)
		out = append(out, k)
	}
	return out, rows.Err()
}

// RemoveRecoveryKey deletes a generation. Unless force, it refuses while a
// node's last recovery used it (the node has not re-wrapped yet) or while
// it is the only one.
func (s *Store) RemoveRecoveryKey(ctx context.Context, kid string, force bool) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var exists, nodes, total int
	if err := tx.QueryRowContext(ctx, `SELECT
		(SELECT COUNT(*) FROM recovery_keys WHERE kid = ?),
		(SELECT COUNT(*) FROM nodes WHERE recovery_kid = ?),
		(SELECT COUNT(*) FROM recovery_keys)`, kid, kid).Scan(&exists, &nodes, &total); err != nil {
		return err
	}
	switch {
	case exists == 0:
		return fmt.Errorf("recovery key %s: %w", kid, ErrNotFound)
	case nodes > 0 && !force:
		return fmt.Errorf("recovery key %s: %d node(s) still recover through it (each re-wraps to the newest key on its next boot): %w", kid, nodes, ErrConflict)
	case total == 1:
		return fmt.Errorf("recovery key %s: it is the only one (rotate first): %w", kid, ErrConflict)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM recovery_keys WHERE kid = ?", kid); err != nil {
		return err
	}
	return tx.Commit()
}

// NoteRecovery records which key a node's recovery used, so rotation knows
// when an old key is no longer needed.
func (s *Store) NoteRecovery(ctx context.Context, nodeID, kid string) error {
	_, err := s.db.ExecContext(ctx, "UPDATE nodes SET recovery_kid = ? WHERE id = ? AND recovery_kid <> ?", kid, nodeID, kid)
	return err
}

// DropKey forgets the unlock key stored for a node enrolled before key
// recovery, once the node has re-wrapped its volume. It reports whether
// there was one.
func (s *Store) DropKey(ctx context.Context, nodeID string) (bool, error) {
	res, err := s.db.ExecContext(ctx, "UPDATE nodes SET key = NULL WHERE id = ? AND key IS NOT NULL", nodeID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil || n == 0 {
		return false, err
	}
	// secure_delete (Open) zeroes the freed bytes in the database file; the
	// old page is still in the write-ahead log until a checkpoint, so
	// checkpoint and truncate it now (best effort: a reader in the middle
	// of a transaction delays it to the next automatic checkpoint).
	_, _ = s.db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return true, nil
}
