package unlock_test

import (
	"bytes"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/sd"
)

// TestBadManagedFileNeverStopsTheBoot: a managed file the node cannot
// write (a directory of the node's in its place) and one an older
// controller let through over the node's TLS key are skipped and reported
// (unlock.json, MESSAGE_ID); the node still unlocks, its key intact and
// the good file written.
func TestBadManagedFileNeverStopsTheBoot(t *testing.T) {
	r := newRig(t, "gocryptfs")
	r.AC.ApproveMAC(t, r.MAC)
	u := r.start(t)
	u.waitReady(t)
	nodeKey := r.read(t, "ssl/node.key")
	// Something on the node keeps a directory where a file is managed next.
	if err := os.MkdirAll(filepath.Join(r.Mount, "notes/today"), 0o700); err != nil {
		t.Fatal(err)
	}
	r.stop(t, u)

	r.AC.SetConfig(t, "notes", []byte("a file now\n"))
	r.AC.SetConfig(t, "g8os/fs.toml", []byte("# good\n"))
	// What a controller from before the shared rule could store.
	db, err := sql.Open("sqlite", filepath.Join(r.AC.DataDir, "ac.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("INSERT INTO config_files(path, content, updated_at) VALUES('ssl/node.key', 'evil', 0)"); err != nil {
		t.Fatal(err)
	}

	u = r.start(t)
	u.waitReady(t)
	st := r.state(t)
	if got := strings.Join(st.SkippedFiles, "\n"); !strings.Contains(got, "notes: ") || !strings.Contains(got, "ssl/node.key: ") || len(st.SkippedFiles) != 2 {
		t.Errorf("unlock.json skipped_files = %q, want notes and ssl/node.key", st.SkippedFiles)
	}
	if n := strings.Count(u.Output(), sd.UnlockConfigSkipped.ID); n != 2 {
		t.Errorf("%d log lines with MESSAGE_ID=%s, want 2:\n%s", n, sd.UnlockConfigSkipped.ID, u.Output())
	}
	if !bytes.Equal(r.read(t, "ssl/node.key"), nodeKey) {
		t.Error("ssl/node.key overwritten by a managed file")
	}
	if st, err := os.Stat(filepath.Join(r.Mount, "notes/today")); err != nil || !st.IsDir() {
		t.Errorf("the node's directory notes/today: %v", err)
	}
	if got := string(r.read(t, "g8os/fs.toml")); got != "# good\n" {
		t.Errorf("g8os/fs.toml = %q", got)
	}
	r.stop(t, u)
}
