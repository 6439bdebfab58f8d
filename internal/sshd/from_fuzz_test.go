package sshd

import (
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fromReference is sshd's from= rule written out independently: a pattern
// is a CIDR network or a wildcard ('*' any run, '?' one byte) over the
// address as text; any matching negated pattern refuses, otherwise any
// matching pattern admits.
func fromReference(list string, ip netip.Addr) bool {
	ok := false
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var m bool
		if strings.Contains(p, "/") {
			_, n, err := net.ParseCIDR(p)
			m = err == nil && n.Contains(net.IP(ip.AsSlice()))
		} else {
			re := "(?s)^" + strings.NewReplacer(`\*`, ".*", `\?`, ".").Replace(regexp.QuoteMeta(strings.ToLower(p))) + "$"
			m = regexp.MustCompile(re).MatchString(ip.String())
		}
		if m && neg {
			return false
		}
		ok = ok || m
	}
	return ok
}

// FuzzFromMatching: for any from="..." an authorized_keys line carries and
// any client address, the key is let in exactly when sshd's rule says so.
func FuzzFromMatching(f *testing.F) {
	for _, c := range []struct{ list, ip string }{
		{"10.0.0.0/8", "10.1.2.3"},
		{"10.*,!10.0.0.9", "10.0.0.9"},
		{"192.168.1.?", "192.168.1.7"},
		{"*", "2001:db8::1"},
		{"2001:db8::/32,!2001:db8::1", "2001:db8::1"},
		{"!*", "127.0.0.1"},
		{"*.*.*.*", "::ffff:1.2.3.4"},
		{"1.2.3.4", "1.2.3.40"},
		{"**********************************************a", "1.2.3.4"},
	} {
		ip := netip.MustParseAddr(c.ip)
		f.Add(c.list, ip.AsSlice())
	}
	f.Fuzz(func(t *testing.T, list string, ipBytes []byte) {
		ip, ok := netip.AddrFromSlice(ipBytes)
		if !ok || strings.ContainsAny(list, "\"\\\n\r") {
			return
		}
		ip = ip.Unmap() // the server sees IPv4 clients as IPv4
		ks, err := ParseAuthorizedKeys(strings.NewReader(`from="`+list+`" `+key1+"\n"), "ak")
		if err != nil || len(ks.Keys) != 1 {
			return
		}
		_, err = ks.Authorize(ks.Keys[0].Key, "root", net.IP(ip.AsSlice()), time.Now())
		if want := fromReference(list, ip); (err == nil) != want {
			t.Fatalf("from=%q, client %s: let in %v, want %v (%v)", list, ip, err == nil, want, err)
		}
	})
}
