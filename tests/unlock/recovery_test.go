package unlock_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/unlock/backend"

	_ "modernc.org/sqlite" // reads the controller's database as a thief would
)

// dbHolds reports whether the controller's database files hold any of
// forms.
func dbHolds(t *testing.T, dataDir string, forms ...[]byte) bool {
	t.Helper()
	for _, f := range []string{"ac.db", "ac.db-wal"} {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			continue
		}
		for _, k := range forms {
			if bytes.Contains(b, k) {
				return true
			}
		}
	}
	return false
}

// The node derives its disk key from key recovery: the controller's
// database never holds it, the metadata beside the private dir is public,
// a copy of the database without the KEK file starts no controller, and a
// rotated recovery key is re-wrapped to on the next boot.
func TestKeyRecoveryAndRotation(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			r.AC.ApproveMAC(t, r.MAC)
			r.boot(t)

			mdPath := r.Private + ".recovery.json"
			raw, err := os.ReadFile(mdPath)
			if err != nil {
				t.Fatalf("no recovery metadata beside the private dir: %v", err)
			}
			md := r.metadata(t)
			key := r.nodeKey(t)
			forms := [][]byte{key, []byte(hex.EncodeToString(key))}
			for _, k := range forms {
				if bytes.Contains(raw, k) {
					t.Fatal("the metadata holds the disk key")
				}
			}
			if dbHolds(t, r.AC.DataDir, forms...) {
				t.Fatal("the controller's database holds the disk key")
			}
			// The key recovered by hand opens the volume: it is the real one.
			hand := r.handMount(t, hex.EncodeToString(key))
			if err := unmountIfMounted(r.Mount); err != nil {
				t.Fatal(err)
			}
			hand.Wait()

			// A thief's copy of the data directory without recovery.kek
			// starts no controller.
			thief := filepath.Join(t.TempDir(), "ac")
			if out, err := exec.Command("cp", "-a", r.AC.DataDir, thief).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			os.Remove(filepath.Join(thief, "recovery.kek"))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, r.AC.Bin, "serve", "--data", thief, "--listen", "127.0.0.1:0").CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "recovery key-encryption key missing") {
				t.Fatalf("serve on a copied database without the KEK: %v: %s", err, out)
			}

			// Rotation: the next boot re-wraps the same disk key to the new
			// key, without touching the volume.
			oldKID := md.Pins[0].KID
			rot := r.AC.CLI(t, "recovery-key", "rotate")
			newKID := strings.Fields(rot)[2]
			r.boot(t)
			if got := r.metadata(t).Pins[0].KID; got != newKID {
				t.Fatalf("metadata after rotation names %s, want %s", got, newKID)
			}
			if !bytes.Equal(r.nodeKey(t), key) {
				t.Fatal("the disk key changed on re-wrap")
			}
			// The boot that re-wrapped recovered through the old key; the
			// next one (nodeKey above) through the new: the old key is free.
			if _, errs, code := r.AC.RunCLI("recovery-key", "remove", "--", oldKID); code != 0 {
				t.Fatalf("remove old key after re-wrap: exit %d %s", code, errs)
			}
			r.boot(t)
		})
	}
}

// A node enrolled before key recovery (its volume opened with a key the
// controller stored) moves over on its next boot: the volume's password
// changes to a recovered key without re-encrypting, and on the boot after,
// the controller forgets the stored key.
func TestOldEnrolmentMovesOver(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			nodeID := r.AC.ApproveMAC(t, r.MAC)
			legacy := bytes.Repeat([]byte{0xa7}, 32)
			legacyPW := hex.EncodeToString(legacy)

			// The disk as an older g8-unlock left it: a volume made with the
			// stored key (EncFS in the seed's standard mode), enrolled.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := os.MkdirAll(r.Mount, 0o755); err != nil {
				t.Fatal(err)
			}
			if be == "encfs" {
				os.MkdirAll(r.Private, 0o700)
				cmd := exec.Command("encfs", "-f", "--standard", "--stdinpass", r.Private, r.Mount)
				cmd.Stdin = strings.NewReader(legacyPW + "\n")
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				waitMounted(t, r.Mount)
			} else {
				b, _ := backend.New(be, backend.Tools{GocryptfsScryptN: 10})
				if err := b.Init(ctx, r.Private, []byte(legacyPW)); err != nil {
					t.Fatal(err)
				}
				cmd := r.handMount(t, legacyPW)
				defer cmd.Wait()
			}
			os.WriteFile(filepath.Join(r.Mount, "kept"), []byte("from before"), 0o600)
			if err := unmountIfMounted(r.Mount); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", filepath.Join(r.AC.DataDir, "ac.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec("UPDATE nodes SET key = ? WHERE id = ?", legacy, nodeID); err != nil {
				t.Fatal(err)
			}
			storedKey := func() []byte {
				var k []byte
				if err := db.QueryRow("SELECT key FROM nodes WHERE id = ?", nodeID).Scan(&k); err != nil {
					t.Fatal(err)
				}
				return k
			}

			u := r.start(t)
			u.waitReady(t)
			if !strings.Contains(u.Output(), "unlock.rewrapped") && !strings.Contains(u.Output(), "re-wrapped to a recovered key") {
				t.Errorf("no re-wrap logged:\n%s", u.Output())
			}
			if got := string(r.read(t, "kept")); got != "from before" {
				t.Fatalf("file from before the move-over: %q", got)
			}
			if st := r.state(t); st.Enrolled {
				t.Fatal("the move-over enrolled afresh")
			}
			r.stop(t, u)
			if _, err := os.Stat(r.Private + ".recovery.json.new"); !os.IsNotExist(err) {
				t.Fatalf("pending metadata left: %v", err)
			}
			// The old key no longer opens the volume; the recovered one does.
			key := r.nodeKey(t)
			if bytes.Equal(key, legacy) {
				t.Fatal("the recovered key is the stored one")
			}
			b, _ := backend.New(be, backend.Tools{})
			if enc, ok := b.(*backend.EncFS); ok {
				if _, err := enc.MountLegacy(ctx, r.Private, r.Mount, []byte(legacyPW)); err == nil {
					t.Fatal("the stored key still opens the volume")
				}
			} else if _, err := b.Mount(ctx, r.Private, r.Mount, []byte(legacyPW)); err == nil {
				t.Fatal("the stored key still opens the volume")
			}

			// nodeKey said key_rewrapped with an exchange, as the node does on
			// every boot from now on: the controller has dropped its key.
			if k := storedKey(); len(k) != 0 {
				t.Fatalf("the controller still stores %d key bytes", len(k))
			}
			if dbHolds(t, r.AC.DataDir, legacy) {
				t.Error("the dropped key's bytes are still in the database files")
			}
			u = r.start(t)
			u.waitReady(t)
			if got := string(r.read(t, "kept")); got != "from before" {
				t.Fatalf("after the drop: %q", got)
			}
			r.stop(t, u)
		})
	}
}

func waitMounted(t *testing.T, mnt string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if info, _ := backend.MountAt(mnt); info != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing mounted at %s", mnt)
}
