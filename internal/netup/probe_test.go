package netup

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func tlsServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	s := httptest.NewTLSServer(h)
	t.Cleanup(s.Close)
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return s, pool
}

// otherCA is a trust anchor that signed nothing the servers present
// (httptest servers all share one built-in certificate).
func otherCA(t *testing.T) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return pool
}

func healthOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"ok","name":"ac-test","version":"1"}`))
}

func TestProbeCountsOnlyVerifiedHealthyControllers(t *testing.T) {
	good, pool := tlsServer(t, healthOK)
	garbage, gpool := tlsServer(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>hello")) })
	notOK, npool := tlsServer(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"starting"}`)) })
	failing, fpool := tlsServer(t, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) })
	ctx := context.Background()

	p := &Prober{Roots: pool, Timeout: 2 * time.Second}
	r, err := p.First(ctx, []string{good.URL})
	if err != nil {
		t.Fatal(err)
	}
	if r.URL != good.URL || r.Name != "ac-test" || !r.Local.Addr().IsLoopback() || r.Remote.String() != strings.TrimPrefix(good.URL, "https://") {
		t.Errorf("reached %+v", r)
	}

	for _, tc := range []struct {
		name string
		url  string
		p    *Prober
		want string
	}{
		{"wrong trust anchor", good.URL, &Prober{Roots: otherCA(t), Timeout: time.Second}, "certificate not signed by the trust anchor"},
		{"garbage body", garbage.URL, &Prober{Roots: gpool, Timeout: time.Second}, "malformed answer"},
		{"status not ok", notOK.URL, &Prober{Roots: npool, Timeout: time.Second}, `health status "starting"`},
		{"503", failing.URL, &Prober{Roots: fpool, Timeout: time.Second}, "503"},
		{"refused", "https://127.0.0.1:1", &Prober{Roots: pool, Timeout: time.Second}, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.First(ctx, []string{tc.url})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Count(err.Error(), tc.url) != 1 {
				t.Errorf("err = %v, want %q naming %s once", err, tc.want, tc.url)
			}
		})
	}
}

// The first controller to answer wins; a slow one does not hold it up.
func TestProbeFirstAnswerWins(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	slow := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	slow.StartTLS()
	defer slow.Close()
	fast := httptest.NewUnstartedServer(http.HandlerFunc(healthOK))
	fast.TLS = slow.TLS // same certificate, same trust anchor
	fast.StartTLS()
	defer fast.Close()
	pool := x509.NewCertPool()
	pool.AddCert(slow.Certificate())
	p := &Prober{Roots: pool, Timeout: 10 * time.Second}
	start := time.Now()
	r, err := p.First(context.Background(), []string{slow.URL, fast.URL})
	if err != nil {
		t.Fatal(err)
	}
	if r.URL != fast.URL {
		t.Errorf("won: %s, want %s", r.URL, fast.URL)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("waited %v for the slow controller", d)
	}
}
