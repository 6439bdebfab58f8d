package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/acapi"
)

// NodeIdentity is a node identity key as a node proves it on /v1/unlock
// (a self-signed TLS client certificate), also as PEM files for curl.
type NodeIdentity struct {
	Cert        *tls.Certificate
	CertFile    string
	KeyFile     string
	Fingerprint string
}

// NewNodeIdentity is a fresh Ed25519 identity key: a test node's, or an
// attacker's who knows only a node's MAC.
func NewNodeIdentity(t testing.TB) *NodeIdentity {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return identityOf(t, k)
}

// NodeIdentityFrom reads the key g8-unlock made (IDENTITY-DIR/node.key,
// OpenSSH format), to ask the controller as that node does.
func NodeIdentityFrom(t testing.TB, keyPath string) *NodeIdentity {
	t.Helper()
	data, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(data)
	if err != nil {
		t.Fatalf("%s: %v", keyPath, err)
	}
	k, ok := raw.(*ed25519.PrivateKey)
	if !ok {
		t.Fatalf("%s: %T, want an Ed25519 key", keyPath, raw)
	}
	return identityOf(t, *k)
}

func identityOf(t testing.TB, k crypto.Signer) *NodeIdentity {
	t.Helper()
	cert, err := acapi.IdentityCertificate(k)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := acapi.IdentityFingerprint(cert.Leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id := &NodeIdentity{Cert: cert, Fingerprint: fp, CertFile: filepath.Join(dir, "identity.pem"), KeyFile: filepath.Join(dir, "identity.key")}
	if err := os.WriteFile(id.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(id.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

// CurlArgs make curl present the identity.
func (id *NodeIdentity) CurlArgs() []string {
	return []string{"--cert", id.CertFile, "--key", id.KeyFile}
}

// NodeCertificate signs a node certificate for nodeID with the
// controller's own node CA, valid from notBefore to notAfter: a
// certificate the controller issued in the past (expired, or half used),
// to test what it accepts. It returns the pair and its PEM files' bytes.
func (c *Controller) NodeCertificate(t testing.TB, nodeID string, notBefore, notAfter time.Time) (pair *tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	ca, err := pki.Load(c.DataDir, pki.NodeCACert, pki.NodeCAKey)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: nodeID},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, k.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	p, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &p, certPEM, keyPEM
}
