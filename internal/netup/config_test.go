package netup

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig("../../packaging/net.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Controllers) != 2 || c.TrustAnchor != DefaultTrustAnchor {
		t.Errorf("controllers %v, trust anchor %q", c.Controllers, c.TrustAnchor)
	}
	if len(c.Interfaces) != 4 {
		t.Fatalf("interfaces: %+v", c.Interfaces)
	}
	eth0 := c.Interfaces[0]
	if eth0.Method != MethodStatic || eth0.Addresses[0] != netip.MustParsePrefix("192.0.2.50/24") ||
		eth0.Gateway != netip.MustParseAddr("192.0.2.1") || eth0.MTU != 1500 || !eth0.Search {
		t.Errorf("eth0: %+v", eth0)
	}
	if c.Interfaces[1].MAC.String() != "52:54:00:12:34:56" || c.Interfaces[1].Method != MethodDHCP {
		t.Errorf("by mac: %+v", c.Interfaces[1])
	}
	if c.Interfaces[2].Method != MethodNone || c.Interfaces[2].Search {
		t.Errorf("none: %+v", c.Interfaces[2])
	}
	if c.Interfaces[3].Pattern != "en*" || c.Interfaces[3].Method != MethodDHCP {
		t.Errorf("pattern: %+v", c.Interfaces[3])
	}
	// The docs carry the same full example; keep them in step.
	doc, err := os.ReadFile("../../docs/netup.md")
	if err != nil {
		t.Fatal(err)
	}
	ex, _ := os.ReadFile("../../packaging/net.toml.example")
	if !strings.Contains(string(doc), string(ex)) {
		t.Error("docs/netup.md does not contain packaging/net.toml.example verbatim")
	}
}

// The net.toml the package installs: valid, no live example values, and
// on any node DHCP on every Ethernet link by its kernel or udev name, and
// on nothing else.
func TestShippedDefaultConfig(t *testing.T) {
	c, err := LoadConfig("../../packaging/net.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Controllers) != 1 || c.Controllers[0] != "https://g8-ac:8443" || c.TrustAnchor != DefaultTrustAnchor || !c.Fallback.Enabled {
		t.Errorf("controllers %v, trust anchor %q, fallback %v", c.Controllers, c.TrustAnchor, c.Fallback.Enabled)
	}
	for _, ic := range c.Interfaces {
		if ic.Pattern == "" || ic.Method != MethodDHCP || len(ic.DNS) > 0 || ic.MTU != 0 {
			t.Errorf("not a plain DHCP pattern: %+v", ic)
		}
	}
	links := []Link{{Name: "lo", Loopback: true}, {Name: "enp0s31f6"}, {Name: "eth0"}, {Name: "ens3"}, {Name: "enx525400123456"},
		{Name: "wlan0"}, {Name: "docker0"}, {Name: "veth1a2b"}, {Name: "ovs-system"}, {Name: "br0"}}
	b, _ := Bind(c, links)
	var got []string
	for _, ic := range b.Interfaces {
		got = append(got, ic.Name)
	}
	if g := strings.Join(got, " "); g != "enp0s31f6 ens3 enx525400123456 eth0" {
		t.Errorf("the default binds %q", g)
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig("net.toml", []byte("controllers = [\"https://ac:8443/\"]\n[[interface]]\nname = \"eth0\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Controllers[0] != "https://ac:8443" {
		t.Errorf("trailing slash kept: %q", c.Controllers[0])
	}
	fb := c.Fallback
	if !fb.Enabled || fb.Subnet.String() != "10.254.254.0/24" || fb.Controller != DefaultFallbackURL ||
		fb.ControllerIP != netip.MustParseAddr("10.254.254.254") || fb.MaxConflicts != 10 {
		t.Errorf("fallback defaults: %+v", fb)
	}
	if c.ProbeTimeout != 2*time.Second || c.DHCPTimeout != 3*time.Second || c.TrustAnchor != DefaultTrustAnchor {
		t.Errorf("defaults: %+v", c)
	}
	if fb.Schedule.ProbeMax != 100*time.Millisecond || fb.Schedule.DefendInterval != 10*time.Second {
		t.Errorf("schedule: %+v", fb.Schedule)
	}
}

func TestConfigMethodDefaultsFromAddresses(t *testing.T) {
	c, err := ParseConfig("net.toml", []byte("[[interface]]\nname = \"a\"\naddresses = [\"10.1.0.2/24\"]\n[[interface]]\nname = \"b\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Interfaces[0].Method != MethodStatic || c.Interfaces[1].Method != MethodDHCP {
		t.Errorf("methods: %s %s", c.Interfaces[0].Method, c.Interfaces[1].Method)
	}
}

// Every bad input is refused with the file, the line and the field.
func TestConfigErrorsNameFileLineField(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		line       int
		field, msg string
	}{
		{"unknown top key", "controllers = []\nbogus = 1\n", 2, "bogus", "unknown key"},
		{"unknown key in table", "[probe]\ntimeout = \"1s\"\ntimout = \"1s\"\n", 3, "probe.timout", "unknown key"},
		{"unknown key in interface", "[[interface]]\nname = \"a\"\n[[interface]]\nname = \"b\"\nadress = \"x\"\n", 5, "interface[1].adress", "unknown key"},
		{"unknown table", "[fallbak]\nenabled = false\n", 1, "fallbak", "unknown key"},
		{"http controller", "controllers = [\"http://ac:8080\"]\n", 1, "controllers[0]", "not an https URL"},
		{"controller with path", "controllers = [\"https://ac/v1\"]\n", 1, "controllers[0]", "base URL"},
		{"controller twice", "controllers = [\"https://a\", \"https://a\"]\n", 1, "controllers[1]", "listed twice"},
		{"bad cidr", "[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.0.1/33\"]\n", 3, "interface[0].addresses[0]", "not an address/prefix"},
		{"no prefix", "[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.0.1\"]\n", 3, "interface[0].addresses[0]", "CIDR"},
		{"network address", "[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.0.0/24\"]\n", 3, "interface[0].addresses[0]", "network or broadcast"},
		{"duplicate address", "[[interface]]\nname = \"a\"\naddresses = [\"10.0.0.1/24\"]\n[[interface]]\nname = \"b\"\naddresses = [\"10.0.0.1/16\"]\n", 6, "interface[1].addresses[0]", "also given at interface[0].addresses[0]"},
		{"interface twice", "[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"\n", 4, "interface[1].name", "listed twice"},
		{"mac twice", "[[interface]]\nmac = \"52:54:00:00:00:01\"\n[[interface]]\nmac = \"52:54:00:00:00:01\"\n", 4, "interface[1].mac", "listed twice"},
		{"bad mac", "[[interface]]\nmac = \"zz\"\n", 2, "interface[0].mac", "not an Ethernet MAC"},
		{"name and mac", "[[interface]]\nname = \"a\"\nmac = \"52:54:00:00:00:01\"\n", 3, "interface[0]", "not both"},
		{"neither", "[[interface]]\nmtu = 1500\n", 1, "interface[0]", "needs a name or a mac"},
		{"bad method", "[[interface]]\nname = \"a\"\nmethod = \"auto\"\n", 3, "interface[0].method", "not static, dhcp or none"},
		{"static without address", "[[interface]]\nname = \"a\"\nmethod = \"static\"\n", 3, "interface[0].addresses", "at least one"},
		{"addresses on dhcp", "[[interface]]\nname = \"a\"\nmethod = \"dhcp\"\naddresses = [\"10.0.0.1/24\"]\n", 4, "interface[0].addresses", "only for method static"},
		{"gateway off link", "[[interface]]\nname = \"a\"\naddresses = [\"10.0.0.1/24\"]\ngateway = \"10.1.0.1\"\n", 4, "interface[0].gateway", "not inside"},
		{"bad dns", "[[interface]]\nname = \"a\"\ndns = [\"x\"]\n", 3, "interface[0].dns[0]", "not an IP"},
		{"bad mtu", "[[interface]]\nname = \"a\"\nmtu = 20\n", 3, "interface[0].mtu", "not in 68..65535"},
		{"none in search", "[[interface]]\nname = \"a\"\nmethod = \"none\"\nsearch = true\n", 4, "interface[0].search", "never takes part"},
		{"bad name", "[[interface]]\nname = \"a/b\"\n", 2, "interface[0].name", "not a valid interface name"},
		{"bad pattern", "[[interface]]\nname = \"en[\"\n", 2, "interface[0].name", "not a valid name pattern"},
		{"pattern with slash", "[[interface]]\nname = \"en*/x\"\n", 2, "interface[0].name", "not a valid name pattern"},
		{"pattern twice", "[[interface]]\nname = \"en*\"\n[[interface]]\nname = \"en*\"\n", 4, "interface[1].name", "listed twice"},
		{"static pattern", "[[interface]]\nname = \"en*\"\naddresses = [\"10.0.0.1/24\"]\n", 1, "interface[0].method", "list it by name or mac"},
		{"too many interfaces", manyInterfaces(MaxInterfaces + 1), 1, "interface", "at most 32"},
		{"fallback subnet v6", "[fallback]\nsubnet = \"fd00::/64\"\n", 2, "fallback.subnet", "IPv4 prefix"},
		{"fallback controller outside", "[fallback]\ncontroller = \"https://10.9.9.9:8443\"\n", 2, "fallback.controller", "outside fallback.subnet"},
		{"acd scale", "[fallback]\nacd_scale = 2.0\n", 2, "fallback.acd_scale", "not in (0, 1]"},
		{"timeout range", "[probe]\ntimeout = \"2h\"\n", 2, "probe.timeout", "not between"},
		{"backoff order", "[backoff]\ninitial = \"10s\"\nmax = \"1s\"\n", 3, "backoff.max", "shorter than"},
		{"relative trust anchor", "trust_anchor = \"ca.pem\"\n", 1, "trust_anchor", "absolute path"},
		{"wrong type", "[[interface]]\nname = \"a\"\n[[interface]]\nname = \"b\"\nmtu = \"big\"\n", 5, "interface[1].mtu", "incompatible types"},
		{"key twice", "[[interface]]\nname = \"a\"\n[[interface]]\nname = \"b\"\nname = \"c\"\n", 5, "interface[1].name", "already been defined"},
		{"syntax", "controllers = [\n", 1, "controllers", "expected"},
		{"syntax at a line's end", "[probe\ntimeout = \"1s\"\n", 1, "", "end table name"},
		{"table array at a line's end", "[[interface]\nname = \"a\"\n", 1, "", "delimiter"},
		{"empty", "", 0, "interface", "no controller could ever be found"},
		{"only none", "controllers = [\"https://ac\"]\n[[interface]]\nname = \"a\"\nmethod = \"none\"\n", 0, "interface", "only method none"},
		{"bad duration", "[dhcp]\ntimeout = \"soon\"\n", 2, "dhcp.timeout", "invalid duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("/etc/g8os/net.toml", []byte(tc.toml))
			if err == nil {
				t.Fatal("accepted")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("%T %v is not a ConfigError", err, err)
			}
			if ce.File != "/etc/g8os/net.toml" || ce.Line != tc.line || ce.Field != tc.field || !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("got %q (file %q line %d field %q)\nwant line %d field %q containing %q", err, ce.File, ce.Line, ce.Field, tc.line, tc.field, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "/etc/g8os/net.toml:") {
				t.Errorf("message does not start with the file: %q", err)
			}
		})
	}
}

func manyInterfaces(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "[[interface]]\nname = \"e%d\"\n", i)
	}
	return b.String()
}

// A name with a glob metacharacter is a pattern, as systemd.network's
// [Match] Name= reads it: any method but static.
func TestConfigNamePatterns(t *testing.T) {
	c, err := ParseConfig("net.toml", []byte("[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"en*\"\n[[interface]]\nname = \"wl?[0-9]\"\nmethod = \"none\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Interface{{Name: "eth0"}, {Pattern: "en*"}, {Pattern: "wl?[0-9]"}}
	for i, w := range want {
		if g := c.Interfaces[i]; g.Name != w.Name || g.Pattern != w.Pattern || g.Label() != w.Name+w.Pattern {
			t.Errorf("interface[%d]: name %q pattern %q label %q, want %+v", i, g.Name, g.Pattern, g.Label(), w)
		}
	}
	if _, err := ParseConfig("net.toml", []byte(manyInterfaces(MaxInterfaces))); err != nil {
		t.Errorf("%d interfaces refused: %v", MaxInterfaces, err)
	}
}

func TestConfigReportsAllMistakesAtOnce(t *testing.T) {
	_, err := ParseConfig("n.toml", []byte("controllers = [\"http://a\"]\nx = 1\n[[interface]]\nname = \"e\"\nmtu = 1\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"n.toml:1: controllers[0]", "n.toml:2: x: unknown key", "n.toml:5: interface[0].mtu"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from:\n%v", want, err)
		}
	}
}

// FuzzParseConfig: any input is either a valid config that round-trips
// through the plan, or ConfigErrors that name the file; never a panic.
func FuzzParseConfig(f *testing.F) {
	ex, _ := os.ReadFile("../../packaging/net.toml.example")
	f.Add(ex)
	for _, s := range []string{
		"", "controllers = []", "[[interface]]\nname=\"eth0\"\naddresses=[\"10.0.0.1/24\"]\ngateway=\"10.0.0.9\"",
		"[fallback]\nsubnet=\"10.0.0.0/30\"\ncontroller=\"https://10.0.0.2\"", "[[interface]]\nmac=\"aa:bb:cc:dd:ee:ff\"\nmethod=\"none\"",
		"[probe]\ntimeout=5", "a.b.c = 1", "[[interface]]\n[[interface]]", "controllers=[\"https://[::1]:1\"]",
		"[fallback]\nsubnet=\"10.0.0.0/8\"\ncontroller=\"https://10.0.0.1\"",
		"[[interface]]\nname=\"en*\"\n[[interface]]\nname=\"eth[0-3]\"\nmethod=\"none\"\n[[interface]]\nname=\"eth1\"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("f.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.toml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		// Bound to links of every kind of name, the entries stay within
		// bounds and no link is governed by two of them.
		var links []Link
		for _, name := range []string{"lo", "eth0", "eth1", "enp3s0", "en", "wlan0", "x*", "[", "ovs0"} {
			links = append(links, Link{Name: name, Loopback: name == "lo"})
		}
		c, _ = Bind(c, links)
		if len(c.Interfaces) > MaxInterfaces {
			t.Fatalf("%d bound entries", len(c.Interfaces))
		}
		seen := map[string]bool{}
		for _, ic := range c.Interfaces {
			if ic.Name != "" && seen[ic.Name] {
				t.Fatalf("%s bound twice", ic.Name)
			}
			seen[ic.Name] = true
		}
		present := map[int]bool{}
		for i := range c.Interfaces {
			present[i] = true
		}
		steps := RoundSteps(c, present)
		if steps[0].Method != MethodStatic {
			t.Fatalf("round does not start with net.toml: %v", steps)
		}
		for _, s := range steps[1:] {
			if c.Interfaces[s.Index].Method == MethodNone {
				t.Fatalf("none interface in the search: %v", s)
			}
		}
		if c.Fallback.Enabled {
			a, ok := PickFallback(c.Fallback.Subnet, c.Fallback.ControllerIP, netip.Addr{}, nil, func(n int) int { return n - 1 })
			if ok && (!c.Fallback.Subnet.Contains(a) || a == c.Fallback.ControllerIP) {
				t.Fatalf("picked %s", a)
			}
		}
	})
}
