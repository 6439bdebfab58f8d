package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openTable is, for a mount in passthrough mode, what the kernel holds open
// per node: how many opens the mount answered that were not yet released,
// and the backing id they share (0: opened without a backing file). The
// kernel refuses (EIO) to open an inode with a backing file while it is
// open without one, the reverse, and a second backing file for it, so every
// open of a node follows the first one still open.
//
// The table outlives the process that answered those opens: it lives in a
// memfd that goes to systemd's fd store with the connection (handover.go),
// one 64-bit word per node updated atomically, so a g8-fs killed at any
// point leaves whole entries. A backing id is the connection's, not the
// process's (FUSE_DEV_IOC_BACKING_OPEN registers it with the kernel's
// fuse_conn), so the next g8-fs answers a new open of a node that is still
// open with the same id, and unregisters it at the node's last RELEASE.
//
// Each word is opens<<32 | backing id. A word is written before the
// answer to OPEN and after RELEASE let go of the node, so a crash between
// the two leaves one open too many (the backing file stays registered until
// unmount) rather than one too few. What is not covered: a RELEASE that a
// killed g8-fs had counted but not answered is sent again to the next one
// (FUSE_NOTIFY_RESEND), which counts it a second time.
type openTable struct {
	f     *os.File // the memfd
	mem   []byte
	words []uint64
	locks [64]sync.Mutex // by node index
}

// The table's header: magic, node count, the flist's hash.
const (
	openTableMagic  = "g8fsopn1"
	openTableHeader = 4096 // keeps the words page aligned
)

func openTableSize(fl *Flist) int64 { return openTableHeader + 8*int64(fl.Len()) }

// newOpenTable makes an empty table for a new mount of fl.
func newOpenTable(name string, fl *Flist) (*openTable, error) {
	fd, err := unix.MemfdCreate("g8-fs-open-"+name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open table: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "g8-fs-open-"+name)
	if err := f.Truncate(openTableSize(fl)); err != nil {
		f.Close()
		return nil, fmt.Errorf("open table: %w", err)
	}
	t, err := mapOpenTable(f, fl)
	if err != nil {
		f.Close()
		return nil, err
	}
	h := fl.Hash()
	copy(t.mem[16:48], h[:])
	*(*uint32)(unsafe.Pointer(&t.mem[8])) = fl.Len()
	copy(t.mem, openTableMagic)
	return t, nil
}

// loadOpenTable maps the table a previous g8-fs kept for a mount of fl.
func loadOpenTable(f *os.File, fl *Flist) (*openTable, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open table: %w", err)
	}
	if st.Size() != openTableSize(fl) {
		return nil, fmt.Errorf("open table: %d bytes, want %d for %d nodes", st.Size(), openTableSize(fl), fl.Len())
	}
	t, err := mapOpenTable(f, fl)
	if err != nil {
		return nil, err
	}
	h := fl.Hash()
	if string(t.mem[:8]) != openTableMagic || *(*uint32)(unsafe.Pointer(&t.mem[8])) != fl.Len() || !bytes.Equal(t.mem[16:48], h[:]) {
		t.close()
		return nil, fmt.Errorf("open table: not one of this flist's")
	}
	return t, nil
}

func mapOpenTable(f *os.File, fl *Flist) (*openTable, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(openTableSize(fl)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("open table: mmap: %w", err)
	}
	t := &openTable{f: f, mem: mem}
	if fl.Len() > 0 {
		t.words = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[openTableHeader])), fl.Len())
	}
	return t, nil
}

// File is the memfd, for the fd store.
func (t *openTable) File() *os.File { return t.f }

func (t *openTable) close() {
	if t.mem != nil {
		unix.Munmap(t.mem)
		t.mem, t.words = nil, nil
	}
	t.f.Close()
}

// get is node idx's open count and backing id.
func (t *openTable) get(idx uint32) (opens uint32, backing int32) {
	w := atomic.LoadUint64(&t.words[idx])
	return uint32(w >> 32), int32(uint32(w))
}

func (t *openTable) set(idx, opens uint32, backing int32) {
	atomic.StoreUint64(&t.words[idx], uint64(opens)<<32|uint64(uint32(backing)))
}

// acquire counts an open of node idx and returns the backing id to answer
// it with (0: none). The first open of a node that is not open decides:
// first returns a registered backing id, or 0.
func (t *openTable) acquire(idx uint32, first func() int32) int32 {
	mu := &t.locks[idx%uint32(len(t.locks))]
	mu.Lock()
	defer mu.Unlock()
	opens, backing := t.get(idx)
	if opens == 0 {
		backing = first()
	}
	t.set(idx, opens+1, backing)
	return backing
}

// release counts a RELEASE of node idx and returns the backing id to
// unregister when it was the node's last open (else 0).
func (t *openTable) release(idx uint32, unregister func(int32)) {
	mu := &t.locks[idx%uint32(len(t.locks))]
	mu.Lock()
	defer mu.Unlock()
	opens, backing := t.get(idx)
	switch {
	case opens == 0:
		return // not counted (see the type's comment)
	case opens > 1:
		t.set(idx, opens-1, backing)
		return
	}
	t.set(idx, 0, 0)
	if backing > 0 {
		unregister(backing)
	}
}

// openNodes counts the nodes open and those open with a backing file.
func (t *openTable) openNodes() (open, backed int) {
	for i := range t.words {
		if o, b := t.get(uint32(i)); o > 0 {
			open++
			if b > 0 {
				backed++
			}
		}
	}
	return open, backed
}
