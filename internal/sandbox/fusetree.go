package sandbox

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// tree is one mounted flist. Nodes are created lazily on lookup, so
// mounting a 100,000-file flist costs nothing up front; inode numbers are
// node index + 1, stable across mounts of the same flist, and hard links
// share one inode because go-fuse deduplicates by inode number.
type tree struct {
	fl      *Flist
	fetch   *Fetcher
	name    string
	readErr atomic.Int64
	reads   atomic.Int64 // READ requests served
	// passthrough: OPEN is answered and whole cached files get a backing
	// file; else OPEN answers ENOSYS (no-open mode).
	passthrough atomic.Bool
	passOpens   atomic.Int64 // opens answered with a backing file

	// predicted holds the files a walk would read after the file last
	// read from its start: how a tree walk is recognised.
	walkMu    sync.Mutex
	predicted [walkAhead]uint32
	npred     int
}

type node struct {
	fs.Inode
	t         *tree
	idx       uint32
	dir       uint32       // the directory this inode was first looked up in
	dirent    uint32       // its entry there + 1; 0 for the root
	lastChunk atomic.Int64 // last chunk read + 1, for readahead
	window    atomic.Int32 // current readahead, in chunks

	// The kernel refuses (EIO) to open an inode with a backing file while
	// it is open without one, and the reverse, so every open of an inode
	// follows the first one still open: opens counts them, backing is a
	// descriptor of the backing file while they use one.
	openMu  sync.Mutex
	opens   int
	backing int // -1: none
}

var (
	_ fs.NodeLookuper        = (*node)(nil)
	_ fs.NodeGetattrer       = (*node)(nil)
	_ fs.NodeOpendirHandler  = (*node)(nil)
	_ fs.NodeOpener          = (*node)(nil)
	_ fs.NodeFlusher         = (*node)(nil)
	_ fs.NodeReader          = (*node)(nil)
	_ fs.NodeReadlinker      = (*node)(nil)
	_ fs.NodeGetxattrer      = (*node)(nil)
	_ fs.NodeListxattrer     = (*node)(nil)
	_ fs.NodeStatfser        = (*node)(nil)
	_ fs.FileReaddirenter    = (*dirHandle)(nil)
	_ fs.FileSeekdirer       = (*dirHandle)(nil)
	_ fs.FileLookuper        = (*dirHandle)(nil)
	_ fs.FilePassthroughFder = (*fileHandle)(nil)
	_ fs.FileReleaser        = (*fileHandle)(nil)
)

// cacheTimeout is how long the kernel may cache entries, attributes and
// negative lookups: the tree never changes while mounted, and a new flist
// is a new mount.
const cacheTimeout = 24 * time.Hour

func (t *tree) root() *node { return &node{t: t, idx: 0, backing: -1} }

func (n *node) fill(nd *Node, a *fuse.Attr) {
	a.Ino = uint64(n.idx) + 1
	a.Mode = nd.Mode
	a.Size = nd.Size
	a.Blocks = (nd.Size + 511) / 512
	a.Blksize = 1 << 17
	a.Nlink = nd.Nlink
	a.Uid, a.Gid = nd.UID, nd.GID
	a.Rdev = nd.Rdev
	a.Mtime, a.Mtimensec = uint64(nd.MtimeSec), nd.MtimeNsec
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	nd := n.t.fl.Node(n.idx)
	n.fill(&nd, &out.Attr)
	out.SetTimeout(cacheTimeout)
	return 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(n.t.fl.Len())
	return 0
}

func (n *node) child(ctx context.Context, dirent, idx uint32, out *fuse.EntryOut) *fs.Inode {
	nd := n.t.fl.Node(idx)
	c := &node{t: n.t, idx: idx, dir: n.idx, dirent: dirent + 1, backing: -1}
	ch := n.NewInode(ctx, c, fs.StableAttr{Mode: nd.Mode & syscall.S_IFMT, Ino: uint64(idx) + 1})
	c2 := ch.Operations().(*node) // an existing inode for a hard link
	c2.fill(&nd, &out.Attr)
	out.SetEntryTimeout(cacheTimeout)
	out.SetAttrTimeout(cacheTimeout)
	return ch
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	dir := n.t.fl.Node(n.idx)
	d, idx, ok := n.t.fl.LookupDirent(&dir, name)
	if !ok {
		out.SetEntryTimeout(cacheTimeout)
		return nil, syscall.ENOENT
	}
	return n.child(ctx, d, idx, out), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	nd := n.t.fl.Node(n.idx)
	if !nd.IsSymlink() {
		return nil, syscall.EINVAL
	}
	return append([]byte(nil), n.t.fl.Target(&nd)...), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	nd := n.t.fl.Node(n.idx)
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, v := n.t.fl.Xattr(x)
		if string(k) == attr {
			if len(dest) < len(v) {
				return uint32(len(v)), syscall.ERANGE
			}
			return uint32(copy(dest, v)), 0
		}
	}
	return 0, syscall.ENODATA
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	nd := n.t.fl.Node(n.idx)
	size := 0
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, _ := n.t.fl.Xattr(x)
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	o := 0
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, _ := n.t.fl.Xattr(x)
		o += copy(dest[o:], k)
		dest[o] = 0
		o++
	}
	return uint32(size), 0
}

// Open, without passthrough, answers ENOSYS: with FUSE_NO_OPEN_SUPPORT
// the kernel then stops sending OPEN, FLUSH and RELEASE for this mount and
// caches file pages as with FOPEN_KEEP_CACHE. That saves two round trips
// per opened file, which dominate `tar c` of a tree of small files. With
// passthrough, a file whose whole contents are cached is opened with that
// file as its backing file (the kernel then reads it without asking
// g8-fs), others with FOPEN_KEEP_CACHE as no-open mode would. The kernel's
// no-open mode is per connection, so one mount cannot mix the two. Writes
// never get here: the mount is read-only.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if !n.t.passthrough.Load() {
		return nil, 0, syscall.ENOSYS
	}
	h := &fileHandle{n: n, fd: -1}
	n.openMu.Lock()
	defer n.openMu.Unlock()
	if n.opens == 0 {
		nd := n.t.fl.Node(n.idx)
		if fd, ok := n.t.fetch.WholeFile(n.t.fl, &nd); ok {
			n.backing = fd
		} else {
			n.t.fetch.AssembleLater(n.t.fl, &nd)
		}
	}
	if n.backing >= 0 {
		// Each handle owns a descriptor: the bridge registers whichever
		// open it sees first and reuses that for the others.
		fd, err := unix.FcntlInt(uintptr(n.backing), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			if n.opens == 0 {
				unix.Close(n.backing)
				n.backing = -1
			}
			return nil, 0, fs.ToErrno(err)
		}
		h.fd = fd
		n.t.passOpens.Add(1)
	}
	n.opens++
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle is one open of a regular file in passthrough mode.
type fileHandle struct {
	n  *node
	fd int // a descriptor of the backing file, or -1
}

func (h *fileHandle) PassthroughFd() (int, bool) { return h.fd, h.fd >= 0 }

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	n := h.n
	n.openMu.Lock()
	defer n.openMu.Unlock()
	if h.fd >= 0 {
		unix.Close(h.fd)
	}
	n.opens--
	if n.opens == 0 && n.backing >= 0 {
		unix.Close(n.backing)
		n.backing = -1
	}
	return 0
}

// Flush answers ENOSYS so the kernel stops sending FLUSH on every close
// (no_flush); no_open alone does not stop it, and nothing is ever dirty.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return syscall.ENOSYS }

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.t.reads.Add(1)
	fl := n.t.fl
	nd := fl.Node(n.idx)
	if !nd.IsRegular() {
		return nil, syscall.EISDIR
	}
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if uint64(off) >= nd.Size {
		return fuse.ReadResultData(nil), 0
	}
	end := uint64(off) + uint64(len(dest))
	if end > nd.Size {
		end = nd.Size
	}
	cs := uint64(fl.ChunkSize())
	first := uint64(off) / cs
	if n.t.fetch.Readahead > 0 {
		// Sequential: starting at 0, or continuing where the last read of
		// this file ended (per inode: there are no open handles). The
		// readahead starts before this read's own fetch so they overlap,
		// and its window doubles each time the reader enters a new chunk,
		// up to the fetch slots, as the kernel's own readahead ramps up.
		last := n.lastChunk.Swap(int64((end-1)/cs) + 1) // 0: never read
		if last == 0 && first == 0 || int64(first) == last-1 || int64(first) == last {
			w := n.window.Load()
			switch {
			case w == 0:
				w = int32(n.t.fetch.Readahead)
			case int64(first) == last:
				w = min(2*w, fetchSlots)
			}
			n.window.Store(w)
			n.prefetch(&nd, uint32((end-1)/cs)+1, int(w))
		} else {
			n.window.Store(0)
		}
	}
	if off == 0 && n.dirent != 0 {
		n.walkPrefetch()
	}
	total := 0
	failed := false
	fl.Spans(&nd, uint64(off), len(dest), func(sp Span) bool {
		ref := fl.Chunk(nd.A + sp.K)
		m, err := n.t.fetch.ReadAt(ref, sp.Plain, dest[total:total+int(sp.Len)], int64(sp.Off))
		if err != nil || m != int(sp.Len) {
			failed = true
			return false
		}
		total += m
		return true
	})
	if failed || uint64(total) != end-uint64(off) {
		n.t.readErr.Add(1)
		return nil, syscall.EIO
	}
	if end == nd.Size && n.t.passthrough.Load() {
		// Read to its end: the next open can have the whole file.
		n.t.fetch.AssembleLater(fl, &nd)
	}
	return fuse.ReadResultData(dest[:total]), 0
}

// walkAhead is how many files a recognised tree walk prefetches ahead.
const walkAhead = 16

// walkPrefetch serves tree walks (tar, cp -r, rsync): they read files
// from their starts in depth-first order, a directory's entries in order,
// descending into each subdirectory where it stands. A file read from its
// start that is among the next walkAhead files after the one read before
// continues a walk: the first chunks of the walkAhead files after it,
// across directory boundaries, are fetched in the background (as slots
// allow), so a walk of small files waits for the store about once, not
// once per file or per directory. A single file read (running one binary
// of a big bin/) fetches nothing extra, nor do find/stat walks.
func (n *node) walkPrefetch() {
	t := n.t
	var next [walkAhead]uint32
	c := n.walkSuccessors(&next)
	t.walkMu.Lock()
	walk := false
	for _, p := range t.predicted[:t.npred] {
		walk = walk || p == n.idx
	}
	t.predicted, t.npred = next, c
	t.walkMu.Unlock()
	if !walk || c == 0 {
		return
	}
	var refs [walkAhead]ChunkRef
	var plains [walkAhead]uint32
	for i, idx := range next[:c] {
		cn := t.fl.Node(idx)
		refs[i], plains[i] = t.fl.Chunk(cn.A), t.fl.plainSize(&cn, 0)
	}
	t.fetch.Prefetch(refs[:c], plains[:c])
}

// walkDepth bounds how far up walkSuccessors climbs, and walkSteps how many
// entries it looks at, so a walk costs the same in any tree.
const (
	walkDepth = 8
	walkSteps = 4 * walkAhead
)

// walkSuccessors fills next with the regular files holding data that a
// depth-first walk reads after n, and returns their count.
func (n *node) walkSuccessors(next *[walkAhead]uint32) int {
	fl := n.t.fl
	type frame struct{ next, end uint32 } // dirents still to walk
	var stack [walkDepth + walkSteps]frame
	// The frames of n's directory and of its ancestors, innermost last:
	// each resumes after the entry the walk is in.
	depth := 0
	for cur := n; cur.dirent != 0 && depth < walkDepth; depth++ {
		dir := fl.Node(cur.dir)
		copy(stack[1:depth+1], stack[:depth])
		stack[0] = frame{cur.dirent, dir.A + dir.B}
		_, p := cur.Parent()
		if p == nil {
			depth++
			break
		}
		pn, ok := p.Operations().(*node)
		if !ok {
			depth++
			break
		}
		cur = pn
	}
	c := 0
	for steps := 0; depth > 0 && c < walkAhead && steps < walkSteps; steps++ {
		f := &stack[depth-1]
		if f.next >= f.end {
			depth--
			continue
		}
		_, ci := fl.Dirent(f.next)
		f.next++
		cn := fl.Node(ci)
		switch {
		case cn.IsRegular() && cn.B > 0:
			next[c] = ci
			c++
		case cn.IsDir() && cn.B > 0:
			stack[depth] = frame{cn.A, cn.A + cn.B}
			depth++
		}
	}
	return c
}

func (n *node) prefetch(nd *Node, from uint32, window int) {
	var refs [fetchSlots]ChunkRef
	var plains [fetchSlots]uint32
	c := 0
	for k := from; k < nd.B && c < window && c < len(refs); k++ {
		refs[c] = n.t.fl.Chunk(nd.A + k)
		plains[c] = n.t.fl.plainSize(nd, k)
		c++
	}
	if c > 0 {
		n.t.fetch.Prefetch(refs[:c], plains[:c])
	}
}

// dirHandle streams a directory's entries straight from the flist.
type dirHandle struct {
	n    *node
	a, b uint32 // entry range
	pos  uint32 // next entry, relative
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	nd := n.t.fl.Node(n.idx)
	if !nd.IsDir() {
		return nil, 0, syscall.ENOTDIR
	}
	// FOPEN_CACHE_DIR: the kernel keeps the listing; an immutable tree
	// never needs it invalidated.
	return &dirHandle{n: n, a: nd.A, b: nd.B}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.pos >= d.b {
		return nil, 0
	}
	name, c := d.n.t.fl.Dirent(d.a + d.pos)
	d.pos++
	cn := d.n.t.fl.Node(c)
	return &fuse.DirEntry{Name: string(name), Mode: cn.Mode & syscall.S_IFMT, Ino: uint64(c) + 1, Off: uint64(d.pos)}, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off > uint64(d.b) {
		return syscall.EINVAL
	}
	d.pos = uint32(off)
	return 0
}

// Lookup serves READDIRPLUS for the entry Readdirent just produced without
// a second binary search.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if d.pos == 0 {
		return d.n.Lookup(ctx, name, out)
	}
	n, c := d.n.t.fl.Dirent(d.a + d.pos - 1)
	if string(n) != name {
		return d.n.Lookup(ctx, name, out)
	}
	return d.n.child(ctx, d.a+d.pos-1, c, out), 0
}
