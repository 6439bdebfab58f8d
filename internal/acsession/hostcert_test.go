package acsession

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestHostCertDue(t *testing.T) {
	signer := func() ssh.Signer {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, _ := ssh.NewSignerFromKey(priv)
		return s
	}
	ca, host, other := signer(), signer(), signer()
	now := time.Now()
	cert := func(key ssh.PublicKey, typ uint32, from, to time.Time) []byte {
		c := &ssh.Certificate{Key: key, CertType: typ, ValidPrincipals: []string{"n1"},
			ValidAfter: uint64(from.Unix()), ValidBefore: uint64(to.Unix())}
		if err := c.SignCert(rand.Reader, ca); err != nil {
			t.Fatal(err)
		}
		return ssh.MarshalAuthorizedKey(c)
	}
	day := 24 * time.Hour
	for _, tc := range []struct {
		name string
		text []byte
		due  string // "" = not due
	}{
		{"fresh", cert(host.PublicKey(), ssh.HostCert, now.Add(-day), now.Add(89*day)), ""},
		{"two thirds left", cert(host.PublicKey(), ssh.HostCert, now.Add(-29*day), now.Add(61*day)), ""},
		{"a third left", cert(host.PublicKey(), ssh.HostCert, now.Add(-61*day), now.Add(29*day)), "expires at"},
		{"expired", cert(host.PublicKey(), ssh.HostCert, now.Add(-91*day), now.Add(-day)), "expires at"},
		{"none", nil, "no host certificate yet"},
		{"garbage", []byte("not a key"), "unreadable"},
		{"plain key", ssh.MarshalAuthorizedKey(host.PublicKey()), "holds no host certificate"},
		{"user certificate", cert(host.PublicKey(), ssh.UserCert, now.Add(-day), now.Add(89*day)), "holds no host certificate"},
		{"another key", cert(other.PublicKey(), ssh.HostCert, now.Add(-day), now.Add(89*day)), "another host key"},
	} {
		due, why := hostCertDue(tc.text, host.PublicKey(), now)
		if due != (tc.due != "") || !strings.Contains(why, tc.due) {
			t.Errorf("%s: due %v (%q), want %q", tc.name, due, why, tc.due)
		}
	}
}
