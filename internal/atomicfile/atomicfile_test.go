package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestWriteReplacesWithModeAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "node.key")
	for _, w := range []func(string, []byte, os.FileMode) error{Write, WriteUnsynced} {
		if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w(p, []byte("new"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		st, _ := os.Stat(p)
		if string(got) != "new" || st.Mode().Perm() != 0o600 {
			t.Fatalf("content %q mode %v", got, st.Mode())
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

func TestWriteIntoMissingDirFailsNamingThePath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no", "such", "file")
	err := Write(p, []byte("x"), 0o600)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(p)) {
		t.Fatalf("got %v", err)
	}
}

// Concurrent readers only ever see one whole version.
func TestReadersNeverSeeAMix(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	a, b := bytes.Repeat([]byte("a"), 1<<16), bytes.Repeat([]byte("b"), 1<<16)
	if err := Write(p, a, 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100; i++ {
			if err := Write(p, [][]byte{a, b}[i%2], 0o644); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 300; i++ {
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
			t.Fatalf("torn read of %d bytes", len(got))
		}
	}
	wg.Wait()
}
