package sandbox

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/atomicfile"
)

// Chunks are written without fsync (one per chunk would cost a cold read
// a disk flush per MiB), so after a power cut a chunk may be torn, and one
// found on disk at start is checked before it is served. Hashing every
// chunk again after every restart costs about as much CPU as reading it,
// though, and is needless for chunks that reached stable storage. So
// chunks are written in epochs: each one's stamp (the user.g8fs.b3 xattr)
// holds, after the BLAKE3-256 of its plain bytes, the cache's id and the
// epoch it was written in; a sync cycle moves writers on to the next epoch,
// syncs the file system (syncfs) and then records durably, in
// <cache>/durable, that every chunk of the epochs so far is on stable
// storage. At start a chunk whose stamp is of a recorded epoch is checked
// for its size only; any other is hashed as before, and stamped with the
// current epoch if good. Sync cycles run 30 s after the first chunk
// written since the last one, and at a clean stop.
//
// Epochs are never reused across runs, or a torn chunk written by a run
// that died before its cycle could be taken for one of a later run's
// recorded epochs: the record also reserves the next epoch, so the epoch in
// use is always at most the reserved one on disk, and a new run starts
// after it.
type durability struct {
	path string // the record

	// Writers hold mu for reading from taking the epoch until their chunk
	// is in place; a cycle moves to the next epoch holding it, so the
	// syncfs after covers every chunk of the epochs it records.
	mu      sync.RWMutex
	id      uint64
	trusted uint64      // at start: chunks of id stamped with an epoch up to this are on stable storage
	epoch   uint64      // stamped on chunks written now; 0 (no epoch: never trusted) until reserved
	pending atomic.Bool // chunks stamped since the last cycle

	cycleMu sync.Mutex // one cycle at a time
	timerMu sync.Mutex
	timer   *time.Timer
}

// stampLen is a stamp with an epoch; one of sumLen (a cache of an earlier
// g8-fs, or written before the epoch was reserved) has none.
const (
	sumLen   = 32
	stampLen = sumLen + 8 + 8
)

// syncDelay is how long after the first chunk written since the last cycle
// the next one runs: the kernel writes dirty data back after about as
// long anyway, so the syncfs then adds little but its flush.
const syncDelay = 30 * time.Second

// openDurability reads the record in root; a missing or unreadable one
// trusts nothing and starts a new id.
func openDurability(root string) (d *durability, reserved uint64) {
	d = &durability{path: filepath.Join(root, "durable")}
	if b, err := os.ReadFile(d.path); err == nil {
		if _, err := fmt.Sscanf(string(b), "g8fs durable 1\nid %x\nsynced %d\nreserved %d\n", &d.id, &d.trusted, &reserved); err == nil && d.trusted <= reserved {
			return d, reserved
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	d.id, d.trusted = binary.LittleEndian.Uint64(b[:]), 0
	return d, 0
}

// reserve starts this run's first epoch after every one an earlier run may
// have used. Until it returns chunks get stamps without an epoch.
func (d *durability) reserve(last uint64) {
	first := last + 1
	if d.record(d.trusted, first+1) != nil {
		return // no record: stamps without epochs, hashed at the next start
	}
	d.mu.Lock()
	d.epoch = first
	d.mu.Unlock()
}

// record writes the record durably: epochs up to synced are on stable
// storage, and none after reserved is in use.
func (d *durability) record(synced, reserved uint64) error {
	return atomicfile.Write(d.path, fmt.Appendf(nil, "g8fs durable 1\nid %016x\nsynced %d\nreserved %d\n", d.id, synced, reserved), 0o600)
}

// stamp returns the stamp of a chunk whose plain bytes hash to sum, for a
// writer that puts the chunk in place before calling done.
func (d *durability) stamp(sum Hash) (stamp []byte, done func()) {
	d.mu.RLock()
	if d.epoch == 0 {
		return sum[:], d.mu.RUnlock
	}
	stamp = make([]byte, stampLen)
	copy(stamp, sum[:])
	binary.LittleEndian.PutUint64(stamp[sumLen:], d.id)
	binary.LittleEndian.PutUint64(stamp[sumLen+8:], d.epoch)
	if !d.pending.Swap(true) {
		d.timerMu.Lock()
		d.timer = time.AfterFunc(syncDelay, d.cycle)
		d.timerMu.Unlock()
	}
	return stamp, d.mu.RUnlock
}

// trust reports whether stamp (with its sum) is of an epoch recorded as on
// stable storage when this run started.
func (d *durability) trust(stamp []byte) bool {
	if len(stamp) != stampLen {
		return false
	}
	e := binary.LittleEndian.Uint64(stamp[sumLen+8:])
	return binary.LittleEndian.Uint64(stamp[sumLen:]) == d.id && e != 0 && e <= d.trusted
}

// restamp gives chunk fd, just found good by its hash sum, the current
// epoch, so that it need not be hashed after the next restart.
func (d *durability) restamp(fd int, sum Hash) {
	stamp, done := d.stamp(sum)
	defer done()
	if len(stamp) == stampLen {
		_ = unix.Fsetxattr(fd, sumXattr, stamp, 0)
	}
}

// cycle records the epochs so far as on stable storage, if chunks were
// stamped since the last cycle.
func (d *durability) cycle() {
	d.cycleMu.Lock()
	defer d.cycleMu.Unlock()
	d.mu.Lock()
	done := d.epoch
	if done == 0 || !d.pending.Swap(false) {
		d.mu.Unlock()
		return
	}
	d.epoch++ // reserved by the last record
	d.mu.Unlock()
	err := syncfs(filepath.Dir(d.path))
	if err == nil {
		err = d.record(done, done+2)
	}
	if err != nil {
		// The next epoch is not reserved: stop stamping epochs.
		d.mu.Lock()
		d.epoch = 0
		d.mu.Unlock()
	}
}

// close runs a last cycle, for a clean stop.
func (d *durability) close() {
	d.timerMu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timerMu.Unlock()
	d.cycle()
}

func syncfs(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}
