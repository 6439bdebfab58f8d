package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func newSigner(t *testing.T) gossh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthorizeCertificates covers sshd(8)'s rules for user certificates
// against cert-authority lines; the same rules are driven end to end with
// ssh-keygen -s and the OpenSSH client in TestUserCertificates.
func TestAuthorizeCertificates(t *testing.T) {
	ca, otherCA, user := newSigner(t), newSigner(t), newSigner(t)
	caLine := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(ca.PublicKey())))
	ks := parse(t, strings.Join([]string{
		`cert-authority,from="10.0.0.0/8" ` + caLine,
		`cert-authority,principals="ops",command="uptime" ` + caLine,
		strings.TrimSpace(string(gossh.MarshalAuthorizedKey(user.PublicKey()))) + " the user's own key",
	}, "\n"))
	now := time.Now()
	allPermits := map[string]string{"permit-pty": "", "permit-port-forwarding": "", "permit-agent-forwarding": ""}
	mk := func(mod func(*gossh.Certificate)) *gossh.Certificate {
		c := &gossh.Certificate{
			Key: user.PublicKey(), Serial: 7, CertType: gossh.UserCert, KeyId: "alice",
			ValidPrincipals: []string{"root"},
			ValidAfter:      uint64(now.Add(-time.Hour).Unix()), ValidBefore: uint64(now.Add(time.Hour).Unix()),
			Permissions: gossh.Permissions{Extensions: allPermits, CriticalOptions: map[string]string{}},
		}
		if mod != nil {
			mod(c)
		}
		signer := ca
		if c.Nonce != nil { // a test's marker for "signed by another CA"
			signer, c.Nonce = otherCA, nil
		}
		if err := c.SignCert(rand.Reader, signer); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name    string
		cert    *gossh.Certificate
		user    string
		ip      string
		line    int    // 0: refused
		why     string // part of the refusal
		command string // forced command of the result
		noPTY   bool
	}{
		{name: "valid, principal is the user", cert: mk(nil), user: "root", ip: "10.1.1.1", line: 1},
		{name: "from= of the CA line applies", cert: mk(nil), user: "root", ip: "192.168.1.1", why: "from= does not match"},
		{name: "wrong principal", cert: mk(nil), user: "admin", ip: "10.1.1.1", why: `include none of ["admin"]`},
		{name: "principals= instead of the user", cert: mk(func(c *gossh.Certificate) { c.ValidPrincipals = []string{"ops"} }), user: "root", ip: "192.168.1.1", line: 2, command: "uptime"},
		// x/crypto refuses to sign that (ssh-keygen does not), so the list
		// is emptied after signing; the refusal comes before the signature.
		{name: "no principals at all", cert: func() *gossh.Certificate { c := *mk(nil); c.ValidPrincipals = nil; return &c }(), user: "root", ip: "10.1.1.1", why: "names no principal"},
		{name: "expired", cert: mk(func(c *gossh.Certificate) { c.ValidBefore = uint64(now.Add(-time.Minute).Unix()) }), user: "root", ip: "10.1.1.1", why: "cert has expired"},
		{name: "not yet valid", cert: mk(func(c *gossh.Certificate) { c.ValidAfter = uint64(now.Add(time.Minute).Unix()) }), user: "root", ip: "10.1.1.1", why: "not yet valid"},
		{name: "host certificate", cert: mk(func(c *gossh.Certificate) { c.CertType = gossh.HostCert }), user: "root", ip: "10.1.1.1", why: "not a user certificate"},
		{name: "other CA", cert: mk(func(c *gossh.Certificate) { c.Nonce = []byte{1} }), user: "root", ip: "10.1.1.1", why: "which no cert-authority line lists"},
		{name: "unknown critical option", cert: mk(func(c *gossh.Certificate) { c.CriticalOptions["verify-required"] = "" }), user: "root", ip: "10.1.1.1", why: `unsupported critical option "verify-required"`},
		{name: "source-address matches", cert: mk(func(c *gossh.Certificate) { c.CriticalOptions["source-address"] = "10.1.0.0/16,192.0.2.1" }), user: "root", ip: "10.1.1.1", line: 1},
		{name: "source-address does not match", cert: mk(func(c *gossh.Certificate) { c.CriticalOptions["source-address"] = "10.2.0.0/16" }), user: "root", ip: "10.1.1.1", why: "source-address"},
		{name: "malformed source-address", cert: mk(func(c *gossh.Certificate) { c.CriticalOptions["source-address"] = "10.1.0.0/99" }), user: "root", ip: "10.1.1.1", why: "not a CIDR"},
		{name: "force-command", cert: mk(func(c *gossh.Certificate) { c.CriticalOptions["force-command"] = "date" }), user: "root", ip: "10.1.1.1", line: 1, command: "date"},
		{name: "force-command against a different command=", cert: mk(func(c *gossh.Certificate) {
			c.ValidPrincipals = []string{"ops"}
			c.CriticalOptions["force-command"] = "date"
		}), user: "root", ip: "192.168.1.1", why: "force-command differs"},
		{name: "no permit-pty", cert: mk(func(c *gossh.Certificate) { c.Extensions = map[string]string{} }), user: "root", ip: "10.1.1.1", line: 1, noPTY: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ak, err := ks.Authorize(tc.cert, tc.user, net.ParseIP(tc.ip), now)
			if tc.line == 0 {
				if err == nil {
					t.Fatalf("admitted by line %d", ak.Line)
				}
				if !strings.Contains(err.Error(), tc.why) {
					t.Fatalf("refused with %q, want it to say %q", err, tc.why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ak.Line != tc.line || ak.Cert != tc.cert || ak.Fingerprint != gossh.FingerprintSHA256(user.PublicKey()) {
				t.Errorf("line %d cert %v fingerprint %s", ak.Line, ak.Cert != nil, ak.Fingerprint)
			}
			got := ""
			if ak.Options.Command != nil {
				got = *ak.Options.Command
			}
			if got != tc.command || ak.Options.NoPTY != tc.noPTY {
				t.Errorf("command %q noPTY %v, want %q %v", got, ak.Options.NoPTY, tc.command, tc.noPTY)
			}
			if !ak.Options.NoX11Forwarding {
				t.Error("X11 allowed without permit-X11-forwarding")
			}
		})
	}
	// The CA's own key is not a login key, and the user's key as a plain
	// line still works without its certificate.
	if _, err := ks.Authorize(ca.PublicKey(), "root", net.ParseIP("10.1.1.1"), now); err == nil {
		t.Error("the CA key itself logged in")
	}
	if ak, err := ks.Authorize(user.PublicKey(), "root", net.ParseIP("10.1.1.1"), now); err != nil || ak.Line != 3 || ak.Cert != nil {
		t.Errorf("plain key: %v", err)
	}
	// The lines the CA key is on were not modified by any of this.
	if ks.Keys[0].Options.Command != nil || ks.Keys[0].Cert != nil {
		t.Error("authorizing a certificate changed its CA line")
	}
}
