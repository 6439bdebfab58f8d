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

	"github.com/g8os/boot/internal/atomicfile"
)

// Cache keeps verified, decompressed chunks on local disk under
// <root>/chunks/<first two hex>/<hex> (named by the stored blob's hash),
// bounded by a byte limit with least-recently-used eviction. Only verified
// data is ever renamed into place, so what the cache holds is trusted.
type Cache struct {
	root  string
	limit int64

	mu   sync.Mutex
	lru  *list.List // front: most recently used; values *cacheEntry
	idx  map[Hash]*list.Element
	used int64
}

type cacheEntry struct {
	hash Hash
	size int64
}

// OpenCache scans root (created if missing): leftovers of interrupted
// writes are removed and the rest is ordered by modification time, which
// stands in for last use across restarts.
func OpenCache(root string, limit int64) (*Cache, error) {
	c := &Cache{root: root, limit: limit, lru: list.New(), idx: map[Hash]*list.Element{}}
	dir := filepath.Join(root, "chunks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache %s: %w", root, err)
	}
	type found struct {
		h     Hash
		size  int64
		mtime int64
	}
	var all []found
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		h, perr := ParseHash(name)
		if strings.HasPrefix(name, ".tmp-") || perr != nil || filepath.Base(filepath.Dir(p)) != name[:2] {
			os.Remove(p)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		all = append(all, found{h, info.Size(), info.ModTime().UnixNano()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", root, err)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime < all[j].mtime })
	for _, f := range all {
		c.idx[f.h] = c.lru.PushFront(&cacheEntry{f.h, f.size})
		c.used += f.size
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

// Path is where chunk h lives when cached.
func (c *Cache) Path(h Hash) string {
	x := h.String()
	return filepath.Join(c.root, "chunks", x[:2], x)
}

// Touch marks h used and reports whether it is cached.
func (c *Cache) Touch(h Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx[h]
	if ok {
		c.lru.MoveToFront(e)
	}
	return ok
}

// Has reports whether h is cached without marking it used.
func (c *Cache) Has(h Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.idx[h]
	return ok
}

// Forget drops h from the index (its file vanished under us).
func (c *Cache) Forget(h Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx[h]; ok {
		c.used -= e.Value.(*cacheEntry).size
		c.lru.Remove(e)
		delete(c.idx, h)
	}
}

// Insert stores plain, the verified contents of chunk h, and evicts the
// least recently used chunks beyond the limit. A reader holding an open
// descriptor of an evicted chunk keeps reading it (unlink semantics).
func (c *Cache) Insert(h Hash, plain []byte) error {
	p := c.Path(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := atomicfile.WriteUnsynced(p, plain, 0o600); err != nil {
		return fmt.Errorf("cache: %s: %w", h, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx[h]; ok {
		c.lru.MoveToFront(e)
		return nil
	}
	c.idx[h] = c.lru.PushFront(&cacheEntry{h, int64(len(plain))})
	c.used += int64(len(plain))
	c.evictLocked()
	return nil
}

func (c *Cache) evictLocked() {
	sizes := make([]int64, 0, c.lru.Len())
	for e := c.lru.Back(); e != nil; e = e.Prev() {
		sizes = append(sizes, e.Value.(*cacheEntry).size)
	}
	n := evictCount(sizes, c.used, c.limit)
	for i := 0; i < n; i++ {
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

// evictCount is the eviction decision: given entry sizes from least to most
// recently used, how many of the oldest go so that used fits in limit. The
// most recent entry always stays, even alone above the limit, because a
// reader is about to use it.
func evictCount(oldestFirst []int64, used, limit int64) int {
	n := 0
	for used > limit && n < len(oldestFirst)-1 {
		used -= oldestFirst[n]
		n++
	}
	return n
}

// Used is the bytes of chunks cached.
func (c *Cache) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// Len is the number of chunks cached.
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
