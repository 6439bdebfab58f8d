package store

import (
	"context"
	"database/sql"
	"net/url"
	"strings"
	"time"

	"github.com/g8os/boot/internal/ac/store/postgres"
	"github.com/g8os/boot/internal/ac/store/sqlite"
)

// Engine is what differs between the databases the store runs on. Each
// implementation lives in its own package and knows nothing of the store.
type Engine interface {
	Name() string // "sqlite", "postgres"
	// Open connects without touching the schema.
	Open(dsn string) (*sql.DB, error)
	// Migrations is the versioned schema (version i+1 is entry i).
	// Version reads the database's version; BeginMigrate reads it in the
	// migration's transaction, made safe against other controllers
	// migrating at once; SetVersion records it there.
	Migrations() []string
	Version(ctx context.Context, db *sql.DB) (int, error)
	BeginMigrate(ctx context.Context, tx *sql.Tx) (int, error)
	SetVersion(ctx context.Context, tx *sql.Tx, v int) error
	// ClaimJobsSQL marks n picked jobs running, those still queued, and
	// returns their ids, if their node is approved; args: running, now,
	// queued, node id, approved, the n ids. Two concurrent claims never
	// return the same job.
	ClaimJobsSQL(n int) string
	// BeginWrite begins a group commit's transaction on conn. Soft, its
	// commit does not wait for the disk and may be lost in a crash
	// (never half of it, never without the commits after it); else it
	// is on disk once committed.
	BeginWrite(ctx context.Context, conn *sql.Conn, soft bool) (*sql.Tx, error)
	// Watch prepares conn to notice commits made through other
	// connections, and returns a wait: up to d for such a commit, true
	// when one may have happened.
	Watch(ctx context.Context, conn *sql.Conn) (func(ctx context.Context, d time.Duration) (bool, error), error)
	// TryLeader tries to become the one holder of name among every
	// process on the database dsn, without waiting. While held, lost
	// closes if the hold may be gone; release gives it up. A holder that
	// dies releases it by itself.
	TryLeader(ctx context.Context, db *sql.DB, dsn, name string) (ok bool, lost <-chan struct{}, release func(), err error)
}

// IsPostgres reports whether dsn names a PostgreSQL database rather than
// a SQLite file.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// EngineFor picks the engine for dsn and names the database for messages
// (never with a password).
func EngineFor(dsn string) (Engine, string) {
	if !IsPostgres(dsn) {
		return sqlite.Engine{}, dsn
	}
	return postgres.Engine{}, Redact(dsn)
}

// Redact drops the password from a database URL.
func Redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
