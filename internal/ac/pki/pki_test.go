package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func csr(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "root"}, DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestInitAndSign(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, "ac", []string{"ac.example", "10.254.254.254"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ServerCAKey, NodeCAKey, ServerKey} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v", f, err, fi.Mode())
		}
	}
	if err := Init(dir, "ac", []string{"ac.example"}); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("second Init: %v", err)
	}
	srv, _ := os.ReadFile(filepath.Join(dir, ServerCert))
	b, _ := pem.Decode(srv)
	sc, _ := x509.ParseCertificate(b.Bytes)
	if len(sc.DNSNames) != 1 || sc.DNSNames[0] != "ac.example" || len(sc.IPAddresses) != 1 || sc.IPAddresses[0].String() != "10.254.254.254" {
		t.Fatalf("server cert names %v %v", sc.DNSNames, sc.IPAddresses)
	}

	ca, err := Load(dir, NodeCACert, NodeCAKey)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certPEM, parsed, err := ca.SignCSR(csr(t, k), "n-1234", DefaultNodeValidity)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(certPEM)
	c, _ := x509.ParseCertificate(cb.Bytes)
	if c.Subject.CommonName != "n-1234" || len(c.DNSNames) != 0 || c.SerialNumber.Cmp(parsed.SerialNumber) != 0 {
		t.Fatalf("signed cert takes the CSR's names: CN %q DNS %v", c.Subject.CommonName, c.DNSNames)
	}

	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, _, err := ca.SignCSR(csr(t, small), "n-1", DefaultNodeValidity); err == nil {
		t.Fatal("a 1024-bit RSA key was signed")
	}
	bad := csr(t, k)
	bb, _ := pem.Decode(bad)
	bb.Bytes[len(bb.Bytes)-3] ^= 0xff
	if _, _, err := ca.SignCSR(pem.EncodeToMemory(bb), "n-1", DefaultNodeValidity); err == nil {
		t.Fatal("a CSR with a broken signature was signed")
	}
	if _, _, err := ca.SignCSR([]byte("hello"), "n-1", DefaultNodeValidity); err == nil {
		t.Fatal("non-PEM signed")
	}
}
