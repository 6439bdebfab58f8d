package sshd

import (
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

const (
	key1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBmAls8BdUhLG9TjzKpnN/CP1D79jXPXHSw12bgoHmW"
	key2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXtYU3O6slGBuf4DRO1J8JlwVethIE52DyYb7klhmPI"
	key3 = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBiz1r05WUyeukaJ72EpQy7KgELjPo8nYJ4Pmm8a50K1E79R4JOkekAh1FE2S13g0XsRX7FssFvGrv/rI/1VxMw="
)

func pub(t *testing.T, line string) gossh.PublicKey {
	t.Helper()
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parse(t *testing.T, text string) *KeySet {
	t.Helper()
	ks, err := ParseAuthorizedKeys(strings.NewReader(text), "authorized_keys")
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func strp(s string) *string { return &s }

func TestParseAuthorizedKeysOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		line string
		want KeyOptions
	}{
		{"plain", key1 + " one", KeyOptions{}},
		{"command with escaped quotes", `command="echo \"hi there\"; exit 3" ` + key1, KeyOptions{Command: strp(`echo "hi there"; exit 3`)}},
		{"backslash stays literal", `command="printf 'a\\nb'" ` + key1, KeyOptions{Command: strp(`printf 'a\\nb'`)}},
		{"empty forced command", `command="" ` + key1, KeyOptions{Command: strp("")}},
		{"restrict", "restrict " + key1, KeyOptions{NoPTY: true, NoPortForwarding: true, NoAgentForwarding: true, NoX11Forwarding: true}},
		{"restrict then pty", "restrict,pty " + key1, KeyOptions{NoPortForwarding: true, NoAgentForwarding: true, NoX11Forwarding: true}},
		{"pty then restrict", "pty,restrict " + key1, KeyOptions{NoPTY: true, NoPortForwarding: true, NoAgentForwarding: true, NoX11Forwarding: true}},
		{"case-insensitive names", "No-PTY,NO-agent-forwarding " + key1, KeyOptions{NoPTY: true, NoAgentForwarding: true}},
		{"no-x11 and no-port", "no-X11-forwarding,no-port-forwarding " + key1, KeyOptions{NoX11Forwarding: true, NoPortForwarding: true}},
		{"from", `from="10.0.0.0/8,!10.1.2.3,*.example.com" ` + key1, KeyOptions{From: []string{"10.0.0.0/8", "!10.1.2.3", "*.example.com"}}},
		{"environment", `environment="LANG=C",environment="A=b c" ` + key1, KeyOptions{Environment: []string{"LANG=C", "A=b c"}}},
		{"permitopen", `permitopen="localhost:80",permitopen="[::1]:*" ` + key1, KeyOptions{PermitOpen: []string{"localhost:80", "[::1]:*"}}},
		{"permitlisten", `permitlisten="8080",permitlisten="localhost:9000" ` + key1, KeyOptions{PermitListen: []string{"8080", "localhost:9000"}}},
		{"expiry", `expiry-time="20300102" ` + key1, KeyOptions{ExpiryTime: time.Date(2030, 1, 2, 0, 0, 0, 0, time.Local)}},
		{"ignored but valid", `no-user-rc,user-rc,tunnel="1" ` + key1, KeyOptions{}},
		{"ecdsa key with comment spaces", key3 + " three words here", KeyOptions{}},
		{"cert-authority", "cert-authority " + key1, KeyOptions{CertAuthority: true}},
		{"cert-authority with principals", `cert-authority,principals="ops, backup" ` + key1, KeyOptions{CertAuthority: true, Principals: []string{"ops", "backup"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks := parse(t, tc.line+"\n")
			if len(ks.Skipped) != 0 || len(ks.Keys) != 1 {
				t.Fatalf("keys %d, skipped %v", len(ks.Keys), ks.Skipped)
			}
			if got := ks.Keys[0].Options; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("options\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestMalformedLinesAreSkippedByNumber(t *testing.T) {
	text := strings.Join([]string{
		"# comment",
		"",
		key1 + " good-one",                      // 3
		"ssh-ed25519 AAAAnotbase64!!! bad",      // 4
		"bogus-option " + key2,                  // 5
		`command="unterminated ` + key2,         // 6
		`from="10.0.0.0/33" ` + key2,            // 7
		`principals="root" ` + key2,             // 8: only with cert-authority
		`expiry-time="tomorrow" ` + key2,        // 9
		"no-pty=yes " + key2,                    // 10
		`permitopen="nohostport" ` + key2,       // 11
		"ssh-rsa " + key2[len("ssh-ed25519 "):], // 12: type mismatch
		"   " + key3 + " good-three\r",          // 13
		"verify-required " + key2,               // 14
	}, "\n")
	ks := parse(t, text)
	if len(ks.Keys) != 2 || ks.Keys[0].Line != 3 || ks.Keys[1].Line != 13 {
		t.Fatalf("want lines 3 and 13 usable, got %+v", ks.Keys)
	}
	var lines []int
	for _, e := range ks.Skipped {
		lines = append(lines, e.Line)
		if !strings.HasPrefix(e.Error(), "authorized_keys:") {
			t.Errorf("error does not name the file: %v", e)
		}
	}
	if want := []int{4, 5, 6, 7, 8, 9, 10, 11, 12, 14}; !reflect.DeepEqual(lines, want) {
		t.Errorf("skipped lines %v, want %v (%v)", lines, want, ks.Skipped)
	}
	if ks.Keys[1].Comment != "good-three" {
		t.Errorf("comment %q", ks.Keys[1].Comment)
	}
}

func TestAuthorize(t *testing.T) {
	past := time.Now().Add(-48 * time.Hour).Format("20060102")
	ks := parse(t, strings.Join([]string{
		`from="192.168.1.0/24",command="first" ` + key1,
		`from="10.*,!10.0.0.66",command="second" ` + key1,
		`expiry-time="` + past + `" ` + key2,
	}, "\n"))
	now := time.Now()
	for _, tc := range []struct {
		key     string
		ip      string
		command string // "" = refused
	}{
		{key1, "192.168.1.7", "first"},
		{key1, "10.9.8.7", "second"},
		{key1, "10.0.0.66", ""},
		{key1, "172.16.0.1", ""},
		{key2, "192.168.1.7", ""}, // expired
		{key3, "192.168.1.7", ""}, // not listed
	} {
		ak, err := ks.Authorize(pub(t, tc.key), "root", net.ParseIP(tc.ip), now)
		switch {
		case tc.command == "" && err == nil:
			t.Errorf("%s from %s: admitted by line %d", tc.key[:20], tc.ip, ak.Line)
		case tc.command != "" && err != nil:
			t.Errorf("%s from %s: %v", tc.key[:20], tc.ip, err)
		case tc.command != "" && *ak.Options.Command != tc.command:
			t.Errorf("%s from %s: matched %q", tc.key[:20], tc.ip, *ak.Options.Command)
		}
	}
	var nilSet *KeySet
	if _, err := nilSet.Authorize(pub(t, key1), "root", net.ParseIP("127.0.0.1"), now); err == nil {
		t.Error("nil set admitted a key")
	}
}

func TestMatchWildcard(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "anything", true},
		{"10.0.0.?", "10.0.0.5", true},
		{"10.0.0.?", "10.0.0.55", false},
		{"LC_*", "LC_ALL", true},
		{"LC_*", "LANG", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"", "", true},
		{"[", "[", true}, // nothing but * and ? is special
	} {
		if got := matchWildcard(tc.p, tc.s); got != tc.want {
			t.Errorf("matchWildcard(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestForwardPermitted(t *testing.T) {
	for _, tc := range []struct {
		permits []string
		host    string
		port    uint32
		want    bool
	}{
		{nil, "example.org", 22, true},
		{[]string{"localhost:80"}, "localhost", 80, true},
		{[]string{"localhost:80"}, "localhost", 81, false},
		{[]string{"*:443"}, "10.0.0.1", 443, true},
		{[]string{"[::1]:*"}, "::1", 5, true},
		{[]string{"8080"}, "0.0.0.0", 8080, true},
	} {
		if got := forwardPermitted(tc.permits, tc.host, tc.port); got != tc.want {
			t.Errorf("forwardPermitted(%v, %s, %d) = %v", tc.permits, tc.host, tc.port, got)
		}
	}
}

// FuzzParseAuthorizedKeys: any input parses without panicking, every
// usable key round-trips, and lines are accounted for exactly once.
func FuzzParseAuthorizedKeys(f *testing.F) {
	for _, s := range []string{
		key1 + " c\n",
		`command="echo \"x\"",no-pty,from="10.0.0.0/8" ` + key1,
		"restrict,pty " + key3 + " comment\n# c\n\n" + key2,
		`environment="A=B",permitopen="h:1",permitlisten="2",expiry-time="20300101" ` + key2,
		`command="` + "\x00" + `" ` + key1,
		"ssh-ed25519 AAAA",
		`"""`,
		"no-pty " + "\r\n" + key1,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ks, err := ParseAuthorizedKeys(strings.NewReader(text), "ak")
		if err != nil {
			return
		}
		seen := map[int]bool{}
		for _, k := range ks.Keys {
			if seen[k.Line] {
				t.Fatalf("line %d used twice", k.Line)
			}
			seen[k.Line] = true
			if _, err := ks.Authorize(k.Key, "root", net.ParseIP("127.0.0.1"), time.Now()); err != nil && len(k.Options.From) == 0 && k.Options.ExpiryTime.IsZero() && !k.Options.CertAuthority {
				t.Fatalf("line %d parsed but does not authorize: %v", k.Line, err)
			}
		}
		for _, e := range ks.Skipped {
			if seen[e.Line] {
				t.Fatalf("line %d both used and skipped", e.Line)
			}
			seen[e.Line] = true
		}
	})
}
