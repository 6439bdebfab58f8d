package sandbox

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
)

// ErrCorrupt is a blob whose bytes do not match its name or its flist.
var ErrCorrupt = errors.New("corrupt chunk")

var zstdDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxChunkSize))

// Fetcher reads chunks through the cache, fetching misses from the store:
// one fetch per chunk however many readers want it (a flight), each
// bounded by Timeout; background readahead uses at most 8 fetches at once.
type Fetcher struct {
	Store   Store
	Cache   *Cache
	Log     *slog.Logger
	Timeout time.Duration // longest wait for an uncached chunk before EIO
	// Readahead is how many chunks past a sequential read are fetched in
	// the background at first; the window doubles while the reader stays
	// sequential, up to fetchSlots.
	Readahead int
	// Passthrough says which mounts answer OPEN and hand the kernel the
	// cached whole file as a FUSE passthrough backing file where the
	// kernel allows it; the others keep the no-open mode.
	Passthrough PassthroughMode
	// noPassthroughCap masks the kernel's passthrough capability at mount,
	// as on a kernel without it (tests of the fallback).
	noPassthroughCap bool

	fds        fdCache
	assembling sync.Map      // FileKey -> struct{}: an assembly is queued or running
	asmSem     chan struct{} // one assembly at a time: it is disk-bound
	sem        chan struct{} // background fetch slots
	initOnce   sync.Once
	down       atomic.Bool

	flMu    sync.Mutex
	flights map[Hash]*flight // chunks being fetched, or fetched and not yet cached
	writing int              // flights writing their chunk into the cache
	written sync.Cond        // signalled when writing drops to 0 (on flMu)

	// failed remembers chunks whose fetch just timed out, so that the
	// kernel's retry of a failed read (and other readers) fail at once
	// instead of waiting Timeout again while the store is down.
	failMu sync.Mutex
	failed map[Hash]time.Time

	Fetches    atomic.Int64 // blobs fetched from the store
	FetchBytes atomic.Int64
	Failures   atomic.Int64
	Assembled  atomic.Int64 // whole files written to the cache
}

// fetchSlots bounds the background fetches (readahead and tree-walk
// prefetch) running at once: enough to keep a store's pipe full, few enough
// not to swamp a small one (python's http.server listens with a backlog of
// five).
const fetchSlots = 8

func (f *Fetcher) init() {
	f.initOnce.Do(func() {
		f.sem = make(chan struct{}, fetchSlots)
		f.flights = map[Hash]*flight{}
		f.written.L = &f.flMu
		f.asmSem = make(chan struct{}, 1)
		if f.Timeout <= 0 {
			f.Timeout = 30 * time.Second
		}
		if f.Log == nil {
			f.Log = slog.New(slog.DiscardHandler)
		}
	})
}

// ReadAt fills dst from chunk ref (plain bytes long) at offset off,
// fetching the chunk first if needed.
func (f *Fetcher) ReadAt(ref ChunkRef, plain uint32, dst []byte, off int64) (int, error) {
	f.init()
	if n, ok := f.readCache(ref, plain, dst, off); ok {
		return n, nil
	}
	if err := f.recentFailure(ref.Hash); err != nil {
		return 0, err
	}
	fl, _ := f.join(ref, plain, false)
	defer f.release(fl)
	<-fl.done
	if fl.err != nil {
		return 0, fl.err
	}
	// Read from the fetched bytes rather than the cache file: they may not
	// be written yet, and with a cache smaller than the working set the
	// file may already be gone.
	data := *fl.buf
	if off >= int64(len(data)) {
		return 0, nil
	}
	return copy(dst, data[off:]), nil
}

// A flight is one chunk's fetch, shared by every reader that wants the
// chunk meanwhile. Readers get the verified bytes as soon as they are
// verified; writing them into the cache follows off their path
// (write-behind), and the flight stays findable until the chunk is
// cached, so a reader arriving meanwhile copies the bytes from memory
// rather than fetching them again.
type flight struct {
	done   chan struct{} // closed once buf or err is set
	landed chan struct{} // closed once the flight is over: the chunk cached, or not
	buf    *[]byte       // the verified plain bytes, from chunkBufs
	err    error
	refs   int // holders of buf: readers, and the flight until the chunk is cached (under Fetcher.flMu)
}

// join returns chunk ref's flight, with a reference the caller releases,
// and starts it when there is none (started). A background flight
// (slot) frees a fetch slot, taken by the caller, when it ends.
func (f *Fetcher) join(ref ChunkRef, plain uint32, slot bool) (fl *flight, started bool) {
	f.flMu.Lock()
	if fl = f.flights[ref.Hash]; fl != nil {
		fl.refs++
		f.flMu.Unlock()
		return fl, false
	}
	fl = &flight{done: make(chan struct{}), landed: make(chan struct{}), refs: 2}
	f.flights[ref.Hash] = fl
	f.flMu.Unlock()
	go f.fly(fl, ref, plain, slot)
	return fl, true
}

// readCache is ReadAt from the cache only.
func (f *Fetcher) readCache(ref ChunkRef, plain uint32, dst []byte, off int64) (int, bool) {
	if oc := f.fds.get(ref.Hash); oc != nil {
		f.Cache.Touch(ref.Hash)
		n, err := preadFull(oc.fd, dst, off)
		f.fds.put(oc)
		if err == nil {
			return n, true
		}
	}
	if fd, ok := f.Cache.Open(ref.Hash, plain); ok {
		oc := f.fds.add(ref.Hash, fd)
		n, err := preadFull(oc.fd, dst, off)
		f.fds.put(oc)
		if err == nil {
			return n, true
		}
	}
	return 0, false
}

// ReadCached is ReadAt for a chunk that is in the cache or on its way
// there (it waits for the flight), and ok false for any other: it never
// fetches.
func (f *Fetcher) ReadCached(ref ChunkRef, plain uint32, dst []byte, off int64) (n int, ok bool) {
	f.init()
	if n, ok := f.readCache(ref, plain, dst, off); ok {
		return n, true
	}
	f.flMu.Lock()
	fl := f.flights[ref.Hash]
	if fl != nil {
		fl.refs++
	}
	f.flMu.Unlock()
	if fl == nil {
		return 0, false
	}
	defer f.release(fl)
	<-fl.done
	if fl.err != nil || off >= int64(len(*fl.buf)) {
		return 0, false
	}
	return copy(dst, (*fl.buf)[off:]), true
}

// flight returns chunk h's flight, nil when there is none.
func (f *Fetcher) flight(h Hash) *flight {
	f.flMu.Lock()
	defer f.flMu.Unlock()
	return f.flights[h]
}

func (f *Fetcher) release(fl *flight) {
	f.flMu.Lock()
	fl.refs--
	last := fl.refs == 0
	f.flMu.Unlock()
	if last && fl.buf != nil {
		putChunkBuf(fl.buf)
	}
}

// fly runs flight fl: the fetch, then, with the readers already served,
// the write into the cache.
func (f *Fetcher) fly(fl *flight, ref ChunkRef, plain uint32, slot bool) {
	if slot {
		defer func() { <-f.sem }()
	}
	defer f.release(fl)
	var sum Hash
	var cached bool
	fl.buf, sum, cached, fl.err = f.fetch(ref, plain)
	if fl.err != nil {
		f.land(fl, ref.Hash, false) // first: a reader coming after the error must try again
		close(fl.done)
		return
	}
	if !cached {
		f.flMu.Lock()
		f.writing++
		f.flMu.Unlock()
	}
	close(fl.done)
	if !cached {
		if err := f.Cache.Insert(ref.Hash, *fl.buf, sum); err != nil {
			// Serving verified bytes matters more than caching them.
			f.Log.Warn("chunk not cached", "hash", ref.Hash.String(), "error", err.Error())
		}
	}
	f.land(fl, ref.Hash, !cached)
}

// land ends flight fl of chunk h; wrote says it counted in writing.
func (f *Fetcher) land(fl *flight, h Hash, wrote bool) {
	f.flMu.Lock()
	delete(f.flights, h)
	if wrote {
		f.writing--
		if f.writing == 0 {
			f.written.Broadcast()
		}
	}
	f.flMu.Unlock()
	close(fl.landed)
}

// Settle waits until the chunks fetched so far are written into the cache
// (or failed to be): before a clean exit, so that they are there next
// time. Fetches still under way are not waited for.
func (f *Fetcher) Settle() {
	f.init()
	f.flMu.Lock()
	for f.writing > 0 {
		f.written.Wait()
	}
	f.flMu.Unlock()
}

// failFastWindow is how long a timed-out chunk fails without a new wait.
const failFastWindow = time.Second

func (f *Fetcher) recentFailure(h Hash) error {
	f.failMu.Lock()
	defer f.failMu.Unlock()
	if at, ok := f.failed[h]; ok {
		if time.Since(at) < failFastWindow {
			return fmt.Errorf("chunk %s: store unreachable (failed %s ago)", h, time.Since(at).Round(time.Millisecond))
		}
		delete(f.failed, h)
	}
	return nil
}

func (f *Fetcher) noteTimeout(h Hash) {
	f.failMu.Lock()
	defer f.failMu.Unlock()
	if f.failed == nil {
		f.failed = map[Hash]time.Time{}
	}
	if len(f.failed) > 10000 { // bounded: forget everything rather than grow
		clear(f.failed)
	}
	f.failed[h] = time.Now()
}

func preadFull(fd int, dst []byte, off int64) (int, error) {
	n := 0
	for n < len(dst) {
		m, err := unix.Pread(fd, dst[n:], off+int64(n))
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// Prefetch starts background fetches of refs that are not cached, as long
// as fetch slots are free; it never waits.
func (f *Fetcher) Prefetch(refs []ChunkRef, plains []uint32) {
	f.init()
	for i, ref := range refs {
		if f.Cache.Has(ref.Hash) || f.flight(ref.Hash) != nil {
			continue // a slot waiting on a fetch already running would be wasted
		}
		select {
		case f.sem <- struct{}{}:
		default:
			return
		}
		fl, started := f.join(ref, plains[i], true)
		f.release(fl)
		if !started {
			<-f.sem
		}
	}
}

// fetch gets, verifies and decompresses one chunk, retrying transient store
// errors until Timeout, and returns its plain bytes, the BLAKE3-256 of
// them, and whether they came from the cache (another flight cached the
// chunk since the reader looked). It is not bound to a reader's context:
// other readers may be waiting on the same fetch. A reader's own fetch
// never waits for a slot: it must not queue behind prefetches of chunks it
// does not need yet (the kernel already bounds concurrent reads).
func (f *Fetcher) fetch(ref ChunkRef, plain uint32) (buf *[]byte, sum Hash, cached bool, err error) {
	if fd, ok := f.Cache.Open(ref.Hash, plain); ok {
		buf := getChunkBuf(int(plain))
		n, err := preadFull(fd, (*buf)[:plain], 0)
		unix.Close(fd)
		if err == nil && n == int(plain) {
			*buf = (*buf)[:plain]
			return buf, Hash{}, true, nil
		}
		putChunkBuf(buf)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.Timeout)
	defer cancel()
	b := backoff.New(backoff.Policy{Initial: 200 * time.Millisecond, Max: 2 * time.Second, Factor: 2, Jitter: 0.2})
	for {
		buf, sum, err := f.fetchOnce(ctx, ref, plain)
		if err == nil {
			if f.down.Swap(false) {
				f.Log.Info("store answers again", sd.FSStoreRecovered.Attr(), "store", f.Store.String())
			}
			return buf, sum, false, nil
		}
		if errors.Is(err, ErrCorrupt) {
			f.Failures.Add(1)
			f.Log.Error("chunk failed verification", sd.FSChunkCorrupt.Attr(), "hash", ref.Hash.String(),
				"store", f.Store.String(), "error", err.Error())
			return nil, Hash{}, false, err
		}
		if permanent(err) {
			f.Failures.Add(1)
			f.Log.Error("chunk not available", sd.FSStoreUnreachable.Attr(), "hash", ref.Hash.String(),
				"store", f.Store.String(), "error", err.Error())
			return nil, Hash{}, false, err
		}
		if !f.down.Swap(true) {
			f.Log.Warn("store unreachable", sd.FSStoreUnreachable.Attr(), "store", f.Store.String(), "error", err.Error())
		}
		if serr := backoff.Sleep(ctx, b.Next()); serr != nil {
			f.Failures.Add(1)
			f.noteTimeout(ref.Hash)
			return nil, Hash{}, false, fmt.Errorf("chunk %s: gave up after %s: %w", ref.Hash, f.Timeout, err)
		}
	}
}

// fetchOnce gets chunk ref into a buffer of chunkBufs and verifies it: the
// blob against its name, its plain bytes against the flist's size. sum is
// the BLAKE3-256 of the plain bytes.
func (f *Fetcher) fetchOnce(ctx context.Context, ref ChunkRef, plain uint32) (*[]byte, Hash, error) {
	blob := getChunkBuf(int(ref.StoredSize) + 1) // + 1: room to see a blob too long
	w := bufWriter{b: *blob}
	_, err := f.Store.GetTo(ctx, ref.Hash, int64(ref.StoredSize), &w)
	*blob = w.b
	if err != nil {
		putChunkBuf(blob)
		return nil, Hash{}, err
	}
	f.Fetches.Add(1)
	f.FetchBytes.Add(int64(len(*blob)))
	if got := HashOf(*blob); got != ref.Hash {
		putChunkBuf(blob)
		return nil, Hash{}, fmt.Errorf("chunk %s from %s: content hashes to %s: %w", ref.Hash, f.Store, got, ErrCorrupt)
	}
	data, sum := blob, ref.Hash
	if ref.Flags&ChunkZstd != 0 {
		data = getChunkBuf(int(plain))
		out, err := zstdDecoder.DecodeAll(*blob, (*data)[:0])
		putChunkBuf(blob)
		if err != nil {
			putChunkBuf(data)
			return nil, Hash{}, fmt.Errorf("chunk %s: zstd: %v: %w", ref.Hash, err, ErrCorrupt)
		}
		*data = out // the same array unless longer than plain (corrupt below)
		sum = HashOf(out)
	}
	if n := len(*data); n != int(plain) {
		putChunkBuf(data)
		return nil, Hash{}, fmt.Errorf("chunk %s: %d bytes, the flist says %d: %w", ref.Hash, n, plain, ErrCorrupt)
	}
	return data, sum, nil
}

// chunkBufs recycles the buffers that chunks of the default size are
// received, verified and decompressed in. A fresh 1 MiB buffer per fetch
// cost more than receiving into it: the runtime zeroes it, the kernel
// faults its pages in, and the collector and scavenger churn through the
// garbage (a fifth of g8-fs's CPU time in a cold sequential read).
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, 0, chunkBufSize); return &b }}

// chunkBufSize holds a default-size chunk plus the byte that shows a
// blob longer than the flist says.
const chunkBufSize = DefaultChunkSize + 1

// getChunkBuf returns an empty buffer of capacity at least n.
func getChunkBuf(n int) *[]byte {
	if n > chunkBufSize {
		b := make([]byte, 0, n)
		return &b
	}
	b := chunkBufs.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

func putChunkBuf(b *[]byte) {
	if cap(*b) == chunkBufSize {
		chunkBufs.Put(b)
	}
}

// bufWriter receives a blob into b, reading straight into its free
// capacity (io.Copy through a 32 KiB buffer would add a copy and many
// small reads). The caller gives it room for the longest blob it accepts
// plus one byte; a longer one makes it grow, out of chunkBufs.
type bufWriter struct{ b []byte }

func (w *bufWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *bufWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if len(w.b) == cap(w.b) {
			w.b = append(w.b, 0)[:len(w.b)]
		}
		n, err := r.Read(w.b[len(w.b):cap(w.b)])
		w.b = w.b[:len(w.b)+n]
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// WholeFile returns a descriptor of regular file nd's whole contents in
// the cache, for a passthrough backing file: its chunk itself for a file
// of one chunk, else its whole-file form. ok is false when there is none
// (yet); the caller closes fd.
func (f *Fetcher) WholeFile(fl *Flist, nd *Node) (fd int, ok bool) {
	switch nd.B {
	case 0:
		return -1, false
	case 1:
		h := fl.Chunk(nd.A).Hash
		if fd, ok := f.Cache.Open(h, uint32(nd.Size)); ok {
			return fd, true
		}
		// Read already, and being written into the cache behind its
		// readers: worth the wait for a write, not for a fetch.
		if cf := f.flight(h); cf != nil {
			select {
			case <-cf.done:
				<-cf.landed
				return f.Cache.Open(h, uint32(nd.Size))
			default:
			}
		}
		return -1, false
	}
	return f.Cache.OpenFile(FileKey(fl, nd), nd.Size)
}

// AssembleLater writes the whole-file form of regular file nd in the
// background once all its chunks are cached; it does nothing for a file of
// one chunk (the chunk is its whole form), a file already assembled or
// being assembled, or one with a chunk missing.
func (f *Fetcher) AssembleLater(fl *Flist, nd *Node) {
	f.init()
	if nd.B < 2 {
		return
	}
	key := FileKey(fl, nd)
	if f.Cache.Has(key) {
		return
	}
	refs := make([]ChunkRef, nd.B)
	plains := make([]uint32, nd.B)
	var landing []*flight // chunks read, their write into the cache pending
	for k := range refs {
		refs[k], plains[k] = fl.Chunk(nd.A+uint32(k)), fl.plainSize(nd, uint32(k))
		if !f.Cache.Has(refs[k].Hash) {
			cf := f.flight(refs[k].Hash)
			if cf == nil {
				return
			}
			landing = append(landing, cf)
		}
	}
	if _, busy := f.assembling.LoadOrStore(key, struct{}{}); busy {
		return
	}
	// The copy of the chunk list lets the flist be unmapped meanwhile.
	go func() {
		defer f.assembling.Delete(key)
		for _, cf := range landing {
			<-cf.landed
		}
		f.asmSem <- struct{}{}
		defer func() { <-f.asmSem }()
		if err := f.assemble(key, int64(nd.Size), refs, plains); err != nil {
			f.Log.Debug("whole file not assembled", "hash", key.String(), "error", err.Error())
			return
		}
		f.Assembled.Add(1)
	}()
}

// errChunkGone stops an assembly whose chunk was evicted meanwhile.
var errChunkGone = errors.New("chunk no longer cached")

// assemble copies a file's verified chunks into its whole-file form in the
// kernel (copy_file_range: no user-space copy, shared extents where the
// file system can).
func (f *Fetcher) assemble(key Hash, size int64, refs []ChunkRef, plains []uint32) error {
	return f.Cache.InsertFile(key, size, func(dst *os.File) error {
		out := int(dst.Fd())
		for k, ref := range refs {
			fd, ok := f.Cache.Open(ref.Hash, plains[k])
			if !ok {
				return errChunkGone
			}
			err := copyAll(fd, out, int(plains[k]))
			unix.Close(fd)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// copyAll copies n bytes from the start of in to out's offset.
func copyAll(in, out, n int) error {
	var off int64
	for n > 0 {
		m, err := unix.CopyFileRange(in, &off, out, nil, n, 0)
		if err != nil {
			return err
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= m
	}
	return nil
}

// PassthroughMode is when a mount uses FUSE passthrough (--passthrough).
type PassthroughMode string

// The --passthrough values.
const (
	PassthroughAuto PassthroughMode = "auto" // where the flist's files average a chunk or more
	PassthroughOn   PassthroughMode = "on"
	PassthroughOff  PassthroughMode = "off"
)

// Set parses a --passthrough value.
func (m *PassthroughMode) Set(s string) error {
	switch PassthroughMode(s) {
	case PassthroughAuto, PassthroughOn, PassthroughOff:
		*m = PassthroughMode(s)
		return nil
	}
	return fmt.Errorf("want auto, on or off, not %q", s)
}

func (m *PassthroughMode) String() string { return string(*m) }

// Type names the value in --help.
func (m *PassthroughMode) Type() string { return "auto|on|off" }

// passthroughPays decides auto mode for a flist. The kernel's no-open mode
// is per connection, so a mount either answers OPEN for every file or for
// none. An answered OPEN costs a round trip on every open, page cache warm
// or not; a backing file saves the READ round trips and the copy through
// g8-fs of a file's pages read cold, about one per 1 MiB read. Measured on
// the bench tree (10,000 files of 0.5-32 KiB), answering OPEN made a warm
// `tar c` 1.5-2.2x slower, while it made a remounted read of a big file
// 3x faster: it pays where the files average at least a chunk.
func passthroughPays(fl *Flist) bool {
	var files, bytes uint64
	for i := uint32(0); i < fl.Len(); i++ {
		if nd := fl.Node(i); nd.IsRegular() {
			files++
			bytes += nd.Size
		}
	}
	return files > 0 && bytes/files >= uint64(fl.ChunkSize())
}

// fdCache keeps recently read cached chunks open, so a warm read is one
// pread with no open/close and no allocation. An open chunk evicted from
// the disk cache stays readable (and correct: it is named by its content)
// until its descriptor leaves this cache.
type fdCache struct {
	mu  sync.Mutex
	m   map[Hash]*openChunk
	lru list.List // front: most recent; values *openChunk
}

type openChunk struct {
	hash   Hash
	fd     int
	refs   int
	closed bool // dropped from the cache; close when refs reaches 0
	elem   *list.Element
}

const maxOpenChunks = 64

func (c *fdCache) get(h Hash) *openChunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	oc := c.m[h]
	if oc != nil {
		oc.refs++
		c.lru.MoveToFront(oc.elem)
	}
	return oc
}

// add caches fd for h (or closes it when another reader won the race) and
// returns the entry with a reference held.
func (c *fdCache) add(h Hash, fd int) *openChunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[Hash]*openChunk{}
	}
	if oc := c.m[h]; oc != nil {
		unix.Close(fd)
		oc.refs++
		c.lru.MoveToFront(oc.elem)
		return oc
	}
	oc := &openChunk{hash: h, fd: fd, refs: 1}
	oc.elem = c.lru.PushFront(oc)
	c.m[h] = oc
	for c.lru.Len() > maxOpenChunks {
		old := c.lru.Back().Value.(*openChunk)
		c.lru.Remove(old.elem)
		delete(c.m, old.hash)
		old.closed = true
		if old.refs == 0 {
			unix.Close(old.fd)
		}
	}
	return oc
}

func (c *fdCache) put(oc *openChunk) {
	c.mu.Lock()
	defer c.mu.Unlock()
	oc.refs--
	if oc.closed && oc.refs == 0 {
		unix.Close(oc.fd)
	}
}

// errUnpackDone ends a flist download the unpacker no longer reads.
var errUnpackDone = errors.New("flist unpacking stopped")

// FetchFlist gets the packed flist named h from store into path in one
// pass, never holding it in memory: the blob is hashed as it streams
// through the unpacker into a temporary file, both capped at MaxFlistSize,
// and the file is renamed into place only if the blob hashed to h and the
// flist it unpacked to is valid.
func FetchFlist(ctx context.Context, store Store, h Hash, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// No fsync: OpenFlist verifies the checksum, so a torn copy is refetched.
	return atomicfile.WriteFuncUnsynced(path, 0o600, func(f *os.File) error {
		pr, pw := io.Pipe()
		hasher := blake3.New()
		got := make(chan error, 1)
		go func() {
			_, err := store.GetTo(ctx, h, MaxFlistSize, io.MultiWriter(hasher, pw))
			pw.CloseWithError(err)
			got <- err
		}()
		_, uerr := UnpackFlistTo(f, pr, MaxFlistSize)
		if uerr == nil {
			// Trailing bytes count for the hash as well.
			_, _ = io.Copy(io.Discard, pr)
		}
		pr.CloseWithError(errUnpackDone)
		gerr := <-got
		switch {
		case gerr != nil && !errors.Is(gerr, errUnpackDone):
			return gerr // the store's own error: an outage is retried
		case Hash(hasher.Sum(nil)) != h:
			return fmt.Errorf("store returned a blob hashing to %x: %w", hasher.Sum(nil), ErrCorrupt)
		case uerr != nil:
			return uerr
		}
		fl, err := OpenFlist(f.Name())
		if err != nil {
			return err
		}
		return fl.Close()
	})
}

// FetchFlistURL gets the flist at url (plain or zstd-packed) into path,
// streamed and capped like FetchFlist; path is replaced only by a valid
// flist.
func FetchFlistURL(ctx context.Context, client *http.Client, url, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("GET %s: %w", url, ErrNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return atomicfile.WriteFuncUnsynced(path, 0o600, func(f *os.File) error {
		if _, err := UnpackFlistTo(f, resp.Body, MaxFlistSize); err != nil {
			return fmt.Errorf("GET %s: %w", url, err)
		}
		fl, err := OpenFlist(f.Name())
		if err != nil {
			return err
		}
		return fl.Close()
	})
}
