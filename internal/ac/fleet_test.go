package ac

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
)

// A node reconnecting after a controller restart resumes its TLS session
// (the ticket keys come from the server key, not from the process), and
// a resumed session still answers to the node's current state: revoked
// in between, it is refused.
func TestSessionResumesAcrossRestart(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:aa:00:01")
	pool, err := acapi.LoadPool(ac.anchor)
	if err != nil {
		t.Fatal(err)
	}
	conf := acapi.TLSConfig(pool, cert)
	var resumed []bool
	conf.VerifyConnection = func(cs tls.ConnectionState) error { resumed = append(resumed, cs.DidResume); return nil }
	heartbeat := func() error {
		c := ac.clientWith(conf)
		defer c.HTTP.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Heartbeat(ctx, &acapi.Heartbeat{NodeID: resp.NodeID})
		return err
	}
	if err := heartbeat(); err != nil {
		t.Fatal(err)
	}
	ac.restart()
	if err := heartbeat(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if len(resumed) != 2 || resumed[0] || !resumed[1] {
		t.Fatalf("handshakes resumed: %v, want [false true]", resumed)
	}
	ac.setState(resp.NodeID, store.StateRevoked)
	ac.restart()
	err = heartbeat()
	if se, ok := statusOf(err); !ok || se.Code != http.StatusForbidden {
		t.Fatalf("revoked node over a resumed session: %v, want 403", err)
	}
	if !resumed[len(resumed)-1] {
		t.Fatalf("the revoked node's session was not resumed (%v): the test proves nothing", resumed)
	}
}

// At most MaxHandshakes handshakes run at once: with one slot held by a
// client that never speaks, the next client waits until that one's
// handshake times out, and is then served.
func TestHandshakesAreBounded(t *testing.T) {
	ac := newTestAC(t, ServeOptions{MaxHandshakes: 1})
	stall, err := net.Dial("tcp", ac.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	time.Sleep(200 * time.Millisecond) // the stalled connection takes the slot
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ac.client(nil).Health(ctx); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 8*time.Second {
		t.Fatalf("served after %v, while the only handshake slot was held (10 s timeout)", waited)
	}
	// The staller was cut at its handshake timeout.
	_ = stall.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := stall.Read(make([]byte, 1)); err == nil {
		t.Fatal("the stalled connection is still open")
	}
}
