package sandbox

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

const exampleConfig = `
store = "https://10.254.254.254:8443/v1/store"

[[sandbox]]
name = "ostools"
flist = "blake3:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
mountpoint = "/opt/ostools"

[[sandbox]]
name = "jumpscale"
flist = "https://10.254.254.254:8443/flists/jumpscale.flist"
mountpoint = "/opt/jumpscale/"
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(exampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Store != "https://10.254.254.254:8443/v1/store" || len(c.Sandboxes) != 2 || c.Sandboxes[1].Mountpoint != "/opt/jumpscale" {
		t.Errorf("config %+v", c)
	}
}

func TestParseConfigRejects(t *testing.T) {
	sb := func(name, flist, mp string) string {
		return "[[sandbox]]\nname = \"" + name + "\"\nflist = \"" + flist + "\"\nmountpoint = \"" + mp + "\"\n"
	}
	many := ""
	for i := 0; i <= MaxSandboxes; i++ {
		many += sb(fmt.Sprintf("s%d", i), "/x", fmt.Sprintf("/s/%d", i))
	}
	for _, c := range []struct {
		name, toml, want string
	}{
		{"more sandboxes than the fd store holds", many, "257 tables, at most 256"},
		{"unknown field", "stor = \"x\"\n", `unknown field "stor"`},
		{"bad name", sb("Bad Name", "/x", "/a"), `sandbox "Bad Name": name`},
		{"missing flist", sb("a", "", "/a"), `sandbox "a": flist: missing`},
		{"relative mountpoint", sb("a", "/x", "a"), `sandbox "a": mountpoint "a"`},
		{"root mountpoint", sb("a", "/x", "/"), `sandbox "a": mountpoint "/"`},
		{"bad hash", sb("a", "blake3:XYZ", "/a"), `sandbox "a": flist: hash "XYZ"`},
		{"duplicate name", sb("a", "/x", "/a") + sb("a", "/y", "/b"), `sandbox "a": name: used twice`},
		{"duplicate mountpoint", sb("a", "/x", "/a") + sb("b", "/y", "/a/"), `sandbox "b": mountpoint /a: also used by sandbox "a"`},
		{"nested mountpoints", sb("a", "/x", "/opt") + sb("b", "/y", "/opt/b"), `nested with sandbox "a"`},
		{"not toml", "[[sandbox", "expected"},
		{"plain http flist", sb("a", "http://x/a.flist", "/a"), `plain http is not verified`},
	} {
		_, err := ParseConfig([]byte(c.toml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to contain %q", c.name, err, c.want)
		}
	}
}

func TestPlanReload(t *testing.T) {
	a := SandboxConfig{Name: "a", Flist: "/a.flist", Mountpoint: "/a"}
	b := SandboxConfig{Name: "b", Flist: "/b.flist", Mountpoint: "/b"}
	b2 := SandboxConfig{Name: "b", Flist: "/b2.flist", Mountpoint: "/b"}
	c := SandboxConfig{Name: "c", Flist: "/c.flist", Mountpoint: "/c"}
	for _, tc := range []struct {
		name          string
		running, next []SandboxConfig
		want          ReloadPlan
	}{
		{"nothing changed", []SandboxConfig{a, b}, []SandboxConfig{b, a}, ReloadPlan{}},
		{"add", []SandboxConfig{a}, []SandboxConfig{a, c}, ReloadPlan{Add: []SandboxConfig{c}}},
		{"remove", []SandboxConfig{a, b}, []SandboxConfig{a}, ReloadPlan{Remove: []string{"b"}}},
		{"changed flist is remounted", []SandboxConfig{a, b}, []SandboxConfig{a, b2}, ReloadPlan{Remove: []string{"b"}, Add: []SandboxConfig{b2}}},
		{"from empty", nil, []SandboxConfig{a}, ReloadPlan{Add: []SandboxConfig{a}}},
	} {
		if got := PlanReload(tc.running, tc.next); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: plan = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"10G": 10 << 30, "512M": 512 << 20, "1048576": 1 << 20, "4KiB": 4 << 10, "2gb": 2 << 30} {
		var b ByteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	var b ByteSize
	if err := b.Set("lots"); err == nil {
		t.Error("Set(lots) accepted")
	}
}

// FuzzParseConfig: no input panics the parser, and what it accepts holds
// the invariants the daemon relies on.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(exampleConfig))
	f.Add([]byte("[[sandbox]]\nname = \"a\"\nflist = \"/x\"\nmountpoint = \"/a\"\n"))
	f.Add([]byte("store = 1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, s := range c.Sandboxes {
			if names[s.Name] || s.Flist == "" || !strings.HasPrefix(s.Mountpoint, "/") || s.Mountpoint == "/" {
				t.Fatalf("accepted %+v", s)
			}
			names[s.Name] = true
		}
	})
}

func TestRetryable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{errors.New("dial tcp 10.254.254.254:8443: connect: connection refused"), true},
		{&StatusError{Code: 503}, true},
		{&StatusError{Code: 429}, true},
		{&StatusError{Code: 401}, false},
		{fmt.Errorf("x: %w", ErrNotFound), false},
		{fmt.Errorf("x: %w", ErrCorrupt), false},
		{&FlistError{Field: "checksum"}, false},
		{fmt.Errorf("open /x.flist: %w", os.ErrNotExist), false},
		{fmt.Errorf("sandbox a: %w: busy", errMount), false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
