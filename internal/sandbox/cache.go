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
// bounded by a byte limit with least-recently-used eviction; lookup, touch,
// insert and eviction cost O(1) per chunk whatever the cache holds.
//
// Chunks are written without fsync, so after a power cut a file may be
// short, empty or full of zeros. Each file therefore carries the BLAKE3-256
// of its contents in the xattr user.g8fs.b3, and a chunk found on disk at
// start is checked against it (and its size against the flist) the first
// time it is used; a bad one is deleted and fetched again. Chunks written
// by this run are trusted as written.
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

	// Rejected counts chunks found bad on first use after start.
	Rejected atomic.Int64
}

type cacheEntry struct {
	hash     Hash
	size     int64
	verified bool // checked (or written) by this run
}

// sumXattr holds the BLAKE3-256 of a cached chunk's plain bytes.
const sumXattr = "user.g8fs.b3"

// OpenCache opens the cache at root (created if missing) and starts the
// scan of what an earlier run left there.
func OpenCache(root string, limit int64) (*Cache, error) {
	c := &Cache{root: root, limit: limit, idx: map[Hash]*list.Element{}, scanning: true, scanned: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(root, "chunks"), 0o700); err != nil {
		return nil, fmt.Errorf("cache %s: %w", root, err)
	}
	go c.scan()
	return c, nil
}

// scan indexes the chunks on disk behind everything used by this run,
// newest modification time first (mtime stands in for last use across
// restarts), and removes leftovers of interrupted writes.
func (c *Cache) scan() {
	type found struct {
		h     Hash
		size  int64
		mtime int64
	}
	var all []found
	dir := filepath.Join(c.root, "chunks")
	// Coarse file times lag the clock: leave what may be this run's own.
	cutoff := time.Now().Add(-time.Second)
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
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
		all = append(all, found{h, info.Size(), info.ModTime().UnixNano()})
		return nil
	})
	sort.Slice(all, func(i, j int) bool { return all[i].mtime > all[j].mtime })
	// In batches, so readers are not held up by one long critical section.
	for len(all) > 0 {
		n := min(len(all), 4096)
		c.mu.Lock()
		for _, f := range all[:n] {
			if _, ok := c.idx[f.h]; !ok {
				c.idx[f.h] = c.lru.PushBack(&cacheEntry{hash: f.h, size: f.size})
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
	c.mu.Lock()
	e := c.idx[h]
	verified := false
	if e != nil {
		c.lru.MoveToFront(e)
		verified = e.Value.(*cacheEntry).verified
	}
	scanning := c.scanning
	c.mu.Unlock()
	if e == nil && !scanning {
		return -1, false
	}
	fd, err := unix.Open(c.Path(h), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if e != nil {
			c.Forget(h) // evicted meanwhile, or removed behind our back
		}
		return -1, false
	}
	if verified {
		return fd, true
	}
	if !verifyChunk(fd, plain) {
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

// verifyChunk checks that fd holds exactly plain bytes whose BLAKE3-256 is
// the one recorded when the chunk was written.
func verifyChunk(fd int, plain uint32) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Size != int64(plain) {
		return false
	}
	var want Hash
	if n, err := unix.Fgetxattr(fd, sumXattr, want[:]); err != nil || n != len(want) {
		return false
	}
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
	return got == want
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
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	err := atomicfile.WriteFuncUnsynced(p, 0o600, func(f *os.File) error {
		if _, err := f.Write(plain); err != nil {
			return err
		}
		// Without the checksum (a file system without user xattrs) the
		// chunk still serves this run; the next start refetches it.
		_ = unix.Fsetxattr(int(f.Fd()), sumXattr, sum[:], 0)
		return nil
	})
	if err != nil {
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
		if err := os.Remove(c.Path(ce.hash)); err != nil && !errors.Is(err, os.ErrNotExist) {
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
