package acsession

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// FuzzQueueFiles: whatever meta.json and event files the queue finds at
// start (torn writes, a disk that lies, a planted file), it refuses a
// malformed meta.json or starts; it then hands out events in strictly
// increasing seq order, each with a kind, never loses a good event, and
// numbers new events above everything it holds and everything the
// controller acknowledged, so the controller never ignores one.
func FuzzQueueFiles(f *testing.F) {
	f.Add([]byte(`{"next_seq":3,"sent":true,"dropped":0,"acked":2}`), uint64(5), []byte(`{"time":"2026-01-01T00:00:00Z","kind":"x"}`))
	f.Add([]byte(`{"next_seq":1,"acked":100,"sent":true}`), uint64(2), []byte(`{"kind":"x"}`))
	f.Add([]byte(``), uint64(math.MaxUint64), []byte(`{"kind":"x"}`))
	f.Add([]byte(`{"next_seq":18446744073709551615}`), uint64(1), []byte(`{"kind":""}`))
	f.Add([]byte(`{`), uint64(1), []byte(`garbage`))
	f.Fuzz(func(t *testing.T, meta []byte, seq uint64, event []byte) {
		if seq == 0 || seq == 7 {
			return // 0 names no event file; 7 is the known good one
		}
		dir := t.TempDir()
		if len(meta) > 0 {
			if err := os.WriteFile(filepath.Join(dir, metaFile), meta, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write := func(s uint64, b []byte) {
			if err := os.WriteFile(filepath.Join(dir, eventName(s)), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write(7, []byte(`{"time":"2026-01-01T00:00:00Z","kind":"good"}`))
		write(seq, event)
		q, err := OpenQueue(dir, 100)
		if err != nil {
			return // malformed meta.json: refused, named
		}
		_, acked := q.Stats()
		evs, _ := q.Peek()
		good := false
		var top uint64
		for i, e := range evs {
			if e.Kind == "" || i > 0 && e.Seq <= evs[i-1].Seq {
				t.Fatalf("events %+v", evs)
			}
			good = good || e.Seq == 7 && e.Kind == "good"
			top = max(top, e.Seq)
		}
		if !good {
			t.Fatalf("the good event 7 was lost: %+v", evs)
		}
		next, err := q.Append("new", nil)
		if err != nil {
			if top == math.MaxUint64 || acked == math.MaxUint64 {
				return // no seq left: refusing is right
			}
			t.Fatalf("append: %v", err)
		}
		if next <= top || next <= acked {
			t.Fatalf("new event numbered %d, at or below seq %d held or %d acknowledged", next, top, acked)
		}
	})
}
