package acapi

import (
	"strings"
	"testing"
)

// Sequences a hostile node could send to an operator's terminal.
const (
	osc52 = "\x1b]52;c;cm0gLXJmIH4K\x07" // sets the clipboard to "rm -rf ~"
	csiC1 = "\u009b2J"                   // 8-bit CSI: clear screen
)

func TestText(t *testing.T) {
	for _, c := range []struct {
		in     string
		ok     bool
		clean  string
		quoted string
	}{
		{"g8-sshd.service", true, "g8-sshd.service", "g8-sshd.service"},
		{"eth0 dhcp 10.0.0.5/24 via https://ac:8443", true, "eth0 dhcp 10.0.0.5/24 via https://ac:8443", "eth0 dhcp 10.0.0.5/24 via https://ac:8443"},
		{"nœud ✓ 节点", true, "nœud ✓ 节点", "nœud ✓ 节点"},
		{"", true, "", ""},
		{"x" + osc52, false, `x\x1b]52;c;cm0gLXJmIH4K\a`, `"x\x1b]52;c;cm0gLXJmIH4K\a"`},
		{csiC1, false, `\u009b2J`, `"\u009b2J"`},
		{"line1\nline2\ttab", false, `line1\nline2\ttab`, `"line1\nline2\ttab"`},
		{"del\x7f", false, `del\x7f`, `"del\x7f"`},
		{"bad\xffutf8", false, `bad\ufffdutf8`, `"bad\xffutf8"`},
		{"rtl\u202eevil", false, `rtl\u202eevil`, `"rtl\u202eevil"`},
	} {
		if IsText(c.in) != c.ok || (CheckText("f", c.in) == nil) != c.ok {
			t.Errorf("%q: IsText %v, CheckText %v; want ok=%v", c.in, IsText(c.in), CheckText("f", c.in), c.ok)
		}
		if got := CleanText(c.in); got != c.clean || !IsText(got) {
			t.Errorf("CleanText(%q) = %q, want %q", c.in, got, c.clean)
		}
		if got := QuoteText(c.in); got != c.quoted || !IsText(got) {
			t.Errorf("QuoteText(%q) = %q, want %q", c.in, got, c.quoted)
		}
	}
	err := CheckText("units key", "a\x1bb")
	if err == nil || err.Error() != "field units key: control or non-printable character U+001B at byte 1; only printable text is accepted" {
		t.Errorf("CheckText error: %v", err)
	}
}

func TestHeartbeatText(t *testing.T) {
	for _, c := range []struct {
		hb    Heartbeat
		field string
	}{
		{Heartbeat{Hostname: "h\x07"}, "field hostname:"},
		{Heartbeat{BootID: osc52}, "field boot_id:"},
		{Heartbeat{Addresses: []string{"10.0.0.1/24", "\x1b[31m"}}, "field addresses[1]:"},
		{Heartbeat{Units: map[string]string{"g8" + osc52: "active"}}, `field units key "g8\\x1b]52;c;cm0gLXJmIH4K\\a":`},
		{Heartbeat{Units: map[string]string{"g8-fs.service": "active" + csiC1}}, `field units["g8-fs.service"]:`},
		{Heartbeat{Phases: map[string]string{"net": "eth0\ndhcp"}}, `field phases["net"]:`},
		{Heartbeat{Apps: []AppStatus{{Name: "web"}, {Name: "db", Error: "exit 1" + osc52}}}, "field apps[1].error:"},
		{Heartbeat{Apps: []AppStatus{{Name: "w\x1bb"}}}, "field apps[0].name:"},
	} {
		hb := c.hb
		err := hb.CheckText()
		if err == nil || !strings.HasPrefix(err.Error(), c.field) || strings.ContainsAny(err.Error(), "\x1b\x07\n\u009b") {
			t.Errorf("%+v: CheckText = %v, want an error starting %q with no control characters", c.hb, err, c.field)
		}
		hb.CleanText()
		if err := hb.CheckText(); err != nil {
			t.Errorf("after CleanText: %v", err)
		}
	}
	ok := Heartbeat{Hostname: "node-1", Units: map[string]string{"g8-fs.service": "active"}, Phases: map[string]string{"net": "eth0 dhcp"},
		Apps: []AppStatus{{Name: "web", State: "running", Error: ""}}}
	if err := ok.CheckText(); err != nil {
		t.Errorf("a plain heartbeat: %v", err)
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{"plain", osc52, csiC1, "a\nb", "\xff\xfe", "\u202e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if c := CleanText(s); !IsText(c) || (IsText(s) && c != s) {
			t.Fatalf("CleanText(%q) = %q", s, c)
		}
		if q := QuoteText(s); !IsText(q) || (IsText(s) && q != s) {
			t.Fatalf("QuoteText(%q) = %q", s, q)
		}
		if IsText(s) != (CheckText("f", s) == nil) {
			t.Fatalf("IsText and CheckText disagree on %q", s)
		}
	})
}
