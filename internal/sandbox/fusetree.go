package sandbox

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// tree serves one mounted flist straight from go-fuse's raw protocol API.
//
// The FUSE node id of a flist node is its index + 1 (the root is node 1,
// as FUSE requires), which is also its inode number: a pure function of
// the flist. The daemon keeps no table of what the kernel has looked up,
// FORGET is a no-op and directory handles carry nothing but their node.
// That is what lets a new g8-fs take over a live /dev/fuse connection from
// the one before it (restart, upgrade or crash, see handover.go): every
// node id the kernel learnt from the old process is valid in the new one
// without replaying any lookup. go-fuse's Inode tree (fs.NodeFS) cannot do
// this: it panics on a node id it did not hand out itself, and on a FORGET
// that exceeds the lookups it counted. Hard links share one node (the flist
// points both entries at it), so they share the inode too.
//
// The one state the kernel and the daemon must agree on is which files are
// open with a passthrough backing file: that is in open, a table that a
// restart hands on with the connection (opentable.go).
type tree struct {
	// ENOSYS for every operation a read-only tree does not implement.
	fuse.RawFileSystem

	fl      *Flist
	fetch   *Fetcher
	name    string
	readErr atomic.Int64
	reads   atomic.Int64 // READ requests served
	pushes  atomic.Int64 // files pushed into the kernel's page cache
	// server registers backing files (set before it serves).
	server *fuse.Server
	// open counts the answered opens per node; nil: OPEN answers ENOSYS
	// (no-open mode). passthrough: files whole in the cache get a backing
	// file when they are opened (else they are opened as without).
	open        atomic.Pointer[openTable]
	passthrough atomic.Bool
	passOpens   atomic.Int64 // opens answered with a backing file

	// inodes holds what reads learn about a file (readahead state): a
	// small lossy table instead of per-node state, so that it needs no
	// node table either; a collision only costs one readahead.
	inodes [1024]inodeSlot

	// predicted holds the files a walk would read after the file last
	// read from its start: how a tree walk is recognised.
	walkMu    sync.Mutex
	predicted [walkAhead + 1]uint32
	npred     int
	// toPush are the files a walk reads next, for the pusher (pushing:
	// running) to put into the kernel's page cache; pushed the last ones
	// it did.
	pushMu   sync.Mutex
	toPush   []pushFile
	pushing  bool
	pushed   [2 * walkAhead]uint64 // the last files pushed (a ring, the pusher's own)
	pushedAt int
	// parents is, per node, its directory and its entry there + 1 (0: the
	// root, or not in any directory): where a depth-first walk goes on
	// after it. Built at the first read from a file's start.
	parentsOnce sync.Once
	parents     []parentRef
}

// parentRef is one entry of tree.parents.
type parentRef struct{ dir, dirent uint32 }

// inodeSlot is one entry of tree.inodes.
type inodeSlot struct {
	mu        sync.Mutex
	idx       uint32 // the node it describes + 1; 0: empty
	lastChunk int64  // last chunk read + 1, for readahead
	window    int32  // current readahead, in chunks
}

// slot returns idx's entry, locked, reset if it held another node.
func (t *tree) slot(idx uint32) *inodeSlot {
	sl := &t.inodes[idx%uint32(len(t.inodes))]
	sl.mu.Lock()
	if sl.idx != idx+1 {
		sl.idx, sl.lastChunk, sl.window = idx+1, 0, 0
	}
	return sl
}

func newTree(name string, fl *Flist, fetch *Fetcher) *tree {
	return &tree{RawFileSystem: fuse.NewDefaultRawFileSystem(), fl: fl, fetch: fetch, name: name}
}

// cacheTimeout is how long the kernel may cache entries, attributes and
// negative lookups: the tree never changes while mounted, and a new flist
// is a new mount.
const cacheTimeout = 24 * time.Hour

func (t *tree) String() string { return "g8-fs:" + t.name }

// node resolves a FUSE node id.
func (t *tree) node(id uint64) (Node, uint32, bool) {
	if id == 0 || id > uint64(t.fl.Len()) {
		return Node{}, 0, false
	}
	idx := uint32(id - 1)
	return t.fl.Node(idx), idx, true
}

func fill(idx uint32, nd *Node, a *fuse.Attr) {
	a.Ino = uint64(idx) + 1
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

func (t *tree) entry(idx uint32, out *fuse.EntryOut) {
	nd := t.fl.Node(idx)
	out.NodeId = uint64(idx) + 1
	out.Generation = 0
	fill(idx, &nd, &out.Attr)
	out.SetEntryTimeout(cacheTimeout)
	out.SetAttrTimeout(cacheTimeout)
}

func (t *tree) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	dir, _, ok := t.node(h.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	if !dir.IsDir() {
		return fuse.ENOTDIR
	}
	_, idx, ok := t.fl.LookupDirent(&dir, name)
	if !ok {
		// Node id 0 with a timeout: the kernel caches the miss.
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(cacheTimeout)
		return fuse.OK
	}
	t.entry(idx, out)
	return fuse.OK
}

func (t *tree) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	nd, idx, ok := t.node(in.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	fill(idx, &nd, &out.Attr)
	out.SetTimeout(cacheTimeout)
	return fuse.OK
}

func (t *tree) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(t.fl.Len())
	return fuse.OK
}

func (t *tree) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	nd, _, ok := t.node(h.NodeId)
	if !ok {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if !nd.IsSymlink() {
		return nil, fuse.EINVAL
	}
	return append([]byte(nil), t.fl.Target(&nd)...), fuse.OK
}

func (t *tree) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	nd, _, ok := t.node(h.NodeId)
	if !ok {
		return 0, fuse.Status(syscall.ESTALE)
	}
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, v := t.fl.Xattr(x)
		if string(k) == attr {
			if len(dest) < len(v) {
				return uint32(len(v)), fuse.ERANGE
			}
			return uint32(copy(dest, v)), fuse.OK
		}
	}
	return 0, fuse.ENOATTR
}

func (t *tree) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	nd, _, ok := t.node(h.NodeId)
	if !ok {
		return 0, fuse.Status(syscall.ESTALE)
	}
	size := 0
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, _ := t.fl.Xattr(x)
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), fuse.ERANGE
	}
	o := 0
	for x := nd.XattrA; x < nd.XattrA+nd.XattrN; x++ {
		k, _ := t.fl.Xattr(x)
		o += copy(dest[o:], k)
		dest[o] = 0
		o++
	}
	return uint32(size), fuse.OK
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
func (t *tree) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	tab := t.open.Load()
	if tab == nil {
		return fuse.ENOSYS
	}
	nd, idx, ok := t.node(in.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	backing := tab.acquire(idx, func() int32 { return t.backingFile(&nd) })
	// The handle names its node: a RELEASE after a takeover is counted in
	// the same table.
	out.Fh = uint64(idx) + 1
	if backing > 0 {
		// Alone: with FOPEN_KEEP_CACHE beside it the open failed (EIO,
		// Linux 6.18).
		out.BackingID = backing
		out.OpenFlags = fuse.FOPEN_PASSTHROUGH
		t.passOpens.Add(1)
	} else {
		out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	}
	return fuse.OK
}

// backingFile registers nd's whole cached contents as a backing file of
// the connection and returns its id, or 0 (none cached yet: it is
// assembled in the background for a later open).
func (t *tree) backingFile(nd *Node) int32 {
	if !nd.IsRegular() || !t.passthrough.Load() {
		return 0
	}
	fd, ok := t.fetch.WholeFile(t.fl, nd)
	if !ok {
		t.fetch.AssembleLater(t.fl, nd)
		return 0
	}
	// The kernel keeps its own reference to the file.
	defer unix.Close(fd)
	id, errno := t.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 || id <= 0 {
		t.fetch.Log.Debug("backing file refused", "sandbox", t.name, "error", errno.Error())
		return 0
	}
	return id
}

// Release counts an open of the passthrough mode gone; the node's last
// one unregisters its backing file.
func (t *tree) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	tab := t.open.Load()
	if tab == nil || in.Fh == 0 || in.Fh > uint64(t.fl.Len()) {
		return
	}
	tab.release(uint32(in.Fh-1), func(id int32) {
		if errno := t.server.UnregisterBackingFd(id); errno != 0 {
			t.fetch.Log.Debug("backing file not unregistered", "sandbox", t.name, "backing_id", id, "error", errno.Error())
		}
	})
}

// Flush answers ENOSYS so the kernel stops sending FLUSH on every close
// (no_flush); no_open alone does not stop it, and nothing is ever dirty.
func (t *tree) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

func (t *tree) Read(cancel <-chan struct{}, in *fuse.ReadIn, dest []byte) (fuse.ReadResult, fuse.Status) {
	t.reads.Add(1)
	nd, idx, ok := t.node(in.NodeId)
	if !ok {
		return nil, fuse.Status(syscall.ESTALE)
	}
	fl := t.fl
	if !nd.IsRegular() {
		return nil, fuse.Status(syscall.EISDIR)
	}
	off := in.Offset
	if off >= nd.Size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	if uint64(len(dest)) > uint64(in.Size) {
		dest = dest[:in.Size]
	}
	end := off + uint64(len(dest))
	if end > nd.Size {
		end = nd.Size
	}
	cs := uint64(fl.ChunkSize())
	first := off / cs
	if t.fetch.Readahead > 0 {
		// Sequential: starting at 0, or continuing where the last read of
		// this file ended (per inode: there are no open handles). The
		// readahead starts before this read's own fetch so they overlap,
		// and its window doubles each time the reader enters a new chunk,
		// up to the fetch slots, as the kernel's own readahead ramps up.
		sl := t.slot(idx)
		last := sl.lastChunk // 0: never read
		sl.lastChunk = int64((end-1)/cs) + 1
		w := int32(0)
		if last == 0 && first == 0 || int64(first) == last-1 || int64(first) == last {
			w = sl.window
			switch {
			case w == 0:
				w = int32(t.fetch.Readahead)
			case int64(first) == last:
				w = min(2*w, fetchSlots)
			}
		}
		sl.window = w
		sl.mu.Unlock()
		if w > 0 {
			t.prefetch(&nd, uint32((end-1)/cs)+1, int(w))
		}
	}
	if off == 0 {
		t.walkPrefetch(idx)
	}
	total := 0
	failed := false
	fl.Spans(&nd, off, len(dest), func(sp Span) bool {
		ref := fl.Chunk(nd.A + sp.K)
		m, err := t.fetch.ReadAt(ref, sp.Plain, dest[total:total+int(sp.Len)], int64(sp.Off))
		if err != nil || m != int(sp.Len) {
			failed = true
			return false
		}
		total += m
		return true
	})
	if failed || uint64(total) != end-off {
		t.readErr.Add(1)
		return nil, fuse.EIO
	}
	if end == nd.Size && t.passthrough.Load() {
		// Read to its end: the next open can have the whole file.
		t.fetch.AssembleLater(fl, &nd)
	}
	return fuse.ReadResultData(dest[:total]), fuse.OK
}

// walkAhead is how many files a recognised tree walk prefetches ahead.
const walkAhead = 16

// walkPrefetch serves tree walks (tar, cp -r, rsync): they read files
// from their starts in depth-first order, a directory's entries in order,
// descending into each subdirectory where it stands. A file read from its
// start that is among the next walkAhead + 1 files after the one read
// before continues a walk: the first chunks of the walkAhead files after
// it, across directory boundaries, are fetched in the background (as slots
// allow), so a walk of small files waits for the store about once, not
// once per file or per directory, and those files are pushed into the
// kernel's page cache as they arrive (push), so that the walk reads them
// without a round trip to g8-fs; the one after them is its next READ. A
// single file read (running one binary of a big bin/) fetches nothing
// extra, nor do find/stat walks.
func (t *tree) walkPrefetch(idx uint32) {
	var next [walkAhead + 1]uint32
	c := t.walkSuccessors(idx, &next)
	t.walkMu.Lock()
	walk := false
	for _, p := range t.predicted[:t.npred] {
		walk = walk || p == idx
	}
	t.predicted, t.npred = next, c
	t.walkMu.Unlock()
	c = min(c, walkAhead)
	if !walk || c == 0 {
		return
	}
	var refs [walkAhead]ChunkRef
	var plains [walkAhead]uint32
	for i, ci := range next[:c] {
		cn := t.fl.Node(ci)
		refs[i], plains[i] = t.fl.Chunk(cn.A), t.fl.plainSize(&cn, 0)
	}
	t.fetch.Prefetch(refs[:c], plains[:c])
	if t.open.Load() == nil {
		var files [walkAhead]pushFile
		n := 0
		for i, ci := range next[:c] {
			if cn := t.fl.Node(ci); cn.B == 1 {
				files[n] = pushFile{id: uint64(ci) + 1, ref: refs[i], size: plains[i]}
				n++
			}
		}
		t.push(files[:n])
	}
}

// pushFile is a file of one chunk for the pusher, which must not read the
// flist: it may be unmapped (unmounted) before the pusher is done.
type pushFile struct {
	id   uint64 // FUSE node id
	ref  ChunkRef
	size uint32
}

// push puts the contents of files, the next ones of a walk, into the
// kernel's page cache (FUSE_NOTIFY_STORE) as soon as their chunk is in the
// cache or arrives there; it never fetches. A READ round trip per small
// file bound a walk of a tree whose chunks are all cached (after a
// restart) to 1.5-2.4x native time. Only files of one chunk are pushed,
// and only in no-open mode: with OPEN answered, a cached file is read
// through its backing file and its page cache is not used. The kernel
// refuses a file it holds no inode of (one in a directory the walk has not
// listed yet); that one is read as usual. One pusher per mount works
// through the latest walk's files in order.
func (t *tree) push(files []pushFile) {
	t.pushMu.Lock()
	t.toPush = append(t.toPush[:0], files...)
	if t.pushing {
		t.pushMu.Unlock()
		return
	}
	t.pushing = true
	t.pushMu.Unlock()
	go t.pusher()
}

func (t *tree) pusher() {
	buf := getChunkBuf(chunkBufSize)
	defer putChunkBuf(buf)
	var files [walkAhead]pushFile
	for {
		t.pushMu.Lock()
		n := copy(files[:], t.toPush)
		t.toPush = t.toPush[:0]
		if n == 0 {
			t.pushing = false
			t.pushMu.Unlock()
			return
		}
		t.pushMu.Unlock()
	files:
		for _, f := range files[:n] {
			for _, p := range t.pushed {
				if p == f.id {
					continue files
				}
			}
			if int(f.size) > cap(*buf) {
				continue
			}
			b := (*buf)[:f.size]
			if m, ok := t.fetch.ReadCached(f.ref, f.size, b, 0); !ok || m != len(b) {
				continue
			}
			if t.server.InodeNotifyStoreCache(f.id, 0, b) == fuse.OK {
				t.pushed[t.pushedAt] = f.id
				t.pushedAt = (t.pushedAt + 1) % len(t.pushed)
				t.pushes.Add(1)
			}
		}
	}
}

// walkDepth bounds how far up walkSuccessors climbs, and walkSteps how many
// entries it looks at, so a walk costs the same in any tree.
const (
	walkDepth = 8
	walkSteps = 4 * walkAhead
)

// parentsOf returns the parent table (tree.parents), built once: one pass
// over the flist's directories. A hard-linked file is placed at its first
// entry.
func (t *tree) parentsOf() []parentRef {
	t.parentsOnce.Do(func() {
		fl := t.fl
		p := make([]parentRef, fl.Len())
		for d := uint32(0); d < fl.Len(); d++ {
			dn := fl.Node(d)
			if !dn.IsDir() {
				continue
			}
			for e := dn.A; e < dn.A+dn.B; e++ {
				_, c := fl.Dirent(e)
				if c != 0 && p[c].dirent == 0 {
					p[c] = parentRef{dir: d, dirent: e + 1}
				}
			}
		}
		t.parents = p
	})
	return t.parents
}

// walkSuccessors fills next with the regular files holding data that a
// depth-first walk reads after node idx, and returns their count.
func (t *tree) walkSuccessors(idx uint32, next *[walkAhead + 1]uint32) int {
	fl := t.fl
	parents := t.parentsOf()
	type frame struct{ next, end uint32 } // dirents still to walk
	var stack [walkDepth + walkSteps]frame
	// The frames of idx's directory and of its ancestors, innermost last:
	// each resumes after the entry the walk is in.
	depth := 0
	for cur := idx; parents[cur].dirent != 0 && depth < walkDepth; depth++ {
		pr := parents[cur]
		dir := fl.Node(pr.dir)
		copy(stack[1:depth+1], stack[:depth])
		stack[0] = frame{pr.dirent, dir.A + dir.B}
		cur = pr.dir
	}
	c := 0
	for steps := 0; depth > 0 && c < len(next) && steps < walkSteps; steps++ {
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

func (t *tree) prefetch(nd *Node, from uint32, window int) {
	var refs [fetchSlots]ChunkRef
	var plains [fetchSlots]uint32
	c := 0
	for k := from; k < nd.B && c < window && c < len(refs); k++ {
		refs[c] = t.fl.Chunk(nd.A + k)
		plains[c] = t.fl.plainSize(nd, k)
		c++
	}
	if c > 0 {
		t.fetch.Prefetch(refs[:c], plains[:c])
	}
}

// OpenDir keeps no handle: READDIR names its directory by node id and its
// position by offset (the entry index), so a listing that a restart
// interrupts goes on in the new process.
func (t *tree) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	nd, _, ok := t.node(in.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	if !nd.IsDir() {
		return fuse.ENOTDIR
	}
	// FOPEN_CACHE_DIR: the kernel keeps the listing; an immutable tree
	// never needs it invalidated.
	out.Fh = 0
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (t *tree) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return t.readDir(in, out, false)
}

func (t *tree) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return t.readDir(in, out, true)
}

func (t *tree) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	nd, _, ok := t.node(in.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	if !nd.IsDir() {
		return fuse.ENOTDIR
	}
	for pos := in.Offset; pos < uint64(nd.B); pos++ {
		name, c := t.fl.Dirent(nd.A + uint32(pos))
		cn := t.fl.Node(c)
		de := fuse.DirEntry{Name: string(name), Mode: cn.Mode & syscall.S_IFMT, Ino: uint64(c) + 1, Off: pos + 1}
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		e := out.AddDirLookupEntry(de)
		if e == nil {
			break
		}
		t.entry(c, e)
	}
	return fuse.OK
}
