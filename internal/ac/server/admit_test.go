package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/pki"
)

// A connection whose client gave up while it waited in the accept queue
// (its ClientHello and its FIN both there) is dropped without a
// handshake: when a fleet reconnects at once, handshaking connections
// already abandoned kept the server busy with nobody, and 10,000
// simulated nodes could not connect.
func TestHandshakeSkipsClientsThatLeft(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, "127.0.0.1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int64
	conf := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		handshakes.Add(1)
		return &cert, nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl := NewHandshakeListener(ln, conf, 1, 5*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer hl.Close()
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// The one handshake slot is taken by a client that says nothing.
	mute, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile a client sends its ClientHello from the accept queue and
	// gives up.
	left, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = tls.Client(left, &tls.Config{InsecureSkipVerify: true}).HandshakeContext(ctx)
	cancel()
	if err == nil {
		t.Fatal("a handshake completed while the only slot was taken")
	}
	left.Close()
	time.Sleep(100 * time.Millisecond)
	mute.Close()
	// A client that stays is served.
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := handshakes.Load(); n != 1 {
		t.Fatalf("%d handshakes started, want 1: the client that left was handshaken", n)
	}
}
