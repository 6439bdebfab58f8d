// Package sqlite is the store's embedded engine: one SQLite file in WAL
// mode, so the admin CLI (a separate process) and `g8-ac serve` share it
// safely and see each other's writes at once. It holds what is SQLite's
// own: opening the file, the versioned schema, the job claim statement and
// how other processes' commits are noticed (data_version).
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Engine is the SQLite engine; the zero value is ready.
type Engine struct{}

func (Engine) Name() string { return "sqlite" }

// Open opens (creating it 0600 if needed) the database file at path.
func (Engine) Open(path string) (*sql.DB, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		// Create it 0600 ourselves: the driver would use the umask.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	// busy_timeout lets the CLI and the server wait for each other's
	// writes; _txlock=immediate takes the write lock at BEGIN, so two
	// writers never deadlock upgrading read locks. synchronous=FULL: an
	// approval (which makes the unlock key) must survive a power cut once
	// a node may have used the key (heartbeats and certificate
	// promotions commit without a sync: BeginWrite).
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)&_pragma=secure_delete(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	// database/sql keeps 2 idle connections by default: under a fleet's
	// concurrent requests every other one would open a fresh connection,
	// which runs the pragmas above and parses the schema again (most of
	// the server's CPU in a profile at 1000 nodes). Keep a fixed set: SQLite
	// takes one writer at a time anyway, and a burst of connects opening
	// hundreds of connections only adds waiting in its busy handler. No
	// store method uses a second connection while it holds one.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	return db, nil
}

// Migrations is the schema, one version per entry.
func (Engine) Migrations() []string { return migrations }

// Version reads the database's schema version.
func (Engine) Version(ctx context.Context, db *sql.DB) (int, error) {
	var v int
	err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

// BeginMigrate reads the version inside the migration's transaction; the
// transaction holds SQLite's write lock from its start (_txlock=immediate),
// so two processes migrate one after the other.
func (Engine) BeginMigrate(ctx context.Context, tx *sql.Tx) (int, error) {
	var v int
	err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

// SetVersion records the schema version in the migration's transaction.
func (Engine) SetVersion(ctx context.Context, tx *sql.Tx, v int) error {
	_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v))
	return err
}

// ClaimJobsSQL marks n picked jobs running, those still queued, and
// returns their ids, if their node is approved (args: running, now,
// queued, node id, approved, the n ids). One statement under SQLite's
// single write lock: two polls never get the same job.
func (Engine) ClaimJobsSQL(n int) string {
	return "UPDATE jobs SET state = ?, started_at = ? WHERE state = ? AND EXISTS (SELECT 1 FROM nodes WHERE id = ? AND state = ?) AND id IN (?" +
		strings.Repeat(", ?", n-1) + ") RETURNING id"
}

// BeginWrite sets the connection's sync before it begins (SQLite takes
// no change of it inside a transaction): NORMAL commits in WAL mode
// without a sync (the WAL is synced, in order, by the next FULL commit
// or checkpoint), FULL syncs the WAL at the commit.
func (Engine) BeginWrite(ctx context.Context, conn *sql.Conn, soft bool) (*sql.Tx, error) {
	q := "PRAGMA synchronous = FULL"
	if soft {
		q = "PRAGMA synchronous = NORMAL"
	}
	if _, err := conn.ExecContext(ctx, q); err != nil {
		return nil, err
	}
	return conn.BeginTx(ctx, nil)
}

// Watch returns a wait for commits made through any other connection,
// this process's or another's, using data_version on conn (it is per
// connection and only moves for commits made elsewhere): one cheap query
// per interval however many nodes wait.
func (Engine) Watch(ctx context.Context, conn *sql.Conn) (func(ctx context.Context, d time.Duration) (bool, error), error) {
	var last int64
	check := func(ctx context.Context) (bool, error) {
		var v int64
		if err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v); err != nil {
			return false, err
		}
		changed := v != last
		last = v
		return changed, nil
	}
	if _, err := check(ctx); err != nil {
		return nil, err
	}
	return func(ctx context.Context, d time.Duration) (bool, error) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
		return check(ctx)
	}, nil
}

// TryLeader takes an exclusive flock on a file beside the database, path
// + ".NAME.lock": every process on this database file is on this machine,
// and the kernel releases the lock when the holder dies.
func (Engine) TryLeader(_ context.Context, _ *sql.DB, path, name string) (bool, <-chan struct{}, func(), error) {
	f, err := os.OpenFile(path+"."+name+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, nil, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil, nil, nil
		}
		return false, nil, nil, err
	}
	// A flock cannot be lost while the file stays open.
	return true, make(chan struct{}), func() { f.Close() }, nil
}
