package acsession

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/tests/testenv"
)

// smallDisk mounts a tmpfs of size bytes at a fresh directory.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes a file at path until the disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for {
		if _, err := f.Write(page); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// TestQueueOnAFullDisk: on a full disk, events that cannot be written are
// counted as dropped, acknowledged events still leave the queue (the same
// events are not sent forever), and once there is space again the queue
// reports the gap and carries on, restarts included, never reusing a seq.
func TestQueueOnAFullDisk(t *testing.T) {
	disk := smallDisk(t, "256k")
	dir := filepath.Join(disk, "events")
	q := openQueue(t, dir, 1000)
	for i := 0; i < 20; i++ {
		if _, err := q.Append("boot", i); err != nil {
			t.Fatal(err)
		}
	}
	fill(t, filepath.Join(disk, "filler"))

	for i := 0; i < 3; i++ {
		if _, err := q.Append("lost", i); !errors.Is(err, ErrEventDropped) {
			t.Fatalf("append on a full disk: %v, want ErrEventDropped", err)
		}
	}
	if dropped, _ := q.Stats(); dropped != 3 {
		t.Fatalf("dropped = %d after 3 failed appends, want 3", dropped)
	}

	// The controller stored 1..10: they leave the queue though meta.json
	// could not be written when the disk was full; the space they free is
	// enough for the report of the gap.
	if err := q.Ack(10); err != nil {
		t.Fatalf("ack on a full disk: %v", err)
	}
	evs, _ := q.Peek()
	if len(evs) != 11 || evs[0].Seq != 11 || evs[10].Kind != "events.dropped" || string(evs[10].Data) != `{"count":3}` {
		t.Fatalf("after ack(10): %v; want 11..20 and the report of 3 dropped", kinds(evs))
	}

	// Full again, and only one event acknowledged: nothing to free but
	// that event's file, yet the next send starts after it.
	fill(t, filepath.Join(disk, "filler2"))
	if err := q.Ack(11); err != nil {
		t.Fatalf("ack on a full disk: %v", err)
	}
	if evs, _ := q.Peek(); len(evs) == 0 || evs[0].Seq != 12 {
		t.Fatalf("after ack(11): next %v, want 12", seqsOf(evs))
	}
	// A restart still on the full disk numbers above everything the
	// controller has (it may get 11 once more and ignores it).
	q = openQueue(t, dir, 1000)
	if evs, _ := q.Peek(); len(evs) == 0 || evs[0].Seq < 11 || evs[0].Seq > 12 {
		t.Fatalf("after a restart on the full disk: next %v", seqsOf(evs))
	}

	// Space returns.
	for _, f := range []string{"filler", "filler2"} {
		if err := os.Remove(filepath.Join(disk, f)); err != nil {
			t.Fatal(err)
		}
	}
	seq, err := q.Append("back", nil)
	if err != nil || seq != 22 {
		t.Fatalf("append once space returned: seq %d, %v; want 22 (after the dropped report, 21)", seq, err)
	}
	evs, err = q.Peek()
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-2:]
	if last[0].Kind != "events.dropped" || string(last[0].Data) != `{"count":3}` || last[1].Kind != "back" || last[0].Seq != 21 {
		t.Fatalf("after recovery: %v", fmt.Sprint(kinds(evs)))
	}
	if err := q.Ack(22); err != nil || q.Len() != 0 {
		t.Fatalf("ack all: %v, %d left", err, q.Len())
	}
	q = openQueue(t, dir, 1000)
	if seq, err := q.Append("after restart", nil); err != nil || seq != 23 || q.Len() != 1 {
		t.Fatalf("after a restart: seq %d, %v, %d queued; want 23 alone", seq, err, q.Len())
	}
}

func kinds(evs []acapi.Event) []string {
	var k []string
	for _, e := range evs {
		k = append(k, fmt.Sprintf("%d:%s", e.Seq, e.Kind))
	}
	return k
}
