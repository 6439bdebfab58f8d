package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/tests/testenv"
)

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask
		t.Fatal(err)
	}
}

// makeTree builds a source tree with every kind of entry a sandbox holds.
func makeTree(t testing.TB, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "empty"), nil, 0o644)
	write(t, filepath.Join(root, "small.txt"), []byte("hello sandbox\n"), 0o644)
	// Big and sparse-ish: random data, a hole of zeros spanning whole
	// chunks, and a tail that ends mid-chunk.
	big := make([]byte, 5*DefaultChunkSize+12345)
	copy(big, randBytes(t, DefaultChunkSize+100))
	copy(big[4*DefaultChunkSize:], randBytes(t, DefaultChunkSize/2))
	write(t, filepath.Join(root, "big.bin"), big, 0o640)
	write(t, filepath.Join(root, "text.log"), bytes.Repeat([]byte("compressible line of text\n"), 100000), 0o600)
	// Two files with identical content are stored once.
	write(t, filepath.Join(root, "dup/a"), bytes.Repeat([]byte{7}, 3000), 0o644)
	write(t, filepath.Join(root, "dup/b"), bytes.Repeat([]byte{7}, 3000), 0o644)
	write(t, filepath.Join(root, "bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o755)
	write(t, filepath.Join(root, "bin/suid"), []byte("x"), 0o755)
	must(os.Chmod(filepath.Join(root, "bin/suid"), 0o4755|os.ModeSetuid))
	must(unix.Chmod(filepath.Join(root, "bin/suid"), 0o4755))
	write(t, filepath.Join(root, "secret"), []byte("no one"), 0o000)
	must(os.Symlink("small.txt", filepath.Join(root, "link-rel")))
	must(os.Symlink("/etc/does-not-exist", filepath.Join(root, "link-dangling")))
	must(os.Symlink("bin", filepath.Join(root, "link-dir")))
	must(os.Link(filepath.Join(root, "bin/tool"), filepath.Join(root, "hard1")))
	must(os.Link(filepath.Join(root, "bin/tool"), filepath.Join(root, "dup/hard2")))
	deep := root
	for i := 0; i < 40; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
	}
	write(t, filepath.Join(deep, "bottom"), []byte("deep"), 0o644)
	for _, n := range []string{"with space", "ünïcödé ✓", "-leading-dash", "new\nline", "tab\there", strings.Repeat("n", 255), "'quote\"", "back\\slash"} {
		write(t, filepath.Join(root, "odd", n), []byte(n), 0o644)
	}
	must(os.MkdirAll(filepath.Join(root, "emptydir"), 0o700))
	must(os.MkdirAll(filepath.Join(root, "sticky"), 0o755))
	must(os.Chmod(filepath.Join(root, "sticky"), 0o777|os.ModeSticky))
	must(os.MkdirAll(filepath.Join(root, "special"), 0o755))
	must(unix.Mkfifo(filepath.Join(root, "special", "fifo"), 0o640))
	must(unix.Mknod(filepath.Join(root, "special", "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Lchown(filepath.Join(root, "small.txt"), 1234, 5678))
	must(os.Lchown(filepath.Join(root, "link-rel"), 42, 43))
	must(os.Lchown(filepath.Join(root, "odd"), 1000, 100))
	// xattrs where the file system supports them.
	if err := unix.Setxattr(filepath.Join(root, "small.txt"), "user.g8", []byte("value\x00bin"), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Fatal(err)
	}
	// Nanosecond mtimes, set last (bottom-up) so directory times stick.
	ts := time.Date(2021, 3, 4, 5, 6, 7, 891011121, time.UTC)
	var paths []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error { paths = append(paths, p); return err })
	for i := len(paths) - 1; i >= 0; i-- {
		tv := []unix.Timespec{unix.NsecToTimespec(ts.UnixNano()), unix.NsecToTimespec(ts.UnixNano() + int64(i))}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], tv, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func must(t testing.TB) func(error) {
	return func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// compareTrees checks every stat field a read-only copy must keep, and
// that hard links are one inode in the mount too.
func compareTrees(t *testing.T, src, mnt string) {
	t.Helper()
	inodes := map[uint64]uint64{} // source ino -> mounted ino
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		m := filepath.Join(mnt, rel)
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		if err := unix.Lstat(m, &b); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		n++
		isDir := a.Mode&unix.S_IFMT == unix.S_IFDIR
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Nlink != b.Nlink || a.Rdev != b.Rdev ||
			(!isDir && a.Size != b.Size) || a.Mtim != b.Mtim {
			t.Errorf("%s: source mode %o uid %d gid %d nlink %d rdev %d size %d mtime %v\n   mounted mode %o uid %d gid %d nlink %d rdev %d size %d mtime %v",
				rel, a.Mode, a.Uid, a.Gid, a.Nlink, a.Rdev, a.Size, a.Mtim, b.Mode, b.Uid, b.Gid, b.Nlink, b.Rdev, b.Size, b.Mtim)
		}
		if prev, ok := inodes[a.Ino]; ok && prev != b.Ino {
			t.Errorf("%s: hard link has inode %d in the mount, its other name %d", rel, b.Ino, prev)
		}
		inodes[a.Ino] = b.Ino
		if a.Mode&unix.S_IFMT == unix.S_IFLNK {
			ta, _ := os.Readlink(p)
			tb, err := os.Readlink(m)
			if err != nil || ta != tb {
				t.Errorf("%s: target %q, mounted %q (%v)", rel, ta, tb, err)
			}
		}
		if xa, xb := xattrs(p), xattrs(m); xa != xb {
			t.Errorf("%s: xattrs %q, mounted %q", rel, xa, xb)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 70 {
		t.Errorf("compared only %d entries", n)
	}
}

func xattrs(p string) string {
	var out []string
	for _, x := range readXattrs(p) {
		out = append(out, x.Name+"="+x.Value)
	}
	return strings.Join(out, ";")
}

type mountEnv struct {
	fetch *Fetcher
	m     *Mounted
	log   *testenv.SyncBuffer
}

// mountFlist mounts the flist at path with its own cache directory.
func mountFlist(t *testing.T, flist, mnt, cacheDir string, store Store, limit int64, timeout time.Duration) *mountEnv {
	t.Helper()
	return mountFlistRA(t, flist, mnt, cacheDir, store, limit, timeout, 4)
}

func mountFlistRA(t *testing.T, flist, mnt, cacheDir string, store Store, limit int64, timeout time.Duration, readahead int) *mountEnv {
	t.Helper()
	return mountFlistWith(t, flist, mnt, cacheDir, store, limit, func(f *Fetcher) { f.Timeout, f.Readahead = timeout, readahead })
}

// mountFlistWith mounts the flist with a fresh Cache (as after a restart)
// on cacheDir and a Fetcher that set adjusts.
func mountFlistWith(t *testing.T, flist, mnt, cacheDir string, store Store, limit int64, set func(*Fetcher)) *mountEnv {
	t.Helper()
	fl, err := OpenFlist(flist)
	if err != nil {
		t.Fatal(err)
	}
	cache := openCache(t, cacheDir, limit)
	cache.WaitScan() // eviction starts after the scan; these tests count it
	lb := &testenv.SyncBuffer{}
	log := sd.NewTextLogger(lb, "fs", slog.LevelDebug)
	f := &Fetcher{Store: store, Cache: cache, Log: log, Timeout: 10 * time.Second, Readahead: 4}
	set(f)
	m, err := Mount("test", mnt, fl, f, log)
	if err != nil {
		t.Fatal(err)
	}
	once := sync.Once{}
	t.Cleanup(func() {
		once.Do(func() { m.Unmount() })
		f.Settle() // chunks are written behind their readers, into a directory about to go
	})
	return &mountEnv{fetch: f, m: m, log: lb}
}

func buildTo(t *testing.T, src string, store Store) (string, *BuildResult) {
	t.Helper()
	res, err := Build(context.Background(), src, store, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tree.flist")
	if err := os.WriteFile(p, res.Flist, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, res
}

func TestMountRoundTrip(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3", "diff")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src)
	srv := newStoreServer(t, filepath.Join(tmp, "store"))

	// Uploads need the admin token; the server verifies every blob.
	if _, err := Build(context.Background(), src, srv.client("wrong"), BuildOptions{}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("build with a wrong token: %v", err)
	}
	flist, res := buildTo(t, src, srv.client(srv.token))
	if res.Uploaded == 0 || res.Uploaded >= res.Chunks {
		t.Errorf("uploaded %d blobs for %d chunk refs: identical content must be stored once", res.Uploaded, res.Chunks)
	}
	// A second build of the same tree uploads nothing and hashes the same.
	flist2, res2 := buildTo(t, src, srv.client(srv.token))
	if res2.Uploaded != 0 || res2.Hash != res.Hash || res2.Ref != res.Ref {
		t.Errorf("rebuild uploaded %d, hash %s vs %s", res2.Uploaded, res2.Hash, res.Hash)
	}
	_ = flist2

	mnt := filepath.Join(tmp, "mnt")
	env := mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 10*time.Second)
	out, err := exec.Command("diff", "-r", "--no-dereference", "-x", "fifo", "-x", "null", src, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("diff -r: %v\n%s", err, out)
	}
	compareTrees(t, src, mnt)

	// Read-only: nothing can be written, created or removed.
	for _, op := range []func() error{
		func() error { return os.WriteFile(filepath.Join(mnt, "small.txt"), []byte("x"), 0o644) },
		func() error { return os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644) },
		func() error { return os.Remove(filepath.Join(mnt, "empty")) },
		func() error { return os.Mkdir(filepath.Join(mnt, "newdir"), 0o755) },
	} {
		if err := op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("write op: %v, want EROFS", err)
		}
	}
	if env.m.ReadErrors() != 0 || env.fetch.Failures.Load() != 0 {
		t.Errorf("read errors %d, failures %d", env.m.ReadErrors(), env.fetch.Failures.Load())
	}

	// Inode numbers are stable across mounts of the same flist.
	inos := func() map[string]uint64 {
		m := map[string]uint64{}
		filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil {
				m[p] = st.Ino
			}
			return nil
		})
		return m
	}
	before := inos()
	env.m.Unmount()
	mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 10*time.Second)
	after := inos()
	if len(before) != len(after) {
		t.Fatalf("%d entries before remount, %d after", len(before), len(after))
	}
	for p, ino := range before {
		if after[p] != ino {
			t.Errorf("%s: inode %d, after remount %d", p, ino, after[p])
		}
	}
}

// lazyTree is a big file among many small ones.
func lazyTree(t *testing.T, src string, bigChunks int) []byte {
	big := randBytes(t, bigChunks*DefaultChunkSize)
	write(t, filepath.Join(src, "big"), big, 0o644)
	for i := 0; i < 200; i++ {
		write(t, filepath.Join(src, "small", fmt.Sprintf("f%03d", i)), randBytes(t, 2000+i), 0o644)
	}
	return big
}

// lazyStore builds lazyTree into a fresh HTTPS store (root only: the
// callers mount it).
func lazyStore(t *testing.T, bigChunks int) (tmp, src string, srv *storeServer, flist string) {
	testenv.RequireRoot(t, "fusermount3")
	tmp = t.TempDir()
	src = filepath.Join(tmp, "src")
	lazyTree(t, src, bigChunks)
	srv = newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ = buildTo(t, src, srv.client(srv.token))
	return tmp, src, srv, flist
}

func preadAt(t *testing.T, p string, n int, off int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	m, err := f.ReadAt(buf, off)
	return buf[:m], err
}

// settleAt waits (on a busy machine, up to 20 s) until want GETs arrived,
// then as settle: the count is exact, only the wait is longer.
func (s *storeServer) settleAt(want int) int {
	for end := time.Now().Add(20 * time.Second); s.totalGets() < want && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	return s.settle()
}

// settle waits until no fetch has arrived for 600 ms (prefetches are
// asynchronous; on a loaded machine their goroutines and TLS handshakes
// can take a few hundred ms to reach the server) and returns the count.
func (s *storeServer) settle() int {
	last, quiet := -1, 0
	for i := 0; i < 75 && quiet < 3; i++ {
		n := s.totalGets()
		if n == last {
			quiet++
		} else {
			last, quiet = n, 0
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

func TestLazyFetch(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	big := lazyTree(t, src, 24)
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ := buildTo(t, src, srv.client(srv.token))
	fl, err := OpenFlist(flist)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	root := fl.Node(0)
	bi, _ := fl.Lookup(&root, "big")
	bn := fl.Node(bi)
	chunk := func(k uint32) Hash { return fl.Chunk(bn.A + k).Hash }

	mnt := filepath.Join(tmp, "mnt")
	mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 10*time.Second)
	srv.resetCounts()

	// Listing and stat of the whole tree fetch nothing.
	filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error { _, err = d.Info(); return err })
	if n := srv.totalGets(); n != 0 {
		t.Fatalf("walking the tree fetched %d blobs", n)
	}

	// A 4 KiB read in the middle of the big file fetches exactly its chunk.
	off := int64(12*DefaultChunkSize + 5000)
	got, err := preadAt(t, filepath.Join(mnt, "big"), 4096, off)
	if err != nil || !bytes.Equal(got, big[off:off+4096]) {
		t.Fatalf("read at %d: %v", off, err)
	}
	if n := srv.settle(); n != 1 || srv.getCount(chunk(12)) != 1 {
		t.Fatalf("4 KiB random read: %d GETs (chunk 12: %d), want exactly 1", n, srv.getCount(chunk(12)))
	}

	// A 4 KiB read at the start looks sequential: one chunk plus bounded
	// readahead, never the whole file.
	if got, err := preadAt(t, filepath.Join(mnt, "big"), 4096, 0); err != nil || !bytes.Equal(got, big[:4096]) {
		t.Fatalf("read at 0: %v", err)
	}
	n := srv.settle() - 1
	if srv.getCount(chunk(0)) != 1 || n < 1 || n > 1+4 {
		t.Fatalf("4 KiB read at 0: %d GETs, want 1 chunk + at most 4 readahead", n)
	}
	t.Logf("read at 0 fetched %d chunks (readahead 4)", n)

	// Eight readers of one uncached chunk share a single fetch.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := int64(20*DefaultChunkSize + i*70000)
			if got, err := preadAt(t, filepath.Join(mnt, "big"), 4096, o); err != nil || !bytes.Equal(got, big[o:o+4096]) {
				t.Errorf("parallel read %d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if c := srv.getCount(chunk(20)); c != 1 {
		t.Errorf("8 parallel readers fetched chunk 20 %d times", c)
	}

	// Reading everything fetches each chunk once, and no small file.
	all, err := os.ReadFile(filepath.Join(mnt, "big"))
	if err != nil || !bytes.Equal(all, big) {
		t.Fatalf("full read: %v", err)
	}
	srv.settle()
	for k := uint32(0); k < bn.B; k++ {
		if c := srv.getCount(chunk(k)); c != 1 {
			t.Errorf("chunk %d fetched %d times", k, c)
		}
	}
	if n := srv.totalGets(); n != int(bn.B) {
		t.Errorf("%d GETs in all, want %d (the big file's chunks only)", n, bn.B)
	}
}

// A tree walk (files of a directory read from their starts in order) gets
// the next files prefetched; one file read alone fetches only itself.
func TestTreeWalkPrefetch(t *testing.T) {
	tmp, src, srv, flist := lazyStore(t, 2)
	mnt := filepath.Join(tmp, "mnt")
	mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 10*time.Second)
	srv.resetCounts()
	read := func(i int) {
		t.Helper()
		p := filepath.Join(mnt, "small", fmt.Sprintf("f%03d", i))
		got, err := os.ReadFile(p)
		if want, _ := os.ReadFile(filepath.Join(src, "small", fmt.Sprintf("f%03d", i))); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", p, err)
		}
	}
	read(0)
	if n := srv.settle(); n != 1 {
		t.Fatalf("one file read fetched %d blobs, want 1", n)
	}
	read(1)
	if n := srv.settleAt(2 + min(walkAhead, fetchSlots)); n != 2+min(walkAhead, fetchSlots) {
		t.Fatalf("second file of a walk: %d blobs fetched, want 2 + %d ahead", n, min(walkAhead, fetchSlots))
	}
	for i := 2; i < 200; i++ {
		read(i)
	}
	srv.settle()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.gets) != 200 {
		t.Errorf("walk of 200 files fetched %d distinct blobs", len(srv.gets))
	}
	for h, c := range srv.gets {
		if c != 1 {
			t.Errorf("blob %s fetched %d times", h, c)
		}
	}
}

func TestCorruptChunkIsEIO(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	big := lazyTree(t, src, 3)
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ := buildTo(t, src, srv.client(srv.token))
	fl, _ := OpenFlist(flist)
	defer fl.Close()
	root := fl.Node(0)
	bi, _ := fl.Lookup(&root, "big")
	bn := fl.Node(bi)
	bad := fl.Chunk(bn.A + 1).Hash
	srv.setCorrupt(bad, true)

	env := mountFlist(t, flist, filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 5*time.Second)
	p := filepath.Join(tmp, "mnt", "big")
	if got, err := preadAt(t, p, 4096, 0); err != nil || !bytes.Equal(got, big[:4096]) {
		t.Fatalf("good chunk: %v", err)
	}
	_, err := preadAt(t, p, 4096, DefaultChunkSize+100)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a corrupt chunk: %v, want EIO", err)
	}
	if env.fetch.Cache.Has(bad) {
		t.Error("corrupt chunk was cached")
	}
	if !strings.Contains(env.log.String(), sd.FSChunkCorrupt.ID) || !strings.Contains(env.log.String(), bad.String()) {
		t.Errorf("no fs.chunk-corrupt log naming the chunk:\n%s", env.log.String())
	}
	// Once the store serves the right bytes, the same read works.
	srv.setCorrupt(bad, false)
	if got, err := preadAt(t, p, 4096, DefaultChunkSize+100); err != nil || !bytes.Equal(got, big[DefaultChunkSize+100:DefaultChunkSize+100+4096]) {
		t.Fatalf("read after repair: %v", err)
	}
}

func TestStoreDown(t *testing.T) {
	tmp, src, srv, flist := lazyStore(t, 2)
	mnt, cache := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache")

	env := mountFlist(t, flist, mnt, cache, srv.client(""), 1<<30, 2*time.Second)
	want := map[string][]byte{}
	for _, n := range []string{"big", "small/f000", "small/f001"} {
		want[n], _ = os.ReadFile(filepath.Join(src, n))
		if got, err := os.ReadFile(filepath.Join(mnt, n)); err != nil || !bytes.Equal(got, want[n]) {
			t.Fatalf("%s: %v", n, err)
		}
	}
	env.fetch.Settle() // chunks are written behind their readers
	env.m.Unmount()

	// A fresh mount (empty page cache) over the same disk cache, with the
	// store gone: cached files read, uncached ones fail after a bounded wait.
	srv.stop()
	env = mountFlist(t, flist, mnt, cache, srv.client(""), 1<<30, 2*time.Second)
	for n, w := range want {
		if got, err := os.ReadFile(filepath.Join(mnt, n)); err != nil || !bytes.Equal(got, w) {
			t.Errorf("cached %s with the store down: %v", n, err)
		}
	}
	// (f150: past what reading f000 and f001 in order prefetched.)
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(mnt, "small/f150"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("uncached read with the store down: %v, want EIO", err)
	}
	t.Logf("uncached read failed after %v (fetch timeout 2s)", time.Since(start).Round(time.Millisecond))
	if time.Since(start) > 30*time.Second {
		t.Errorf("uncached read took %v: the wait is not bounded", time.Since(start))
	}
	if !strings.Contains(env.log.String(), sd.FSStoreUnreachable.ID) {
		t.Errorf("no fs.store-unreachable log:\n%s", env.log.String())
	}

	// The store comes back: the same read works again (once the
	// fail-fast window for the kernel's immediate retry has passed).
	srv.start()
	time.Sleep(failFastWindow)
	w, _ := os.ReadFile(filepath.Join(src, "small/f150"))
	if got, err := os.ReadFile(filepath.Join(mnt, "small/f150")); err != nil || !bytes.Equal(got, w) {
		t.Fatalf("after the store came back: %v", err)
	}
	if !strings.Contains(env.log.String(), sd.FSStoreRecovered.ID) {
		t.Errorf("no fs.store-recovered log:\n%s", env.log.String())
	}
}

func TestCacheLimitHonoured(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	big := lazyTree(t, src, 12)
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	flist, _ := buildTo(t, src, store)
	const limit = 4 * DefaultChunkSize
	cacheDir := filepath.Join(tmp, "cache")
	// No readahead: no background fetch may still be writing when the
	// cache is measured.
	env := mountFlistRA(t, flist, filepath.Join(tmp, "mnt"), cacheDir, store, limit, 5*time.Second, 0)
	got, err := os.ReadFile(filepath.Join(tmp, "mnt", "big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read through a small cache: %v", err)
	}
	var onDisk int64
	filepath.WalkDir(filepath.Join(cacheDir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			info, _ := d.Info()
			onDisk += info.Size()
		}
		return nil
	})
	if onDisk > limit || env.fetch.Cache.Used() > limit {
		t.Errorf("cache holds %d bytes on disk (%d accounted), limit %d", onDisk, env.fetch.Cache.Used(), limit)
	}
	if onDisk < limit/2 {
		t.Errorf("cache holds only %d bytes: it should fill up to the limit %d", onDisk, limit)
	}
}

// A container started while a sandbox is mounted holds a copy of the mount
// in its own mount namespace, which keeps the FUSE connection open after
// g8-fs unmounts its own: stopping must not hang on it (the copy is aborted).
func TestUnmountWhileAnotherNamespaceHoldsTheMount(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3", "unshare")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	write(t, filepath.Join(src, "hello"), []byte("hello\n"), 0o644)
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	flist, _ := buildTo(t, src, store)
	mnt := filepath.Join(tmp, "mnt")
	env := mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), store, 1<<30, 5*time.Second)

	// A private copy of the mount table, holding the sandbox, until killed.
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	time.Sleep(200 * time.Millisecond) // let unshare copy the mount table

	done := make(chan error, 1)
	go func() { done <- env.m.Unmount() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("unmount: %v", err)
		}
	case <-time.After(unmountGrace + 10*time.Second):
		t.Fatal("unmount hangs while another mount namespace holds the sandbox")
	}
	waited := make(chan struct{})
	go func() { env.m.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("the FUSE server still runs after unmount")
	}
}

// FuzzMountinfo: g8-fs reads /proc/self/mountinfo to find its mounts (stale
// ones at start, detached ones while running). No table may panic the
// reader, every entry it returns is at the asked path, and a mountpoint
// escaped as the kernel does it (octal \040 for space, \011 tab, \012
// newline, \134 backslash) reads back as itself.
func FuzzMountinfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n", "/mnt2")
	f.Add("1 0 0:52 / /opt/a\\040b rw shared:1 - fuse.g8-fs g8fs:a ro\n", "/opt/a b")
	f.Add("garbage\n\n1 2 3\n", "/")
	f.Fuzz(func(t *testing.T, table, path string) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		ms, err := mountsAt(strings.NewReader(table), path)
		if err == nil {
			for _, m := range ms {
				if m.Mountpoint != path {
					t.Fatalf("entry at %q returned for %q", m.Mountpoint, path)
				}
			}
		}
		if strings.ContainsRune(path, 0) {
			return
		}
		esc := strings.NewReplacer(`\`, `\134`, " ", `\040`, "\t", `\011`, "\n", `\012`).Replace(path)
		line := "36 35 0:77 / " + esc + " rw,relatime shared:5 - fuse.g8-fs g8fs:x rw\n"
		ms, err = mountsAt(strings.NewReader(table+"\n"+line), path)
		if err != nil {
			return // a malformed line before ours fails the whole read
		}
		if len(ms) == 0 || ms[len(ms)-1].FSType != "fuse.g8-fs" || ms[len(ms)-1].Minor != 77 {
			t.Fatalf("escaped mountpoint %q not read back: %+v", path, ms)
		}
	})
}

// A walk goes on across directories in depth-first order (as tar, cp -r
// and rsync read), so directories of a file or two are prefetched too.
func TestTreeWalkPrefetchAcrossDirectories(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	var order []string // depth-first: d00/f0, d00/f1, d00/sub/f0, d01/f0, ...
	for d := 0; d < 20; d++ {
		for f := 0; f < 2; f++ {
			order = append(order, fmt.Sprintf("d%02d/f%d", d, f))
		}
		order = append(order, fmt.Sprintf("d%02d/sub/f0", d))
	}
	for i, p := range order {
		write(t, filepath.Join(src, p), randBytes(t, 1000+i), 0o644)
	}
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ := buildTo(t, src, srv.client(srv.token))
	mnt := filepath.Join(tmp, "mnt")
	mountFlist(t, flist, mnt, filepath.Join(tmp, "cache"), srv.client(""), 1<<30, 10*time.Second)
	srv.resetCounts()
	read := func(i int) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(mnt, order[i]))
		if want, _ := os.ReadFile(filepath.Join(src, order[i])); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", order[i], err)
		}
	}
	read(0)
	if n := srv.settle(); n != 1 {
		t.Fatalf("one file read fetched %d blobs, want 1", n)
	}
	read(1) // the walk goes on: the next files are in other directories
	if n := srv.settleAt(2 + min(walkAhead, fetchSlots)); n != 2+min(walkAhead, fetchSlots) {
		t.Fatalf("second file of a walk: %d blobs fetched, want 2 + %d ahead", n, min(walkAhead, fetchSlots))
	}
	for i := 2; i < len(order); i++ {
		read(i)
	}
	srv.settle()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.gets) != len(order) {
		t.Errorf("walk of %d files fetched %d distinct blobs", len(order), len(srv.gets))
	}
	for h, c := range srv.gets {
		if c != 1 {
			t.Errorf("blob %s fetched %d times", h, c)
		}
	}
}

// A walk of small files whose chunks are cached (after a restart) does not
// make a READ round trip per file: the files it reads next are pushed into
// the kernel's page cache ahead of it, and read right from there.
func TestTreeWalkPushesIntoPageCache(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	const files = 40
	name := func(i int) string { return fmt.Sprintf("d/f%02d", i) }
	for i := 0; i < files; i++ {
		write(t, filepath.Join(src, name(i)), randBytes(t, 500+37*i), 0o644)
	}
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flist, _ := buildTo(t, src, srv.client(srv.token))
	mnt, cacheDir := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache")
	read := func(i int) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(mnt, name(i)))
		if want, _ := os.ReadFile(filepath.Join(src, name(i))); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v, or not its contents", name(i), err)
		}
	}
	env := mountFlist(t, flist, mnt, cacheDir, srv.client(""), 1<<30, 10*time.Second)
	for i := 0; i < files; i++ {
		read(i)
	}
	env.fetch.Settle()
	env.m.Unmount()

	// Restarted: the kernel knows nothing of the tree. The walk lists the
	// directory (the kernel takes pages only for files it holds an inode
	// of), reads two files, and the next walkAhead are pushed.
	env = mountFlist(t, flist, mnt, cacheDir, srv.client(""), 1<<30, 10*time.Second)
	tr := env.m.tree
	if _, err := os.ReadDir(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	read(0)
	read(1)
	pushed := int64(0)
	for from := 2; from+walkAhead < files; from += walkAhead + 1 {
		pushed += walkAhead
		waitFor(t, "the next files pushed", func() bool { return tr.pushes.Load() == pushed })
		reads := tr.reads.Load()
		for i := from; i < from+walkAhead; i++ {
			read(i)
		}
		if n := tr.reads.Load() - reads; n != 0 {
			t.Fatalf("files %d-%d, pushed: %d READs reached g8-fs", from, from+walkAhead-1, n)
		}
		read(from + walkAhead) // the one after them: a READ that goes on with the walk
	}
	if env.fetch.Fetches.Load() != 0 {
		t.Errorf("%d fetches from a full cache", env.fetch.Fetches.Load())
	}
}
