package ac

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
)

// testAC is a controller served in this process over real TLS on loopback,
// so the race detector sees the server code.
type testAC struct {
	t      *testing.T
	dir    string
	addr   string // host:port, kept across restarts
	url    string
	anchor string // trust anchor file
	opts   ServeOptions
	cancel context.CancelFunc
	done   chan error

	identities map[string]*tls.Certificate // node identity keys by primary MAC (as)
}

func newTestAC(t *testing.T, opts ServeOptions) *testAC {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ac")
	if err := Init(dir, []string{"localhost", "127.0.0.1"}, ""); err != nil {
		t.Fatal(err)
	}
	ca, err := TrustAnchor(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := &testAC{t: t, dir: dir, addr: "127.0.0.1:0", anchor: filepath.Join(filepath.Dir(dir), "ca.pem"), opts: opts}
	if err := os.WriteFile(a.anchor, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	a.start()
	t.Cleanup(a.stop)
	return a
}

func (a *testAC) start() {
	a.t.Helper()
	opts := a.opts
	opts.DataDir = a.dir
	if opts.RetryAfter == 0 {
		opts.RetryAfter = 2 * time.Second
	}
	c, err := Open(opts)
	if err != nil {
		a.t.Fatal(err)
	}
	lns, err := Listen([]string{a.addr})
	if err != nil {
		a.t.Fatal(err)
	}
	a.addr = lns[0].Addr().String()
	a.url = "https://" + a.addr
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	ready := make(chan struct{})
	go func() { a.done <- c.Serve(ctx, lns, func() { close(ready) }) }()
	<-ready
}

func (a *testAC) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.t.Errorf("serve: %v", err)
	}
	a.cancel = nil
}

func (a *testAC) restart() {
	a.t.Helper()
	a.stop()
	a.start()
}

// store opens the data directory's store the way the admin CLI does: a
// second connection to the same file while the server runs.
func (a *testAC) store() *store.Store {
	a.t.Helper()
	st, err := OpenStore(a.dir, "")
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { st.Close() })
	return st
}

func (a *testAC) client(cert *tls.Certificate) *acapi.Client {
	a.t.Helper()
	pool, err := acapi.LoadPool(a.anchor)
	if err != nil {
		a.t.Fatal(err)
	}
	return a.clientWith(acapi.TLSConfig(pool, cert))
}

func (a *testAC) clientWith(conf *tls.Config) *acapi.Client {
	a.t.Helper()
	c, err := acapi.NewClient(a.url, conf, 10*time.Second)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(c.HTTP.CloseIdleConnections)
	return c
}

// as is a client for the node whose primary MAC is mac, with that node's
// own identity key (one per MAC for the test's life).
func (a *testAC) as(mac string) *acapi.Client {
	a.t.Helper()
	if a.identities == nil {
		a.identities = map[string]*tls.Certificate{}
	}
	id := a.identities[mac]
	if id == nil {
		id = newIdentity(a.t)
		a.identities[mac] = id
	}
	return a.client(id)
}

func (a *testAC) approve(mac string) *store.Node {
	a.t.Helper()
	n, err := a.store().AddNode(context.Background(), []string{mac}, true, time.Now())
	if err != nil {
		a.t.Fatal(err)
	}
	return n
}

func (a *testAC) setState(ref, state string) {
	a.t.Helper()
	if _, err := a.store().SetState(context.Background(), ref, state, time.Now()); err != nil {
		a.t.Fatal(err)
	}
}

// enroll approves mac and unlocks with a CSR, returning the node's mTLS
// identity the way g8-unlock would build it.
func (a *testAC) enroll(mac string) (*acapi.UnlockResponse, *tls.Certificate) {
	a.t.Helper()
	a.approve(mac)
	key, csr := newCSR(a.t, "whatever-the-node-asks")
	resp, err := a.as(mac).Unlock(context.Background(), &acapi.UnlockRequest{MACs: []string{mac}, CSR: csr})
	if err != nil {
		a.t.Fatalf("unlock %s: %v", mac, err)
	}
	cert, err := tls.X509KeyPair([]byte(resp.Cert), key)
	if err != nil {
		a.t.Fatalf("issued certificate: %v", err)
	}
	return resp, &cert
}

// newIdentity is a fresh node identity key as the self-signed client
// certificate g8-unlock presents on /v1/unlock.
func newIdentity(t testing.TB) *tls.Certificate {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := acapi.IdentityCertificate(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newCSR(t *testing.T, cn string) (keyPEM []byte, csrPEM string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// foreignCert is a client certificate with CN cn from a CA the controller
// never heard of.
func foreignCert(t *testing.T, cn string) *tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "rogue CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, k.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func statusOf(err error) (*acapi.StatusError, bool) {
	var se *acapi.StatusError
	ok := errors.As(err, &se)
	return se, ok
}

// tlsRefused reports whether err is a failed TLS handshake or a connection
// the server closed during it (how a refused client certificate shows up
// with TLS 1.3).
func tlsRefused(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := statusOf(err); ok {
		return false
	}
	var ne net.Error
	var alert tls.AlertError
	var rec *tls.RecordHeaderError
	return errors.As(err, &alert) || errors.As(err, &ne) || errors.As(err, &rec) ||
		containsAny(err.Error(), "certificate", "tls:", "EOF", "reset")
}

func containsAny(s string, subs ...string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}

// within retries check until it passes or d is over: the server sees
// another process's node state changes within its store poll interval,
// not at once.
func within(t *testing.T, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
