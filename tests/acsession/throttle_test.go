package acsession_test

import (
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/tests/testenv"
)

// Issue 16.2: a node over its request budget is answered 429 with a
// Retry-After. The session keeps its connection and sends nothing until
// the Retry-After has passed (no reconnect, no refused request repeated
// at once), and its heartbeats keep arriving at the pace the budget
// allows.
func TestSessionHonoursTheNodeBudget(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{Args: []string{"--node-rate", "0.25", "--node-burst", "4"}})
	n := newNode(t, ac, nil, "52:54:00:16:02:01")
	n.start(t) // a heartbeat a second: four times the budget
	n.waitState(t, "connected", 20*time.Second, connected)
	time.Sleep(20 * time.Second)

	out := n.Proc.Output()
	throttled, lost := strings.Count(out, sd.ACSessionThrottled.ID), strings.Count(out, sd.ACSessionLost.ID)
	t.Logf("20 s at four times the budget: %d pauses asked by the controller, %d connections lost", throttled, lost)
	if throttled == 0 {
		t.Fatalf("the controller never asked the session to slow down:\n%s", out)
	}
	// Each pause is a Retry-After of about 4 s (one token at 0.25/s).
	if lost != 0 || throttled > 8 {
		t.Fatalf("%d 429s and %d lost connections in 20 s: the session does not wait out the Retry-After on its connection:\n%s", throttled, lost, out)
	}
	if st := n.state(t); !st.Connected {
		t.Fatalf("the session is not connected: %+v", st)
	}
	if v := nodeList(t, ac, n.NodeID); v.LastSeen == nil || time.Since(*v.LastSeen) > 10*time.Second {
		t.Fatalf("no heartbeat in the last 10 s: last seen %v", v.LastSeen)
	}
}
