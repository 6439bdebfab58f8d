// Package postgres is the store's engine for fleets with several
// controllers: every `g8-ac serve` (and the admin CLI) on one PostgreSQL
// database, through github.com/jackc/pgx/v5. It holds what is
// PostgreSQL's own: the connection (with the store's ? placeholders
// rebound to $n), the versioned schema, the job claim (FOR UPDATE SKIP
// LOCKED) and LISTEN/NOTIFY for noticing other controllers' commits.
package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Engine is the PostgreSQL engine; the zero value is ready.
type Engine struct{}

func (Engine) Name() string { return "postgres" }

// Channel is the NOTIFY channel the schema's triggers signal changes on.
const Channel = "g8_changes"

// migrateLock is the advisory lock key that serializes migrations of
// controllers starting at once ("g8-ac" in ASCII).
const migrateLock = 0x67382d6163

// Open connects to the database URL dsn (postgres://...).
func (Engine) Open(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	// One round trip per query instead of a prepare and an execute per new
	// statement: admin commands are short-lived processes whose every
	// statement is new, and a job's round trip crosses several of them.
	// The hot statements of `serve` are prepared explicitly
	// (groupcommit.go). A URL may still choose another mode.
	if !strings.Contains(dsn, "default_query_exec_mode") {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	db := sql.OpenDB(&connector{base: stdlib.GetConnector(*cfg)})
	// Each controller holds a bounded share of the server's connections
	// (max_connections is 100 by default): these 16, two of the group
	// commits' own (store.OpenOnly); long-polls hold none while they
	// wait.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

// Migrations is the schema, one version per entry.
func (Engine) Migrations() []string { return migrations }

// Version reads the database's schema version (0: no schema yet).
func (Engine) Version(ctx context.Context, db *sql.DB) (int, error) {
	var exists bool
	if err := db.QueryRowContext(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := db.QueryRowContext(ctx, "SELECT version FROM schema_version").Scan(&v)
	return v, err
}

// BeginMigrate takes an advisory lock for the migration's transaction, so
// that controllers starting together migrate once, and reads the version.
func (Engine) BeginMigrate(ctx context.Context, tx *sql.Tx) (int, error) {
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", int64(migrateLock)); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"); err != nil {
		return 0, err
	}
	v := 0
	err := tx.QueryRowContext(ctx, "SELECT version FROM schema_version").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = tx.ExecContext(ctx, "INSERT INTO schema_version(version) VALUES(0)")
	}
	return v, err
}

// SetVersion records the schema version in the migration's transaction.
func (Engine) SetVersion(ctx context.Context, tx *sql.Tx, v int) error {
	_, err := tx.ExecContext(ctx, "UPDATE schema_version SET version = ?", v)
	return err
}

// ClaimJobsSQL takes n picked jobs that are still queued and that no
// other transaction is claiming right now (SKIP LOCKED: a concurrent poll
// through another controller neither waits for nor gets them), marks them
// running and returns their ids, if their node is approved (args:
// running, now, queued, node id, approved, the n ids).
func (Engine) ClaimJobsSQL(n int) string {
	return `UPDATE jobs SET state = ?, started_at = ?
		WHERE id IN (SELECT id FROM jobs WHERE state = ? AND EXISTS (SELECT 1 FROM nodes WHERE id = ? AND state = ?)
			AND id IN (?` + strings.Repeat(", ?", n-1) + `) FOR UPDATE SKIP LOCKED)
		RETURNING id`
}

// BeginWrite turns synchronous_commit off for a soft transaction (its
// commit reaches the disk with the WAL writer's next flush, moments
// later; a crash may lose it, never part of it); a durable one keeps the
// server's setting.
func (Engine) BeginWrite(ctx context.Context, conn *sql.Conn, soft bool) (*sql.Tx, error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil || !soft {
		return tx, err
	}
	if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
		tx.Rollback()
		return nil, err
	}
	return tx, nil
}

// Watch LISTENs on conn for the triggers' NOTIFY: a job queued through any
// controller or the CLI wakes the controller holding the node's long-poll
// at once, without polling a table.
func (Engine) Watch(ctx context.Context, conn *sql.Conn) (func(ctx context.Context, d time.Duration) (bool, error), error) {
	if _, err := conn.ExecContext(ctx, "LISTEN "+Channel); err != nil {
		return nil, err
	}
	return func(ctx context.Context, d time.Duration) (bool, error) {
		changed := false
		err := conn.Raw(func(dc any) error {
			pc := dc.(*rebinding).Conn.(*stdlib.Conn).Conn()
			wctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			if _, err := pc.WaitForNotification(wctx); err != nil {
				if wctx.Err() != nil && ctx.Err() == nil {
					return nil // quiet interval
				}
				return err
			}
			changed = true
			// Everything already delivered counts as this one change.
			for {
				dctx, cancel := context.WithTimeout(ctx, time.Millisecond)
				_, err := pc.WaitForNotification(dctx)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return nil
				}
			}
		})
		return changed, err
	}, nil
}

// Rebind turns the store's ? placeholders into PostgreSQL's $1, $2, ...;
// a ? inside a quoted string or identifier is left alone.
func Rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// connector wraps pgx's so every connection rebinds placeholders.
type connector struct{ base driver.Connector }

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &rebinding{conn}, nil
}

func (c *connector) Driver() driver.Driver { return c.base.Driver() }

// rebinding is a pgx connection that rebinds each statement's
// placeholders; everything else is pgx's own.
type rebinding struct{ driver.Conn }

func (r *rebinding) Prepare(q string) (driver.Stmt, error) { return r.Conn.Prepare(Rebind(q)) }

func (r *rebinding) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	return r.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, Rebind(q))
}

func (r *rebinding) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	return r.Conn.(driver.ExecerContext).ExecContext(ctx, Rebind(q), args)
}

func (r *rebinding) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	return r.Conn.(driver.QueryerContext).QueryContext(ctx, Rebind(q), args)
}

func (r *rebinding) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return r.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

func (r *rebinding) Ping(ctx context.Context) error { return r.Conn.(driver.Pinger).Ping(ctx) }

func (r *rebinding) ResetSession(ctx context.Context) error {
	return r.Conn.(driver.SessionResetter).ResetSession(ctx)
}

func (r *rebinding) CheckNamedValue(v *driver.NamedValue) error {
	return r.Conn.(driver.NamedValueChecker).CheckNamedValue(v)
}

// TryLeader takes the session advisory lock for name on a connection of
// its own: held for as long as that connection lives, so a controller that
// dies (its connection closes) hands it over at once.
func (Engine) TryLeader(ctx context.Context, db *sql.DB, _ string, name string) (bool, <-chan struct{}, func(), error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return false, nil, nil, err
	}
	key := lockKey(name)
	var ok bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", key).Scan(&ok); err != nil || !ok {
		conn.Close()
		return false, nil, nil, err
	}
	lost := make(chan struct{})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			// The lock lives and dies with the connection: a failed
			// round trip means it may be gone.
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := conn.PingContext(pctx)
			cancel()
			if err != nil {
				close(lost)
				return
			}
		}
	}()
	release := func() {
		close(stop)
		<-done
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(rctx, "SELECT pg_advisory_unlock(?)", key)
		conn.Close()
	}
	return true, lost, release, nil
}

// lockKey maps a lock name to PostgreSQL's 64-bit advisory lock key space.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("g8-ac/" + name))
	return int64(h.Sum64())
}
