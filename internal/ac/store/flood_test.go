package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// A node over its event quota loses its oldest events first; one
// events.dropped record by the controller stands in their place and grows
// with later drops, and the node's seq (exactly-once delivery) is kept.
func TestEventQuotaDropsOldestWithOneRecord(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:07:01"}, true, time.Now())
		other, _ := s.AddNode(ctx, []string{"52:54:00:00:07:02"}, true, time.Now())
		const quota = 20
		post := func(id string, from, to int) {
			t.Helper()
			var evs []acapi.Event
			for i := from; i <= to; i++ {
				evs = append(evs, acapi.Event{Seq: uint64(i), Time: time.Now(), Kind: "k", Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
			}
			if acked, err := s.AddEvents(ctx, id, evs, quota, time.Now()); err != nil || acked != uint64(to) {
				t.Fatalf("post %d..%d: acked %d, %v", from, to, acked, err)
			}
		}
		post(other.ID, 1, 5)
		post(n.ID, 1, 15)
		if evs, _ := s.Events(ctx, n.ID); len(evs) != 15 {
			t.Fatalf("under the quota: %d events stored, want 15", len(evs))
		}
		post(n.ID, 16, 30) // 30 > 20: 11 go, the record makes 20
		check := func(count, first, last, keptFrom int) {
			t.Helper()
			evs, err := s.Events(ctx, n.ID)
			if err != nil || len(evs) != quota {
				t.Fatalf("%d events stored (%v), want the quota %d", len(evs), err, quota)
			}
			var rec acapi.EventsDroppedData
			if evs[0].Kind != acapi.EventEventsDropped || json.Unmarshal(evs[0].Data, &rec) != nil ||
				rec != (acapi.EventsDroppedData{Count: uint64(count), First: uint64(first), Last: uint64(last), By: acapi.DroppedByController}) {
				t.Fatalf("first stored event %s %s, want the controller's record of %d dropped (%d..%d)", evs[0].Kind, evs[0].Data, count, first, last)
			}
			if evs[1].Seq != uint64(keptFrom) || evs[len(evs)-1].Seq != 30+uint64(keptFrom-12) {
				t.Fatalf("kept seq %d..%d, want from %d", evs[1].Seq, evs[len(evs)-1].Seq, keptFrom)
			}
		}
		check(11, 1, 11, 12)
		post(n.ID, 31, 35)
		check(16, 1, 16, 17)
		// Duplicates change nothing; the other node keeps all its events.
		if acked, _ := s.AddEvents(ctx, n.ID, []acapi.Event{{Seq: 35, Kind: "dup"}}, quota, time.Now()); acked != 35 {
			t.Fatalf("duplicate acked %d", acked)
		}
		check(16, 1, 16, 17)
		if evs, _ := s.Events(ctx, other.ID); len(evs) != 5 {
			t.Fatalf("the other node has %d events, want its 5", len(evs))
		}
		// Prune recounts: after it, the quota still holds exactly.
		if _, _, err := s.Prune(ctx, time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		post(n.ID, 36, 36)
		check(17, 1, 17, 18)
	})
}

// Unknown nodes become pending only as admit allows, told how many wait;
// a refusal leaves nothing behind. Known nodes are found without asking.
func TestSeenAtUnlockAdmitsNewNodes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		full := errors.New("full")
		var saw []int
		admit := func(pending int) error {
			saw = append(saw, pending)
			if pending >= 2 {
				return full
			}
			return nil
		}
		for i := 1; i <= 3; i++ {
			_, created, err := s.SeenAtUnlock(ctx, []string{fmt.Sprintf("52:54:00:00:08:%02x", i)}, identity(t), "", "10.0.0.1", time.Now(), admit)
			if want := i <= 2; created != want || (err == nil) != want {
				t.Fatalf("node %d: created %v, %v", i, created, err)
			}
			if i == 3 && !errors.Is(err, full) {
				t.Fatalf("node 3: %v, want admit's error", err)
			}
		}
		if fmt.Sprint(saw) != "[0 1 2]" {
			t.Fatalf("admit saw %v pending, want [0 1 2]", saw)
		}
		if _, err := s.Node(ctx, "52:54:00:00:08:03"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a refused node was recorded: %v", err)
		}
		saw = nil
		if n, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:08:01"}, nil, "", "10.0.0.1", time.Now(), admit); err != nil || created || n == nil || saw != nil {
			t.Fatalf("a known node: created %v, %v, admit asked %v", created, err, saw)
		}
	})
}

// Only pending nodes that were never approved and came from an unlock
// request expire, with their MACs, reports, events and jobs; a node the
// operator added, one approved once (rekeyed since) and young ones stay.
func TestExpirePendingOnlyNeverApproved(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		old := time.Now().Add(-100 * time.Hour)
		stranger, _, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:09:01", "52:54:00:00:09:02"}, identity(t), "", "10.0.0.1", old, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.CreateJob(ctx, stranger.ID, "ping", nil, time.Second, old)
		young, _, _ := s.SeenAtUnlock(ctx, []string{"52:54:00:00:09:03"}, identity(t), "", "10.0.0.1", time.Now(), nil)
		added, _ := s.AddNode(ctx, []string{"52:54:00:00:09:04"}, false, old)
		once, _, _ := s.SeenAtUnlock(ctx, []string{"52:54:00:00:09:05"}, identity(t), "", "10.0.0.1", old, nil)
		s.SetState(ctx, once.ID, StateApproved, old)
		s.Rekey(ctx, once.ID, old)

		ids, err := s.ExpirePending(ctx, time.Now().Add(-72*time.Hour), 100)
		if err != nil || len(ids) != 1 || ids[0] != stranger.ID {
			t.Fatalf("expired %v (%v), want only %s", ids, err, stranger.ID)
		}
		if _, err := s.Node(ctx, "52:54:00:00:09:02"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the expired node's MAC still resolves: %v", err)
		}
		var rows int
		if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM node_changes WHERE id = ?", stranger.ID).Scan(&rows); err != nil || rows != 0 {
			t.Fatalf("node_changes keeps %d rows of the expired node (%v)", rows, err)
		}
		for _, n := range []*Node{young, added, once} {
			if got, err := s.Node(ctx, n.ID); err != nil || got.State != StatePending {
				t.Fatalf("node %s: %v", n.ID, err)
			}
		}
		// Its MACs are free for a new node.
		if _, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:09:01"}, identity(t), "", "10.0.0.1", time.Now(), nil); err != nil || !created {
			t.Fatalf("MAC of an expired node: created %v, %v", created, err)
		}
	})
}
