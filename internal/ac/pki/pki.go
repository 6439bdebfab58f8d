// Package pki holds the controller's two certificate authorities: the server
// CA, whose certificate is the trust anchor nodes ship as
// /etc/g8os/ac-ca.pem and which signs the controller's HTTPS certificate,
// and the node CA, which signs the client certificates nodes use for mTLS.
// They are separate so that a node certificate can never pass as the
// controller, and the node CA's key never has to sit beside the server key
// on a fronting machine.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/atomicfile"
)

// File names inside the controller's data directory.
const (
	ServerCACert = "server-ca.pem"
	ServerCAKey  = "server-ca.key"
	ServerCert   = "server.pem"
	ServerKey    = "server.key"
	NodeCACert   = "node-ca.pem"
	NodeCAKey    = "node-ca.key"
)

// Validity periods. Node certificates are short-lived so that a leaked one
// expires soon: the node's session renews its certificate long before
// (docs/api.md, POST /v1/node/cert); `g8-ac serve --node-cert-lifetime`
// sets it. The CAs outlive any node.
const (
	CAValidity          = 20 * 365 * 24 * time.Hour
	ServerValidity      = 5 * 365 * 24 * time.Hour
	DefaultNodeValidity = 7 * 24 * time.Hour
	MinNodeValidity     = 10 * time.Minute
	MaxNodeValidity     = 365 * 24 * time.Hour
)

// Authority is a CA that can sign.
type Authority struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // Cert as PEM
}

// Init creates both CAs and a server certificate for names (DNS names or IP
// addresses) in dir. It refuses to overwrite an existing identity: a new
// server CA would orphan every node image built with the old anchor.
func Init(dir, commonName string, names []string) error {
	if len(names) == 0 {
		return errors.New("pki: no --name for the server certificate")
	}
	for _, f := range []string{ServerCACert, ServerCAKey, ServerCert, ServerKey, NodeCACert, NodeCAKey} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("pki: %s already exists; refusing to replace the controller's identity", filepath.Join(dir, f))
		}
	}
	serverCA, err := newCA(commonName+" server CA", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	nodeCA, err := newCA(commonName+" node CA", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvPEM, err := serverCA.IssueServer(srvKey.Public(), commonName, names)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{ServerCACert, serverCA.PEM, 0o644},
		{NodeCACert, nodeCA.PEM, 0o644},
		{ServerCert, srvPEM, 0o644},
	} {
		if err := writeFile(filepath.Join(dir, w.name), w.data, w.mode); err != nil {
			return err
		}
	}
	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{ServerCAKey, serverCA.Key}, {NodeCAKey, nodeCA.Key}, {ServerKey, srvKey}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, k.name), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
	}
	_, _, err = LoadOrCreateSSHHostCA(dir)
	return err
}

func newCA(cn string, usage x509.ExtKeyUsage) (*Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"g8os"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// An EKU on the CA constrains everything below it (Go and OpenSSL
		// both check the chain): node certificates can never serve TLS.
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: creating %s: %w", cn, err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &Authority{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// IssueServer signs a server certificate for names (each a DNS name or an IP
// address) and returns it as PEM.
func (a *Authority) IssueServer(pub crypto.PublicKey, cn string, names []string) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ServerValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, pub, a.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing server certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// SignCSR signs a node's CSR as a client certificate whose common name is
// nodeID, valid for validity. Everything else the CSR asks for is ignored:
// the controller, not the node, decides who the node is. It returns the
// certificate as PEM and parsed (its serial is what the controller tracks).
func (a *Authority) SignCSR(csrPEM []byte, nodeID string, validity time.Duration) ([]byte, *x509.Certificate, error) {
	if validity < MinNodeValidity || validity > MaxNodeValidity {
		return nil, nil, fmt.Errorf("node certificate lifetime %v: outside %v..%v", validity, MinNodeValidity, MaxNodeValidity)
	}
	der, err := a.signCSR(csrPEM, nodeID, validity)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert, nil
}

func (a *Authority) signCSR(csrPEM []byte, nodeID string, validity time.Duration) ([]byte, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: no PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: bad signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("csr: RSA key of %d bits; need at least 2048", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("csr: unsupported key type %T", k)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: nodeID, Organization: []string{"g8os node"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, csr.PublicKey, a.Key)
	if err != nil {
		return nil, fmt.Errorf("csr: signing: %w", err)
	}
	return der, nil
}

// Load reads a CA (certificate and PKCS#8 key) from dir.
func Load(dir, certFile, keyFile string) (*Authority, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w (run `g8-ac init` first)", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, fmt.Errorf("pki: %s: no PEM block", filepath.Join(dir, certFile))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, certFile), err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("pki: %s: no PEM block", filepath.Join(dir, keyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, keyFile), err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: key cannot sign", filepath.Join(dir, keyFile))
	}
	return &Authority{Cert: cert, Key: signer, PEM: certPEM}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

// writeFile writes atomically so a crash never leaves half a key behind.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// ReissueServer replaces the server certificate in dir with one for names,
// signed by the existing server CA: the trust anchor in node images stays
// valid. The running server picks it up when restarted.
func ReissueServer(dir string, names []string) error {
	if len(names) == 0 {
		return errors.New("pki: no --name for the server certificate")
	}
	ca, err := Load(dir, ServerCACert, ServerCAKey)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	certPEM, err := ca.IssueServer(key.Public(), names[0], names)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a crash in between leaves the old certificate with a key
	// that does not match it, which serve reports at start, rather than a
	// certificate whose key is lost.
	if err := writeFile(filepath.Join(dir, ServerKey), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, ServerCert), certPEM, 0o644)
}
