package acsession

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/acapi"
)

func openQueue(t *testing.T, dir string, max int) *Queue {
	t.Helper()
	q, err := OpenQueue(dir, max)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func seqsOf(evs []acapi.Event) []uint64 {
	var s []uint64
	for _, e := range evs {
		s = append(s, e.Seq)
	}
	return s
}

func TestQueueKeepsOrderAndSeqAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir, 100)
	for i := 0; i < 5; i++ {
		if seq, err := q.Append("test", map[string]int{"i": i}); err != nil || seq != uint64(i+1) {
			t.Fatalf("append %d: seq %d, %v", i, seq, err)
		}
	}
	if err := q.Ack(2); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, dir, 100) // restart
	if seq, _ := q.Append("test", map[string]int{"i": 5}); seq != 6 {
		t.Fatalf("seq after restart: %d", seq)
	}
	evs, err := q.Peek()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqsOf(evs)) != "[3 4 5 6]" {
		t.Fatalf("queued after restart: %v", seqsOf(evs))
	}
	var d map[string]int
	if err := json.Unmarshal(evs[0].Data, &d); err != nil || d["i"] != 2 || evs[0].Kind != "test" {
		t.Fatalf("first event: %+v", evs[0])
	}
	// Everything acked, then a restart: seqs keep growing, never reused.
	if err := q.Ack(6); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, dir, 100)
	if seq, _ := q.Append("test", nil); seq != 7 {
		t.Fatalf("seq after empty restart: %d", seq)
	}
}

func TestQueueFullRefusesNewestAndReportsTheGap(t *testing.T) {
	q := openQueue(t, t.TempDir(), 3)
	for i := 0; i < 3; i++ {
		if _, err := q.Append("boot", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := q.Append("late", i); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("append to full queue: %v", err)
		}
	}
	if dropped, _ := q.Stats(); dropped != 2 {
		t.Fatalf("dropped = %d", dropped)
	}
	if err := q.Ack(1); err != nil {
		t.Fatal(err)
	}
	evs, _ := q.Peek()
	if len(evs) != 3 || evs[0].Kind != "boot" || evs[2].Kind != acapi.EventEventsDropped || string(evs[2].Data) != `{"count":2}` {
		t.Fatalf("after ack: %+v", evs)
	}
}

// A fresh queue (a new boot) whose seqs the controller has already seen is
// renumbered above the controller's mark before its first send, never after.
func TestQueueRenumbersOnlyBeforeFirstSend(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir, 100)
	for i := 0; i < 4; i++ {
		_, _ = q.Append("boot", i)
	}
	_ = q.Ack(1) // pretend: not via a send; meta.sent is still false
	if err := q.PrepareFirstSend(40); err != nil {
		t.Fatal(err)
	}
	evs, _ := q.Peek()
	if fmt.Sprint(seqsOf(evs)) != "[41 42 43]" {
		t.Fatalf("renumbered: %v", seqsOf(evs))
	}
	var d int
	_ = json.Unmarshal(evs[0].Data, &d)
	if d != 1 {
		t.Fatalf("order lost: first event data %d", d)
	}
	if seq, _ := q.Append("x", nil); seq != 44 {
		t.Fatalf("next seq %d", seq)
	}
	// Once sent, the controller's mark never renumbers again.
	if err := q.PrepareFirstSend(1000); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, dir, 100)
	evs, _ = q.Peek()
	if fmt.Sprint(seqsOf(evs)) != "[41 42 43 44]" || !q.Sent() {
		t.Fatalf("after restart: %v sent=%v", seqsOf(evs), q.Sent())
	}
}

func TestQueueRenumberOfEmptyQueueMovesNextSeq(t *testing.T) {
	q := openQueue(t, t.TempDir(), 10)
	if err := q.PrepareFirstSend(7); err != nil {
		t.Fatal(err)
	}
	if seq, _ := q.Append("x", nil); seq != 8 {
		t.Fatalf("seq %d", seq)
	}
}

func TestQueuePeekBatchesBySize(t *testing.T) {
	q := openQueue(t, t.TempDir(), 1000)
	big := make([]byte, 40<<10)
	for i := 0; i < 30; i++ {
		if _, err := q.Append("big", big); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := q.Peek()
	if len(evs) == 0 || len(evs) == 30 {
		t.Fatalf("batch of %d events", len(evs))
	}
	b, _ := json.Marshal(evs)
	if len(b) > acapi.MaxBody {
		t.Fatalf("batch of %d bytes exceeds MaxBody", len(b))
	}
	if _, err := q.Append("huge", make([]byte, MaxEventData)); err == nil {
		t.Fatal("oversized event accepted")
	}
}

func TestQueueRejectsCorruptMeta(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, metaFile), []byte("{garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenQueue(dir, 10); err == nil {
		t.Fatal("corrupt meta accepted")
	}
}

// A corrupt event file is moved aside and reported; it does not block the
// events after it, and the rest of the queue keeps its order.
func TestQueueSkipsCorruptEvent(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir, 10)
	for i := 0; i < 3; i++ {
		_, _ = q.Append("e", i)
	}
	if err := os.WriteFile(filepath.Join(dir, eventName(2)), []byte("{torn"), 0o640); err != nil {
		t.Fatal(err)
	}
	evs, err := q.Peek()
	if err == nil || !strings.Contains(err.Error(), eventName(2)) {
		t.Fatalf("corruption not reported: %v", err)
	}
	if fmt.Sprint(seqsOf(evs)) != "[1 3]" || q.Len() != 2 {
		t.Fatalf("after corruption: %v, len %d", seqsOf(evs), q.Len())
	}
	if _, err := os.Stat(filepath.Join(dir, eventName(2)+".corrupt")); err != nil {
		t.Fatal("corrupt file not kept for the operator")
	}
	if evs, err := q.Peek(); err != nil || len(evs) != 2 {
		t.Fatalf("second peek: %v %v", evs, err)
	}
}

func FuzzParseEventName(f *testing.F) {
	f.Add("00000000000000000001.json")
	f.Add("meta.json")
	f.Add("00000000000000000000.json")
	f.Add("-0000000000000000001.json")
	f.Fuzz(func(t *testing.T, name string) {
		seq, ok := parseEventName(name)
		if ok && (seq == 0 || eventName(seq) != name) {
			t.Fatalf("%q parsed as %d, which names %q", name, seq, eventName(seq))
		}
	})
}
