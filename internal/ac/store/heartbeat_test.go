package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Every heartbeat replaces the stored status: `g8-ac node list` must show
// the node's latest uptime and unit states, not those of its first beat.
func TestHeartbeatStatusIsTheLatest(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		n, err := s.AddNode(ctx, []string{"52:54:00:00:03:01"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		beats := []acapi.Heartbeat{
			{BootID: "b1", Uptime: acapi.Duration(time.Minute), Units: map[string]string{"g8-sshd.service": "activating"}},
			{BootID: "b1", Uptime: acapi.Duration(65 * time.Minute), Units: map[string]string{"g8-sshd.service": "active"}},
		}
		for i := range beats {
			if err := s.RecordHeartbeat(ctx, n.ID, "10.0.0.1", &beats[i], t0.Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		one, err := s.Node(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		all, err := s.Nodes(ctx)
		if err != nil || len(all) != 1 {
			t.Fatalf("nodes: %v (%v)", all, err)
		}
		for _, got := range []*Node{one, all[0]} {
			if got.Status == nil || time.Duration(got.Status.Uptime) != 65*time.Minute || got.Status.Units["g8-sshd.service"] != "active" ||
				!got.LastSeen.Equal(t0.Add(time.Second)) {
				t.Fatalf("after two heartbeats: last seen %v, status %+v", got.LastSeen, got.Status)
			}
		}
	})
}

// A fleet's heartbeats go in one commit: each node gets its own status,
// an unknown node is reported missing without failing the others.
func TestRecordHeartbeatsInOneCommit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		var recs []HeartbeatRecord
		for i := range 50 {
			n, err := s.AddNode(ctx, []string{fmt.Sprintf("52:54:00:00:04:%02x", i)}, true, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, HeartbeatRecord{ID: n.ID, Addr: fmt.Sprint("10.0.4.", i),
				Heartbeat: &acapi.Heartbeat{BootID: fmt.Sprint("boot-", i), Hostname: fmt.Sprint("h", i)}, At: time.Now()})
		}
		recs = append(recs, HeartbeatRecord{ID: "n-nosuchnode", Heartbeat: &acapi.Heartbeat{}, At: time.Now()})
		before := s.GroupCommits()
		missing, err := s.RecordHeartbeats(ctx, recs)
		if err != nil {
			t.Fatal(err)
		}
		if c := s.GroupCommits() - before; c != 1 {
			t.Errorf("%d heartbeats took %d commits", len(recs), c)
		}
		if len(missing) != 1 || !missing["n-nosuchnode"] {
			t.Errorf("missing %v, want only n-nosuchnode", missing)
		}
		for _, r := range recs[:len(recs)-1] {
			n, err := s.Node(ctx, r.ID)
			if err != nil {
				t.Fatal(err)
			}
			if n.BootID != r.Heartbeat.BootID || n.Hostname != r.Heartbeat.Hostname || n.LastAddr != r.Addr {
				t.Fatalf("node %s: boot %q host %q addr %q, want %+v", r.ID, n.BootID, n.Hostname, n.LastAddr, r)
			}
		}
		if err := s.RecordHeartbeat(ctx, "n-nosuchnode", "", &acapi.Heartbeat{}, time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("heartbeat of an unknown node: %v, want not found", err)
		}
	})
}

// The change watch names the nodes whose state or certificate changed,
// or that were deleted, since a counter value, and only those: heartbeats
// change neither.
func TestChangedNodesNamesOnlyThoseThatChanged(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		var ids []string
		for i := range 4 {
			n, err := s.AddNode(ctx, []string{fmt.Sprintf("52:54:00:00:05:%02x", i)}, true, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, n.ID)
		}
		w, err := s.NewChangeWatch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		since, _, err := w.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RecordHeartbeat(ctx, ids[0], "10.0.0.1", &acapi.Heartbeat{BootID: "b"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetState(ctx, ids[1], StateRevoked, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.CertIssued(ctx, ids[2], "abc1", time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, err := w.ChangedNodes(ctx, since)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{ids[1], ids[2]}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("changed since %d: %v, want %v", since, got, want)
		}
		now, _, err := w.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PromoteCert(ctx, ids[2], "abc1"); err != nil {
			t.Fatal(err)
		}
		if got, err := w.ChangedNodes(ctx, now); err != nil || !slices.Equal(got, []string{ids[2]}) {
			t.Fatalf("changed since %d: %v (%v), want only %s", now, got, err, ids[2])
		}
	})
}
