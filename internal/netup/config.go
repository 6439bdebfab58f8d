package netup

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Defaults other phases, the packaging and the docs rely on.
const (
	DefaultConfig      = "/etc/g8os/net.toml"
	DefaultTrustAnchor = "/etc/g8os/ac-ca.pem"
	DefaultResolvConf  = "/run/g8os/resolv.conf" // /etc/resolv.conf links here (units/g8os.tmpfiles)
	DefaultFallbackURL = "https://10.254.254.254:8443"
)

var tomlErrLine = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

var defaultFallbackSubnet = netip.MustParsePrefix("10.254.254.0/24")

// Method is how an interface gets (or got) its address.
type Method string

const (
	MethodStatic   Method = "static"
	MethodDHCP     Method = "dhcp"
	MethodNone     Method = "none" // link up only; never touched by the search
	MethodFallback Method = "fallback"
)

// Config is a validated net.toml.
type Config struct {
	Path        string
	Controllers []string // https base URLs, in the order they were listed
	TrustAnchor string

	ProbeTimeout time.Duration // one GET /v1/health
	Recheck      time.Duration // how often the controller is re-checked after READY
	LostAfter    int           // failed re-checks before the search runs again

	DHCPTimeout time.Duration // DORA on one interface

	Fallback Fallback

	BackoffInitial time.Duration
	BackoffMax     time.Duration

	Interfaces []Interface
}

// Fallback is the bootstrap LAN the node falls back to when neither its
// configuration nor DHCP leads to a controller.
type Fallback struct {
	Enabled      bool
	Subnet       netip.Prefix
	Controller   string     // URL probed on the fallback subnet
	ControllerIP netip.Addr // its address when the URL holds a literal IP, never picked
	Schedule     ACDSchedule
	MaxConflicts int // conflicts on one interface before moving to the next
}

// MaxInterfaces bounds the [[interface]] entries and the links name
// patterns bind (Bind): route metrics are 50+index for leases and
// 100+index for static gateways, and leases must stay ahead.
const MaxInterfaces = 32

// Interface is one [[interface]] entry, or, once bound (Bind), one link
// and the entry that governs it.
type Interface struct {
	Name      string           // matched by name, or
	MAC       net.HardwareAddr // by hardware address, or
	Pattern   string           // by a name pattern (shell glob, "en*"); bound, Name is the link it matched
	Method    Method
	Addresses []netip.Prefix // static only
	Gateway   netip.Addr     // static only; zero when none
	DNS       []netip.Addr
	MTU       int  // 0 = leave as is
	Search    bool // takes part in the DHCP and fallback search
	DHCP      bool // the search tries DHCP on it (false: known to have no DHCP server)
	Line      int  // where the entry starts in net.toml, for messages
}

// Label names the interface the way net.toml does, for messages.
func (i *Interface) Label() string {
	switch {
	case i.Name != "":
		return i.Name
	case i.Pattern != "":
		return i.Pattern
	}
	return "mac " + i.MAC.String()
}

// isPattern reports whether a net.toml name is a pattern rather than one
// link's name: it holds a glob metacharacter, as systemd.network's
// [Match] Name= treats it.
func isPattern(name string) bool { return strings.ContainsAny(name, "*?[") }

// The TOML shape. Everything is decoded as plain values and validated
// afterwards, so every error can name the file, line and field.
type fileConfig struct {
	Controllers []string `toml:"controllers"`
	TrustAnchor string   `toml:"trust_anchor"`
	Probe       struct {
		Timeout   *time.Duration `toml:"timeout"`
		Recheck   *time.Duration `toml:"recheck"`
		LostAfter *int           `toml:"lost_after"`
	} `toml:"probe"`
	DHCP struct {
		Timeout *time.Duration `toml:"timeout"`
	} `toml:"dhcp"`
	Fallback struct {
		Enabled      *bool    `toml:"enabled"`
		Subnet       *string  `toml:"subnet"`
		Controller   *string  `toml:"controller"`
		ACDScale     *float64 `toml:"acd_scale"`
		MaxConflicts *int     `toml:"max_conflicts"`
	} `toml:"fallback"`
	Backoff struct {
		Initial *time.Duration `toml:"initial"`
		Max     *time.Duration `toml:"max"`
	} `toml:"backoff"`
	Interfaces []fileInterface `toml:"interface"`
}

type fileInterface struct {
	Name      string   `toml:"name"`
	MAC       string   `toml:"mac"`
	Method    string   `toml:"method"`
	Addresses []string `toml:"addresses"`
	Gateway   string   `toml:"gateway"`
	DNS       []string `toml:"dns"`
	MTU       int      `toml:"mtu"`
	Search    *bool    `toml:"search"`
	DHCP      *bool    `toml:"dhcp"`
}

// ConfigError is a net.toml mistake: file, line (0 when unknown), field.
type ConfigError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

// LoadConfig reads and validates a net.toml.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("netup: config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig validates data (the contents of path). All mistakes are
// reported together, each as a *ConfigError, so an operator fixes the file
// in one pass.
func ParseConfig(path string, data []byte) (*Config, error) {
	var fc fileConfig
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// The lexer counts a line when it reads the newline that ends
			// it, so a mistake found at the end of a line ("[probe" then
			// newline) would be reported on the next one: count from the
			// error's byte offset instead.
			line := pe.Position.Line
			if st := pe.Position.Start; st >= 0 && st <= len(data) {
				line = 1 + bytes.Count(data[:st], []byte("\n"))
			}
			return nil, &ConfigError{File: path, Line: line, Field: locateKeys(data).indexed(pe.LastKey, line), Msg: pe.Message}
		}
		// Type mismatches come as plain errors that carry the line in text
		// and the key without its [[interface]] index; the index is the
		// last [[interface]] header above that line.
		if m := tomlErrLine.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &ConfigError{File: path, Line: line, Field: locateKeys(data).indexed(m[2], line), Msg: m[3]}
		}
		return nil, &ConfigError{File: path, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	}
	v := &validator{file: path, lines: locateKeys(data)}
	var unknown []string
	for _, k := range md.Undecoded() {
		name := k.String()
		if slices.ContainsFunc(unknown, func(u string) bool { return strings.HasPrefix(name, u+".") }) {
			continue // inside an unknown table, already reported
		}
		unknown = append(unknown, name)
		line, field := v.locateKey(k)
		v.errf(line, field, "unknown key")
	}
	c := v.config(&fc)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return c, nil
}

type validator struct {
	file  string
	lines keyLines
	errs  []error
}

func (v *validator) errf(line int, field, format string, a ...any) {
	v.errs = append(v.errs, &ConfigError{File: v.file, Line: line, Field: field, Msg: fmt.Sprintf(format, a...)})
}

func (v *validator) config(fc *fileConfig) *Config {
	c := &Config{
		Path:           v.file,
		TrustAnchor:    DefaultTrustAnchor,
		ProbeTimeout:   2 * time.Second,
		Recheck:        30 * time.Second,
		LostAfter:      3,
		DHCPTimeout:    3 * time.Second,
		BackoffInitial: time.Second,
		BackoffMax:     30 * time.Second,
		Fallback: Fallback{
			Enabled:      true,
			Subnet:       defaultFallbackSubnet,
			Controller:   DefaultFallbackURL,
			Schedule:     RFC5227.Scaled(DefaultACDScale),
			MaxConflicts: 10,
		},
	}
	seenURL := map[string]bool{}
	for i, u := range fc.Controllers {
		field := fmt.Sprintf("controllers[%d]", i)
		if err := checkControllerURL(u); err != nil {
			v.errf(v.lines.get("", "controllers"), field, "%v", err)
			continue
		}
		if seenURL[u] {
			v.errf(v.lines.get("", "controllers"), field, "%q listed twice", u)
			continue
		}
		seenURL[u] = true
		c.Controllers = append(c.Controllers, strings.TrimRight(u, "/"))
	}
	if fc.TrustAnchor != "" {
		if !filepath.IsAbs(fc.TrustAnchor) {
			v.errf(v.lines.get("", "trust_anchor"), "trust_anchor", "%q is not an absolute path", fc.TrustAnchor)
		}
		c.TrustAnchor = fc.TrustAnchor
	}

	v.duration(&c.ProbeTimeout, fc.Probe.Timeout, "probe", "timeout", time.Millisecond, time.Minute)
	v.duration(&c.Recheck, fc.Probe.Recheck, "probe", "recheck", 100*time.Millisecond, 24*time.Hour)
	if p := fc.Probe.LostAfter; p != nil {
		if *p < 1 || *p > 1000 {
			v.errf(v.lines.get("probe", "lost_after"), "probe.lost_after", "%d is not in 1..1000", *p)
		} else {
			c.LostAfter = *p
		}
	}
	v.duration(&c.DHCPTimeout, fc.DHCP.Timeout, "dhcp", "timeout", 100*time.Millisecond, 10*time.Minute)
	v.duration(&c.BackoffInitial, fc.Backoff.Initial, "backoff", "initial", time.Millisecond, time.Hour)
	v.duration(&c.BackoffMax, fc.Backoff.Max, "backoff", "max", time.Millisecond, 24*time.Hour)
	if c.BackoffMax < c.BackoffInitial {
		v.errf(v.lines.get("backoff", "max"), "backoff.max", "%v is shorter than backoff.initial %v", c.BackoffMax, c.BackoffInitial)
	}

	fb := &fc.Fallback
	if fb.Enabled != nil {
		c.Fallback.Enabled = *fb.Enabled
	}
	if fb.Subnet != nil {
		p, err := netip.ParsePrefix(*fb.Subnet)
		switch {
		case err != nil:
			v.errf(v.lines.get("fallback", "subnet"), "fallback.subnet", "%q is not a CIDR prefix", *fb.Subnet)
		case !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 8:
			v.errf(v.lines.get("fallback", "subnet"), "fallback.subnet", "%q must be an IPv4 prefix between /8 and /30", *fb.Subnet)
		default:
			c.Fallback.Subnet = p.Masked()
		}
	}
	if fb.Controller != nil {
		if err := checkControllerURL(*fb.Controller); err != nil {
			v.errf(v.lines.get("fallback", "controller"), "fallback.controller", "%v", err)
		} else {
			c.Fallback.Controller = strings.TrimRight(*fb.Controller, "/")
		}
	}
	if u, err := url.Parse(c.Fallback.Controller); err == nil {
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			c.Fallback.ControllerIP = a
			if !c.Fallback.Subnet.Contains(a) {
				v.errf(v.lines.get("fallback", "controller"), "fallback.controller", "%s is outside fallback.subnet %s", a, c.Fallback.Subnet)
			}
		}
	}
	if s := fb.ACDScale; s != nil {
		if !(*s > 0 && *s <= 1) {
			v.errf(v.lines.get("fallback", "acd_scale"), "fallback.acd_scale", "%v is not in (0, 1]", *s)
		} else {
			c.Fallback.Schedule = RFC5227.Scaled(*s)
		}
	}
	if m := fb.MaxConflicts; m != nil {
		if *m < 1 || *m > 1000 {
			v.errf(v.lines.get("fallback", "max_conflicts"), "fallback.max_conflicts", "%d is not in 1..1000", *m)
		} else {
			c.Fallback.MaxConflicts = *m
		}
	}

	if len(fc.Interfaces) > MaxInterfaces {
		v.errf(v.lines.get("interface[0]", ""), "interface", "%d entries, at most %d", len(fc.Interfaces), MaxInterfaces)
	}
	names := map[string]int{}
	macs := map[string]int{}
	addrs := map[netip.Addr]string{}
	for i := range fc.Interfaces {
		fi := &fc.Interfaces[i]
		base := fmt.Sprintf("interface[%d]", i)
		line := func(key string) int { return v.lines.get(fmt.Sprintf("interface[%d]", i), key) }
		ic := Interface{Line: line(""), Search: true, DHCP: true}
		switch {
		case fi.Name != "" && fi.MAC != "":
			v.errf(line("mac"), base, "give name or mac, not both")
		case fi.Name == "" && fi.MAC == "":
			v.errf(ic.Line, base, "needs a name or a mac")
		case isPattern(fi.Name) && !validPattern(fi.Name):
			v.errf(line("name"), base+".name", "%q is not a valid name pattern (shell glob: * ? [a-z])", fi.Name)
		case fi.Name != "" && !isPattern(fi.Name) && !validIfName(fi.Name):
			v.errf(line("name"), base+".name", "%q is not a valid interface name", fi.Name)
		case fi.Name != "":
			if j, dup := names[fi.Name]; dup {
				v.errf(line("name"), base+".name", "interface %q listed twice (also interface[%d])", fi.Name, j)
				break
			}
			names[fi.Name] = i
			if isPattern(fi.Name) {
				ic.Pattern = fi.Name
			} else {
				ic.Name = fi.Name
			}
		default:
			mac, err := net.ParseMAC(fi.MAC)
			if err != nil || len(mac) != 6 {
				v.errf(line("mac"), base+".mac", "%q is not an Ethernet MAC address", fi.MAC)
			} else if j, dup := macs[mac.String()]; dup {
				v.errf(line("mac"), base+".mac", "interface %s listed twice (also interface[%d])", mac, j)
			} else {
				macs[mac.String()] = i
				ic.MAC = mac
			}
		}
		switch Method(fi.Method) {
		case "":
			ic.Method = MethodDHCP
			if len(fi.Addresses) > 0 {
				ic.Method = MethodStatic
			}
		case MethodStatic, MethodDHCP, MethodNone:
			ic.Method = Method(fi.Method)
		default:
			v.errf(line("method"), base+".method", "%q is not static, dhcp or none", fi.Method)
		}
		if ic.Pattern != "" && ic.Method == MethodStatic {
			v.errf(line("method"), base+".method", "a name pattern matches any number of links; static addresses need one: list it by name or mac")
		}
		if ic.Method == MethodStatic && len(fi.Addresses) == 0 {
			v.errf(line("method"), base+".addresses", "method static needs at least one address")
		}
		if ic.Method != MethodStatic && ic.Method != "" {
			if len(fi.Addresses) > 0 {
				v.errf(line("addresses"), base+".addresses", "only for method static (this one is %s)", ic.Method)
			}
			if fi.Gateway != "" {
				v.errf(line("gateway"), base+".gateway", "only for method static (this one is %s)", ic.Method)
			}
		}
		for j, a := range fi.Addresses {
			field := fmt.Sprintf("%s.addresses[%d]", base, j)
			p, err := netip.ParsePrefix(a)
			if err != nil {
				v.errf(line("addresses"), field, "%q is not an address/prefix (CIDR)", a)
				continue
			}
			if p.Addr().Zone() != "" || p.Addr().IsUnspecified() || p.Addr().IsMulticast() || p.Addr().IsLoopback() {
				v.errf(line("addresses"), field, "%q is not a usable host address", a)
				continue
			}
			if p.Addr().Is4() && p.Bits() < 31 && (p.Addr() == p.Masked().Addr() || p.Addr() == lastAddr(p)) {
				v.errf(line("addresses"), field, "%q is the network or broadcast address of its prefix", a)
				continue
			}
			if other, dup := addrs[p.Addr()]; dup {
				v.errf(line("addresses"), field, "address %s is also given at %s", p.Addr(), other)
				continue
			}
			addrs[p.Addr()] = field
			ic.Addresses = append(ic.Addresses, p)
		}
		if fi.Gateway != "" && ic.Method == MethodStatic {
			g, err := netip.ParseAddr(fi.Gateway)
			switch {
			case err != nil:
				v.errf(line("gateway"), base+".gateway", "%q is not an IP address", fi.Gateway)
			case !onLink(g, ic.Addresses):
				v.errf(line("gateway"), base+".gateway", "%s is not inside any of the interface's addresses", g)
			default:
				ic.Gateway = g
			}
		}
		for j, d := range fi.DNS {
			a, err := netip.ParseAddr(d)
			if err != nil || a.Zone() != "" {
				v.errf(line("dns"), fmt.Sprintf("%s.dns[%d]", base, j), "%q is not an IP address", d)
				continue
			}
			ic.DNS = append(ic.DNS, a)
		}
		if fi.MTU != 0 && (fi.MTU < 68 || fi.MTU > 65535) {
			v.errf(line("mtu"), base+".mtu", "%d is not in 68..65535", fi.MTU)
		}
		ic.MTU = fi.MTU
		if fi.Search != nil {
			ic.Search = *fi.Search
		}
		if fi.DHCP != nil {
			ic.DHCP = *fi.DHCP
		}
		if ic.Method == MethodNone {
			if fi.Search != nil && *fi.Search {
				v.errf(line("search"), base+".search", "a none interface never takes part in the search")
			}
			ic.Search = false
		}
		c.Interfaces = append(c.Interfaces, ic)
	}
	if !slices.ContainsFunc(fc.Interfaces, func(fi fileInterface) bool { return Method(fi.Method) != MethodNone }) {
		v.errf(0, "interface", "none that g8-netup may configure (no [[interface]], or only method none): no controller could ever be found")
	}
	return c
}

func (v *validator) duration(dst *time.Duration, src *time.Duration, table, key string, lo, hi time.Duration) {
	if src == nil {
		return
	}
	if *src < lo || *src > hi {
		v.errf(v.lines.get(table, key), table+"."+key, "%v is not between %v and %v", *src, lo, hi)
		return
	}
	*dst = *src
}

func checkControllerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%q is not an https URL (the controller is only trusted over verified TLS)", s)
	}
	if u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("%q must be a base URL: https://host[:port]", s)
	}
	return nil
}

func validPattern(s string) bool {
	_, err := path.Match(s, "")
	return err == nil && len(s) <= 64 && ifNameChars(s)
}

func validIfName(s string) bool {
	return len(s) > 0 && len(s) <= 15 && s != "." && s != ".." && ifNameChars(s)
}

// ifNameChars reports whether s has none of what the kernel's
// dev_valid_name refuses (space, '/', ':') and no control or non-ASCII byte.
func ifNameChars(s string) bool {
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return false
		}
	}
	return true
}

func onLink(g netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(g) && p.Addr() != g {
			return true
		}
	}
	return false
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// keyLines maps "table.key" (arrays of tables as "interface[2]") to the line
// it is on; "table." is the table's header line. The TOML library keeps key
// positions private, and our errors must name lines, so this reads them back
// from the (already parsed, hence well-formed) text.
type keyLines map[string]int

func (k keyLines) get(table, key string) int {
	if l, ok := k[table+"."+key]; ok {
		return l
	}
	return k[table+"."]
}

// indexed names key ("interface.mtu") with the index of the array-of-
// tables entry that holds line ("interface[1].mtu"); key as is when its
// table is no array of tables.
func (k keyLines) indexed(key string, line int) string {
	table, rest, ok := strings.Cut(key, ".")
	if !ok {
		return key
	}
	found := -1
	for i := 0; ; i++ {
		l, ok := k[fmt.Sprintf("%s[%d].", table, i)]
		if !ok || l > line {
			break
		}
		found = i
	}
	if found < 0 {
		return key
	}
	return fmt.Sprintf("%s[%d].%s", table, found, rest)
}

func locateKeys(data []byte) keyLines {
	k := keyLines{}
	table := ""
	arrays := map[string]int{}
	for n, line := range strings.Split(string(data), "\n") {
		s := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(s, "[["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(s, "]]", 2)[0], "[ "))
			table = fmt.Sprintf("%s[%d]", name, arrays[name])
			arrays[name]++
			k[table+"."] = n + 1
		case strings.HasPrefix(s, "["):
			table = strings.TrimSpace(strings.Trim(strings.SplitN(s, "]", 2)[0], "[ "))
			k[table+"."] = n + 1
		default:
			if i := strings.IndexByte(s, '='); i > 0 {
				key := strings.Trim(strings.TrimSpace(s[:i]), `"'`)
				if _, seen := k[table+"."+key]; !seen {
					k[table+"."+key] = n + 1
				}
			}
		}
	}
	return k
}

// locateKey finds an undecoded key's line and names its field. toml.Key
// does not index arrays of tables, so the first entry of that array holding
// the key is the one reported.
func (v *validator) locateKey(key toml.Key) (int, string) {
	field := strings.Join(key, ".")
	if len(key) == 0 {
		return 0, field
	}
	table := strings.Join(key[:len(key)-1], ".")
	last := key[len(key)-1]
	if l, ok := v.lines[table+"."+last]; ok {
		return l, field
	}
	for i := 0; ; i++ {
		t := fmt.Sprintf("%s[%d]", table, i)
		if _, ok := v.lines[t+"."]; !ok {
			break
		}
		if l, ok := v.lines[t+"."+last]; ok {
			return l, t + "." + last
		}
	}
	return v.lines[field+"."], field
}
