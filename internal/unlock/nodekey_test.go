package unlock

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func testNodeKey(t *testing.T) *NodeKey {
	t.Helper()
	nk, err := LoadOrCreateNodeKey(filepath.Join(t.TempDir(), "identity"))
	if err != nil {
		t.Fatal(err)
	}
	return nk
}

// The key is made once, private to root, and the same on every later
// start; its fingerprint is the one ssh-keygen prints for it.
func TestNodeKeyMadeOnceAndPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	first, err := LoadOrCreateNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Created || !strings.HasPrefix(first.Fingerprint, "SHA256:") {
		t.Fatalf("first start: %+v", first)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, first.Path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %o (%v)", p, fi.Mode().Perm(), want, err)
		}
	}
	again, err := LoadOrCreateNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Created || again.Fingerprint != first.Fingerprint || !bytes.Equal(again.Cert.Leaf.RawSubjectPublicKeyInfo, first.Cert.Leaf.RawSubjectPublicKeyInfo) {
		t.Fatalf("second start: %+v, first %+v", again, first)
	}
	if out, err := exec.Command("ssh-keygen", "-l", "-f", first.Path).Output(); err == nil {
		if !strings.Contains(string(out), first.Fingerprint) {
			t.Fatalf("ssh-keygen -l says %q, we say %s", out, first.Fingerprint)
		}
	} else if _, lerr := exec.LookPath("ssh-keygen"); lerr == nil {
		t.Fatalf("ssh-keygen -l %s: %v", first.Path, err)
	}
}

func TestNodeKeyRefusedWhenReadableOrBroken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	nk, err := LoadOrCreateNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(nk.Path, 0o644)
	if _, err := LoadOrCreateNodeKey(dir); err == nil || !strings.Contains(err.Error(), nk.Path) {
		t.Fatalf("a world-readable key: %v", err)
	}
	os.WriteFile(nk.Path, []byte("not a key"), 0o600)
	if _, err := LoadOrCreateNodeKey(dir); err == nil || !strings.Contains(err.Error(), nk.Path) {
		t.Fatalf("a broken key: %v", err)
	}
	if b, _ := os.ReadFile(nk.Path); string(b) != "not a key" {
		t.Fatal("a broken key was replaced (the node would become a stranger)")
	}
}
