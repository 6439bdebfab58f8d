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
	cache := openCache(t, dir+"/cache", 1<<30)
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
	f.Settle() // the chunk is written behind the reader's back
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

// Receive buffers are recycled: one must never go back to the pool while a
// reader still copies from it, or a later fetch would hand that reader
// another chunk's bytes. Many readers and prefetches of many chunks, some
// compressed, through a cache too small to keep them, so chunks are
// evicted and fetched again all the time.
func TestFetcherConcurrentReadersGetTheirBytes(t *testing.T) {
	dir := t.TempDir()
	store := &DirStore{Root: dir + "/store"}
	cache := openCache(t, dir+"/cache", 3*DefaultChunkSize)
	f := &Fetcher{Store: store, Cache: cache, Timeout: 10 * time.Second}
	t.Cleanup(f.Settle)
	const chunks = 24
	plains := make([][]byte, chunks)
	refs := make([]ChunkRef, chunks)
	sizes := make([]uint32, chunks)
	for i := range plains {
		p := bytes.Repeat([]byte{byte(i), byte(i * 7), 'x'}, DefaultChunkSize/3-i)
		blob, flags := p, uint32(0)
		if i%2 == 1 {
			blob, flags = zstdEncoder.EncodeAll(p, nil), ChunkZstd
		}
		h := HashOf(blob)
		if err := store.Put(context.Background(), h, blob); err != nil {
			t.Fatal(err)
		}
		plains[i], sizes[i] = p, uint32(len(p))
		refs[i] = ChunkRef{Hash: h, StoredSize: uint32(len(blob)), Flags: flags}
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for n := 0; n < 60; n++ {
				i := (g*13 + n*5) % chunks
				off := int64((n * 40009) % (len(plains[i]) - len(buf)))
				if n%4 == 0 {
					f.Prefetch(refs[(i+1)%chunks:(i+1)%chunks+1], sizes[(i+1)%chunks:(i+1)%chunks+1])
				}
				m, err := f.ReadAt(refs[i], sizes[i], buf, off)
				if err != nil || m != len(buf) || !bytes.Equal(buf, plains[i][off:off+int64(m)]) {
					t.Errorf("chunk %d at %d: %d bytes, %v, or not its bytes", i, off, m, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if f.Fetches.Load() <= chunks {
		t.Errorf("%d fetches of %d chunks: the cache was meant to be too small to keep them", f.Fetches.Load(), chunks)
	}
}

// At most six connections go to an HTTP store at once, however many
// fetches want one: the eight background fetches and four readers of
// their own chunks here. The store answers like python's http.server
// (one answer per connection, then close), so every fetch is a connection
// of its own; it holds each request a while so that they overlap, and
// counts, server-side, the requests in progress at once: each occupies a
// connection from the client's request to its reading of the answer,
// which goes out only after the handler returned (the blobs fit the
// server's write buffer), so the count never runs ahead of the client's.
func TestStoreConnectionsCapped(t *testing.T) {
	dir := t.TempDir()
	backing := &DirStore{Root: dir + "/store"}
	var refs []ChunkRef
	var plains []uint32
	var datas [][]byte
	for i := 0; i < 12; i++ {
		data := randBytes(t, 1000+i)
		h := HashOf(data)
		must(t)(backing.Put(context.Background(), h, data))
		refs, plains = append(refs, ChunkRef{Hash: h, StoredSize: uint32(len(data))}), append(plains, uint32(len(data)))
		datas = append(datas, data)
	}
	var mu sync.Mutex
	busy, most, conns := 0, 0, 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		busy++
		most = max(most, busy)
		mu.Unlock()
		defer func() {
			mu.Lock()
			busy--
			mu.Unlock()
		}()
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
		time.Sleep(500 * time.Millisecond)
		w.Header().Set("Connection", "close")
		w.Write(data)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	store, err := NewHTTPStore(srv.URL, nil)
	must(t)(err)
	cache := openCache(t, dir+"/cache", 1<<30)
	f := &Fetcher{Store: store, Cache: cache, Timeout: 20 * time.Second}
	t.Cleanup(f.Settle)
	f.Prefetch(refs[4:], plains[4:]) // the 8 background slots
	var wg sync.WaitGroup
	for i := range refs[:4] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, plains[i])
			if n, err := f.ReadAt(refs[i], plains[i], buf, 0); err != nil || n != len(buf) || !bytes.Equal(buf, datas[i]) {
				t.Errorf("chunk %d: %d bytes, %v", i, n, err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the background fetches", func() bool { return f.Fetches.Load() == 12 })
	mu.Lock()
	defer mu.Unlock()
	if most != 6 || conns != 12 {
		t.Errorf("%d requests answered at once over %d connections, want 6 at once (the cap, reached) over 12", most, conns)
	}
}
