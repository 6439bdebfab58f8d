package acsession

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// writeIdentity makes a throw-away CA and a node certificate signed by it
// under root/ssl, as enrollment would.
func writeIdentity(t *testing.T, root, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0xabc), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	ssl := filepath.Join(root, "ssl")
	if err := os.MkdirAll(ssl, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, blk := range map[string]*pem.Block{
		"ca.pem":   {Type: "CERTIFICATE", Bytes: caDER},
		"node.pem": {Type: "CERTIFICATE", Bytes: der},
		"node.key": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(ssl, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, caKey
}

// notifySocket is a fake systemd notify socket; it records each datagram
// with its arrival time.
type notifySocket struct {
	mu   sync.Mutex
	msgs []notifyMsg
}

type notifyMsg struct {
	at  time.Time
	msg string
}

func fakeNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ns := &notifySocket{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ns.mu.Lock()
			ns.msgs = append(ns.msgs, notifyMsg{time.Now(), string(buf[:n])})
			ns.mu.Unlock()
		}
	}()
	return ns
}

// count returns how many messages equal to msg arrived in [from, to).
func (ns *notifySocket) count(msg string, from, to time.Time) int {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	n := 0
	for _, m := range ns.msgs {
		if m.msg == msg && !m.at.Before(from) && m.at.Before(to) {
			n++
		}
	}
	return n
}

func (ns *notifySocket) last(prefix string) string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for i := len(ns.msgs) - 1; i >= 0; i-- {
		if strings.HasPrefix(ns.msgs[i].msg, prefix) {
			return ns.msgs[i].msg
		}
	}
	return ""
}

// stallingSystem is a heartbeat probe that can be made to hang, as a
// wedged D-Bus call would.
type stallingSystem struct {
	mu      sync.Mutex
	stall   chan struct{} // non-nil: Status blocks until it is closed
	stalled chan struct{} // closed when a Status call started blocking
}

func (s *stallingSystem) Status(_ context.Context, hb *acapi.Heartbeat) {
	s.mu.Lock()
	stall, stalled := s.stall, s.stalled
	s.mu.Unlock()
	if stall != nil {
		select {
		case <-stalled:
		default:
			close(stalled)
		}
		<-stall // deliberately ignores ctx: that is what a wedged call does
	}
	hb.BootID = "test"
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig(t *testing.T, controller string) Config {
	t.Helper()
	stateDir, root := t.TempDir(), t.TempDir()
	writeIdentity(t, root, "node-test")
	if controller != "" {
		if err := state.Write(stateDir, &state.Net{Controller: controller, Interface: "eth0", Method: "static"}); err != nil {
			t.Fatal(err)
		}
	}
	return Config{StateDir: stateDir, ConfigRoot: root, Log: quietLog(),
		Retry: backoff.Policy{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond, Factor: 2}}
}

func startSession(t *testing.T, cfg Config) (cancel func()) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	cancel = func() {
		once.Do(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(cancel)
	return cancel
}

// The loop pings the watchdog itself: while it works pings arrive at the
// interval; when one of its steps hangs they stop, so systemd kills the
// unit; when the step returns they resume.
func TestWatchdogPingsStopWhenTheLoopStalls(t *testing.T) {
	ns := fakeNotifySocket(t)
	sys := &stallingSystem{}
	cfg := testConfig(t, "https://127.0.0.1:1") // nothing listens: the loop keeps retrying
	cfg.Watchdog = 100 * time.Millisecond
	cfg.System = sys
	cfg.Notifier = &sd.Notifier{}
	startSession(t, cfg)

	t0 := time.Now()
	time.Sleep(time.Second)
	if n := ns.count("WATCHDOG=1", t0, time.Now()); n < 5 {
		t.Fatalf("working loop: %d watchdog pings in 1s, want at least 5 (every 100ms)", n)
	}

	release := make(chan struct{})
	stalled := make(chan struct{})
	sys.mu.Lock()
	sys.stall, sys.stalled = release, stalled
	sys.mu.Unlock()
	select {
	case <-stalled:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop never reached the heartbeat probe")
	}
	t1 := time.Now()
	time.Sleep(time.Second)
	if n := ns.count("WATCHDOG=1", t1, time.Now()); n != 0 {
		t.Fatalf("stalled loop still pinged the watchdog %d times", n)
	}

	sys.mu.Lock()
	sys.stall = nil
	sys.mu.Unlock()
	close(release)
	t2 := time.Now()
	time.Sleep(time.Second)
	if n := ns.count("WATCHDOG=1", t2, time.Now()); n < 5 {
		t.Fatalf("unstalled loop: %d pings in 1s", n)
	}
}

// Without net.json or an identity the session waits and says for what,
// naming the file.
func TestWaitsForInputsAndSaysWhich(t *testing.T) {
	ns := fakeNotifySocket(t)
	cfg := testConfig(t, "")
	cfg.Notifier = &sd.Notifier{}
	os.RemoveAll(filepath.Join(cfg.ConfigRoot, "ssl"))
	startSession(t, cfg)
	waitStatus(t, ns, "waiting for the controller URL from g8-netup", filepath.Join(cfg.StateDir, "net.json"))

	if err := state.Write(cfg.StateDir, &state.Net{Controller: "https://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ns, "waiting for the node identity", filepath.Join(cfg.ConfigRoot, "ssl", "ca.pem"))

	// Read once, not polled: setStatus writes the state file before it
	// sends STATUS=, so a reader that saw the line must find the new error.
	// Polling here would hide a regression of that order (the old flake).
	var st state.ACSession
	if err := state.Read(cfg.StateDir, &st); err != nil || st.Connected || !strings.Contains(st.LastError, "ca.pem") {
		t.Fatalf("state file: %+v (%v)", st, err)
	}
}

// waitStatus waits for the STATUS= line saying all of want. The deadline is
// only a backstop for a loaded CI machine; it returns as soon as it is seen.
func waitStatus(t *testing.T, ns *notifySocket, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s := ns.last("STATUS=")
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("STATUS never said %q; last: %q", want, ns.last("STATUS="))
}

// A server whose certificate is not signed by ssl/ca.pem is never talked
// to: the session stays down, says why, and sends no request.
func TestImpostorControllerIsRefused(t *testing.T) {
	var got int
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got++
		mu.Unlock()
	}))
	defer srv.Close()
	ns := fakeNotifySocket(t)
	cfg := testConfig(t, srv.URL)
	cfg.Notifier = &sd.Notifier{}
	startSession(t, cfg)
	waitStatus(t, ns, "unreachable", "certificate signed by unknown authority")
	mu.Lock()
	defer mu.Unlock()
	if got != 0 {
		t.Fatalf("impostor received %d requests", got)
	}
	if ns.last("READY=1") != "" {
		t.Fatal("READY=1 without a verified round trip")
	}
}

func TestRefusedRecognisesRevocation(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&acapi.StatusError{Code: 403}, true},
		{fmt.Errorf("heartbeat: %w", &acapi.StatusError{Code: 401}), true},
		{tls.AlertError(44), true}, // certificate_revoked
		{errors.New("controller x: Post \"...\": remote error: tls: bad certificate"), true},
		{&acapi.StatusError{Code: 500}, false},
		{&acapi.StatusError{Code: 404}, false},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
		{errors.New("tls: failed to verify certificate: x509: certificate signed by unknown authority"), false},
	}
	for _, c := range cases {
		if got := refused(c.err); got != c.want {
			t.Errorf("refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestLoadIdentityNamesTheFile(t *testing.T) {
	root, stateDir := t.TempDir(), t.TempDir()
	writeIdentity(t, root, "node-7")
	id, err := LoadIdentity(root, stateDir)
	if err != nil || id.NodeID != "node-7" || id.Serial != "abc" {
		t.Fatalf("%+v %v", id, err)
	}
	// g8-unlock's node id wins over the CN.
	if err := state.Write(stateDir, &state.Unlock{NodeID: "n-from-unlock"}); err != nil {
		t.Fatal(err)
	}
	if id, _ := LoadIdentity(root, stateDir); id.NodeID != "n-from-unlock" {
		t.Fatalf("node id %q", id.NodeID)
	}
	if err := os.WriteFile(filepath.Join(root, "ssl", "node.key"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(root, stateDir); err == nil || !strings.Contains(err.Error(), "node.key") {
		t.Fatalf("bad key: %v", err)
	}
}

// serverCert issues a server certificate for 127.0.0.1 from the node's CA.
func serverCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ac"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// mtlsController serves mux over HTTP/2 with a certificate from the
// node's CA, requiring the node's client certificate; verify (may be nil)
// sees every handshake.
func mtlsController(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, mux http.Handler, verify func(tls.ConnectionState) error) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(mux)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert(t, ca, caKey)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		VerifyConnection: verify}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// Reconnecting forever must not leak: a controller that drops every second
// heartbeat makes the session reconnect dozens of times, each time with a
// long-poll in flight, and the process's open descriptors stay flat.
func TestReconnectsDoNotLeakConnections(t *testing.T) {
	root := t.TempDir()
	ca, caKey := writeIdentity(t, root, "node-leak")
	var mu sync.Mutex
	heartbeats, connects := 0, 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+acapi.PathHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		heartbeats++
		fail := heartbeats%2 == 0
		if !fail {
			connects++
		}
		mu.Unlock()
		if fail {
			http.Error(w, `{"error": "flapping"}`, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"node_id": "node-leak"}`))
	})
	mux.HandleFunc("GET "+acapi.PathJobs, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a long-poll that never answers
	})
	mux.HandleFunc("POST "+acapi.PathEvents, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"acked": 1000000}`))
	})
	srv := mtlsController(t, ca, caKey, mux, nil)
	cfg := testConfig(t, srv.URL)
	cfg.ConfigRoot = root
	cfg.Heartbeat = 20 * time.Millisecond
	startSession(t, cfg)
	waitConnects := func(n int) {
		// Generous: under -race on a loaded 2-core machine 60 reconnects
		// took over 20 s; what is checked is the descriptor count.
		deadline := time.Now().Add(90 * time.Second)
		for {
			mu.Lock()
			c := connects
			mu.Unlock()
			if c >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d connects", c)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitConnects(5)
	before := openFDs(t)
	waitConnects(60)
	time.Sleep(200 * time.Millisecond)
	if after := openFDs(t); after > before+6 {
		t.Fatalf("open descriptors grew from %d to %d over 55 reconnects", before, after)
	}
}

// A reconnect resumes the TLS session of the connection before (what lets
// a controller take its whole fleet back after a restart without a full
// handshake per node), with the node's client certificate still the
// identity the server sees.
func TestReconnectResumesTLSSession(t *testing.T) {
	root := t.TempDir()
	ca, caKey := writeIdentity(t, root, "node-resume")
	var mu sync.Mutex
	heartbeats := 0
	var handshakes []tls.ConnectionState
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+acapi.PathHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		heartbeats++
		fail := heartbeats%2 == 0
		mu.Unlock()
		if fail {
			http.Error(w, `{"error": "flapping"}`, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"node_id": "node-resume"}`))
	})
	mux.HandleFunc("GET "+acapi.PathJobs, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("POST "+acapi.PathEvents, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"acked": 1000000}`))
	})
	srv := mtlsController(t, ca, caKey, mux, func(cs tls.ConnectionState) error {
		mu.Lock()
		handshakes = append(handshakes, cs)
		mu.Unlock()
		return nil
	})
	cfg := testConfig(t, srv.URL)
	cfg.ConfigRoot = root
	cfg.Heartbeat = 20 * time.Millisecond
	cfg.Retry.Initial, cfg.Retry.Max = time.Millisecond, 10*time.Millisecond
	startSession(t, cfg)
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(handshakes)
		mu.Unlock()
		if n >= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d handshakes", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if handshakes[0].DidResume {
		t.Fatal("the first handshake resumed a session that never was")
	}
	for i, cs := range handshakes[1:6] {
		if !cs.DidResume {
			t.Errorf("reconnect %d: full handshake, want a resumed session", i+1)
		}
		if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName != "node-resume" {
			t.Errorf("reconnect %d: the server sees no node certificate", i+1)
		}
	}
}
