package pki

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestSSHHostCA(t *testing.T) {
	dir := t.TempDir()
	ca, created, err := LoadOrCreateSSHHostCA(dir)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	again, created, err := LoadOrCreateSSHHostCA(dir)
	if err != nil || created || !bytes.Equal(again.Signer.PublicKey().Marshal(), ca.Signer.PublicKey().Marshal()) {
		t.Fatalf("reload made another CA: %v %v", created, err)
	}
	if l := ca.KnownHostsLine("*"); !strings.HasPrefix(l, "@cert-authority * ssh-ed25519 ") {
		t.Errorf("known_hosts line %q", l)
	}

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sp, _ := ssh.NewPublicKey(pub)
	parsed, err := ParseHostPublicKey(string(ssh.MarshalAuthorizedKey(sp)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert, err := ca.SignHostKey(parsed, "node-1", []string{"node-1", "10.0.0.5"}, now)
	if err != nil {
		t.Fatal(err)
	}
	checker := ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
		return bytes.Equal(auth.Marshal(), ca.Signer.PublicKey().Marshal())
	}}
	if err := checker.CheckHostKey("10.0.0.5:22", nil, cert); err != nil {
		t.Errorf("host certificate does not verify for its address: %v", err)
	}
	if err := checker.CheckHostKey("10.0.0.6:22", nil, cert); err == nil {
		t.Error("host certificate valid for an address it does not name")
	}
	if cert.CertType != ssh.HostCert || time.Unix(int64(cert.ValidBefore), 0).Before(now.Add(HostCertValidity-time.Minute)) {
		t.Errorf("type %d, valid before %v", cert.CertType, cert.ValidBefore)
	}
	if _, err := ca.SignHostKey(parsed, "node-1", nil, now); err == nil {
		t.Error("signed without principals")
	}
}

func TestParseHostPublicKey(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	sp, _ := ssh.NewPublicKey(&small.PublicKey)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ep, _ := ssh.NewPublicKey(edPub)
	ed := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ep)))
	for _, tc := range []struct{ in, why string }{
		{string(ssh.MarshalAuthorizedKey(sp)), "RSA key of 1024 bits"},
		{"", "public_key"},
		{ed + "\n" + ed, "more than one key"},
		{strings.Repeat("a", MaxSSHPublicKey+1), "at most"},
		{"ssh-dss AAAAB3NzaC1kc3MAAACBAP", "public_key"},
	} {
		if _, err := ParseHostPublicKey(tc.in); err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%.30q: %v, want %q", tc.in, err, tc.why)
		}
	}
}

func FuzzParseHostPublicKey(f *testing.F) {
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ep, _ := ssh.NewPublicKey(edPub)
	f.Add(string(ssh.MarshalAuthorizedKey(ep)))
	f.Add("ssh-ed25519 AAAA comment")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		pub, err := ParseHostPublicKey(in)
		if err != nil {
			return
		}
		if _, isCert := pub.(*ssh.Certificate); isCert {
			t.Fatal("a certificate accepted as a host key")
		}
	})
}
