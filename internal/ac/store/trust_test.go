package store

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

func identity(t *testing.T) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIdentityRecordedAtFirstContactAndNamesTheNode(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		key := identity(t)
		fp, _ := acapi.IdentityFingerprint(key)
		n, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:01"}, key, "h", "10.0.0.7", time.Now(), nil)
		if err != nil || !created || n.Fingerprint != fp || string(n.Identity) != string(key) || n.CertSerial != CertNone {
			t.Fatalf("first contact: %v %v %+v", err, created, n)
		}
		// The machine's NICs all changed: its key still names it.
		again, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:09"}, key, "h", "10.0.0.7", time.Now(), nil)
		if err != nil || created || again.ID != n.ID {
			t.Fatalf("same key, new MAC: %v %v %+v", err, created, again)
		}
		// Another machine's key with this node's MAC is a conflict, not this node.
		if _, _, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:01"}, identity(t), "", "", time.Now(), nil); err != nil {
			t.Fatalf("foreign key with a known MAC must name the MAC's node (the caller checks the key): %v", err)
		}
		other, _, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:02"}, identity(t), "", "", time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:02"}, key, "", "", time.Now(), nil); !errors.Is(err, ErrConflict) {
			t.Fatalf("node %s's MAC with node %s's key: %v", other.ID, n.ID, err)
		}
		if _, _, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:03"}, []byte("garbage"), "", "", time.Now(), nil); err == nil {
			t.Fatal("a garbage identity key was accepted")
		}
	})
}

// The attack of issue 12: one known MAC plus unknown ones attached the
// unknown ones to the known node, without bound.
func TestMixedMACsBindNothingAndReportsAreCapped(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		victim, err := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var macs []string
		macs = append(macs, "52:54:00:00:00:01")
		for i := 0; i < 40; i++ {
			macs = append(macs, fmt.Sprintf("02:00:00:00:01:%02x", i))
		}
		n, created, err := s.SeenAtUnlock(ctx, macs, identity(t), "evil", "10.9.9.9", time.Now(), nil)
		if err != nil || created || n.ID != victim.ID || len(n.MACs) != 1 || len(n.Reported) != 0 || n.Hostname != "" {
			t.Fatalf("a sighting changed the known node: %v %v %+v", err, created, n)
		}
		for _, m := range macs[1:] {
			if _, err := s.Node(ctx, m); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s was bound: %v", m, err)
			}
		}
		// After the identity proof the extra MACs are reported, up to the cap.
		dropped, err := s.RecordUnlock(ctx, victim.ID, macs, "node-1", "10.0.0.7", time.Now())
		if err != nil || dropped != len(macs)-1-MaxReportedMACs {
			t.Fatalf("record: %v, %d dropped", err, dropped)
		}
		n, _ = s.Node(ctx, victim.ID)
		if len(n.MACs) != 1 || len(n.Reported) != MaxReportedMACs || n.Hostname != "node-1" || n.LastAddr != "10.0.0.7" {
			t.Fatalf("after record: %+v", n)
		}
		// The operator binds one; it leaves the reported list.
		n, err = s.ApproveMAC(ctx, victim.ID, macs[1], time.Now())
		if err != nil || len(n.MACs) != 2 || len(n.Reported) != MaxReportedMACs-1 {
			t.Fatalf("approve-mac: %v %+v", err, n)
		}
		for i := 2; len(n.MACs) < MaxNodeMACs; i++ {
			if n, err = s.ApproveMAC(ctx, victim.ID, macs[i], time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.ApproveMAC(ctx, victim.ID, macs[30], time.Now()); !errors.Is(err, ErrConflict) {
			t.Fatalf("MAC beyond the cap: %v", err)
		}
		other, _ := s.AddNode(ctx, []string{"52:54:00:00:00:02"}, false, time.Now())
		if _, err := s.ApproveMAC(ctx, other.ID, macs[1], time.Now()); !errors.Is(err, ErrConflict) {
			t.Fatalf("binding another node's MAC: %v", err)
		}
	})
}

func TestAddNodeWithABoundMACFails(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		a, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		_, err := s.AddNode(ctx, []string{"52:54:00:00:00:02", "52:54:00:00:00:01"}, true, time.Now())
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("node add with node %s's MAC: %v", a.ID, err)
		}
		if _, err := s.Node(ctx, "52:54:00:00:00:02"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the failed add bound a MAC: %v", err)
		}
		many := make([]string, MaxNodeMACs+1)
		for i := range many {
			many[i] = fmt.Sprintf("02:00:00:00:02:%02x", i)
		}
		if _, err := s.AddNode(ctx, many, false, time.Now()); err == nil {
			t.Fatal("a node with more MACs than the cap was added")
		}
	})
}

func TestBindIdentityOnceAndRekey(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		if n.Identity != nil || n.Fingerprint != "" {
			t.Fatalf("a node added by MAC has an identity: %+v", n)
		}
		key := identity(t)
		if n, err := s.BindIdentity(ctx, n.ID, key, time.Now()); err != nil || string(n.Identity) != string(key) {
			t.Fatalf("bind: %v", err)
		}
		if _, err := s.BindIdentity(ctx, n.ID, key, time.Now()); err != nil {
			t.Fatalf("the same key again: %v", err)
		}
		if _, err := s.BindIdentity(ctx, n.ID, identity(t), time.Now()); !errors.Is(err, ErrIdentityMismatch) {
			t.Fatalf("another key: %v", err)
		}
		other, _ := s.AddNode(ctx, []string{"52:54:00:00:00:02"}, true, time.Now())
		if _, err := s.BindIdentity(ctx, other.ID, key, time.Now()); !errors.Is(err, ErrConflict) {
			t.Fatalf("node %s's key for node %s: %v", n.ID, other.ID, err)
		}
		if err := s.CertIssued(ctx, n.ID, "abc", time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PromoteCert(ctx, n.ID, "abc"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateJob(ctx, n.ID, "ping", nil, time.Minute, time.Now()); err != nil {
			t.Fatal(err)
		}
		before, _ := s.Node(ctx, n.ID)
		rk, err := s.Rekey(ctx, "52:54:00:00:00:01", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if rk.State != StatePending || rk.Identity != nil || rk.Fingerprint != "" || rk.CertSerial != CertNone || rk.CertPending != "" ||
			string(rk.Key) != string(before.Key) || len(rk.MACs) != 1 {
			t.Fatalf("after rekey: %+v", rk)
		}
		if ok, _ := rk.CertAccepted("abc"); ok {
			t.Fatal("the old machine's certificate still works after rekey")
		}
		jobs, _ := s.Jobs(ctx, n.ID)
		if len(jobs) != 1 || jobs[0].State != acapi.JobRejected {
			t.Fatalf("queued job after rekey: %+v", jobs[0])
		}
		if _, err := s.BindIdentity(ctx, n.ID, identity(t), time.Now()); err != nil {
			t.Fatalf("a new machine's key after rekey: %v", err)
		}
	})
}

func TestCertAccepted(t *testing.T) {
	for _, c := range []struct {
		name                     string
		current, pending, serial string
		ok, promote              bool
	}{
		{"legacy node, any certificate", "", "", "aa", true, false},
		{"current", "aa", "", "aa", true, false},
		{"another", "aa", "", "bb", false, false},
		{"pending, first use", "aa", "bb", "bb", true, true},
		{"current while one is pending", "aa", "bb", "aa", true, false},
		{"a third while one is pending", "aa", "bb", "cc", false, false},
		{"new node, nothing used yet", CertNone, "", "aa", false, false},
		{"new node, first certificate", CertNone, "aa", "aa", true, true},
		{"legacy node after its first issuance", "", "bb", "aa", false, false},
		{"one of two crossed renewals", "aa", "bb cc", "bb", true, true},
		{"the other", "aa", "bb cc", "cc", true, true},
		{"empty serial", "", "", "", false, false},
	} {
		n := &Node{CertSerial: c.current, CertPending: c.pending}
		ok, promote := n.CertAccepted(c.serial)
		if ok != c.ok || promote != c.promote {
			t.Errorf("%s: ok %v promote %v, want %v %v", c.name, ok, promote, c.ok, c.promote)
		}
	}
}

func TestCertIssuedThenPromoted(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		exp := time.Now().Add(72 * time.Hour).Truncate(time.Second)
		if err := s.CertIssued(ctx, n.ID, "01", exp); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.PromoteCert(ctx, n.ID, "01"); !ok || err != nil {
			t.Fatalf("promote: %v %v", ok, err)
		}
		if ok, _ := s.PromoteCert(ctx, n.ID, "01"); ok {
			t.Fatal("promoted twice")
		}
		if err := s.CertIssued(ctx, n.ID, "02", exp); err != nil {
			t.Fatal(err)
		}
		n, _ = s.Node(ctx, n.ID)
		if n.CertSerial != "01" || n.CertPending != "02" || !n.CertExpiry.Equal(exp) {
			t.Fatalf("after a renewal: %+v", n)
		}
		s.PromoteCert(ctx, n.ID, "02")
		n, _ = s.Node(ctx, n.ID)
		if ok, _ := n.CertAccepted("01"); ok || n.CertSerial != "02" {
			t.Fatalf("the old certificate works after the new one was used: %+v", n)
		}
		// Renewals that crossed: whichever pair the node ends up with works,
		// and its use ends the others. Only the last three stay pending.
		for _, serial := range []string{"10", "11", "12", "13"} {
			if err := s.CertIssued(ctx, n.ID, serial, exp); err != nil {
				t.Fatal(err)
			}
		}
		n, _ = s.Node(ctx, n.ID)
		if n.CertPending != "11 12 13" {
			t.Fatalf("pending %q, want the last three", n.CertPending)
		}
		if ok, _ := s.PromoteCert(ctx, n.ID, "10"); ok {
			t.Fatal("a serial beyond the three was promoted")
		}
		if ok, _ := s.PromoteCert(ctx, n.ID, "12"); !ok {
			t.Fatal("a crossed renewal's serial was not promoted")
		}
		n, _ = s.Node(ctx, n.ID)
		for _, other := range []string{"02", "11", "13"} {
			if ok, _ := n.CertAccepted(other); ok {
				t.Fatalf("%s still works after 12 was used: %+v", other, n)
			}
		}
		if err := s.CertIssued(ctx, "n-nosuch", "03", exp); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown node: %v", err)
		}
	})
}

func TestNoJobForANodeThatIsNotApproved(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		j, err := s.CreateJob(ctx, n.ID, "exec", json.RawMessage(`{"argv":["id"]}`), time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetState(ctx, n.ID, StateRevoked, time.Now()); err != nil {
			t.Fatal(err)
		}
		got, _ := s.Job(ctx, j.ID)
		if got.State != acapi.JobRejected || got.ResultBy != "controller" {
			t.Fatalf("queued job after revoke: %+v", got)
		}
		if _, err := s.CreateJob(ctx, n.ID, "ping", nil, time.Minute, time.Now()); !errors.Is(err, ErrConflict) {
			t.Fatalf("job for a revoked node: %v", err)
		}
		// Even a job that got queued (by a writer that skipped the check) is
		// never handed to a node that is not approved.
		s.SetState(ctx, n.ID, StateApproved, time.Now())
		if _, err := s.CreateJob(ctx, n.ID, "ping", nil, time.Minute, time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.ExecContext(ctx, "UPDATE nodes SET state = ? WHERE id = ?", StateRevoked, n.ID); err != nil {
			t.Fatal(err)
		}
		if jobs, err := s.ClaimJobs(ctx, n.ID, time.Now()); err != nil || len(jobs) != 0 {
			t.Fatalf("claimed by a revoked node: %v %+v", err, jobs)
		}
	})
}

// A node enrolled before migration 5 keeps working with the certificate it
// has (no serial was recorded for it) until its first new one.
func TestMigrationKeepsEnrolledNodesWorking(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		dsn := newDB()
		old, err := OpenOnly(dsn)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := old.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := old.eng.BeginMigrate(ctx, tx); err != nil {
			t.Fatal(err)
		}
		for _, m := range old.eng.Migrations()[:4] {
			if _, err := tx.ExecContext(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if err := old.eng.SetVersion(ctx, tx, 4); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO nodes(id, state, key, created_at, updated_at) VALUES('n-0000000001', 'approved', ?, 1, 1)", []byte{0}); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO macs(mac, node_id) VALUES('52:54:00:00:00:01', 'n-0000000001')"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		old.Close()
		s := open(t, dsn)
		n, err := s.Node(ctx, "52:54:00:00:00:01")
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := n.CertAccepted("1234"); !ok || n.Identity != nil {
			t.Fatalf("enrolled node after the migration: %+v", n)
		}
		key := identity(t)
		if _, err := s.BindIdentity(ctx, n.ID, key, time.Now()); err != nil {
			t.Fatalf("its first identity: %v", err)
		}
	})
}
