package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
)

// testFleet is a store with n approved nodes, each holding a certificate
// from a real node CA, and the server that serves them.
func testFleet(t *testing.T, n int, cfg Config) (*Server, *store.Store, []string, []*x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, "127.0.0.1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(dir, pki.NodeCACert, pki.NodeCAKey)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "ac.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})
	ctx := context.Background()
	var ids []string
	var certs []*x509.Certificate
	for i := range n {
		node, err := st.AddNode(ctx, []string{fmt.Sprintf("52:54:00:ab:00:%02x", i)}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		_, cert, err := ca.SignCSR(csrPEM, node.ID, pki.DefaultNodeValidity)
		if err != nil {
			t.Fatal(err)
		}
		// Issued and already in use (promoted), as a fleet's certificates are.
		if err := st.CertIssued(ctx, node.ID, cert.SerialNumber.Text(16), cert.NotAfter); err != nil {
			t.Fatal(err)
		}
		if _, err := st.PromoteCert(ctx, node.ID, cert.SerialNumber.Text(16)); err != nil {
			t.Fatal(err)
		}
		ids, certs = append(ids, node.ID), append(certs, cert)
	}
	cfg.Store, cfg.NodeCA = st, ca
	s := New(cfg)
	t.Cleanup(s.Stop)
	return s, st, ids, certs
}

// nodeRequest is a request as the TLS layer hands it on, with the node's
// client certificate.
func nodeRequest(cert *x509.Certificate, method, path string, body []byte) *http.Request {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	return r
}

// Heartbeats arriving together share one commit, and each is answered
// only once it is stored.
func TestHeartbeatsShareACommit(t *testing.T) {
	const nodes = 40
	s, st, ids, certs := testFleet(t, nodes, Config{HeartbeatBatch: 500 * time.Millisecond})
	ctx := context.Background()
	// Each node's identity looked up once first: on a busy machine the
	// first lookups alone could outlast a batch.
	for i, id := range ids {
		body, _ := json.Marshal(acapi.Heartbeat{NodeID: id})
		s.ServeHTTP(httptest.NewRecorder(), nodeRequest(certs[i], http.MethodPost, acapi.PathHeartbeat, body))
	}
	before := st.GroupCommits()
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(acapi.Heartbeat{NodeID: id, BootID: "beat"})
			w := httptest.NewRecorder()
			s.ServeHTTP(w, nodeRequest(certs[i], http.MethodPost, acapi.PathHeartbeat, body))
			if w.Code != http.StatusOK {
				errs[i] = fmt.Errorf("heartbeat %d: %d %s", i, w.Code, w.Body)
				return
			}
			if n, err := st.Node(ctx, id); err != nil || n.BootID != "beat" {
				errs[i] = fmt.Errorf("heartbeat %d answered before it was stored (%v)", i, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The heartbeats may straddle two batches.
	if c := st.GroupCommits() - before; c > 2 {
		t.Fatalf("%d heartbeats took %d commits", nodes, c)
	}
}

// Over MaxInFlight node requests at work, the next is told to come back
// later: 503 with a Retry-After, nothing stored.
func TestBusyControllerSaysRetryAfter(t *testing.T) {
	s, st, ids, certs := testFleet(t, 2, Config{MaxInFlight: 1, RetryAfterBusy: 5 * time.Second})
	ctx := context.Background()
	beat := func(i int) *httptest.ResponseRecorder {
		body, _ := json.Marshal(acapi.Heartbeat{NodeID: ids[i], BootID: "b"})
		w := httptest.NewRecorder()
		s.ServeHTTP(w, nodeRequest(certs[i], http.MethodPost, acapi.PathHeartbeat, body))
		return w
	}
	// Another process holds the store's write lock: the first heartbeat
	// waits for it, at work.
	db, err := sql.Open("sqlite", st.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lock, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- beat(0) }()
	time.Sleep(500 * time.Millisecond)
	w := beat(1)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("second request while the first is at work: %d %s, want 503", w.Code, w.Body)
	}
	if ra := w.Header().Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("503 without a Retry-After (%q)", ra)
	}
	if _, err := lock.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if w := <-first; w.Code != http.StatusOK {
		t.Fatalf("first heartbeat: %d %s", w.Code, w.Body)
	}
	if n, _ := st.Node(ctx, ids[1]); n.BootID != "" {
		t.Fatal("the refused heartbeat was stored")
	}
	if w := beat(1); w.Code != http.StatusOK {
		t.Fatalf("heartbeat once the controller is free: %d %s", w.Code, w.Body)
	}
}

// One node's change (its certificate promoted, its state revoked) drops
// that node's cache entry and wakes that node's long-poll only: a fleet
// coming up promotes a certificate per node, and waking every poll for
// each cost N times N certificate checks and store reads (10,000
// simulated nodes could not all connect).
func TestNodeChangeWakesOnlyThatNodesPoll(t *testing.T) {
	const nodes = 20
	s, st, ids, certs := testFleet(t, nodes, Config{})
	ctx := context.Background()
	done := make([]chan int, nodes)
	for i := range nodes {
		done[i] = make(chan int, 1)
		go func() {
			w := httptest.NewRecorder()
			s.ServeHTTP(w, nodeRequest(certs[i], http.MethodGet, acapi.PathJobs+"?wait=20s", nil))
			done[i] <- w.Code
		}()
	}
	// Every poll waiting, every node cached.
	waiting := func() map[string]map[chan struct{}]bool {
		s.queue.mu.Lock()
		defer s.queue.mu.Unlock()
		return maps.Clone(s.queue.waiters)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(waiting()) < nodes || !allCached(s, ids) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d polls waiting", len(waiting()), nodes)
		}
		// A lookup fills the cache once the store watch runs.
		for i, id := range ids {
			body, _ := json.Marshal(acapi.Heartbeat{NodeID: id})
			s.ServeHTTP(httptest.NewRecorder(), nodeRequest(certs[i], http.MethodPost, acapi.PathHeartbeat, body))
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := waiting()
	if _, err := st.SetState(ctx, ids[0], store.StateRevoked, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.CertIssued(ctx, ids[1], "beef", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done[0]:
		if code != http.StatusForbidden {
			t.Fatalf("the revoked node's poll ended %d, want 403", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked node's poll did not end")
	}
	// Node 1's poll was woken and waits again, on its new registration.
	rewaits := func() bool { w := waiting()[ids[1]]; return len(w) == 1 && !maps.Equal(w, before[ids[1]]) }
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && !rewaits(); {
		time.Sleep(20 * time.Millisecond)
	}
	after := waiting()
	if len(after[ids[1]]) != 1 || maps.Equal(after[ids[1]], before[ids[1]]) {
		t.Fatalf("node 1's poll was not woken by its certificate change (%d waiting)", len(after[ids[1]]))
	}
	for _, id := range ids[2:] {
		if !maps.Equal(after[id], before[id]) {
			t.Fatalf("node %s's poll was woken by other nodes' changes", id)
		}
	}
	if !allCached(s, ids[2:]) {
		t.Fatal("other nodes' cache entries were dropped")
	}
	for i := 1; i < nodes; i++ {
		select {
		case code := <-done[i]:
			t.Fatalf("node %d's poll ended (%d)", i, code)
		default:
		}
	}
}

func allCached(s *Server, ids []string) bool {
	s.queue.cmu.Lock()
	defer s.queue.cmu.Unlock()
	for _, id := range ids {
		if _, ok := s.queue.nodes[id]; !ok {
			return false
		}
	}
	return true
}

// A node certificate's chain is checked once, not on every request, yet
// the certificate is refused from the moment it expires, and one that
// does not chain to the node CA is never let in.
func TestRememberedChainStillExpires(t *testing.T) {
	var now atomic.Pointer[time.Time]
	t0 := time.Now()
	now.Store(&t0)
	s, _, ids, certs := testFleet(t, 1, Config{Now: func() time.Time { return *now.Load() }})
	beat := func(cert *x509.Certificate) int {
		body, _ := json.Marshal(acapi.Heartbeat{NodeID: ids[0]})
		w := httptest.NewRecorder()
		s.ServeHTTP(w, nodeRequest(cert, http.MethodPost, acapi.PathHeartbeat, body))
		return w.Code
	}
	for range 2 {
		if code := beat(certs[0]); code != http.StatusOK {
			t.Fatalf("heartbeat: %d", code)
		}
	}
	if len(s.verified) != 1 {
		t.Fatalf("%d chains remembered, want 1", len(s.verified))
	}
	later := certs[0].NotAfter.Add(time.Second)
	now.Store(&later)
	if code := beat(certs[0]); code != http.StatusUnauthorized {
		t.Fatalf("heartbeat with an expired certificate: %d, want 401", code)
	}
	now.Store(&t0)
	// The same certificate with its signature's last byte changed: what
	// was remembered must not stand for it.
	raw := bytes.Clone(certs[0].Raw)
	raw[len(raw)-1] ^= 1
	forged, err := x509.ParseCertificate(raw)
	if err != nil {
		t.Fatal(err)
	}
	if code := beat(forged); code != http.StatusUnauthorized {
		t.Fatalf("heartbeat with a certificate the node CA did not sign: %d, want 401", code)
	}
}

// A lookup fills the node cache unless that node changed while the store
// was read: other nodes' changes do not keep it out. While a fleet comes
// up some node's certificate is promoted at every moment, and when any
// change kept every lookup from filling, each request of every node read
// the store (a quarter of the controller's CPU at 10,000 nodes coming up).
func TestNodeCachedWhileOtherNodesChange(t *testing.T) {
	s, _, ids, certs := testFleet(t, 3, Config{})
	beat := func(i int) {
		body, _ := json.Marshal(acapi.Heartbeat{NodeID: ids[i]})
		w := httptest.NewRecorder()
		s.ServeHTTP(w, nodeRequest(certs[i], http.MethodPost, acapi.PathHeartbeat, body))
		if w.Code != http.StatusOK {
			t.Fatalf("heartbeat of node %d: %d %s", i, w.Code, w.Body)
		}
	}
	// The watch has its baseline once a lookup fills the cache.
	for end := time.Now().Add(10 * time.Second); !allCached(s, ids[2:]); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the node cache never filled")
		}
		beat(2)
	}
	s.queue.hook = func() { s.queue.forget(ids[1]) }
	beat(0)
	if !allCached(s, ids[:1]) {
		t.Fatal("node 0 was not cached because node 1 changed while it was read")
	}
	if allCached(s, ids[1:2]) {
		t.Fatal("node 1 is cached after its change")
	}
	// A node that changes while it is read is not cached with what was
	// read before its change.
	s.queue.forget(ids[0])
	s.queue.hook = func() { s.queue.forget(ids[0]) }
	beat(0)
	s.queue.hook = nil
	if allCached(s, ids[:1]) {
		t.Fatal("node 0 was cached with what was read before its change")
	}
	beat(0)
	if !allCached(s, ids[:1]) {
		t.Fatal("node 0 not cached by its next lookup")
	}
}
