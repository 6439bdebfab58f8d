package ac

import (
	"bytes"
	"database/sql"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/recovery"
)

// enrolAt asks the controller as an approved node, enrols with the
// advertised key and returns the disk key and the node's public metadata.
func enrolAt(t *testing.T, ac *testAC, mac string) (nodeID string, key []byte, md *recovery.Metadata) {
	t.Helper()
	resp, err := ac.as(mac).Unlock(ctx, &acapi.UnlockRequest{MACs: []string{mac}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.RecoveryKey == nil {
		t.Fatal("no recovery_key in the unlock answer")
	}
	key, md, err = recovery.Enrol(*resp.RecoveryKey, ac.url)
	if err != nil {
		t.Fatal(err)
	}
	return resp.NodeID, key, md
}

// recoverAt runs the blinded exchange of md's first pin at the controller.
func recoverAt(t *testing.T, ac *testAC, mac string, md *recovery.Metadata) ([]byte, *acapi.UnlockResponse, error) {
	t.Helper()
	b, err := md.Pins[0].Blind()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ac.as(mac).Unlock(ctx, &acapi.UnlockRequest{MACs: []string{mac}, Recovery: []recovery.Exchange{b.Exchange}})
	if err != nil {
		return nil, nil, err
	}
	if len(resp.Recovery) != 1 {
		t.Fatalf("%d recovery replies, want 1", len(resp.Recovery))
	}
	share, err := b.Unblind(resp.Recovery[0])
	if err != nil {
		return nil, resp, err
	}
	key, err := md.Combine(map[int][]byte{md.Pins[0].Index: share})
	return key, resp, err
}

func TestRecoveryExchange(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	ac.approve("52:54:00:00:0a:01")
	_, key, md := enrolAt(t, ac, "52:54:00:00:0a:01")
	got, _, err := recoverAt(t, ac, "52:54:00:00:0a:01", md)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("recovered %x, %v; want %x", got, err, key)
	}
	// Across a restart (keys come from the store and the KEK file).
	ac.restart()
	if got, _, err := recoverAt(t, ac, "52:54:00:00:0a:01", md); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("after restart: %x, %v", got, err)
	}

	// Another approved node asking with this node's public values gets an
	// answer for itself, which does not unwrap this node's key.
	ac.approve("52:54:00:00:0a:02")
	if _, _, err := recoverAt(t, ac, "52:54:00:00:0a:02", md); !errors.Is(err, recovery.ErrUnwrap) {
		t.Fatalf("another node's exchange: err = %v, want ErrUnwrap", err)
	}

	// Unapproved: no answer at all.
	for _, state := range []string{store.StateRevoked, store.StateDenied} {
		ac.setState("52:54:00:00:0a:01", state)
		_, _, err := recoverAt(t, ac, "52:54:00:00:0a:01", md)
		if se, ok := statusOf(err); !ok || se.Code != http.StatusForbidden {
			t.Fatalf("%s node: err = %v, want 403", state, err)
		}
	}
	b, _ := md.Pins[0].Blind()
	_, err = ac.as("52:54:00:00:0a:03").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:0a:03"}, Recovery: []recovery.Exchange{b.Exchange}})
	if se, ok := statusOf(err); !ok || se.Code != http.StatusAccepted {
		t.Fatalf("unknown node: err = %v, want 202 pending", err)
	}
}

func TestRecoveryKeyRotation(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	ac.approve("52:54:00:00:0b:01")
	_, key, md := enrolAt(t, ac, "52:54:00:00:0b:01")
	old := md.Pins[0].KID
	if _, _, err := recoverAt(t, ac, "52:54:00:00:0b:01", md); err != nil {
		t.Fatal(err)
	}
	st := ac.store()
	rk, err := OpenRecoveryKeys(ctx, st, filepath.Join(ac.dir, RecoveryKEKFile), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cur, err := rk.Rotate(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The old key still answers; the answer advertises the new one.
	got, resp, err := recoverAt(t, ac, "52:54:00:00:0b:01", md)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("old key after rotation: %v", err)
	}
	if resp.RecoveryKey.KID != cur.KID {
		t.Fatalf("advertised %s, want the new %s", resp.RecoveryKey.KID, cur.KID)
	}
	// The old key is still needed: removal refused.
	if err := st.RemoveRecoveryKey(ctx, old, false); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "1 node(s)") {
		t.Fatalf("remove of a key in use: %v", err)
	}
	// The node re-wraps the same disk key to the new key.
	p, err := recovery.Wrap(*resp.RecoveryKey, ac.url, 1, got)
	if err != nil {
		t.Fatal(err)
	}
	md.Pins[0] = p
	if got, _, err := recoverAt(t, ac, "52:54:00:00:0b:01", md); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("after re-wrap: %v", err)
	}
	keys, _ := st.RecoveryKeys(ctx)
	if len(keys) != 2 || keys[0].KID != cur.KID || keys[0].Nodes != 1 || keys[1].Nodes != 0 {
		t.Fatalf("keys after re-wrap: %+v", keys)
	}
	if err := st.RemoveRecoveryKey(ctx, old, false); err != nil {
		t.Fatal(err)
	}
	if err := st.RemoveRecoveryKey(ctx, cur.KID, true); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("removing the only key: %v", err)
	}
	// A pin of a removed key gets a clear refusal.
	md.Pins[0].KID = old
	_, _, err = recoverAt(t, ac, "52:54:00:00:0b:01", md)
	if se, ok := statusOf(err); !ok || se.Code != http.StatusConflict || !strings.Contains(se.Body.Error, old) {
		t.Fatalf("removed key: err = %v, want 409 naming %s", err, old)
	}
}

// What an attacker with a copy of the controller's database (but not the
// KEK file) holds: no recovery key in usable form, and no controller can be
// started on it.
func TestDatabaseCopyHoldsNoUsableRecoveryKey(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	ac.approve("52:54:00:00:0c:01")
	nodeID, key, md := enrolAt(t, ac, "52:54:00:00:0c:01")
	ac.stop()

	// The thief's copy: the database and the node's public metadata.
	thief := filepath.Join(t.TempDir(), "ac")
	if err := os.MkdirAll(thief, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{DBFile, DBFile + "-wal", DBFile + "-shm"} {
		if b, err := os.ReadFile(filepath.Join(ac.dir, f)); err == nil {
			os.WriteFile(filepath.Join(thief, f), b, 0o600)
		}
	}
	st, err := store.Open(filepath.Join(thief, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := st.RecoveryKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys in the copy: %v, %v", keys, err)
	}
	// The wrapped value is not the master key: taken as one, it answers
	// nothing that unwraps the node's key.
	for _, guess := range [][]byte{keys[0].Wrapped, keys[0].Wrapped[12:44], keys[0].Wrapped[len(keys[0].Wrapped)-32:]} {
		m, err := recovery.MasterKeyFromBytes(guess)
		if err != nil {
			continue
		}
		b, _ := md.Pins[0].Blind()
		y, _ := m.Answer(nodeID, b.Exchange.X)
		if _, err := b.Unblind(recovery.Reply{KID: md.Pins[0].KID, Y: y}); err == nil {
			t.Fatal("a value from the database unwraps the node's key")
		}
	}
	raw, _ := os.ReadFile(filepath.Join(thief, DBFile))
	if bytes.Contains(raw, key) {
		t.Fatal("the database file holds the node's disk key")
	}
	// Without the KEK file, or with another controller's, nothing opens.
	if _, err := OpenRecoveryKeys(ctx, st, filepath.Join(thief, RecoveryKEKFile), true, time.Now()); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("no KEK: err = %v, want ErrNoKEK", err)
	}
	if _, err := os.Stat(filepath.Join(thief, RecoveryKEKFile)); err == nil {
		t.Fatal("a KEK was made beside a database that already holds keys")
	}
	other := filepath.Join(t.TempDir(), "other.kek")
	os.WriteFile(other, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	if _, err := OpenRecoveryKeys(ctx, st, other, false, time.Now()); err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Fatalf("another KEK: err = %v", err)
	}
	// A readable KEK is refused.
	os.Chmod(other, 0o644)
	if _, err := OpenRecoveryKeys(ctx, st, other, false, time.Now()); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("KEK mode 0644: err = %v", err)
	}
}

func TestRecoveryKeyCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ac")
	if err := Init(dir, []string{"localhost"}, ""); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		// --data goes before a "--", after which everything is an argument.
		args = append(args, "--data", dir)
		if i := slices.Index(args, "--"); i >= 0 {
			args = slices.Concat(args[:i], args[len(args)-2:], args[i:len(args)-2])
		}
		code := Command(&out, &errb).Execute(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run("recovery-key", "list", "--json")
	if code != 0 || strings.Count(out, `"kid"`) != 1 || !strings.Contains(out, `"current": true`) {
		t.Fatalf("list after init: exit %d %q %q", code, out, errs)
	}
	code, out, errs = run("recovery-key", "rotate")
	if code != 0 || !strings.Contains(out, "is now current") {
		t.Fatalf("rotate: exit %d %q %q", code, out, errs)
	}
	newKID := strings.Fields(out)[2]
	code, out, _ = run("recovery-key", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], newKID+" ") || !strings.Contains(lines[1], "yes") {
		t.Fatalf("list after rotate: %q", out)
	}
	oldKID := strings.Fields(lines[2])[0]
	if code, _, errs := run("recovery-key", "remove", "--", newKID+"x"); code != ExitNotFound || !strings.Contains(errs, "not found") {
		t.Fatalf("remove of an unknown key: exit %d %q", code, errs)
	}
	// Key ids are base64url: a third of them begin with a dash, which
	// only -- keeps from being read as flags.
	dashKID := "-" + oldKID[1:]
	if code, _, errs := run("recovery-key", "remove", dashKID); code != cli.ExitUsage || !strings.Contains(errs, "goes after --") {
		t.Fatalf("remove of a dash id without --: exit %d %q", code, errs)
	}
	if dashKID != oldKID {
		if code, _, errs := run("recovery-key", "remove", "--", dashKID); code != ExitNotFound || !strings.Contains(errs, "not found") {
			t.Fatalf("remove -- of an unknown dash id: exit %d %q", code, errs)
		}
	}
	if code, out, errs := run("recovery-key", "remove", "--", oldKID); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("remove old: exit %d %q %q", code, out, errs)
	}
	if code, _, errs := run("recovery-key", "remove", "--", newKID); code == 0 || !strings.Contains(errs, "only one") {
		t.Fatalf("remove the only key: exit %d %q", code, errs)
	}
	// Without the KEK file rotate refuses and says what to copy.
	os.Rename(filepath.Join(dir, RecoveryKEKFile), filepath.Join(dir, "moved.kek"))
	if code, _, errs := run("recovery-key", "rotate"); code != 3 || !strings.Contains(errs, "copy recovery.kek") {
		t.Fatalf("rotate without KEK: exit %d %q", code, errs)
	}
	if code, _, errs := run("recovery-key", "rotate", "--recovery-kek", filepath.Join(dir, "moved.kek")); code != 0 {
		t.Fatalf("rotate --recovery-kek: exit %d %q", code, errs)
	}
}

// setLegacyKey gives a node the stored unlock key of an enrolment from
// before key recovery, as an older g8-ac made at approval.
func setLegacyKey(t *testing.T, dbPath, nodeID string, key []byte) {
	t.Helper()
	db, err := sql.Open("sqlite", dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("UPDATE nodes SET key = ? WHERE id = ?", key, nodeID); err != nil {
		t.Fatal(err)
	}
}

// A node enrolled before key recovery still gets its stored key until it
// says its volume opens with a recovered key; then the key is gone from the
// database for good.
func TestLegacyKeyDroppedOnceRewrapped(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	n := ac.approve("52:54:00:00:0d:01")
	legacy := bytes.Repeat([]byte{0x5a}, store.KeySize)
	setLegacyKey(t, filepath.Join(ac.dir, DBFile), n.ID, legacy)

	resp, err := ac.as("52:54:00:00:0d:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:0d:01"}})
	if err != nil || !bytes.Equal(resp.Key, legacy) || resp.RecoveryKey == nil {
		t.Fatalf("legacy node: %v, key %x, recovery key %v", err, resp.Key, resp.RecoveryKey)
	}
	key, md, err := recovery.Enrol(*resp.RecoveryKey, ac.url)
	if err != nil {
		t.Fatal(err)
	}
	// A move-over in progress (exchanges, no key_rewrapped): the key stays.
	b, _ := md.Pins[0].Blind()
	resp, err = ac.as("52:54:00:00:0d:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:0d:01"}, Recovery: []recovery.Exchange{b.Exchange}})
	if err != nil || !bytes.Equal(resp.Key, legacy) {
		t.Fatalf("during the move-over: %v, key %x", err, resp.Key)
	}
	// key_rewrapped without an exchange proves nothing: the key stays.
	resp, err = ac.as("52:54:00:00:0d:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:0d:01"}, KeyRewrapped: true})
	if err != nil || !bytes.Equal(resp.Key, legacy) {
		t.Fatalf("key_rewrapped alone: %v, key %x", err, resp.Key)
	}
	b, _ = md.Pins[0].Blind()
	resp, err = ac.as("52:54:00:00:0d:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:0d:01"}, Recovery: []recovery.Exchange{b.Exchange}, KeyRewrapped: true})
	if err != nil || len(resp.Key) != 0 {
		t.Fatalf("after the move-over: %v, key %x", err, resp.Key)
	}
	share, err := b.Unblind(resp.Recovery[0])
	if err != nil || !bytes.Equal(share, key) {
		t.Fatalf("recovery in the same answer: %v", err)
	}
	if got, _ := ac.store().Node(ctx, n.ID); len(got.Key) != 0 {
		t.Fatal("the stored key is still in the database")
	}
	ac.stop()
	raw, _ := os.ReadFile(filepath.Join(ac.dir, DBFile))
	wal, _ := os.ReadFile(filepath.Join(ac.dir, DBFile+"-wal"))
	if bytes.Contains(raw, legacy) || bytes.Contains(wal, legacy) {
		t.Fatalf("the dropped key's bytes are still in the database file (db %v, wal %v %d bytes)", bytes.Contains(raw, legacy), bytes.Contains(wal, legacy), len(wal))
	}
}
