package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Caps on what one node may hold, so that no request (and no operator
// typo) grows a node without bound.
const (
	MaxNodeMACs     = 16 // MACs bound to one node
	MaxReportedMACs = 16 // MACs one node reported that no operator bound
)

// CertNone is the cert_serial of a node that has not used a certificate
// since it was made or rekeyed: it matches no certificate. The empty
// serial marks a node enrolled before the controller tracked serials.
const CertNone = "none"

// ErrIdentityMismatch is a request whose identity key is not the one the
// node enrolled with.
var ErrIdentityMismatch = errors.New("identity key mismatch")

// ReportedMAC is a MAC a node reported at an authenticated unlock that is
// not bound to it; only an operator binds it (g8-ac node approve-mac).
type ReportedMAC struct {
	MAC       string
	FirstSeen time.Time
	LastSeen  time.Time
	LastAddr  string
}

// CertAccepted decides whether a node certificate with the given hex serial
// (already verified against the node CA) may be used: the current one, or
// the one issued last, whose first use makes it current (promote) and ends
// the old one. A node enrolled before serials were tracked is served by
// any certificate until its first new one is issued.
func (n *Node) CertAccepted(serial string) (ok, promote bool) {
	switch {
	case serial == "":
		return false, false
	case n.CertSerial == "" && n.CertPending == "":
		return true, false
	case serial == n.CertSerial:
		return true, false
	case slices.Contains(strings.Fields(n.CertPending), serial):
		return true, true
	}
	return false, false
}

// maxPendingCerts bounds the certificates issued since the node last used
// a new one: a session's renewal and g8-unlock's may cross, and either
// may be the pair that ends up on the node's disk.
const maxPendingCerts = 3

func loadReported(ctx context.Context, q querier, byID map[string]*Node, where string, args ...any) error {
	rows, err := q.QueryContext(ctx, "SELECT node_id, mac, first_seen, last_seen, last_addr FROM reported_macs "+where+" ORDER BY first_seen, mac", args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var r ReportedMAC
		var first, last int64
		if err := rows.Scan(&id, &r.MAC, &first, &last, &r.LastAddr); err != nil {
			return err
		}
		r.FirstSeen, r.LastSeen = fromTS(first), fromTS(last)
		if n := byID[id]; n != nil {
			n.Reported = append(n.Reported, r)
		}
	}
	return rows.Err()
}

// macOwner is the one node owning any of macs ("" for none); MACs of two
// nodes are ErrConflict.
func macOwner(ctx context.Context, q querier, macs []string) (string, error) {
	owners := map[string]bool{}
	var owner string
	for _, m := range macs {
		var id string
		err := q.QueryRowContext(ctx, "SELECT node_id FROM macs WHERE mac = ?", m).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return "", err
		}
		if !owners[id] {
			owners[id] = true
			if owner == "" {
				owner = id
			}
		}
	}
	if len(owners) > 1 {
		ids := make([]string, 0, len(owners))
		for id := range owners {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		return "", fmt.Errorf("MACs %s belong to different nodes %s: %w", strings.Join(macs, ","), strings.Join(ids, " and "), ErrConflict)
	}
	return owner, nil
}

// SeenAtUnlock finds the node an unlock request is about: the node whose
// identity key it presents, else the node owning any of its MACs. It
// changes nothing about a known node (the request is not authenticated
// yet; RecordUnlock runs after the proof). Unknown MACs with an unknown
// (or no) identity make a new pending node with up to MaxNodeMACs of them
// bound and the identity recorded, for an operator to approve; before
// making one, admit (when not nil) is asked with the number of pending
// nodes, and its error is returned instead. MACs of two nodes, or MACs of
// one node with another node's key, are ErrConflict.
func (s *Store) SeenAtUnlock(ctx context.Context, macs []string, identity []byte, hostname, addr string, now time.Time, admit func(pending int) error) (n *Node, created bool, err error) {
	macs, err = normalizeMACs(macs)
	if err != nil {
		return nil, false, err
	}
	var fp string
	if identity != nil {
		if fp, err = acapi.IdentityFingerprint(identity); err != nil {
			return nil, false, err
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback()
	owner, err := macOwner(ctx, tx, macs)
	if err != nil {
		return nil, false, err
	}
	if fp != "" {
		var byKey string
		err := tx.QueryRowContext(ctx, "SELECT id FROM nodes WHERE fingerprint = ?", fp).Scan(&byKey)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, false, err
		case owner != "" && owner != byKey:
			return nil, false, fmt.Errorf("MACs %s belong to node %s but identity key %s to node %s: %w", strings.Join(macs, ","), owner, fp, byKey, ErrConflict)
		default:
			owner = byKey
		}
	}
	if owner != "" {
		n, err := nodeByID(ctx, tx, owner)
		return n, false, err
	}
	if admit != nil {
		var pending int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM nodes WHERE state = ?", StatePending).Scan(&pending); err != nil {
			return nil, false, err
		}
		if err := admit(pending); err != nil {
			return nil, false, err
		}
	}
	id := newID("n-", 5)
	if _, err := tx.ExecContext(ctx, `INSERT INTO nodes(id, state, hostname, created_at, updated_at, first_addr, last_unlock, last_addr, identity, fingerprint, cert_serial)
		VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		id, StatePending, hostname, ts(now), ts(now), addr, ts(now), addr, identity, fp, CertNone); err != nil {
		return nil, false, err
	}
	bound := macs[:min(len(macs), MaxNodeMACs)]
	for _, m := range bound {
		if _, err := tx.ExecContext(ctx, "INSERT INTO macs(mac, node_id) VALUES(?, ?)", m, id); err != nil {
			return nil, false, err
		}
	}
	if _, err := reportMACs(ctx, tx, id, macs[len(bound):], addr, now); err != nil {
		return nil, false, err
	}
	n, err = nodeByID(ctx, tx, id)
	if err != nil {
		return nil, false, err
	}
	return n, true, tx.Commit()
}

// reportMACs records macs (normalized, none bound to another node) that
// are not bound to node id, up to MaxReportedMACs per node, and returns
// how many were dropped for the cap.
func reportMACs(ctx context.Context, tx *sql.Tx, id string, macs []string, addr string, now time.Time) (dropped int, err error) {
	for _, m := range macs {
		var owner string
		err := tx.QueryRowContext(ctx, "SELECT node_id FROM macs WHERE mac = ?", m).Scan(&owner)
		if err == nil {
			continue // bound (to this node, or to another: that is the caller's conflict)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		res, err := tx.ExecContext(ctx, "UPDATE reported_macs SET last_seen = ?, last_addr = ? WHERE node_id = ? AND mac = ?", ts(now), addr, id, m)
		if err != nil {
			return 0, err
		}
		if k, _ := res.RowsAffected(); k > 0 {
			continue
		}
		var have int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM reported_macs WHERE node_id = ?", id).Scan(&have); err != nil {
			return 0, err
		}
		if have >= MaxReportedMACs {
			dropped++
			continue
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO reported_macs(node_id, mac, first_seen, last_seen, last_addr) VALUES(?, ?, ?, ?, ?)",
			id, m, ts(now), ts(now), addr); err != nil {
			return 0, err
		}
	}
	return dropped, nil
}

// RecordUnlock notes an unlock request that proved node id's identity:
// when and from where, its host name, and the MACs it reported that are
// not bound to it (capped; dropped says how many the cap refused). It
// never binds a MAC.
func (s *Store) RecordUnlock(ctx context.Context, id string, macs []string, hostname, addr string, now time.Time) (dropped int, err error) {
	macs, err = normalizeMACs(macs)
	if err != nil {
		return 0, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "UPDATE nodes SET last_unlock = ?, last_addr = ?, hostname = CASE WHEN ? <> '' THEN ? ELSE hostname END WHERE id = ?",
		ts(now), addr, hostname, hostname, id)
	if err != nil {
		return 0, err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return 0, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	if dropped, err = reportMACs(ctx, tx, id, macs, addr, now); err != nil {
		return 0, err
	}
	return dropped, tx.Commit()
}

// AddNode registers a node by its MACs ahead of its first boot. A MAC that
// is already bound to a node is ErrConflict (naming that node): the
// operator forgets it there first.
func (s *Store) AddNode(ctx context.Context, macs []string, approve bool, now time.Time) (*Node, error) {
	macs, err := normalizeMACs(macs)
	if err != nil {
		return nil, err
	}
	if len(macs) > MaxNodeMACs {
		return nil, fmt.Errorf("%d MACs: a node has at most %d", len(macs), MaxNodeMACs)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	for _, m := range macs {
		var owner string
		err := tx.QueryRowContext(ctx, "SELECT node_id FROM macs WHERE mac = ?", m).Scan(&owner)
		if err == nil {
			return nil, fmt.Errorf("mac %s already belongs to node %s (g8-ac node forget-mac %s first): %w", m, owner, m, ErrConflict)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
	}
	id := newID("n-", 5)
	if _, err := tx.ExecContext(ctx, "INSERT INTO nodes(id, state, created_at, updated_at, cert_serial) VALUES(?, ?, ?, ?, ?)",
		id, StatePending, ts(now), ts(now), CertNone); err != nil {
		return nil, err
	}
	for _, m := range macs {
		if _, err := tx.ExecContext(ctx, "INSERT INTO macs(mac, node_id) VALUES(?, ?)", m, id); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM reported_macs WHERE mac = ?", m); err != nil {
			return nil, err
		}
	}
	if approve {
		if err := setState(ctx, tx, id, StateApproved, now); err != nil {
			return nil, err
		}
	}
	n, err := nodeByID(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	return n, tx.Commit()
}

// SetState moves a node (by id or MAC) to state. No key is made: a node's
// disk key comes from key recovery (docs/unlock.md); nodes.key holds only
// the unlock keys of nodes enrolled before it, until each has re-wrapped.
// Leaving approved withdraws the node's queued jobs (rejected by the
// controller): nothing queued for it is ever handed out.
func (s *Store) SetState(ctx context.Context, ref, state string, now time.Time) (*Node, error) {
	return s.updateNode(ctx, ref, func(tx *sql.Tx, n *Node) error { return setState(ctx, tx, n.ID, state, now) })
}

// updateNode runs change on the node named by ref (id or MAC) in one
// transaction and returns the node as it is afterwards.
func (s *Store) updateNode(ctx context.Context, ref string, change func(*sql.Tx, *Node) error) (*Node, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	n, err := resolve(ctx, tx, ref)
	if err != nil {
		return nil, err
	}
	if err := change(tx, n); err != nil {
		return nil, err
	}
	n, err = nodeByID(ctx, tx, n.ID)
	if err != nil {
		return nil, err
	}
	return n, tx.Commit()
}

func setState(ctx context.Context, tx *sql.Tx, id, state string, now time.Time) error {
	switch state {
	case StatePending, StateApproved, StateDenied, StateRevoked:
	default:
		return fmt.Errorf("node state %q: unknown", state)
	}
	if state != StateApproved {
		if err := withdrawJobs(ctx, tx, id, state, now); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, "UPDATE nodes SET state = ?, updated_at = ? WHERE id = ?", state, ts(now), id); err != nil {
		return err
	}
	if state == StateApproved {
		// Once approved, never expired as a stranger (ExpirePending).
		_, err := tx.ExecContext(ctx, "UPDATE nodes SET approved_at = ? WHERE id = ? AND approved_at = 0", ts(now), id)
		return err
	}
	return nil
}

// ExpirePending deletes up to limit pending nodes that were never
// approved, made by an unlock request (not by an operator's node add)
// before before, with everything they hold, and returns their ids: what a
// flood of made-up identities leaves behind. A real node still asking is
// made pending again at its next request.
func (s *Store) ExpirePending(ctx context.Context, before time.Time, limit int) ([]string, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT id FROM nodes WHERE state = ? AND created_at < ? AND approved_at = 0 AND first_addr <> ''
		ORDER BY created_at LIMIT ?`, StatePending, ts(before), limit)
	if err != nil {
		return nil, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, id := range ids {
		for _, table := range []string{"events", "jobs", "reported_macs", "macs"} {
			if _, err := tx.ExecContext(ctx, "DELETE FROM "+table+" WHERE node_id = ?", id); err != nil {
				return nil, err
			}
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM nodes WHERE id = ?", id); err != nil {
			return nil, err
		}
		// The deletion still bumps the nodes counter; the row its trigger
		// keeps for the id would make every expired stranger a row for good.
		if _, err := tx.ExecContext(ctx, "DELETE FROM node_changes WHERE id = ?", id); err != nil {
			return nil, err
		}
	}
	return ids, tx.Commit()
}

func withdrawJobs(ctx context.Context, tx *sql.Tx, id, state string, now time.Time) error {
	rows, err := tx.QueryContext(ctx, "SELECT id FROM jobs WHERE node_id = ? AND state = ?", id, acapi.JobQueued)
	if err != nil {
		return err
	}
	var jobs []string
	for rows.Next() {
		var j string
		if err := rows.Scan(&j); err != nil {
			rows.Close()
			return err
		}
		jobs = append(jobs, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, j := range jobs {
		res := acapi.JobResult{ID: j, State: acapi.JobRejected, Error: "withdrawn: node " + id + " became " + state + " before it took the job", FinishedAt: now.UTC()}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, result_by = 'controller', finished_at = ? WHERE id = ? AND state = ?`,
			acapi.JobRejected, mustJSON(res), ts(now), j, acapi.JobQueued); err != nil {
			return err
		}
	}
	return nil
}

// BindIdentity records node id's identity key (PKIX DER) if it has none: a
// node the operator approved by MAC before its first boot (g8-ac node add
// --approve), a node enrolled before identities existed, or a rekeyed one.
// The same key again is a no-op; another key is ErrIdentityMismatch; a key
// another node holds is ErrConflict.
func (s *Store) BindIdentity(ctx context.Context, id string, identity []byte, now time.Time) (*Node, error) {
	fp, err := acapi.IdentityFingerprint(identity)
	if err != nil {
		return nil, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var other string
	err = tx.QueryRowContext(ctx, "SELECT id FROM nodes WHERE fingerprint = ? AND id <> ?", fp, id).Scan(&other)
	if err == nil {
		return nil, fmt.Errorf("identity key %s is node %s's: %w", fp, other, ErrConflict)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE nodes SET identity = ?, fingerprint = ?, updated_at = ? WHERE id = ? AND identity IS NULL",
		identity, fp, ts(now), id); err != nil {
		return nil, err
	}
	n, err := nodeByID(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(n.Identity, identity) {
		return nil, fmt.Errorf("node %s enrolled with identity key %s, not %s: %w", id, n.Fingerprint, fp, ErrIdentityMismatch)
	}
	return n, tx.Commit()
}

// Rekey forgets a node's identity key and certificates and makes it
// pending: a replaced machine enrols under the same node id (and MACs)
// with its own key, once an operator approves its fingerprint.
func (s *Store) Rekey(ctx context.Context, ref string, now time.Time) (*Node, error) {
	return s.updateNode(ctx, ref, func(tx *sql.Tx, n *Node) error {
		if err := setState(ctx, tx, n.ID, StatePending, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET identity = NULL, fingerprint = '', cert_serial = ?, cert_pending = '', cert_expiry = 0
			WHERE id = ?`, CertNone, n.ID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM reported_macs WHERE node_id = ?", n.ID)
		return err
	})
}

// CertIssued records the serial (hex) and expiry of a certificate just
// issued to node id. It becomes current at its first use (PromoteCert):
// until then the node's current certificate still works, so an answer lost
// on the way to the node locks nothing out. The last maxPendingCerts
// issued are pending together, so two renewals that cross (the session's
// and g8-unlock's) cannot leave the node with a pair the controller
// refuses.
func (s *Store) CertIssued(ctx context.Context, id, serial string, expiry time.Time) error {
	if serial == "" || serial == CertNone || strings.ContainsAny(serial, " \t\n") {
		return fmt.Errorf("node %s: certificate serial %q", id, serial)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var pending string
	err = tx.QueryRowContext(ctx, "SELECT cert_pending FROM nodes WHERE id = ?", id).Scan(&pending)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return err
	}
	list := append(strings.Fields(pending), serial)
	list = list[max(0, len(list)-maxPendingCerts):]
	if _, err := tx.ExecContext(ctx, "UPDATE nodes SET cert_pending = ?, cert_expiry = ? WHERE id = ?", strings.Join(list, " "), ts(expiry), id); err != nil {
		return err
	}
	return tx.Commit()
}

// PromoteCert makes the pending certificate serial node id's current one;
// every other certificate of the node is refused from then on. promoted
// is false when serial was not pending (already promoted).
func (s *Store) PromoteCert(ctx context.Context, id, serial string) (promoted bool, err error) {
	// A fleet's first requests with fresh certificates (after enrolment,
	// after a renewal wave) promote all at once: they share commits, or
	// thousands of single-row transactions queue on SQLite's write lock
	// until they time out (SQLITE_BUSY). Soft: a promotion a crash takes
	// back is made again at the certificate's next use, and until then
	// the node's previous certificate, not revoked, is accepted as before.
	err = s.softWrite(ctx, func(ctx context.Context, tx *sql.Tx) error {
		promoted = false
		var pending string
		if err := s.txQueryRow(ctx, tx, "SELECT cert_pending FROM nodes WHERE id = ?", id).Scan(&pending); err != nil {
			return err
		}
		if serial == "" || !slices.Contains(strings.Fields(pending), serial) {
			return nil
		}
		if _, err := s.txExec(ctx, tx, "UPDATE nodes SET cert_serial = ?, cert_pending = '' WHERE id = ?", serial, id); err != nil {
			return err
		}
		promoted = true
		return nil
	})
	return promoted, err
}

// ApproveMAC binds mac to the node named by ref: an operator's answer to
// a MAC the node reported (or one known from inventory). A MAC bound to
// another node is ErrConflict; a node holds at most MaxNodeMACs.
func (s *Store) ApproveMAC(ctx context.Context, ref, mac string, now time.Time) (*Node, error) {
	mac, err := NormalizeMAC(mac)
	if err != nil {
		return nil, err
	}
	return s.updateNode(ctx, ref, func(tx *sql.Tx, n *Node) error {
		var owner string
		err := tx.QueryRowContext(ctx, "SELECT node_id FROM macs WHERE mac = ?", mac).Scan(&owner)
		switch {
		case err == nil && owner == n.ID:
			return nil
		case err == nil:
			return fmt.Errorf("mac %s belongs to node %s (g8-ac node forget-mac %s first): %w", mac, owner, mac, ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if len(n.MACs) >= MaxNodeMACs {
			return fmt.Errorf("node %s has %d MACs, the most a node may have; forget one first: %w", n.ID, len(n.MACs), ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO macs(mac, node_id) VALUES(?, ?)", mac, n.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM reported_macs WHERE mac = ?", mac); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "UPDATE nodes SET updated_at = ? WHERE id = ?", ts(now), n.ID)
		return err
	})
}
