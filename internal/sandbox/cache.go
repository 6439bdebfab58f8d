package sandbox

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/atomicfile"
)

// Cache keeps verified, decompressed chunks on local disk under
// <root>/chunks/<first two hex>/<hex> (named by the stored blob's hash),
// and the whole-file form of files whose chunks were all cached under
// <root>/files/<first two hex>/<hex> (named by FileKey), so that FUSE
// passthrough can hand the kernel one backing file. Both share one byte
// limit with least-recently-used eviction; lookup, touch, insert and
// eviction cost O(1) per entry whatever the cache holds.
//
// A whole file is written durably (synced before it is renamed into
// place), so after a power cut it is either there whole or absent and it
// is never re-hashed: re-hashing a big file on every first open after a
// restart would cost more than the passthrough saves.
//
// Chunks are written without fsync, so after a power cut a file may be
// short, empty or full of zeros. Each file therefore carries the BLAKE3-256
// of its contents in the xattr user.g8fs.b3, and a chunk found on disk at
// start is checked against it (and its size against the flist) the first
// time it is used; a bad one is deleted and fetched again, unless it is of
// an epoch recorded as synced to stable storage (see durability), when its
// size is checked. Chunks written by this run are trusted as written.
//
// Start-up does not wait for the directory scan: it runs in the
// background, a chunk asked for meanwhile is looked up on disk directly,
// and eviction starts once the scan has accounted for everything.
type Cache struct {
	root  string
	limit int64

	mu       sync.Mutex
	lru      list.List // front: most recently used; values *cacheEntry
	idx      map[Hash]*list.Element
	used     int64
	scanning bool
	scanned  chan struct{}

	dur *durability

	// Rejected counts chunks found bad on first use after start, Rehashed
	// those hashed then (not of a synced epoch).
	Rejected, Rehashed atomic.Int64

	// dirs marks the chunks/<xx> directories known to exist, so that an
	// insert does not ask the file system each time.
	dirs [256]atomic.Bool
}

type cacheEntry struct {
	hash     Hash
	size     int64
	verified bool // checked (or written) by this run
	file     bool // a whole file under files/, not a chunk
}

// sumXattr holds the BLAKE3-256 of a cached chunk's plain bytes.
const sumXattr = "user.g8fs.b3"

// OpenCache opens the cache at root (created if missing) and starts the
// scan of what an earlier run left there.
func OpenCache(root string, limit int64) (*Cache, error) {
	c := &Cache{root: root, limit: limit, idx: map[Hash]*list.Element{}, scanning: true, scanned: make(chan struct{})}
	for _, d := range []string{"chunks", "files"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("cache %s: %w", root, err)
		}
	}
	dur, reserved := openDurability(root)
	c.dur = dur
	go func() {
		dur.reserve(reserved)
		c.scan()
	}()
	return c, nil
}

// Close records the chunks written so far as on stable storage once they
// are (a sync cycle), for a clean stop: the next start need not hash them.
func (c *Cache) Close() { c.dur.close() }

// scan indexes the chunks on disk behind everything used by this run,
// newest modification time first (mtime stands in for last use across
// restarts), and removes leftovers of interrupted writes.
func (c *Cache) scan() {
	type found struct {
		h     Hash
		size  int64
		mtime int64
		file  bool
	}
	var all []found
	// Coarse file times lag the clock: leave what may be this run's own.
	cutoff := time.Now().Add(-time.Second)
	for _, kind := range []string{"chunks", "files"} {
		_ = filepath.WalkDir(filepath.Join(c.root, kind), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil // an unreadable part is skipped, not fatal
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			name := d.Name()
			if strings.HasPrefix(name, ".") {
				// A temporary file of an interrupted write (this run's own
				// writes in progress are newer than the scan).
				if info.ModTime().Before(cutoff) {
					os.Remove(p)
				}
				return nil
			}
			h, perr := ParseHash(name)
			if perr != nil || filepath.Base(filepath.Dir(p)) != name[:2] {
				os.Remove(p)
				return nil
			}
			all = append(all, found{h, info.Size(), info.ModTime().UnixNano(), kind == "files"})
			return nil
		})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime > all[j].mtime })
	// In batches, so readers are not held up by one long critical section.
	for len(all) > 0 {
		n := min(len(all), 4096)
		c.mu.Lock()
		for _, f := range all[:n] {
			if _, ok := c.idx[f.h]; !ok {
				c.idx[f.h] = c.lru.PushBack(&cacheEntry{hash: f.h, size: f.size, file: f.file})
				c.used += f.size
			}
		}
		c.mu.Unlock()
		all = all[n:]
	}
	c.mu.Lock()
	c.scanning = false
	c.evictLocked()
	c.mu.Unlock()
	close(c.scanned)
}

// WaitScan blocks until the start-up scan is done.
func (c *Cache) WaitScan() { <-c.scanned }

// Path is where chunk h lives when cached.
func (c *Cache) Path(h Hash) string {
	x := h.String()
	return filepath.Join(c.root, "chunks", x[:2], x)
}

// FilePath is where the whole-file form named k lives when cached.
func (c *Cache) FilePath(k Hash) string {
	x := k.String()
	return filepath.Join(c.root, "files", x[:2], x)
}

func (c *Cache) entryPath(e *cacheEntry) string {
	if e.file {
		return c.FilePath(e.hash)
	}
	return c.Path(e.hash)
}

// FileKey names the whole-file form of regular file nd by its chunk list
// (which fixes its contents), in a domain of its own so that it never
// equals a chunk's hash.
func FileKey(fl *Flist, nd *Node) Hash {
	h := blake3.New()
	h.Write([]byte("g8fs whole file\x00"))
	for k := uint32(0); k < nd.B; k++ {
		ref := fl.Chunk(nd.A + k)
		h.Write(ref.Hash[:])
	}
	var k Hash
	h.Sum(k[:0])
	return k
}

// OpenFile returns a read-only descriptor of the whole-file form k, which
// must be size bytes long, and marks it used; ok is false when it is not
// cached.
func (c *Cache) OpenFile(k Hash, size uint64) (fd int, ok bool) {
	fd, indexed, _ := c.openPath(k, c.FilePath(k))
	if fd < 0 {
		return -1, false
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Size != int64(size) {
		// Not torn (it was synced before its rename) but not what the
		// flist says either: someone wrote into the cache.
		unix.Close(fd)
		c.Rejected.Add(1)
		c.Forget(k)
		os.Remove(c.FilePath(k))
		return -1, false
	}
	if !indexed {
		c.mu.Lock()
		if c.idx[k] == nil {
			c.idx[k] = c.lru.PushFront(&cacheEntry{hash: k, size: int64(size), verified: true, file: true})
			c.used += int64(size)
		}
		c.mu.Unlock()
	}
	return fd, true
}

// InsertFile stores the whole-file form k, size bytes that fill writes,
// durably, and evicts beyond the limit like Insert.
func (c *Cache) InsertFile(k Hash, size int64, fill func(f *os.File) error) error {
	p := c.FilePath(k)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := atomicfile.WriteFunc(p, 0o600, fill); err != nil {
		return fmt.Errorf("cache: file %s: %w", k, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.idx[k]; !ok {
		c.idx[k] = c.lru.PushFront(&cacheEntry{hash: k, size: size, verified: true, file: true})
		c.used += size
		c.evictLocked()
	}
	return nil
}

// Touch marks h used and reports whether it is indexed.
func (c *Cache) Touch(h Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx[h]
	if ok {
		c.lru.MoveToFront(e)
	}
	return ok
}

// Has reports whether h is indexed without marking it used.
func (c *Cache) Has(h Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.idx[h]
	return ok
}

// Open returns a read-only descriptor of cached chunk h, whose plain
// length the flist says is plain, and marks it used; ok is false when it is
// not cached. A chunk first used since start is verified here; a bad one is
// deleted and reported as not cached.
func (c *Cache) Open(h Hash, plain uint32) (fd int, ok bool) {
	fd, _, verified := c.openPath(h, c.Path(h))
	if fd < 0 {
		return -1, false
	}
	if verified {
		return fd, true
	}
	if !c.verifyChunk(fd, plain) {
		unix.Close(fd)
		c.Rejected.Add(1)
		c.mu.Lock()
		c.dropLocked(h)
		c.mu.Unlock()
		os.Remove(c.Path(h))
		return -1, false
	}
	c.mu.Lock()
	if e := c.idx[h]; e != nil {
		e.Value.(*cacheEntry).verified = true
	} else {
		// Found on disk before the scan got to it.
		c.idx[h] = c.lru.PushFront(&cacheEntry{hash: h, size: int64(plain), verified: true})
		c.used += int64(plain)
	}
	c.mu.Unlock()
	return fd, true
}

// openPath marks entry h used and opens its file p: when h is indexed, or
// when it is not yet but the start-up scan may still find it. fd is -1
// when there is none.
func (c *Cache) openPath(h Hash, p string) (fd int, indexed, verified bool) {
	c.mu.Lock()
	e := c.idx[h]
	if e != nil {
		c.lru.MoveToFront(e)
		verified = e.Value.(*cacheEntry).verified
	}
	scanning := c.scanning
	c.mu.Unlock()
	if e == nil && !scanning {
		return -1, false, false
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if e != nil {
			c.Forget(h) // evicted meanwhile, or removed behind our back
		}
		return -1, false, false
	}
	return fd, e != nil, verified
}

// verifyChunk checks that fd holds exactly plain bytes whose BLAKE3-256 is
// the one recorded when the chunk was written; a chunk of a synced epoch
// is on stable storage as it was written and verified, so only its size
// is checked.
func (c *Cache) verifyChunk(fd int, plain uint32) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Size != int64(plain) {
		return false
	}
	var stamp [stampLen]byte
	n, err := unix.Fgetxattr(fd, sumXattr, stamp[:])
	if err != nil || n != sumLen && n != stampLen {
		return false
	}
	if c.dur.trust(stamp[:n]) {
		return true
	}
	c.Rehashed.Add(1)
	want := Hash(stamp[:sumLen])
	buf := verifyBufs.Get().(*[]byte)
	defer verifyBufs.Put(buf)
	hh := blake3.New()
	for off := int64(0); off < st.Size; {
		n, err := unix.Pread(fd, *buf, off)
		if err != nil || n == 0 {
			return false
		}
		hh.Write((*buf)[:n])
		off += int64(n)
	}
	var got Hash
	hh.Sum(got[:0])
	if got != want {
		return false
	}
	c.dur.restamp(fd, got)
	return true
}

var verifyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Forget drops h from the index (its file vanished under us).
func (c *Cache) Forget(h Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(h)
}

func (c *Cache) dropLocked(h Hash) {
	if e, ok := c.idx[h]; ok {
		c.used -= e.Value.(*cacheEntry).size
		c.lru.Remove(e)
		delete(c.idx, h)
	}
}

// Insert stores plain, the verified contents of chunk h, with sum, the
// BLAKE3-256 of plain (h itself for an uncompressed chunk), and evicts the
// least recently used chunks beyond the limit. A reader holding an open
// descriptor of an evicted chunk keeps reading it (unlink semantics).
func (c *Cache) Insert(h Hash, plain []byte, sum Hash) error {
	p := c.Path(h)
	if !c.dirs[h[0]].Load() {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("cache: %w", err)
		}
		c.dirs[h[0]].Store(true)
	}
	stamp, stamped := c.dur.stamp(sum)
	defer stamped()
	err := atomicfile.WriteFuncUnsynced(p, 0o600, func(f *os.File) error {
		if _, err := f.Write(plain); err != nil {
			return err
		}
		// Without the checksum (a file system without user xattrs) the
		// chunk still serves this run; the next start refetches it.
		_ = unix.Fsetxattr(int(f.Fd()), sumXattr, stamp, 0)
		return nil
	})
	if err != nil {
		c.dirs[h[0]].Store(false) // removed behind our back? Made again next time.
		return fmt.Errorf("cache: %s: %w", h, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx[h]; ok {
		ce := e.Value.(*cacheEntry)
		c.used += int64(len(plain)) - ce.size
		ce.size, ce.verified = int64(len(plain)), true
		c.lru.MoveToFront(e)
		return nil
	}
	c.idx[h] = c.lru.PushFront(&cacheEntry{hash: h, size: int64(len(plain)), verified: true})
	c.used += int64(len(plain))
	c.evictLocked()
	return nil
}

// evictLocked deletes least recently used chunks while overLimit says so:
// each step is one list removal and one unlink.
func (c *Cache) evictLocked() {
	for !c.scanning && overLimit(c.used, c.limit, c.lru.Len()) {
		e := c.lru.Back()
		ce := e.Value.(*cacheEntry)
		if err := os.Remove(c.entryPath(ce)); err != nil && !errors.Is(err, os.ErrNotExist) {
			// Keep accounting honest: a chunk we could not delete still
			// takes space, so stop rather than pretend it is gone.
			return
		}
		c.lru.Remove(e)
		delete(c.idx, ce.hash)
		c.used -= ce.size
	}
}

// overLimit is the eviction decision: the oldest of entries chunks goes
// while used exceeds limit, but the most recent always stays, even alone
// above the limit, because a reader is about to use it.
func overLimit(used, limit int64, entries int) bool {
	return used > limit && entries > 1
}

// Used is the bytes of chunks cached (of those indexed so far while the
// start-up scan runs).
func (c *Cache) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// Len is the number of chunks cached (indexed so far, as Used).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// FlistPath is where a flist fetched by hash is kept, so a sandbox can be
// mounted again while the store is unreachable.
func (c *Cache) FlistPath(h Hash) string {
	return filepath.Join(c.root, "flists", h.String()+".flist")
}
