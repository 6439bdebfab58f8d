package acapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/ssh"
)

// IdentityPublicKey parses a node identity public key (PKIX DER, as in the
// self-signed certificate the node presents on /v1/unlock) and checks it
// is one of the kinds a node makes: Ed25519 or ECDSA P-256.
func IdentityPublicKey(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, errors.New("identity key: empty")
	}
	if len(der) > 512 {
		return nil, fmt.Errorf("identity key: %d bytes, not an Ed25519 or P-256 public key", len(der))
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	switch k := pub.(type) {
	case ed25519.PublicKey:
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("identity key: ECDSA on %s; only P-256", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("identity key: %T; only Ed25519 or ECDSA P-256", pub)
	}
	return pub, nil
}

// IdentityFingerprint is the SSH-style fingerprint ("SHA256:" + unpadded
// base64 of the SHA-256 of the key's SSH wire form) of a node identity
// public key given as PKIX DER. It is what `g8-ac node list` shows and
// what the node prints on its console while it waits for approval; for
// an identity key kept in OpenSSH form, `ssh-keygen -lf KEY` prints the
// same.
func IdentityFingerprint(der []byte) (string, error) {
	pub, err := IdentityPublicKey(der)
	if err != nil {
		return "", err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("identity key: %w", err)
	}
	return ssh.FingerprintSHA256(sp), nil
}

// IdentityCertificate wraps a node identity key in the self-signed TLS
// client certificate a node presents on /v1/unlock. The controller reads
// only its public key; the TLS handshake proves the node holds the private
// half. Made afresh at every start, so its validity does not matter.
func IdentityCertificate(key crypto.Signer) (*tls.Certificate, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if _, err := IdentityPublicKey(der); err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "g8os node identity"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{cert}, PrivateKey: key, Leaf: leaf}, nil
}
