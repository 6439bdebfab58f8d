package sandbox

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"sync"
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

// Background fetches plus a reader's own never open more than six
// connections to an HTTP store that closes each after one answer (as
// python's http.server does), so they cannot overflow its accept backlog.
func TestStoreConnectionsCapped(t *testing.T) {
	dir := t.TempDir()
	backing := &DirStore{Root: dir + "/store"}
	var refs []ChunkRef
	var plains []uint32
	for i := 0; i < 16; i++ {
		data := randBytes(t, 5000+i)
		h := HashOf(data)
		must(t)(backing.Put(context.Background(), h, data))
		refs, plains = append(refs, ChunkRef{Hash: h, StoredSize: uint32(len(data))}), append(plains, uint32(len(data)))
	}
	var mu sync.Mutex
	open, most := 0, 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, err := ParseHash(path.Base(r.URL.Path))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		data, err := backing.Get(r.Context(), h, 1<<20)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		time.Sleep(50 * time.Millisecond) // a slow store: fetches overlap
		w.Header().Set("Connection", "close")
		w.Write(data)
	}))
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch st {
		case http.StateNew:
			open++
			most = max(most, open)
		case http.StateClosed, http.StateHijacked:
			open--
		}
	}
	srv.Start()
	defer srv.Close()
	store, err := NewHTTPStore(srv.URL, nil)
	must(t)(err)
	cache, err := OpenCache(dir+"/cache", 1<<30)
	must(t)(err)
	f := &Fetcher{Store: store, Cache: cache, Timeout: 10 * time.Second}
	f.Prefetch(refs[4:], plains[4:]) // fills the 8 background slots
	var wg sync.WaitGroup
	for i := range refs[:4] { // readers of their own chunks, 4 at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, plains[i])
			if n, err := f.ReadAt(refs[i], plains[i], buf, 0); err != nil || n != len(buf) {
				t.Errorf("chunk %d: %d bytes, %v", i, n, err)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if most > 6 || most < 2 {
		t.Errorf("%d connections open at once, want 2 to 6", most)
	}
}
