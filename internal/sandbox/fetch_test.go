package sandbox

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestFetcherVerifiesAndCaches(t *testing.T) {
	dir := t.TempDir()
	store := &DirStore{Root: dir + "/store"}
	cache, err := OpenCache(dir+"/cache", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Store: store, Cache: cache, Timeout: time.Second}
	plain := bytes.Repeat([]byte("chunk "), 1000)
	comp := zstdEncoder.EncodeAll(plain, nil)
	h := HashOf(comp)
	if err := store.Put(context.Background(), h, comp); err != nil {
		t.Fatal(err)
	}
	ref := ChunkRef{Hash: h, StoredSize: uint32(len(comp)), Flags: ChunkZstd}
	buf := make([]byte, 100)
	if n, err := f.ReadAt(ref, uint32(len(plain)), buf, 6); err != nil || n != 100 || !bytes.Equal(buf, plain[6:106]) {
		t.Fatalf("first read: %d %v", n, err)
	}
	if !cache.Has(h) || f.Fetches.Load() != 1 {
		t.Fatalf("not cached after a fetch (fetches %d)", f.Fetches.Load())
	}
	// Warm reads come from the cache without allocating.
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := f.ReadAt(ref, uint32(len(plain)), buf, 12); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 || f.Fetches.Load() != 1 {
		t.Errorf("warm read: %.1f allocations, %d fetches", allocs, f.Fetches.Load())
	}

	// A blob whose size the flist misstates is corrupt, not served.
	bad := ChunkRef{Hash: h, StoredSize: uint32(len(comp)), Flags: ChunkZstd}
	cache.Forget(h)
	// An hour: retrying a permanent error would hang the test.
	f2 := &Fetcher{Store: store, Cache: cache, Timeout: time.Hour}
	if _, err := f2.ReadAt(bad, uint32(len(plain))+1, buf, 0); !errors.Is(err, ErrCorrupt) {
		t.Errorf("wrong plain size: %v, want ErrCorrupt", err)
	}
	// A missing blob fails at once (not retried until the timeout).
	var missing Hash
	missing[0] = 1
	if _, err := f2.ReadAt(ChunkRef{Hash: missing, StoredSize: 10}, 10, buf, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
}
