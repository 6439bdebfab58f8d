package sandbox

import (
	"bytes"
	"fmt"
	"path"
	"sort"
	"strings"
	"syscall"

	"github.com/zeebo/blake3"
)

// Entry is one path of a tree being written into a flist.
type Entry struct {
	Mode      uint32 // st_mode with type bits
	UID, GID  uint32
	Size      uint64 // regular files; symlinks get len(Target)
	MtimeSec  int64
	MtimeNsec uint32
	Rdev      uint32
	Target    string     // symlink target
	Chunks    []ChunkRef // regular file contents in order
	Xattrs    []Xattr
	// LinkID groups hard links: entries with the same non-zero LinkID are
	// one inode (the first one added carries the metadata).
	LinkID uint64
}

// Xattr is one extended attribute.
type Xattr struct{ Name, Value string }

type bnode struct {
	e        Entry
	children map[string]*bnode
	idx      uint32
	placed   bool
	links    uint32
}

// FlistWriter collects a tree and encodes it as a flist.
type FlistWriter struct {
	chunkSize uint32
	root      *bnode
	links     map[uint64]*bnode
}

// NewFlistWriter starts a tree whose root directory has the metadata root.
func NewFlistWriter(chunkSize uint32, root Entry) *FlistWriter {
	root.Mode = root.Mode&^syscall.S_IFMT | syscall.S_IFDIR
	return &FlistWriter{chunkSize: chunkSize, root: &bnode{e: root, children: map[string]*bnode{}}, links: map[uint64]*bnode{}}
}

// Add puts e at slash-separated path p; its parent directory must exist.
func (w *FlistWriter) Add(p string, e Entry) error {
	p = strings.Trim(p, "/")
	dir, name := path.Split(p)
	if err := checkName([]byte(name)); err != nil {
		return fmt.Errorf("flist: %s: %w", p, err)
	}
	parent := w.root
	if dir != "" {
		for _, part := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
			c := parent.children[part]
			if c == nil || c.children == nil {
				return fmt.Errorf("flist: %s: parent %q is not a directory in the tree", p, dir)
			}
			parent = c
		}
	}
	if _, dup := parent.children[name]; dup {
		return fmt.Errorf("flist: %s: added twice", p)
	}
	if e.LinkID != 0 && e.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		if n := w.links[e.LinkID]; n != nil {
			n.links++
			parent.children[name] = n
			return nil
		}
	}
	n := &bnode{e: e, links: 1}
	switch e.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		n.children = map[string]*bnode{}
	case syscall.S_IFREG:
		if e.Size > MaxFileSize {
			return fmt.Errorf("flist: %s: size %d is over the %d-byte limit", p, e.Size, uint64(MaxFileSize))
		}
		if want := chunksFor(e.Size, w.chunkSize); uint64(len(e.Chunks)) != want {
			return fmt.Errorf("flist: %s: %d chunks for %d bytes (want %d)", p, len(e.Chunks), e.Size, want)
		}
	case syscall.S_IFLNK:
		if e.Target == "" {
			return fmt.Errorf("flist: %s: empty symlink target", p)
		}
		n.e.Size = uint64(len(e.Target))
	}
	if e.LinkID != 0 {
		w.links[e.LinkID] = n
	}
	parent.children[name] = n
	return nil
}

// Encode lays the tree out breadth-first: node indexes (inode numbers - 1)
// follow the sorted tree, so they are stable for a given tree, and each
// directory's entries are contiguous and sorted for binary search.
func (w *FlistWriter) Encode() ([]byte, error) {
	var (
		nodes   []*bnode
		dirents bytes.Buffer
		chunks  bytes.Buffer
		xattrs  bytes.Buffer
		strs    bytes.Buffer
		nDir    uint32
		nChunk  uint32
		nXattr  uint32
		strIdx  = map[string]uint32{}
	)
	addStr := func(s string) (uint32, error) {
		if o, ok := strIdx[s]; ok {
			return o, nil
		}
		if strs.Len()+len(s) > 1<<32-1 {
			return 0, fmt.Errorf("flist: string table over 4 GiB")
		}
		o := uint32(strs.Len())
		strs.WriteString(s)
		strIdx[s] = o
		return o, nil
	}
	place := func(n *bnode) {
		if !n.placed {
			n.placed = true
			n.idx = uint32(len(nodes))
			nodes = append(nodes, n)
		}
	}
	place(w.root)
	// Directory entry ranges, filled as directories are reached.
	type span struct{ a, b uint32 }
	dspan := map[*bnode]span{}
	for q := 0; q < len(nodes); q++ {
		n := nodes[q]
		if n.children == nil {
			continue
		}
		names := make([]string, 0, len(n.children))
		for k := range n.children {
			names = append(names, k)
		}
		sort.Strings(names)
		dspan[n] = span{nDir, uint32(len(names))}
		var rec [direntSize]byte
		for _, k := range names {
			c := n.children[k]
			place(c)
			o, err := addStr(k)
			if err != nil {
				return nil, err
			}
			le.PutUint32(rec[0:], o)
			le.PutUint16(rec[4:], uint16(len(k)))
			le.PutUint16(rec[6:], 0)
			le.PutUint32(rec[8:], c.idx)
			dirents.Write(rec[:])
			nDir++
		}
	}
	var nb bytes.Buffer
	for _, n := range nodes {
		var rec [nodeSize]byte
		var a, b uint32
		nlink := n.links
		switch n.e.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			s := dspan[n]
			a, b = s.a, s.b
			nlink = 2
			for _, c := range n.children {
				if c.children != nil {
					nlink++
				}
			}
		case syscall.S_IFREG:
			a, b = nChunk, uint32(len(n.e.Chunks))
			for _, c := range n.e.Chunks {
				var r [chunkRefSize]byte
				copy(r[:32], c.Hash[:])
				le.PutUint32(r[32:], c.StoredSize)
				le.PutUint32(r[36:], c.Flags)
				chunks.Write(r[:])
				nChunk++
			}
		case syscall.S_IFLNK:
			o, err := addStr(n.e.Target)
			if err != nil {
				return nil, err
			}
			a, b = o, uint32(len(n.e.Target))
		}
		xa := nXattr
		for _, x := range n.e.Xattrs {
			no, err := addStr(x.Name)
			if err != nil {
				return nil, err
			}
			vo, err := addStr(x.Value)
			if err != nil {
				return nil, err
			}
			var r [xattrSize]byte
			le.PutUint32(r[0:], no)
			le.PutUint32(r[4:], uint32(len(x.Name)))
			le.PutUint32(r[8:], vo)
			le.PutUint32(r[12:], uint32(len(x.Value)))
			xattrs.Write(r[:])
			nXattr++
		}
		size := n.e.Size
		if n.children != nil {
			size = 0
		}
		le.PutUint32(rec[0:], n.e.Mode)
		le.PutUint32(rec[4:], n.e.UID)
		le.PutUint32(rec[8:], n.e.GID)
		le.PutUint32(rec[12:], nlink)
		le.PutUint64(rec[16:], size)
		le.PutUint64(rec[24:], uint64(n.e.MtimeSec))
		le.PutUint32(rec[32:], n.e.MtimeNsec)
		le.PutUint32(rec[36:], n.e.Rdev)
		le.PutUint32(rec[40:], a)
		le.PutUint32(rec[44:], b)
		le.PutUint32(rec[48:], xa)
		le.PutUint32(rec[52:], nXattr-xa)
		nb.Write(rec[:])
	}
	var hdr [headerSize]byte
	copy(hdr[:], flistMagic)
	le.PutUint32(hdr[8:], FlistVersion)
	le.PutUint32(hdr[12:], w.chunkSize)
	le.PutUint32(hdr[16:], uint32(len(nodes)))
	le.PutUint32(hdr[20:], nDir)
	le.PutUint32(hdr[24:], nChunk)
	le.PutUint32(hdr[28:], nXattr)
	le.PutUint64(hdr[32:], uint64(strs.Len()))
	total := headerSize + nb.Len() + dirents.Len() + chunks.Len() + xattrs.Len() + strs.Len() + trailerSize
	if total > MaxFlistSize {
		return nil, fmt.Errorf("flist: %d bytes is over the %d-byte limit (split the tree)", total, MaxFlistSize)
	}
	var out bytes.Buffer
	out.Grow(total)
	for _, part := range [][]byte{hdr[:], nb.Bytes(), dirents.Bytes(), chunks.Bytes(), xattrs.Bytes(), strs.Bytes()} {
		out.Write(part)
	}
	sum := blake3.Sum256(out.Bytes())
	out.Write(sum[:])
	return out.Bytes(), nil
}
