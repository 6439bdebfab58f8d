// Package sandbox is g8-fs: read-only software trees described by a flist
// (one file of metadata), whose file contents are fetched lazily by content
// hash from a store, verified, cached on local disk and served over FUSE.
//
// The flist layout is documented in docs/flist.md; keep the two in step.
package sandbox

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/zeebo/blake3"
)

// Flist format constants (docs/flist.md). Version 1 is the only one.
const (
	flistMagic   = "G8FLIST\x00"
	FlistVersion = 1

	headerSize   = 64
	nodeSize     = 64
	direntSize   = 12
	chunkRefSize = 40
	xattrSize    = 16
	trailerSize  = 32

	// DefaultChunkSize is the size every chunk but a file's last has:
	// 1 MiB matches the largest FUSE read the kernel sends (max_pages 256),
	// so a sequential read needs one chunk per request, and keeps the flist
	// small (a 2 GiB file is 2048 refs, 80 KiB) and per-request store
	// overhead low, while a 4 KiB random read costs at most 1 MiB of transfer.
	DefaultChunkSize = 1 << 20

	minChunkSize = 4 << 10
	maxChunkSize = 64 << 20

	// ChunkZstd marks a chunk whose stored blob is zstd-compressed.
	ChunkZstd = 1 << 0

	// MaxFlistSize bounds a flist, packed or not: about 15 million
	// entries, and small enough that every record offset fits 32 bits.
	MaxFlistSize = 1 << 30

	// MaxFileSize bounds one file of a flist (64 TiB): far beyond any
	// sandbox, and far from where offset arithmetic could wrap.
	MaxFileSize = 1 << 46
)

// Hash is a BLAKE3-256 digest, the name of every blob in a store.
type Hash [32]byte

// HashOf names data as a store does.
func HashOf(data []byte) Hash { return Hash(blake3.Sum256(data)) }

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash reads 64 lowercase hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 || strings.ToLower(s) != s {
		return h, fmt.Errorf("hash %q: want 64 lowercase hex digits", s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("hash %q: %w", s, err)
	}
	return h, nil
}

// ChunkRef is one chunk of a regular file: the stored blob's hash and size,
// and whether it must be decompressed.
type ChunkRef struct {
	Hash       Hash
	StoredSize uint32
	Flags      uint32
}

// Node is one inode of the tree, decoded from its record.
type Node struct {
	Mode      uint32 // st_mode: type and permission bits
	UID, GID  uint32
	Nlink     uint32
	Size      uint64
	MtimeSec  int64
	MtimeNsec uint32
	Rdev      uint32
	A, B      uint32 // dir: first dirent, count; file: first chunk, count; symlink: target offset, length
	XattrA    uint32 // first xattr
	XattrN    uint32
}

// IsDir and friends classify a node by its type bits.
func (n *Node) IsDir() bool     { return n.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (n *Node) IsRegular() bool { return n.Mode&syscall.S_IFMT == syscall.S_IFREG }
func (n *Node) IsSymlink() bool { return n.Mode&syscall.S_IFMT == syscall.S_IFLNK }

// Flist is a parsed, validated flist. Every accessor is bounds-safe because
// Parse checked every offset once; lookups allocate nothing.
type Flist struct {
	data      []byte
	hash      Hash
	chunkSize uint32
	nNodes    uint32
	nDirents  uint32
	nChunks   uint32
	nXattrs   uint32
	nodes     []byte
	dirents   []byte
	chunks    []byte
	xattrs    []byte
	strs      []byte
	unmap     func() error
	path      string
}

// FlistError is a flist that failed validation; Field says where.
type FlistError struct {
	Field string
	Msg   string
}

func (e *FlistError) Error() string { return "flist: " + e.Field + ": " + e.Msg }

func ferr(field, format string, a ...any) error {
	return &FlistError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

var le = binary.LittleEndian

// OpenFlist maps a flist file read-only and validates it. The mapping is
// shared with the page cache, so a 100,000-file flist opens in the time it
// takes to hash it once.
func OpenFlist(path string) (*Flist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < headerSize+trailerSize || st.Size() > MaxFlistSize {
		return nil, fmt.Errorf("%s: %w", path, ferr("size", "%d bytes is not a flist", st.Size()))
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	fl, err := ParseFlist(data)
	if err != nil {
		syscall.Munmap(data)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	fl.unmap = func() error { return syscall.Munmap(data) }
	fl.path = path
	return fl, nil
}

// Close releases the mapping of a flist from OpenFlist.
func (f *Flist) Close() error {
	if f.unmap != nil {
		u := f.unmap
		f.unmap = nil
		return u()
	}
	return nil
}

// ParseFlist validates data completely (checksum, every offset and range,
// sorted directories, a tree without cycles) so that later accesses cannot
// fail or point outside the file. data must not change afterwards.
func ParseFlist(data []byte) (*Flist, error) {
	if len(data) < headerSize+trailerSize {
		return nil, ferr("header", "%d bytes is too short", len(data))
	}
	if len(data) > MaxFlistSize {
		return nil, ferr("size", "%d bytes is over the %d-byte limit", len(data), MaxFlistSize)
	}
	if string(data[:8]) != flistMagic {
		return nil, ferr("magic", "not a g8 flist")
	}
	if v := le.Uint32(data[8:]); v != FlistVersion {
		return nil, ferr("version", "%d is not supported (want %d)", v, FlistVersion)
	}
	f := &Flist{
		data:      data,
		chunkSize: le.Uint32(data[12:]),
		nNodes:    le.Uint32(data[16:]),
		nDirents:  le.Uint32(data[20:]),
		nChunks:   le.Uint32(data[24:]),
		nXattrs:   le.Uint32(data[28:]),
	}
	strSize := le.Uint64(data[32:])
	if !bytes.Equal(data[40:headerSize], make([]byte, headerSize-40)) {
		return nil, ferr("header", "reserved bytes are not zero")
	}
	if f.chunkSize < minChunkSize || f.chunkSize > maxChunkSize || f.chunkSize&(f.chunkSize-1) != 0 {
		return nil, ferr("chunk_size", "%d is not a power of two in [%d, %d]", f.chunkSize, minChunkSize, maxChunkSize)
	}
	want := uint64(headerSize) + uint64(f.nNodes)*nodeSize + uint64(f.nDirents)*direntSize +
		uint64(f.nChunks)*chunkRefSize + uint64(f.nXattrs)*xattrSize + strSize + trailerSize
	if strSize > 1<<32 || want != uint64(len(data)) {
		return nil, ferr("size", "header describes %d bytes, file has %d", want, len(data))
	}
	body := data[:len(data)-trailerSize]
	if sum := blake3Sum(body); !bytes.Equal(sum[:], data[len(body):]) {
		return nil, ferr("checksum", "BLAKE3 of the contents does not match the trailer (truncated or corrupt)")
	}
	f.hash = HashOf(data)
	off := uint64(headerSize)
	cut := func(n uint64) []byte { s := data[off : off+n]; off += n; return s }
	f.nodes = cut(uint64(f.nNodes) * nodeSize)
	f.dirents = cut(uint64(f.nDirents) * direntSize)
	f.chunks = cut(uint64(f.nChunks) * chunkRefSize)
	f.xattrs = cut(uint64(f.nXattrs) * xattrSize)
	f.strs = cut(strSize)
	if err := f.validate(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Flist) validate() error {
	if f.nNodes == 0 {
		return ferr("nodes", "no root directory")
	}
	direntOwned := make([]bool, f.nDirents)
	chunkOwned := make([]bool, f.nChunks)
	for i := uint32(0); i < f.nNodes; i++ {
		n := f.Node(i)
		field := fmt.Sprintf("node %d", i)
		if uint64(n.XattrA)+uint64(n.XattrN) > uint64(f.nXattrs) {
			return ferr(field, "xattrs %d+%d out of range", n.XattrA, n.XattrN)
		}
		for x := n.XattrA; x < n.XattrA+n.XattrN; x++ {
			r := f.xattrs[x*xattrSize:]
			if !f.strOK(le.Uint32(r), le.Uint32(r[4:])) || !f.strOK(le.Uint32(r[8:]), le.Uint32(r[12:])) || le.Uint32(r[4:]) == 0 {
				return ferr(fmt.Sprintf("xattr %d", x), "string out of range")
			}
		}
		switch n.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			if uint64(n.A)+uint64(n.B) > uint64(f.nDirents) {
				return ferr(field, "entries %d+%d out of range", n.A, n.B)
			}
			var prev []byte
			for d := n.A; d < n.A+n.B; d++ {
				if direntOwned[d] {
					return ferr(fmt.Sprintf("dirent %d", d), "belongs to two directories")
				}
				direntOwned[d] = true
				r := f.dirents[d*direntSize:]
				no, nl := le.Uint32(r), uint32(le.Uint16(r[4:]))
				if le.Uint16(r[6:]) != 0 {
					return ferr(fmt.Sprintf("dirent %d", d), "reserved bytes are not zero")
				}
				if !f.strOK(no, nl) {
					return ferr(fmt.Sprintf("dirent %d", d), "name out of range")
				}
				name := f.strs[no : no+nl]
				if err := checkName(name); err != nil {
					return ferr(fmt.Sprintf("dirent %d", d), "%v", err)
				}
				if prev != nil && bytes.Compare(prev, name) >= 0 {
					return ferr(field, "entries not strictly sorted at %q", name)
				}
				prev = name
				if c := le.Uint32(r[8:]); c == 0 || c >= f.nNodes {
					return ferr(fmt.Sprintf("dirent %d", d), "node %d out of range", c)
				}
			}
		case syscall.S_IFREG:
			if uint64(n.A)+uint64(n.B) > uint64(f.nChunks) {
				return ferr(field, "chunks %d+%d out of range", n.A, n.B)
			}
			if n.Size > MaxFileSize {
				return ferr(field, "size %d is over the %d-byte limit", n.Size, uint64(MaxFileSize))
			}
			if want := chunksFor(n.Size, f.chunkSize); uint64(n.B) != want {
				return ferr(field, "%d chunks for %d bytes (want %d)", n.B, n.Size, want)
			}
			for c := n.A; c < n.A+n.B; c++ {
				if chunkOwned[c] {
					return ferr(fmt.Sprintf("chunk %d", c), "belongs to two files")
				}
				chunkOwned[c] = true
				ref := f.Chunk(c)
				plain := f.plainSize(&n, c-n.A)
				switch {
				case ref.Flags&^ChunkZstd != 0:
					return ferr(fmt.Sprintf("chunk %d", c), "unknown flags %#x", ref.Flags)
				case ref.StoredSize == 0 || ref.StoredSize > maxChunkSize+maxChunkSize/8:
					return ferr(fmt.Sprintf("chunk %d", c), "stored size %d out of range", ref.StoredSize)
				case ref.Flags&ChunkZstd == 0 && ref.StoredSize != plain:
					return ferr(fmt.Sprintf("chunk %d", c), "raw stored size %d != %d", ref.StoredSize, plain)
				}
			}
		case syscall.S_IFLNK:
			if !f.strOK(n.A, n.B) || n.B == 0 || uint64(n.B) != n.Size {
				return ferr(field, "symlink target out of range")
			}
		case syscall.S_IFCHR, syscall.S_IFBLK, syscall.S_IFIFO, syscall.S_IFSOCK:
			if n.Size != 0 {
				return ferr(field, "special file with size %d", n.Size)
			}
		default:
			return ferr(field, "unknown file type in mode %#o", n.Mode)
		}
		if i == 0 && !n.IsDir() {
			return ferr("node 0", "root is not a directory")
		}
	}
	// Every directory except the root has exactly one parent and is
	// reachable from the root: the tree has no cycles, so a walk ends.
	parents := make([]uint8, f.nNodes)
	stack := []uint32{0}
	visited := 1
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := f.Node(d)
		for e := n.A; e < n.A+n.B; e++ {
			_, c := f.Dirent(e)
			cn := f.Node(c)
			if !cn.IsDir() {
				continue
			}
			if parents[c] != 0 {
				return ferr(fmt.Sprintf("node %d", c), "directory linked twice")
			}
			parents[c] = 1
			visited++
			stack = append(stack, c)
		}
	}
	dirs := 0
	for i := uint32(0); i < f.nNodes; i++ {
		if n := f.Node(i); n.IsDir() {
			dirs++
		}
	}
	if dirs != visited {
		return ferr("nodes", "%d directories are not reachable from the root", dirs-visited)
	}
	return nil
}

func checkName(name []byte) error {
	switch {
	case len(name) == 0:
		return errors.New("empty name")
	case len(name) > 255:
		return errors.New("name longer than 255 bytes")
	case string(name) == "." || string(name) == "..":
		return fmt.Errorf("name %q", name)
	case bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name %q contains '/' or NUL", name)
	}
	return nil
}

func (f *Flist) strOK(off, n uint32) bool { return uint64(off)+uint64(n) <= uint64(len(f.strs)) }

// Hash is the flist's own name: BLAKE3-256 of the whole file, the name it
// has in a store ("blake3:<hex>" in fs.toml).
func (f *Flist) Hash() Hash { return f.hash }

// Path is the file the flist was opened from ("" when parsed from memory).
func (f *Flist) Path() string { return f.path }

// ChunkSize is the size of every chunk but a file's last.
func (f *Flist) ChunkSize() uint32 { return f.chunkSize }

// Len is the number of nodes; node 0 is the root directory.
func (f *Flist) Len() uint32 { return f.nNodes }

// Node decodes node i (i < Len()).
func (f *Flist) Node(i uint32) Node {
	r := f.nodes[uint64(i)*nodeSize : uint64(i+1)*nodeSize]
	return Node{
		Mode: le.Uint32(r), UID: le.Uint32(r[4:]), GID: le.Uint32(r[8:]), Nlink: le.Uint32(r[12:]),
		Size: le.Uint64(r[16:]), MtimeSec: int64(le.Uint64(r[24:])), MtimeNsec: le.Uint32(r[32:]),
		Rdev: le.Uint32(r[36:]), A: le.Uint32(r[40:]), B: le.Uint32(r[44:]),
		XattrA: le.Uint32(r[48:]), XattrN: le.Uint32(r[52:]),
	}
}

// Dirent returns entry d's name (aliasing the flist) and node.
func (f *Flist) Dirent(d uint32) ([]byte, uint32) {
	r := f.dirents[d*direntSize:]
	no, nl := le.Uint32(r), uint32(le.Uint16(r[4:]))
	return f.strs[no : no+nl], le.Uint32(r[8:])
}

// Lookup finds name in directory node dir by binary search.
func (f *Flist) Lookup(dir *Node, name string) (uint32, bool) {
	_, c, ok := f.LookupDirent(dir, name)
	return c, ok
}

// LookupDirent is Lookup that also returns the entry's dirent index.
func (f *Flist) LookupDirent(dir *Node, name string) (dirent, node uint32, ok bool) {
	lo, hi := dir.A, dir.A+dir.B
	for lo < hi {
		m := lo + (hi-lo)/2
		n, c := f.Dirent(m)
		switch s := string(n); {
		case s == name:
			return m, c, true
		case s < name:
			lo = m + 1
		default:
			hi = m
		}
	}
	return 0, 0, false
}

// Chunk decodes chunk ref c.
func (f *Flist) Chunk(c uint32) ChunkRef {
	r := f.chunks[c*chunkRefSize:]
	var ref ChunkRef
	copy(ref.Hash[:], r[:32])
	ref.StoredSize = le.Uint32(r[32:])
	ref.Flags = le.Uint32(r[36:])
	return ref
}

// chunksFor is how many chunks of size cs hold size bytes, without the
// wrap of (size+cs-1)/cs near 2^64.
func chunksFor(size uint64, cs uint32) uint64 {
	q := size / uint64(cs)
	if size%uint64(cs) != 0 {
		q++
	}
	return q
}

// Span is the part of one chunk a read covers: bytes [Off, Off+Len) of
// the file's K-th chunk, whose plain length is Plain.
type Span struct {
	K, Plain, Off, Len uint32
}

// Spans calls fn for each chunk that a read of n bytes at off of regular
// file nd covers, in order, clipped at the end of the file; fn returning
// false stops. Every span lies inside the file's own chunk range
// (K < nd.B) and inside its chunk (Off+Len <= Plain), whatever off and n.
func (f *Flist) Spans(nd *Node, off uint64, n int, fn func(Span) bool) {
	if off >= nd.Size || n <= 0 {
		return
	}
	end := nd.Size
	if rest := nd.Size - off; uint64(n) < rest {
		end = off + uint64(n)
	}
	cs := uint64(f.chunkSize)
	for pos := off; pos < end; {
		k := pos / cs
		if k >= uint64(nd.B) {
			return // unreachable for a validated flist; never index past it
		}
		plain := f.plainSize(nd, uint32(k))
		in := pos - k*cs
		if in >= uint64(plain) {
			return
		}
		l := min(end-pos, uint64(plain)-in)
		if !fn(Span{K: uint32(k), Plain: plain, Off: uint32(in), Len: uint32(l)}) {
			return
		}
		pos += l
	}
}

// plainSize is the length of the k-th chunk of regular file n.
func (f *Flist) plainSize(n *Node, k uint32) uint32 {
	start := uint64(k) * uint64(f.chunkSize)
	if rest := n.Size - start; rest < uint64(f.chunkSize) {
		return uint32(rest)
	}
	return f.chunkSize
}

// Target is a symlink's target.
func (f *Flist) Target(n *Node) []byte { return f.strs[n.A : n.A+n.B] }

// Xattr returns attribute x's name and value.
func (f *Flist) Xattr(x uint32) (name, value []byte) {
	r := f.xattrs[x*xattrSize:]
	no, nl, vo, vl := le.Uint32(r), le.Uint32(r[4:]), le.Uint32(r[8:]), le.Uint32(r[12:])
	return f.strs[no : no+nl], f.strs[vo : vo+vl]
}

// Walk calls fn for every entry below the root in depth-first, sorted
// order with its slash-separated path; fn returning an error stops the walk.
func (f *Flist) Walk(fn func(path string, node uint32, n *Node) error) error {
	var walk func(prefix string, dir uint32) error
	walk = func(prefix string, dir uint32) error {
		d := f.Node(dir)
		for e := d.A; e < d.A+d.B; e++ {
			name, c := f.Dirent(e)
			n := f.Node(c)
			p := prefix + string(name)
			if err := fn(p, c, &n); err != nil {
				return err
			}
			if n.IsDir() {
				if err := walk(p+"/", c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk("", 0)
}

func blake3Sum(b []byte) [32]byte { return blake3.Sum256(b) }
