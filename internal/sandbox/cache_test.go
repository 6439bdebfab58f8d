package sandbox

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestOverLimit(t *testing.T) {
	for _, c := range []struct {
		name        string
		used, limit int64
		entries     int
		want        bool
	}{
		{"under limit", 6, 10, 3, false},
		{"at limit", 10, 10, 2, false},
		{"over: the oldest goes", 12, 10, 3, true},
		{"newest stays even above limit", 20, 10, 1, false},
		{"empty", 0, 0, 0, false},
	} {
		if got := overLimit(c.used, c.limit, c.entries); got != c.want {
			t.Errorf("%s: overLimit = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCacheLRU(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 3000)
	c.WaitScan()
	blob := func(b byte) ([]byte, Hash) {
		d := bytes.Repeat([]byte{b}, 1000)
		return d, HashOf(d)
	}
	a, ha := blob('a')
	b, hb := blob('b')
	cc, hc := blob('c')
	d, hd := blob('d')
	for _, x := range []struct {
		d []byte
		h Hash
	}{{a, ha}, {b, hb}, {cc, hc}} {
		if err := c.Insert(x.h, x.d, x.h); err != nil {
			t.Fatal(err)
		}
	}
	c.Touch(ha) // a is now more recent than b
	if err := c.Insert(hd, d, hd); err != nil {
		t.Fatal(err)
	}
	if c.Has(hb) {
		t.Error("b (least recently used) was kept")
	}
	for _, h := range []Hash{ha, hc, hd} {
		if !c.Has(h) {
			t.Errorf("%s evicted", h)
		}
	}
	if _, err := os.Stat(c.Path(hb)); !os.IsNotExist(err) {
		t.Errorf("evicted chunk file still on disk: %v", err)
	}
	if c.Used() != 3000 || c.Len() != 3 {
		t.Errorf("used %d in %d chunks", c.Used(), c.Len())
	}
	// A leftover temporary file and a stray name are removed on open; the
	// index is rebuilt from disk.
	os.WriteFile(filepath.Join(dir, "chunks", ".tmp-123"), []byte("x"), 0o600)
	os.Chtimes(filepath.Join(dir, "chunks", ".tmp-123"), time.Now().Add(-time.Hour), time.Now().Add(-time.Hour))
	os.WriteFile(filepath.Join(dir, "chunks", "zz", "junk"), []byte("x"), 0o600)
	c2 := openCache(t, dir, 3000)
	c2.WaitScan()
	if c2.Used() != 3000 || !c2.Has(ha) || !c2.Has(hd) {
		t.Errorf("reopened cache: used %d", c2.Used())
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks", ".tmp-123")); !os.IsNotExist(err) {
		t.Error("temporary file survived")
	}
	// A smaller limit on reopen evicts down to it.
	c3 := openCache(t, dir, 1500)
	c3.WaitScan()
	if c3.Used() > 1500 {
		t.Errorf("used %d above limit 1500", c3.Used())
	}
}

// Chunks are cached without fsync. After a power cut a file may be short
// or zero-filled at the right size; the next start must notice on first
// use and fetch it again, never serve it (EIO, or zeros, before).
func TestCacheAfterPowerCut(t *testing.T) {
	tmp := t.TempDir()
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	chunks := storeChunks(t, store)
	cacheDir := filepath.Join(tmp, "cache")
	readAll := func(f *Fetcher) { t.Helper(); readChunks(t, f, chunks) }
	cache := openCache(t, cacheDir, 1<<30)
	f := &Fetcher{Store: store, Cache: cache, Timeout: 5 * time.Second}
	readAll(f)
	if f.Fetches.Load() != 4 {
		t.Fatalf("%d fetches to fill the cache", f.Fetches.Load())
	}

	// The power cut: chunk 0 lost its tail, chunk 1 is zeros of the right
	// size (its checksum attribute survived), chunk 2 lost its checksum.
	must(t)(os.Truncate(cache.Path(chunks[0].ref.Hash), 1000))
	must(t)(os.WriteFile(cache.Path(chunks[1].ref.Hash), make([]byte, len(chunks[1].plain)), 0o600))
	must(t)(unix.Removexattr(cache.Path(chunks[2].ref.Hash), sumXattr))

	for _, wait := range []bool{false, true} { // lookups during and after the start-up scan
		cache2 := openCache(t, cacheDir, 1<<30)
		if wait {
			cache2.WaitScan()
		}
		f2 := &Fetcher{Store: store, Cache: cache2, Timeout: 5 * time.Second}
		readAll(f2)
		want := int64(3)
		if wait {
			want = 0 // the first restart repaired them
		}
		if f2.Fetches.Load() != want || cache2.Rejected.Load() != want {
			t.Errorf("restart %d: %d fetches, %d rejected, want %d", map[bool]int{false: 1, true: 2}[wait], f2.Fetches.Load(), cache2.Rejected.Load(), want)
		}
		// Verified once: the next reads need no check and no fetch.
		readAll(f2)
		if f2.Fetches.Load() != want {
			t.Errorf("second pass fetched again")
		}
		cache2.WaitScan()
		if cache2.Len() != 4 || cache2.Used() != int64(70000+len(chunks[1].plain)+5000+9000) {
			t.Errorf("index after restart: %d chunks, %d bytes", cache2.Len(), cache2.Used())
		}
	}
}

type testChunk struct {
	ref   ChunkRef
	plain []byte
}

// storeChunks puts four chunks of different sizes into store, the second
// compressed.
func storeChunks(t *testing.T, store Store) []testChunk {
	t.Helper()
	var chunks []testChunk
	for i, data := range [][]byte{
		randBytes(t, 70000),
		bytes.Repeat([]byte("compressible "), 6000),
		randBytes(t, 5000),
		randBytes(t, 9000),
	} {
		blob, flags := data, uint32(0)
		if i == 1 {
			blob, flags = zstdEncoder.EncodeAll(data, nil), ChunkZstd
		}
		h := HashOf(blob)
		must(t)(store.Put(context.Background(), h, blob))
		chunks = append(chunks, testChunk{ChunkRef{Hash: h, StoredSize: uint32(len(blob)), Flags: flags}, data})
	}
	return chunks
}

// readChunks reads every chunk whole through f, checks its bytes, and
// waits for the chunks to be written into the cache.
func readChunks(t *testing.T, f *Fetcher, chunks []testChunk) {
	t.Helper()
	for i, c := range chunks {
		buf := make([]byte, len(c.plain))
		n, err := f.ReadAt(c.ref, uint32(len(c.plain)), buf, 0)
		if err != nil || n != len(c.plain) || !bytes.Equal(buf, c.plain) {
			t.Fatalf("chunk %d: read %d bytes, %v; contents right: %v", i, n, err, bytes.Equal(buf[:n], c.plain[:n]))
		}
	}
	f.Settle()
}

// Chunks synced to stable storage by a clean stop are not hashed again at
// the next start; chunks written after the last sync are, so one torn by
// a power cut is still caught; without the record of synced epochs every
// chunk is hashed once, and synced again it is trusted after that.
func TestCacheTrustsChunksSyncedAtAStop(t *testing.T) {
	tmp := t.TempDir()
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	chunks := storeChunks(t, store)
	cacheDir := filepath.Join(tmp, "cache")
	run := func(read []testChunk) (*Cache, *Fetcher) {
		t.Helper()
		c := openCache(t, cacheDir, 1<<30)
		c.WaitScan() // the epoch is reserved before the scan
		f := &Fetcher{Store: store, Cache: c, Timeout: 5 * time.Second}
		readChunks(t, f, read)
		return c, f
	}
	c, _ := run(chunks[:3])
	c.Close()

	// Restarted after the clean stop: the three are trusted. The fourth
	// is written now, and the run ends without a sync (a power cut) that
	// leaves it zero-filled, its stamp kept.
	c, f := run(chunks)
	if c.Rehashed.Load() != 0 || c.Rejected.Load() != 0 || f.Fetches.Load() != 1 {
		t.Errorf("after a clean stop: %d chunks hashed, %d rejected, %d fetched; want 0, 0, 1", c.Rehashed.Load(), c.Rejected.Load(), f.Fetches.Load())
	}
	must(t)(os.WriteFile(c.Path(chunks[3].ref.Hash), make([]byte, len(chunks[3].plain)), 0o600))
	c, f = run(chunks)
	if c.Rehashed.Load() != 1 || c.Rejected.Load() != 1 || f.Fetches.Load() != 1 {
		t.Errorf("after a power cut: %d chunks hashed, %d rejected, %d fetched; want 1, 1, 1 (the torn one)", c.Rehashed.Load(), c.Rejected.Load(), f.Fetches.Load())
	}
	c.Close()

	// Without the record nothing is trusted: each chunk is hashed once,
	// and trusted again after the next sync.
	must(t)(os.Remove(filepath.Join(cacheDir, "durable")))
	c, _ = run(chunks)
	if c.Rehashed.Load() != 4 || c.Rejected.Load() != 0 {
		t.Errorf("without the record: %d chunks hashed, %d rejected; want 4, 0", c.Rehashed.Load(), c.Rejected.Load())
	}
	c.Close()
	c, _ = run(chunks)
	if c.Rehashed.Load() != 0 {
		t.Errorf("synced again: %d chunks hashed, want 0", c.Rehashed.Load())
	}
}

// openCache opens a cache for a test, which waits at its end for the
// cache's start-up work (it writes into the directory) to be done before
// the directory is removed.
func openCache(t *testing.T, dir string, limit int64) *Cache {
	t.Helper()
	c, err := OpenCache(dir, limit)
	must(t)(err)
	t.Cleanup(c.WaitScan)
	return c
}
