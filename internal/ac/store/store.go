// Package store is the controller's database. Its queries are written
// once, in the SQL both engines speak (? placeholders); what differs —
// opening, the versioned schema, the job claim, noticing other processes'
// commits — sits in one Engine per database, side by side:
// internal/ac/store/sqlite (one embedded file, the default) and
// internal/ac/store/postgres (several controllers on one database).
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"golang.org/x/crypto/ssh"
)

// Node states.
const (
	StatePending  = "pending"  // seen at /v1/unlock, waiting for an operator
	StateApproved = "approved" // gets its key and certificate
	StateDenied   = "denied"   // refused before it was ever approved
	StateRevoked  = "revoked"  // was approved; key and certificate refused from now on
)

// KeySize is the length of a node's unlock key.
const KeySize = 32

// Errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Store is an open controller database.
type Store struct {
	db   *sql.DB
	eng  Engine
	dsn  string
	path string

	gmu     sync.Mutex // group commit (groupcommit.go)
	pending []*writeReq
	writing bool
	commits atomic.Int64 // group commits made (tests, benches)

	// wdb is the group commits' own pool: one connection for the
	// transaction, one to prepare a statement on while it is open.
	wdb    *sql.DB
	reads  stmtCache // prepared on db (groupcommit.go)
	writes stmtCache // prepared on wdb
}

// Open opens the database named by dsn — a postgres:// URL, or else the
// path of a SQLite file (created if needed) — and brings its schema up to
// date.
func Open(dsn string) (*Store, error) {
	s, err := OpenOnly(dsn)
	if err != nil {
		return nil, err
	}
	// Reading the version is one query; migrating is a write transaction
	// under a lock every controller and admin command would queue on, so
	// it is taken only when the schema is behind.
	ctx := context.Background()
	have, latest, err := s.Schema(ctx)
	if err == nil && have != latest {
		_, err = s.Migrate(ctx) // also refuses a newer schema
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("store %s: %w", s.path, err)
	}
	return s, nil
}

// OpenOnly opens the database named by dsn without touching its schema
// (for `g8-ac db check`, and `db migrate` which says what it did).
func OpenOnly(dsn string) (*Store, error) {
	eng, name := EngineFor(dsn)
	db, err := eng.Open(dsn)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	// Connects only when a group commit needs it.
	wdb, err := eng.Open(dsn)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	wdb.SetMaxOpenConns(2)
	wdb.SetMaxIdleConns(2)
	s := &Store{db: db, wdb: wdb, eng: eng, dsn: dsn, path: name}
	s.reads.db, s.writes.db = db, wdb
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.reads.close()
	s.writes.close()
	s.wdb.Close()
	return s.db.Close()
}

// Path names the database in messages: the SQLite file, or the
// PostgreSQL URL without its password.
func (s *Store) Path() string { return s.path }

// Engine is the database engine the store runs on.
func (s *Store) Engine() Engine { return s.eng }

// Schema reports the database's schema version and the one this build
// writes.
func (s *Store) Schema(ctx context.Context) (have, latest int, err error) {
	have, err = s.eng.Version(ctx, s.db)
	return have, len(s.eng.Migrations()), err
}

// Migrate brings the schema up to date in one transaction and returns the
// version found.
func (s *Store) Migrate(ctx context.Context) (from int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	v, err := s.eng.BeginMigrate(ctx, tx)
	if err != nil {
		return 0, err
	}
	migrations := s.eng.Migrations()
	if v > len(migrations) {
		return v, fmt.Errorf("schema version %d is newer than this g8-ac (%d)", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return v, fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if err := s.eng.SetVersion(ctx, tx, len(migrations)); err != nil {
		return v, err
	}
	return v, tx.Commit()
}

// Meta reads a controller setting ("" when unset).
func (s *Store) Meta(ctx context.Context, k string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, "SELECT v FROM meta WHERE k = ?", k).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

// SetMeta writes a controller setting.
func (s *Store) SetMeta(ctx context.Context, k, v string) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO meta(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", k, v)
	return err
}

// Counts returns how many nodes are in each state.
func (s *Store) Counts(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT state, count(*) FROM nodes GROUP BY state")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

// Node is one machine the controller knows.
type Node struct {
	ID         string
	State      string
	MACs       []string
	Key        []byte // nil until approved
	Hostname   string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FirstAddr  string // source address of the first unlock request
	LastUnlock time.Time
	LastSeen   time.Time // last heartbeat
	LastAddr   string    // source address of the last unlock or heartbeat
	BootID     string
	Status     *acapi.Heartbeat // last heartbeat, nil if none
	EventsAck  uint64           // highest event seq stored

	Identity    []byte        // PKIX DER of the node's identity public key; nil until it first asked
	Fingerprint string        // acapi.IdentityFingerprint of Identity
	CertSerial  string        // hex serial of the certificate the node uses ("" legacy, CertNone)
	CertPending string        // hex serials issued since, not used yet, space-separated ("" none)
	CertExpiry  time.Time     // expiry of the last certificate issued
	Reported    []ReportedMAC // MACs it reported that no operator bound to it
}

// NormalizeMAC returns the canonical lower-case colon form of a 48-bit MAC.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("mac %q: not a 48-bit MAC address", s)
	}
	return hw.String(), nil
}

func normalizeMACs(macs []string) ([]string, error) {
	if len(macs) == 0 {
		return nil, errors.New("no MAC address")
	}
	out := make([]string, 0, len(macs))
	seen := map[string]bool{}
	for _, m := range macs {
		n, err := NormalizeMAC(m)
		if err != nil {
			return nil, err
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

func newID(prefix string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromTS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

const nodeCols = "id, state, key, hostname, created_at, updated_at, first_addr, last_unlock, last_seen, last_addr, boot_id, status, events_acked, identity, fingerprint, cert_serial, cert_pending, cert_expiry"

func scanNode(row interface{ Scan(...any) error }) (*Node, error) {
	var n Node
	var created, updated, unlock, seen int64
	var status string
	var acked, expiry int64
	if err := row.Scan(&n.ID, &n.State, &n.Key, &n.Hostname, &created, &updated, &n.FirstAddr, &unlock, &seen, &n.LastAddr, &n.BootID, &status, &acked,
		&n.Identity, &n.Fingerprint, &n.CertSerial, &n.CertPending, &expiry); err != nil {
		return nil, err
	}
	n.CreatedAt, n.UpdatedAt, n.LastUnlock, n.LastSeen = fromTS(created), fromTS(updated), fromTS(unlock), fromTS(seen)
	n.CertExpiry = fromTS(expiry)
	n.EventsAck = uint64(acked)
	if status != "" {
		var hb acapi.Heartbeat
		if json.Unmarshal([]byte(status), &hb) == nil {
			n.Status = &hb
		}
	}
	return &n, nil
}

func loadMACs(ctx context.Context, q querier, n *Node) error {
	rows, err := q.QueryContext(ctx, "SELECT mac FROM macs WHERE node_id = ? ORDER BY rowid", n.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	n.MACs = nil
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return err
		}
		n.MACs = append(n.MACs, m)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return loadReported(ctx, q, map[string]*Node{n.ID: n}, "WHERE node_id = ?", n.ID)
}

func nodeByID(ctx context.Context, q querier, id string) (*Node, error) {
	n, err := scanNode(q.QueryRowContext(ctx, "SELECT "+nodeCols+" FROM nodes WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return n, loadMACs(ctx, q, n)
}

// resolve finds a node by id or by any of its MACs.
func resolve(ctx context.Context, q querier, ref string) (*Node, error) {
	if mac, err := NormalizeMAC(ref); err == nil {
		var id string
		err := q.QueryRowContext(ctx, "SELECT node_id FROM macs WHERE mac = ?", mac).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("node with MAC %s: %w", mac, ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		return nodeByID(ctx, q, id)
	}
	return nodeByID(ctx, q, ref)
}

// Node finds a node by id or by one of its MACs.
func (s *Store) Node(ctx context.Context, ref string) (*Node, error) {
	return resolve(ctx, s.db, ref)
}

// NodeAuth is what authenticating a request of node id needs of it: its
// ID, State, CertSerial and CertPending, nothing else (one prepared query;
// Node reads everything, the MACs and the last status too).
func (s *Store) NodeAuth(ctx context.Context, id string) (*Node, error) {
	st, err := s.prepared(ctx, "SELECT state, cert_serial, cert_pending FROM nodes WHERE id = ?")
	if err != nil {
		return nil, err
	}
	n := &Node{ID: id}
	err = st.QueryRowContext(ctx, id).Scan(&n.State, &n.CertSerial, &n.CertPending)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Nodes lists every node, oldest first.
func (s *Store) Nodes(ctx context.Context) ([]*Node, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+nodeCols+" FROM nodes ORDER BY created_at, id")
	if err != nil {
		return nil, err
	}
	var out []*Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// One query for every node's MACs, not one per node.
	byID := make(map[string]*Node, len(out))
	for _, n := range out {
		byID[n.ID] = n
	}
	mrows, err := s.db.QueryContext(ctx, "SELECT node_id, mac FROM macs ORDER BY rowid")
	if err != nil {
		return nil, err
	}
	defer mrows.Close()
	for mrows.Next() {
		var id, m string
		if err := mrows.Scan(&id, &m); err != nil {
			return nil, err
		}
		if n := byID[id]; n != nil {
			n.MACs = append(n.MACs, m)
		}
	}
	if err := mrows.Err(); err != nil {
		return nil, err
	}
	return out, loadReported(ctx, s.db, byID, "")
}

// ForgetMAC detaches a MAC from its node, for a NIC that moved to another
// machine. A node's last MAC cannot be forgotten: it would become
// unreachable under its id.
func (s *Store) ForgetMAC(ctx context.Context, mac string) (*Node, error) {
	mac, err := NormalizeMAC(mac)
	if err != nil {
		return nil, err
	}
	return s.updateNode(ctx, mac, func(tx *sql.Tx, n *Node) error {
		if len(n.MACs) == 1 {
			return fmt.Errorf("mac %s is node %s's only MAC; revoke or deny the node instead", mac, n.ID)
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM macs WHERE mac = ?", mac)
		return err
	})
}

// RecordHeartbeat stores a node's reported status and where it came from.
// It shares its commit with other heartbeats (softWrite).
func (s *Store) RecordHeartbeat(ctx context.Context, id, addr string, hb *acapi.Heartbeat, now time.Time) error {
	missing, err := s.RecordHeartbeats(ctx, []HeartbeatRecord{{ID: id, Addr: addr, Heartbeat: hb, At: now}})
	if err == nil && missing[id] {
		err = fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	return err
}

// HeartbeatRecord is one node's heartbeat as RecordHeartbeats stores it.
type HeartbeatRecord struct {
	ID, Addr  string
	Heartbeat *acapi.Heartbeat
	At        time.Time
}

// RecordHeartbeats stores the heartbeats of many nodes in one commit: at
// fleet size heartbeats are most of the controller's writes, and a commit
// (a sync to disk) for each is most of its CPU. The commit is soft
// (softWrite): a crash may take back the last heartbeats, which the nodes
// repeat within their interval. It returns the ids of the nodes that do
// not exist (nothing stored for them); on an error nothing is stored.
func (s *Store) RecordHeartbeats(ctx context.Context, recs []HeartbeatRecord) (missing map[string]bool, err error) {
	status := make([]string, len(recs))
	for i, r := range recs {
		b, err := json.Marshal(r.Heartbeat)
		if err != nil {
			return nil, err
		}
		status[i] = string(b)
	}
	// Rows are locked in id order: two controllers on one PostgreSQL
	// writing overlapping batches then wait for each other, never
	// deadlock.
	order := make([]int, len(recs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(recs[a].ID, recs[b].ID) })
	err = s.softWrite(ctx, func(ctx context.Context, tx *sql.Tx) error {
		missing = map[string]bool{}
		for _, i := range order {
			r := recs[i]
			res, err := s.txExec(ctx, tx, `UPDATE nodes SET last_seen = ?, last_addr = ?, status = ?,
				boot_id = ?, hostname = CASE WHEN ? <> '' THEN ? ELSE hostname END WHERE id = ?`,
				ts(r.At), r.Addr, status[i], r.Heartbeat.BootID, r.Heartbeat.Hostname, r.Heartbeat.Hostname, r.ID)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				missing[r.ID] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return missing, nil
}

// AddSSHKeys adds every key in an authorized_keys-format text (blank lines
// and comments skipped). It validates all lines before adding any, and
// returns how many were new.
func (s *Store) AddSSHKeys(ctx context.Context, text []byte, now time.Time) (int, error) {
	var keys []string
	line := 0
	for _, l := range strings.Split(string(text), "\n") {
		line++
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l)); err != nil {
			return 0, fmt.Errorf("line %d: not an SSH public key: %w", line, err)
		}
		keys = append(keys, l)
	}
	if len(keys) == 0 {
		return 0, errors.New("no SSH public key in it")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	added := 0
	for _, k := range keys {
		res, err := tx.ExecContext(ctx, "INSERT INTO ssh_keys(key, added_at) VALUES(?, ?) ON CONFLICT(key) DO NOTHING", k, ts(now))
		if err != nil {
			return 0, err
		}
		if c, _ := res.RowsAffected(); c > 0 {
			added++
		}
	}
	return added, tx.Commit()
}

// RemoveSSHKey removes keys whose text contains match (a fingerprint-free
// way to say "the key of alice@host").
func (s *Store) RemoveSSHKey(ctx context.Context, match string) (int, error) {
	if strings.TrimSpace(match) == "" {
		return 0, errors.New("empty match")
	}
	// Matched here, not in SQL: substring functions differ between
	// engines, and the list is an operator's handful of keys.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, "SELECT key FROM ssh_keys")
	if err != nil {
		return 0, err
	}
	var doomed []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return 0, err
		}
		if strings.Contains(k, match) {
			doomed = append(doomed, k)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, k := range doomed {
		if _, err := tx.ExecContext(ctx, "DELETE FROM ssh_keys WHERE key = ?", k); err != nil {
			return 0, err
		}
	}
	return len(doomed), tx.Commit()
}

// AuthorizedKeys is every added key in authorized_keys format.
func (s *Store) AuthorizedKeys(ctx context.Context) (string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT key FROM ssh_keys ORDER BY added_at, key")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return "", err
		}
		b.WriteString(k)
		b.WriteByte('\n')
	}
	return b.String(), rows.Err()
}

// SetConfigFile stores a controller-managed file for every node. The path
// must pass acapi.CheckConfigPath (the rule the node applies too) and may
// not be a directory of another managed file or lie below one (ErrConflict):
// the node could write only one of the two.
func (s *Store) SetConfigFile(ctx context.Context, p string, content []byte, now time.Time) error {
	if err := acapi.CheckConfigPath(p); err != nil {
		return fmt.Errorf("config %w", err)
	}
	return s.groupWrite(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var other string
		err := tx.QueryRowContext(ctx, `SELECT path FROM config_files
			WHERE substr(path, 1, length(CAST(? AS TEXT)) + 1) = CAST(? AS TEXT) || '/'
			OR substr(CAST(? AS TEXT), 1, length(path) + 1) = path || '/' LIMIT 1`, p, p, p).Scan(&other)
		if err == nil {
			return fmt.Errorf("config path %q: %w with the managed file %q (one cannot be both a file and a directory on the node)", p, ErrConflict, other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO config_files(path, content, updated_at) VALUES(?, ?, ?)
			ON CONFLICT(path) DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at`, p, content, ts(now))
		return err
	})
}

// RemoveConfigFile stops managing a file.
func (s *Store) RemoveConfigFile(ctx context.Context, p string) error {
	res, err := s.db.ExecContext(ctx, "DELETE FROM config_files WHERE path = ?", p)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("config file %s: %w", p, ErrNotFound)
	}
	return nil
}

// ConfigFiles returns the managed files by path.
func (s *Store) ConfigFiles(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT path, content FROM config_files ORDER BY path")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var p string
		var c []byte
		if err := rows.Scan(&p, &c); err != nil {
			return nil, err
		}
		out[p] = string(c)
	}
	return out, rows.Err()
}
