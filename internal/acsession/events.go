package acsession

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
)

// Queue limits.
const (
	DefaultQueueMax = 10000    // events kept while the controller is away
	MaxEventData    = 64 << 10 // bytes of one event's data
	batchEvents     = 256      // events per POST
	batchBytes      = 512 << 10
)

// Queue is the on-disk FIFO of events waiting for the controller. Each event
// is one file named by its sequence number, written durably before Append
// returns; it is removed only after the controller acknowledged a seq at or
// above it. Seqs are assigned here, strictly increasing, and survive
// restarts: the controller ignores seqs it has already stored, which makes
// delivery exactly-once across reconnects, lost acks and restarts.
//
// A queue in /run starts afresh at boot. Its first seqs could then be at or
// below what the controller stored from the previous boot, so before the
// first send the queue asks the controller for its high-water mark and, if
// needed, renumbers: safe exactly because nothing of this queue was sent
// yet (meta.Sent is set durably before the first send).
type Queue struct {
	dir string
	max int

	mu     sync.Mutex
	meta   queueMeta
	seqs   []uint64 // queued, ascending
	notify chan struct{}
	// metaDirty: meta.json is older than meta (the disk was full); every
	// later Append and Ack tries again.
	metaDirty bool
	// floor is an acknowledged event file kept on disk while meta.json
	// could not be written: a restart then still numbers new events
	// above it (the controller ignores the one re-sent event). 0: none.
	floor uint64
}

type queueMeta struct {
	NextSeq uint64 `json:"next_seq"`
	Sent    bool   `json:"sent"`    // some event of this queue may have reached the controller
	Dropped uint64 `json:"dropped"` // events refused while full, not yet reported
	Acked   uint64 `json:"acked"`   // highest seq the controller acknowledged
}

const metaFile = "meta.json"

// maxSeq bounds every seq the queue reads from disk or from the controller:
// far beyond any real count, and far enough from 2^64 that next_seq never
// wraps around to a seq the controller already has.
const maxSeq = 1 << 62

// OpenQueue opens (creating) the queue in dir, holding at most max events.
func OpenQueue(dir string, max int) (*Queue, error) {
	if max < 1 {
		return nil, fmt.Errorf("events: queue size %d: must be at least 1", max)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	q := &Queue{dir: dir, max: max, notify: make(chan struct{}, 1), meta: queueMeta{NextSeq: 1}}
	data, err := os.ReadFile(filepath.Join(dir, metaFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &q.meta); err != nil {
			return nil, fmt.Errorf("events: %s: malformed: %w", filepath.Join(dir, metaFile), err)
		}
		if q.meta.NextSeq > maxSeq || q.meta.Acked > maxSeq {
			return nil, fmt.Errorf("events: %s: malformed: next_seq %d, acked %d: above %d", filepath.Join(dir, metaFile), q.meta.NextSeq, q.meta.Acked, uint64(maxSeq))
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("events: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	for _, e := range ents {
		seq, ok := parseEventName(e.Name())
		if !ok {
			continue
		}
		if seq > maxSeq {
			// Not a seq this queue ever wrote; it would wrap next_seq.
			path := filepath.Join(dir, e.Name())
			_ = os.Rename(path, path+".corrupt")
			continue
		}
		q.seqs = append(q.seqs, seq)
		if seq >= q.meta.NextSeq {
			q.meta.NextSeq = seq + 1
		}
	}
	sort.Slice(q.seqs, func(i, j int) bool { return q.seqs[i] < q.seqs[j] })
	// Never hand out a seq the controller has acknowledged: it would be
	// ignored (meta.json may be older than the files, or garbled).
	if q.meta.NextSeq <= q.meta.Acked {
		q.meta.NextSeq = q.meta.Acked + 1
	}
	if len(q.seqs) > 0 {
		q.signal()
	}
	return q, nil
}

func eventName(seq uint64) string { return fmt.Sprintf("%020d.json", seq) }

func parseEventName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ".json")
	if !ok || len(s) != 20 {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil && seq > 0
}

// storedEvent is an event file; the seq is its name, so renumbering is a
// rename.
type storedEvent struct {
	Time time.Time       `json:"time"`
	Kind string          `json:"kind"`
	Data json.RawMessage `json:"data,omitempty"`
}

// ErrQueueFull is returned by Append when the queue holds max events.
var ErrQueueFull = errors.New("events: queue full")

// ErrEventDropped is returned by Append when the event could not be
// written (a full disk); it is counted like one refused by a full queue.
var ErrEventDropped = errors.New("events: not written")

// Append queues an event durably and returns its seq. When the queue is
// full, or the event cannot be written (a full disk), the event is refused
// and counted; the count is queued as an events.dropped event once there is
// room again, ahead of the next event, so the controller learns about the
// gap where it is. Older events are never dropped for newer ones: the boot
// timeline is what an operator needs most after an outage.
func (q *Queue) Append(kind string, data any) (uint64, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return 0, fmt.Errorf("events: %s: %w", kind, err)
	}
	if len(raw) > MaxEventData {
		return 0, fmt.Errorf("events: %s: %d bytes of data, more than %d", kind, len(raw), MaxEventData)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reportDroppedLocked(1)
	if len(q.seqs) >= q.max {
		q.meta.Dropped++
		_ = q.saveMeta() // best effort: the count is a report, not an event
		return 0, fmt.Errorf("%w (%d events): %s dropped", ErrQueueFull, q.max, kind)
	}
	seq, err := q.appendLocked(kind, raw)
	if err != nil {
		q.meta.Dropped++
		_ = q.saveMeta()
		return 0, fmt.Errorf("%w: %s dropped: %w", ErrEventDropped, kind, err)
	}
	if q.metaDirty {
		_ = q.saveMeta()
	}
	q.signal()
	return seq, nil
}

// reportDroppedLocked queues the events.dropped report when events were
// dropped and there is room for it and spare more events; it stays due
// (and counted) while the report itself cannot be written.
func (q *Queue) reportDroppedLocked(spare int) {
	if q.meta.Dropped == 0 || len(q.seqs)+1+spare > q.max {
		return
	}
	raw, _ := json.Marshal(acapi.EventsDroppedData{Count: q.meta.Dropped})
	if _, err := q.appendLocked(acapi.EventEventsDropped, raw); err != nil {
		return
	}
	q.meta.Dropped = 0
	_ = q.saveMeta()
	q.signal()
}

func (q *Queue) appendLocked(kind string, raw json.RawMessage) (uint64, error) {
	seq := q.meta.NextSeq
	b, err := json.Marshal(storedEvent{Time: time.Now().UTC(), Kind: kind, Data: raw})
	if err != nil {
		return 0, err
	}
	if err := atomicfile.Write(filepath.Join(q.dir, eventName(seq)), b, 0o600); err != nil {
		return 0, fmt.Errorf("events: %w", err)
	}
	q.meta.NextSeq++
	q.seqs = append(q.seqs, seq)
	return seq, nil
}

func (q *Queue) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// Ready fires when events were queued.
func (q *Queue) Ready() <-chan struct{} { return q.notify }

// Len is the number of queued events.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.seqs)
}

// Stats returns the dropped-events count not yet reported and the highest
// acknowledged seq.
func (q *Queue) Stats() (dropped, acked uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.meta.Dropped, q.meta.Acked
}

// Sent reports whether any event of this queue may have been sent.
func (q *Queue) Sent() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.meta.Sent
}

// Peek returns the oldest events, in order, up to one POST's worth. An
// event file that cannot be read back (disk corruption: writes are atomic)
// is moved aside as <name>.corrupt and reported in the returned error, so
// one bad file cannot block the queue for good; the events around it are
// still returned.
func (q *Queue) Peek() ([]acapi.Event, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []acapi.Event
	var bad []error
	size := 0
	keep := q.seqs[:0:0]
	for i, seq := range q.seqs {
		if len(out) >= batchEvents {
			keep = append(keep, q.seqs[i:]...)
			break
		}
		path := filepath.Join(q.dir, eventName(seq))
		data, err := os.ReadFile(path)
		var ev storedEvent
		if err == nil {
			err = json.Unmarshal(data, &ev)
		}
		if err == nil && ev.Kind == "" {
			err = errors.New("no kind")
		}
		if err != nil {
			_ = os.Rename(path, path+".corrupt")
			bad = append(bad, fmt.Errorf("events: %s: unreadable, moved aside: %w", path, err))
			continue
		}
		if len(out) > 0 && size+len(data) > batchBytes {
			keep = append(keep, q.seqs[i:]...)
			break
		}
		keep = append(keep, seq)
		size += len(data)
		out = append(out, acapi.Event{Seq: seq, Time: ev.Time, Kind: ev.Kind, Data: ev.Data})
	}
	q.seqs = keep
	return out, errors.Join(bad...)
}

// Ack removes the events the controller stored (seq <= upto). If events
// were dropped and there is room now, it queues the events.dropped report.
//
// meta.json is written before the files go, so next_seq stays above every
// seq the controller has. When it cannot be written (a full disk), Ack
// still makes progress instead of re-sending the same events forever: it
// removes the acknowledged files but the newest (the floor a restart
// numbers above), which frees the space to try again. An error means
// nothing was acknowledged.
func (q *Queue) Ack(upto uint64) error {
	if upto > maxSeq {
		return fmt.Errorf("events: acknowledgement of seq %d: no such seq", upto)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if upto > q.meta.Acked {
		q.meta.Acked = upto
	}
	// Never hand out a seq the controller already has: it would be ignored.
	if upto >= q.meta.NextSeq {
		q.meta.NextSeq = upto + 1
	}
	n := 0
	for n < len(q.seqs) && q.seqs[n] <= upto {
		n++
	}
	acked := q.seqs[:n]
	if q.saveMeta() != nil && n > 0 {
		top := acked[n-1]
		if err := q.removeEvents(acked[:n-1]); err != nil {
			return err
		}
		if q.floor != 0 {
			_ = os.Remove(filepath.Join(q.dir, eventName(q.floor)))
		}
		q.floor, q.seqs, acked = top, q.seqs[n:], nil
		_ = q.saveMeta() // with the space just freed
	}
	if err := q.removeEvents(acked); err != nil {
		return err
	}
	q.seqs = q.seqs[len(acked):]
	q.reportDroppedLocked(0)
	return nil
}

// removeEvents deletes the files of seqs, which lead q.seqs; on an error
// q.seqs starts at the first one left.
func (q *Queue) removeEvents(seqs []uint64) error {
	for i, seq := range seqs {
		if err := os.Remove(filepath.Join(q.dir, eventName(seq))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			q.seqs = q.seqs[i:]
			return fmt.Errorf("events: %w", err)
		}
	}
	return nil
}

// PrepareFirstSend runs once per queue before anything is sent: given the
// controller's high-water mark, it renumbers the queued events above it and
// then durably marks the queue as sent.
func (q *Queue) PrepareFirstSend(controllerAcked uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.meta.Sent {
		return nil
	}
	if len(q.seqs) > 0 && q.seqs[0] <= controllerAcked {
		shift := controllerAcked + 1 - q.seqs[0]
		// Highest first, so a rename never lands on a queued name; a crash
		// half way leaves the order intact and the next start redoes it.
		for i := len(q.seqs) - 1; i >= 0; i-- {
			from, to := q.seqs[i], q.seqs[i]+shift
			if err := os.Rename(filepath.Join(q.dir, eventName(from)), filepath.Join(q.dir, eventName(to))); err != nil {
				return fmt.Errorf("events: renumber: %w", err)
			}
			q.seqs[i] = to
		}
		q.meta.NextSeq = q.seqs[len(q.seqs)-1] + 1
	} else if q.meta.NextSeq <= controllerAcked {
		q.meta.NextSeq = controllerAcked + 1
	}
	q.meta.Sent = true
	return q.saveMeta()
}

func (q *Queue) saveMeta() error {
	b, err := json.Marshal(q.meta)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(q.dir, metaFile), b, 0o600); err != nil {
		q.metaDirty = true
		return fmt.Errorf("events: %w", err)
	}
	q.metaDirty = false
	if q.floor != 0 {
		_ = os.Remove(filepath.Join(q.dir, eventName(q.floor)))
		q.floor = 0
	}
	return nil
}
