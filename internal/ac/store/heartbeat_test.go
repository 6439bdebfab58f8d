package store

import (
	"context"
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
