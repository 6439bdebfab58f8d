package netup

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"
)

// The search is a pure function of the configuration and what has been
// observed so far in the current round: which interfaces are present and
// which steps were tried with what result. Everything with side effects
// (netlink, DHCP, ARP, HTTPS) runs a Step and reports an Outcome; this file
// decides what comes next and how to describe it.

// Step is one attempt to reach a controller.
type Step struct {
	Method Method // static: net.toml as written; dhcp or fallback on one interface
	Index  int    // interface index in Config.Interfaces; -1 for the static step
	Iface  string // its label, for messages
}

func (s Step) String() string {
	if s.Method == MethodStatic {
		return "net.toml as written"
	}
	return fmt.Sprintf("%s %s", s.Iface, s.Method)
}

// Result is how a step ended.
type Result string

const (
	Found        Result = "found"         // a controller answered /v1/health
	NoController Result = "no-controller" // the step ran, no controller answered
	Failed       Result = "failed"        // the step could not run (no lease, link gone, all addresses taken)
)

// Outcome is a finished step.
type Outcome struct {
	Step   Step
	Result Result
	Detail string // what happened, for STATUS= and the trace
}

func (o Outcome) String() string {
	if o.Detail == "" {
		return fmt.Sprintf("%s: %s", o.Step, o.Result)
	}
	return fmt.Sprintf("%s: %s", o.Step, o.Detail)
}

// Observations are what the search has seen in the current round.
type Observations struct {
	Round   int            // 1-based
	Present map[int]bool   // interfaces (by config index) whose link exists and may be touched
	Names   map[int]string // their link names, for interfaces net.toml lists by MAC
	Done    []Outcome      // this round's finished steps, in order
	// Keeping is the configuration in use whose controller was lost
	// ("eth0 dhcp 10.0.0.100/24"): its link stays out of the search.
	Keeping string
}

// Link is what binding needs to know of a link on the node.
type Link struct {
	Name     string
	MAC      net.HardwareAddr
	Loopback bool
}

// Bind turns net.toml's entries into one entry per link, in the order the
// search uses them: an entry by name or MAC stays one entry (the link may
// be missing); a name pattern becomes one entry per link it matches, in
// name order, each a copy of the pattern's entry naming its link (a
// pattern that matches nothing stays one entry with no Name). A link listed
// by name or MAC is governed by that entry only; any other link by the
// first pattern that matches it; the loopback link by no pattern. At most
// MaxInterfaces entries: the links past that are returned in over, unbound.
func Bind(c *Config, links []Link) (bound *Config, over []string) {
	listed := func(l Link) bool {
		return slices.ContainsFunc(c.Interfaces, func(ic Interface) bool {
			return ic.Pattern == "" && (ic.Name == l.Name || (ic.MAC != nil && bytes.Equal(ic.MAC, l.MAC)))
		})
	}
	taken := map[string]bool{}
	// Every entry holds one place; a pattern's further links take the rest.
	spare := MaxInterfaces - len(c.Interfaces)
	b := *c
	b.Interfaces = nil
	for _, ic := range c.Interfaces {
		if ic.Pattern == "" {
			b.Interfaces = append(b.Interfaces, ic)
			continue
		}
		var names []string
		for _, l := range links {
			if ok, _ := path.Match(ic.Pattern, l.Name); ok && !l.Loopback && !taken[l.Name] && !listed(l) {
				taken[l.Name] = true
				names = append(names, l.Name)
			}
		}
		if len(names) == 0 {
			b.Interfaces = append(b.Interfaces, ic)
			continue
		}
		slices.Sort(names)
		for k, name := range names {
			if k > 0 && spare == 0 {
				over = append(over, name)
				continue
			}
			if k > 0 {
				spare--
			}
			one := ic
			one.Name = name
			b.Interfaces = append(b.Interfaces, one)
		}
	}
	return &b, over
}

// ListedTwice finds the links two entries of net.toml name, one by name and
// one by MAC (config validation catches a name or a MAC given twice, but
// cannot know which name a MAC has): link name → what names it twice. Both
// entries are left alone, or the second would silently undo the first.
func ListedTwice(c *Config, links []Link) map[string]string {
	out := map[string]string{}
	for _, l := range links {
		var by []string
		for _, ic := range c.Interfaces {
			switch {
			case ic.Pattern != "":
			case ic.Name != "" && ic.Name == l.Name:
				by = append(by, fmt.Sprintf("line %d by name", ic.Line))
			case ic.MAC != nil && bytes.Equal(ic.MAC, l.MAC):
				by = append(by, fmt.Sprintf("line %d by mac %s", ic.Line, ic.MAC))
			}
		}
		if len(by) > 1 {
			out[l.Name] = fmt.Sprintf("%s: listed twice in net.toml (%s); neither is applied", l.Name, strings.Join(by, ", "))
		}
	}
	return out
}

// RoundSteps lists every step of a round in order, for the interfaces
// present: net.toml as written, then DHCP on each searchable interface
// (unless dhcp = false), then the fallback subnet on each. `none` interfaces
// and interfaces with search = false never appear.
func RoundSteps(c *Config, present map[int]bool) []Step {
	steps := []Step{{Method: MethodStatic, Index: -1}}
	for _, m := range []Method{MethodDHCP, MethodFallback} {
		if m == MethodFallback && !c.Fallback.Enabled {
			continue
		}
		for i := range c.Interfaces {
			ic := &c.Interfaces[i]
			if ic.Search && present[i] && (m != MethodDHCP || ic.DHCP) {
				steps = append(steps, Step{Method: m, Index: i, Iface: ic.Label()})
			}
		}
	}
	return steps
}

// NextStep is the first step of the round not yet tried, or false when the
// round is over (a controller was found, or everything was tried).
func NextStep(c *Config, obs Observations) (Step, bool) {
	left := remaining(c, obs)
	if len(left) == 0 {
		return Step{}, false
	}
	return left[0], true
}

// remaining lists the round's steps not yet tried, in order, each naming
// its link; none once a controller was found.
func remaining(c *Config, obs Observations) []Step {
	// Steps are told apart by link name, not index: the entries are bound
	// again after every step, and a link that appears mid-round shifts the
	// indices of those after it.
	type key struct {
		m     Method
		iface string
	}
	tried := map[key]bool{}
	for _, o := range obs.Done {
		if o.Result == Found {
			return nil
		}
		tried[key{o.Step.Method, o.Step.Iface}] = true
	}
	var left []Step
	for _, s := range RoundSteps(c, obs.Present) {
		if name, ok := obs.Names[s.Index]; ok && s.Index >= 0 {
			s.Iface = name
		}
		if !tried[key{s.Method, s.Iface}] {
			left = append(left, s)
		}
	}
	return left
}

// Scan is the discovery a round runs on one link before its DHCP and
// fallback steps, on every link at once: what can overlap does, and the
// steps then take their results in the order of preference.
type Scan struct {
	Index    int    // interface index, as in Step
	Iface    string // link name
	DHCP     bool   // DHCPDISCOVER, waiting up to the round's DHCPWindow for an offer
	Fallback bool   // ARP probes of a fallback candidate and of the fallback controller's address
}

// RoundScans is the discovery for the DHCP and fallback steps of the round
// still to come, one Scan per link, in the order of its first step.
func RoundScans(c *Config, obs Observations) []Scan {
	var scans []Scan
	at := map[int]int{}
	for _, s := range remaining(c, obs) {
		if s.Method == MethodStatic {
			continue
		}
		k, ok := at[s.Index]
		if !ok {
			k = len(scans)
			at[s.Index] = k
			scans = append(scans, Scan{Index: s.Index, Iface: s.Iface})
		}
		switch s.Method {
		case MethodDHCP:
			scans[k].DHCP = true
		case MethodFallback:
			scans[k].Fallback = true
		}
	}
	return scans
}

// DHCPWindow is how long round waits for DHCP offers: an eighth of
// dhcp.timeout in round 1, a quarter in round 2, half in round 3, all of
// it from round 4 on (never under 100 ms, nclient4's shortest retransmit).
// A server on the LAN answers in milliseconds, so the first round costs a
// link without one little; one slower than that (dnsmasq's ping check,
// ISC dhcpd's ping-timeout) gets the longer windows of later rounds.
func DHCPWindow(timeout time.Duration, round int) time.Duration {
	w := timeout
	if round < 4 {
		w = timeout >> (4 - max(round, 1))
	}
	return max(w, min(timeout, 100*time.Millisecond))
}

// ScanStatus says what a round's discovery does, for STATUS= while it runs.
func ScanStatus(scans []Scan, window time.Duration, next Step) string {
	var names []string
	for _, s := range scans {
		names = append(names, s.Iface)
	}
	return fmt.Sprintf("DHCP discovery (%v) and ARP probes on %s at once, then %s", window, strings.Join(names, ", "), next)
}

// StatusLine is the STATUS= text while searching: the round, what was tried
// in it, and what runs now (empty: the round is over and the next one
// starts after wait).
func StatusLine(obs Observations, now string, wait time.Duration) string {
	var b strings.Builder
	if obs.Keeping != "" {
		fmt.Fprintf(&b, "controller lost, keeping %s; ", obs.Keeping)
	}
	fmt.Fprintf(&b, "no controller yet (round %d)", obs.Round)
	if len(obs.Done) > 0 {
		parts := make([]string, len(obs.Done))
		for i, o := range obs.Done {
			parts[i] = o.String()
		}
		b.WriteString(": tried " + strings.Join(parts, "; "))
	}
	switch {
	case now != "":
		fmt.Fprintf(&b, "; now: %s", now)
	default:
		fmt.Fprintf(&b, "; next: round %d in %s", obs.Round+1, wait.Round(10*time.Millisecond))
	}
	return b.String()
}

// PickFallback chooses a random host address in subnet for the fallback
// step. It never returns the network or broadcast address, the controller's
// address, an address in avoid (conflicts already seen), or last (RFC 5227
// 2.1.1: after a conflict pick another address, never the same one again in
// a row). intn(n) returns a uniform int in [0, n); tests pass a seeded one.
// False when no address is left.
func PickFallback(subnet netip.Prefix, controller, last netip.Addr, avoid map[netip.Addr]bool, intn func(int) int) (netip.Addr, bool) {
	subnet = subnet.Masked()
	hostBits := 32 - subnet.Bits()
	if !subnet.Addr().Is4() || hostBits < 2 {
		return netip.Addr{}, false
	}
	size := 1 << hostBits
	base := subnet.Addr().As4()
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	at := func(i int) netip.Addr {
		v := b + uint32(i)
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	ok := func(a netip.Addr) bool { return a != controller && a != last && !avoid[a] }
	if size <= 1<<12 {
		var cands []netip.Addr
		for i := 1; i < size-1; i++ {
			if a := at(i); ok(a) {
				cands = append(cands, a)
			}
		}
		if len(cands) == 0 {
			return netip.Addr{}, false
		}
		return cands[intn(len(cands))], true
	}
	// Large subnets: rejection sampling; avoid is tiny in comparison.
	for range 256 {
		if a := at(1 + intn(size-2)); ok(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// FailoverList is every controller the network found by a step of method
// leads to, reached first: net.toml's list, or on the fallback subnet only
// its controller (the listed ones are not on that LAN).
func FailoverList(cfg *Config, method Method, reached string) []string {
	l := []string{reached}
	src := cfg.Controllers
	if method == MethodFallback {
		src = []string{cfg.Fallback.Controller}
	}
	for _, u := range src {
		if u != reached {
			l = append(l, u)
		}
	}
	return l
}
