package acapi

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestIdentityFingerprintMatchesSSH(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	fp, err := IdentityFingerprint(der)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	if fp != ssh.FingerprintSHA256(sp) || !strings.HasPrefix(fp, "SHA256:") {
		t.Fatalf("fingerprint %q, want %q", fp, ssh.FingerprintSHA256(sp))
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ = x509.MarshalPKIXPublicKey(p256.Public())
	if _, err := IdentityFingerprint(der); err != nil {
		t.Fatalf("P-256: %v", err)
	}
}

func TestIdentityPublicKeyRefusesOtherKinds(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	d384, _ := x509.MarshalPKIXPublicKey(p384.Public())
	r, _ := rsa.GenerateKey(rand.Reader, 2048)
	drsa, _ := x509.MarshalPKIXPublicKey(r.Public())
	for name, der := range map[string][]byte{"empty": nil, "garbage": []byte("nope"), "P-384": d384, "RSA": drsa} {
		if _, err := IdentityPublicKey(der); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzIdentityFingerprint(f *testing.F) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	f.Add(der)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		fp, err := IdentityFingerprint(b)
		if err == nil && !strings.HasPrefix(fp, "SHA256:") {
			t.Fatalf("fingerprint %q", fp)
		}
	})
}
