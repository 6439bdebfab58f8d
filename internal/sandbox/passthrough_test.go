package sandbox

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/tests/testenv"
)

// diffTree compares the mounted tree with its source, contents and stat.
func diffTree(t *testing.T, src, mnt string) {
	t.Helper()
	out, err := exec.Command("diff", "-r", "--no-dereference", "-x", "fifo", "-x", "null", src, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("diff -r: %v\n%s", err, out)
	}
	compareTrees(t, src, mnt)
}

// evictAllBut shrinks c to its most recently used entry, through the
// eviction the limit drives.
func evictAllBut(c *Cache) {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := c.limit
	c.limit = 1
	c.evictLocked()
	c.limit = limit
}

// Files whole in the cache are opened with a FUSE passthrough backing file:
// after a restart a whole tree reads right without one READ reaching
// g8-fs; a file evicted while open keeps reading; a kernel without
// passthrough gets the reads served as before.
func TestPassthrough(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3", "diff")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src) // big.bin (6 chunks) and text.log (3) are multi-chunk
	big2 := randBytes(t, 4*DefaultChunkSize+7)
	write(t, filepath.Join(src, "big2"), big2, 0o644)
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ := buildTo(t, src, srv.client(srv.token))
	cacheDir := filepath.Join(tmp, "cache")
	mnt := filepath.Join(tmp, "mnt")
	pass := func(f *Fetcher) { f.Passthrough = PassthroughOn }

	// Cold: everything read through g8-fs; reading a multi-chunk file to
	// its end assembles its whole form in the background.
	env := mountFlistWith(t, flist, mnt, cacheDir, srv.client(""), 1<<30, pass)
	if !env.m.tree.passthrough.Load() {
		t.Fatalf("passthrough not enabled on a 6.9+ kernel as root:\n%s", env.log)
	}
	diffTree(t, src, mnt)
	waitFor(t, "3 whole files assembled", func() bool { return env.fetch.Assembled.Load() == 3 })
	if env.m.tree.reads.Load() == 0 {
		t.Fatal("the cold pass read nothing through g8-fs")
	}
	env.fetch.Settle() // chunks are written behind their readers
	env.m.Unmount()

	// Restarted: every file with contents is whole in the cache, so the
	// kernel reads all of them from their backing files.
	env = mountFlistWith(t, flist, mnt, cacheDir, srv.client(""), 1<<30, pass)
	diffTree(t, src, mnt)
	if r, p := env.m.tree.reads.Load(), env.m.tree.passOpens.Load(); r != 0 || p == 0 {
		t.Errorf("after restart: %d READs reached g8-fs, %d passthrough opens; want 0 and some", r, p)
	}
	if n := env.fetch.Fetches.Load(); n != 0 {
		t.Errorf("after restart: %d fetches", n)
	}

	// Evicted while open: the open file keeps its backing file, and so
	// does a second open of it meanwhile.
	bigPath := filepath.Join(mnt, "big.bin")
	want, err := os.ReadFile(filepath.Join(src, "big.bin"))
	must(t)(err)
	fl := env.m.Flist
	root := fl.Node(0)
	idx, _ := fl.Lookup(&root, "big.bin")
	nd := fl.Node(idx)
	whole := env.fetch.Cache.FilePath(FileKey(fl, &nd))
	f1, err := os.Open(bigPath)
	must(t)(err)
	defer f1.Close()
	// Another file used last is what eviction keeps.
	if got2, err := os.ReadFile(filepath.Join(mnt, "big2")); err != nil || !bytes.Equal(got2, big2) {
		t.Fatalf("big2: %v", err)
	}
	evictAllBut(env.fetch.Cache)
	if _, err := os.Stat(whole); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("whole file still cached after eviction: %v", err)
	}
	got := make([]byte, len(want))
	if n, err := f1.ReadAt(got, 0); n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("evicted while open: read %d bytes (%v), contents right: %v", n, err, bytes.Equal(got, want))
	}
	if got2, err := os.ReadFile(bigPath); err != nil || !bytes.Equal(got2, want) {
		t.Fatalf("second open of the evicted file: %v, contents right: %v", err, bytes.Equal(got2, want))
	}
	if r := env.m.tree.reads.Load(); r != 0 {
		t.Errorf("%d READs reached g8-fs for a file open with a backing file", r)
	}
	f1.Close()
	// RELEASE comes after close returns; until then an open still shares
	// the backing file (the kernel holds it, g8-fs keeps no descriptor):
	// wait for the open-file table to count the node closed.
	waitFor(t, "the evicted backing file released", func() bool {
		opens, _ := env.m.tree.open.Load().get(idx)
		return opens == 0
	})
	// Closed, the next open has no whole file: reads go through g8-fs
	// (which fetches again) and reassemble it.
	if got2, err := os.ReadFile(bigPath); err != nil || !bytes.Equal(got2, want) {
		t.Fatalf("open after eviction: %v, contents right: %v", err, bytes.Equal(got2, want))
	}
	if env.m.tree.reads.Load() == 0 || env.fetch.Fetches.Load() == 0 {
		t.Errorf("open after eviction: %d READs, %d fetches; want both", env.m.tree.reads.Load(), env.fetch.Fetches.Load())
	}
	waitFor(t, "big.bin reassembled", func() bool { _, err := os.Stat(whole); return err == nil })
	env.m.Unmount()

	// Auto: this tree's files average less than a chunk, so the mount
	// keeps the no-open mode.
	env = mountFlistWith(t, flist, mnt, cacheDir, srv.client(""), 1<<30, func(f *Fetcher) { f.Passthrough = PassthroughAuto })
	if env.m.tree.passthrough.Load() {
		t.Error("auto mode answered OPEN for a tree of small files")
	}
	env.m.Unmount()

	// A kernel without passthrough: the probe fails, the mount keeps the
	// no-open mode and serves every read.
	env = mountFlistWith(t, flist, mnt, cacheDir, srv.client(""), 1<<30, func(f *Fetcher) { f.Passthrough, f.noPassthroughCap = PassthroughOn, true })
	if env.m.tree.passthrough.Load() || !strings.Contains(env.log.String(), "passthrough unavailable") {
		t.Fatalf("passthrough on without the kernel capability; log:\n%s", env.log)
	}
	diffTree(t, src, mnt)
	if r, p := env.m.tree.reads.Load(), env.m.tree.passOpens.Load(); r == 0 || p != 0 {
		t.Errorf("fallback: %d READs, %d passthrough opens; want some and 0", r, p)
	}
	if got2, err := os.ReadFile(filepath.Join(mnt, "big2")); err != nil || !bytes.Equal(got2, big2) {
		t.Fatalf("fallback read: %v", err)
	}
}

// Auto mode answers OPEN only for flists whose files average a chunk.
func TestPassthroughAuto(t *testing.T) {
	for _, tc := range []struct {
		sizes []int
		want  bool
	}{
		{[]int{3 * DefaultChunkSize, 100, 200}, true},
		{[]int{DefaultChunkSize}, true},
		{[]int{2 * DefaultChunkSize, 100, 200, 300}, false},
		{nil, false}, // no regular file
	} {
		src := t.TempDir()
		for i, n := range tc.sizes {
			write(t, filepath.Join(src, "f"+string(rune('a'+i))), make([]byte, n), 0o644)
		}
		p, _ := buildTo(t, src, &DirStore{Root: t.TempDir()})
		fl, err := OpenFlist(p)
		must(t)(err)
		if got := passthroughPays(fl); got != tc.want {
			t.Errorf("files %v: passthrough %v, want %v", tc.sizes, got, tc.want)
		}
		fl.Close()
	}
}
