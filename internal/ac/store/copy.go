package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// notCopied are tables whose rows belong to one database: the change
// counters start afresh on the target (their triggers keep them there).
var notCopied = map[string]bool{"changes": true, "node_changes": true}

// CopyFromSQLite copies every row of the SQLite store from into the empty
// store to (both at the schema version this build writes), table by table
// in creation order (so references are satisfied) and each table's rows in
// insertion order, in one transaction on to: a failure leaves to empty.
// It returns the rows copied per table.
func CopyFromSQLite(ctx context.Context, from, to *Store) (map[string]int64, error) {
	if from.eng.Name() != "sqlite" {
		return nil, fmt.Errorf("copy: %s is not a SQLite store", from.Path())
	}
	for _, s := range []*Store{from, to} {
		have, latest, err := s.Schema(ctx)
		if err != nil {
			return nil, fmt.Errorf("copy: %s: %w", s.Path(), err)
		}
		if have != latest {
			return nil, fmt.Errorf("copy: %s: schema version %d, not %d (run g8-ac db migrate on it first)", s.Path(), have, latest)
		}
	}
	var rows int
	if err := to.db.QueryRowContext(ctx, "SELECT (SELECT count(*) FROM nodes) + (SELECT count(*) FROM meta)").Scan(&rows); err != nil {
		return nil, fmt.Errorf("copy: %s: %w", to.Path(), err)
	}
	if rows > 0 {
		return nil, fmt.Errorf("copy: %s already holds a controller's data (nodes or settings); copy only into an empty database", to.Path())
	}
	tables, err := from.db.QueryContext(ctx, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
	if err != nil {
		return nil, err
	}
	var names []string
	for tables.Next() {
		var n string
		if err := tables.Scan(&n); err != nil {
			tables.Close()
			return nil, err
		}
		if !notCopied[n] {
			names = append(names, n)
		}
	}
	tables.Close()
	if err := tables.Err(); err != nil {
		return nil, err
	}
	tx, err := to.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	counts := map[string]int64{}
	for _, table := range names {
		n, err := copyTable(ctx, from, tx, table)
		if err != nil {
			return nil, fmt.Errorf("copy: table %s: %w", table, err)
		}
		counts[table] = n
	}
	return counts, tx.Commit()
}

func copyTable(ctx context.Context, from *Store, tx *sql.Tx, table string) (int64, error) {
	// Names come from sqlite_master, not from input; quoted all the same.
	rows, err := from.db.QueryContext(ctx, `SELECT * FROM "`+table+`" ORDER BY rowid`)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ")
	insert := `INSERT INTO "` + table + `"(` + strings.Join(cols, ", ") + ") VALUES(" + marks + ")"
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var n int64
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		if _, err := tx.ExecContext(ctx, insert, vals...); err != nil {
			return n, fmt.Errorf("row %d: %w", n+1, err)
		}
		n++
	}
	return n, rows.Err()
}
