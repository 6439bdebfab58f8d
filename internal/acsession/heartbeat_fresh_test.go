package acsession

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// countingSystem reports a different status on every call, as a node
// whose uptime grows and whose units settle would.
type countingSystem struct {
	mu    sync.Mutex
	calls int
}

func (c *countingSystem) Status(_ context.Context, hb *acapi.Heartbeat) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	hb.Uptime = acapi.Duration(time.Duration(c.calls) * time.Minute)
	hb.Units = map[string]string{"g8-sshd.service": "activating"}
	if c.calls > 1 {
		hb.Units["g8-sshd.service"] = "active"
	}
}

// Every heartbeat carries the node's status read afresh, not the one of
// the session's first beat: the controller shows what it was last sent.
func TestEveryHeartbeatReadsTheStatusAfresh(t *testing.T) {
	root := t.TempDir()
	ca, caKey := writeIdentity(t, root, "node-fresh")
	var mu sync.Mutex
	var got []acapi.Heartbeat
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+acapi.PathHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		var hb acapi.Heartbeat
		if err := json.NewDecoder(r.Body).Decode(&hb); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, hb)
		mu.Unlock()
		_, _ = w.Write([]byte(`{"node_id": "node-fresh"}`))
	})
	mux.HandleFunc("GET "+acapi.PathJobs, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	mux.HandleFunc("POST "+acapi.PathEvents, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"acked": 1000000}`))
	})
	srv := httptest.NewUnstartedServer(mux)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert(t, ca, caKey)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()

	cfg := testConfig(t, srv.URL)
	cfg.ConfigRoot = root
	cfg.Heartbeat = 20 * time.Millisecond
	cfg.System = &countingSystem{}
	cfg.NoApps = true
	stop := startSession(t, cfg)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d heartbeats", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	var last acapi.Duration
	for i, hb := range got {
		want := "active"
		if hb.Uptime == acapi.Duration(time.Minute) {
			want = "activating"
		}
		if hb.Uptime <= last || hb.Units["g8-sshd.service"] != want {
			t.Fatalf("heartbeat %d: uptime %v after %v, units %v; want a fresh status each time",
				i+1, time.Duration(hb.Uptime), time.Duration(last), hb.Units)
		}
		last = hb.Uptime
	}
}
