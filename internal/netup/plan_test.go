package netup

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func planConfig(t *testing.T, toml string) *Config {
	t.Helper()
	c, err := ParseConfig("net.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const threeLinks = `
controllers = ["https://ac:8443"]
[[interface]]
name = "eth0"
addresses = ["192.0.2.5/24"]
[[interface]]
name = "eth1"
method = "dhcp"
[[interface]]
name = "ovs0"
method = "none"
[[interface]]
name = "eth2"
method = "dhcp"
search = false
`

func stepNames(steps []Step) string {
	var s []string
	for _, st := range steps {
		s = append(s, st.String())
	}
	return strings.Join(s, " | ")
}

func all(n int) map[int]bool {
	m := map[int]bool{}
	for i := 0; i < n; i++ {
		m[i] = true
	}
	return m
}

func TestRoundOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		toml    string
		present map[int]bool
		want    string
	}{
		{"config, then dhcp in order, then fallback in order; none and search=false never", threeLinks, all(4),
			"net.toml as written | eth0 dhcp | eth1 dhcp | eth0 fallback | eth1 fallback"},
		{"absent links are skipped", threeLinks, map[int]bool{1: true, 2: true},
			"net.toml as written | eth1 dhcp | eth1 fallback"},
		{"fallback disabled", threeLinks + "[fallback]\nenabled = false\n", all(4),
			"net.toml as written | eth0 dhcp | eth1 dhcp"},
		{"dhcp = false skips only DHCP", "[[interface]]\nname = \"eth0\"\ndhcp = false\n[[interface]]\nname = \"eth1\"\n", all(2),
			"net.toml as written | eth1 dhcp | eth0 fallback | eth1 fallback"},
		{"no interface present", "controllers = [\"https://ac\"]\n[[interface]]\nname = \"eth0\"\n", nil, "net.toml as written"},
		{"by mac", "[[interface]]\nmac = \"52:54:00:00:00:09\"\n", all(1),
			"net.toml as written | mac 52:54:00:00:00:09 dhcp | mac 52:54:00:00:00:09 fallback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := stepNames(RoundSteps(planConfig(t, tc.toml), tc.present))
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// The whole sequence of attempts is a pure function of config and
// observations: replay a search against scripted outcomes.
func TestNextStepFollowsObservations(t *testing.T) {
	c := planConfig(t, threeLinks)
	for _, tc := range []struct {
		name    string
		results map[string]Result // outcome per step; missing = NoController
		vanish  map[string]int    // after this step, interface index gone
		want    string
	}{
		{"static wins at once", map[string]Result{"net.toml as written": Found}, nil,
			"net.toml as written"},
		{"second dhcp wins", map[string]Result{"eth0 dhcp": Failed, "eth1 dhcp": Found}, nil,
			"net.toml as written | eth0 dhcp | eth1 dhcp"},
		{"fallback on second interface wins", map[string]Result{"eth1 fallback": Found}, nil,
			"net.toml as written | eth0 dhcp | eth1 dhcp | eth0 fallback | eth1 fallback"},
		{"nothing: round ends after every step", nil, nil,
			"net.toml as written | eth0 dhcp | eth1 dhcp | eth0 fallback | eth1 fallback"},
		{"link vanishes mid-search", nil, map[string]int{"eth0 dhcp": 1},
			"net.toml as written | eth0 dhcp | eth0 fallback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := Observations{Round: 1, Present: all(4)}
			var got []Step
			for len(got) < 20 {
				s, ok := NextStep(c, obs)
				if !ok {
					break
				}
				got = append(got, s)
				r, ok := tc.results[s.String()]
				if !ok {
					r = NoController
				}
				obs.Done = append(obs.Done, Outcome{Step: s, Result: r})
				if i, ok := tc.vanish[s.String()]; ok {
					delete(obs.Present, i)
				}
			}
			if g := stepNames(got); g != tc.want {
				t.Errorf("got  %s\nwant %s", g, tc.want)
			}
		})
	}
}

// Interfaces listed by MAC are named by their link once it is found.
func TestNextStepNamesLinksFoundByMAC(t *testing.T) {
	c := planConfig(t, "[[interface]]\nmac = \"52:54:00:00:00:09\"\n")
	obs := Observations{Round: 1, Present: all(1), Names: map[int]string{0: "enp3s0"}}
	var got []Step
	for {
		s, ok := NextStep(c, obs)
		if !ok {
			break
		}
		got = append(got, s)
		obs.Done = append(obs.Done, Outcome{Step: s, Result: NoController})
	}
	if g := stepNames(got); g != "net.toml as written | enp3s0 dhcp | enp3s0 fallback" {
		t.Errorf("got %s", g)
	}
}

func TestStatusLineSaysWhatWasTriedAndWhatIsNext(t *testing.T) {
	obs := Observations{Round: 3, Done: []Outcome{
		{Step: Step{Method: MethodStatic, Index: -1}, Result: NoController, Detail: "no controller answered (https://ac: connection refused)"},
		{Step: Step{Method: MethodDHCP, Iface: "eth0"}, Result: Failed, Detail: "no lease: timeout"},
	}}
	next := Step{Method: MethodDHCP, Index: 1, Iface: "eth1"}
	want := "no controller yet (round 3): tried net.toml as written: no controller answered (https://ac: connection refused); eth0 dhcp: no lease: timeout; now: eth1 dhcp"
	if got := StatusLine(obs, next.String(), 0); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	want = "no controller yet (round 3): tried net.toml as written: no controller answered (https://ac: connection refused); eth0 dhcp: no lease: timeout; next: round 4 in 2.5s"
	if got := StatusLine(obs, "", 2500*time.Millisecond); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := StatusLine(Observations{Round: 1}, Step{Method: MethodStatic}.String(), 0); got != "no controller yet (round 1); now: net.toml as written" {
		t.Errorf("first status: %s", got)
	}
	obs.Keeping = "eth2 dhcp 10.0.0.100/24"
	want = "controller lost, keeping eth2 dhcp 10.0.0.100/24; no controller yet (round 3): tried net.toml as written: no controller answered (https://ac: connection refused); eth0 dhcp: no lease: timeout; now: eth1 dhcp"
	if got := StatusLine(obs, next.String(), 0); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	scans := []Scan{{Index: 0, Iface: "eth0", DHCP: true, Fallback: true}, {Index: 1, Iface: "eth1", Fallback: true}}
	want = "no controller yet (round 1); now: DHCP discovery (375ms) and ARP probes on eth0, eth1 at once, then eth0 dhcp"
	if got := StatusLine(Observations{Round: 1}, ScanStatus(scans, 375*time.Millisecond, Step{Method: MethodDHCP, Iface: "eth0"}), 0); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// The round's discovery covers the steps still to come, one entry per
// link in the order of its first step: DHCP where a DHCP step follows,
// ARP probing where a fallback step does.
func TestRoundScans(t *testing.T) {
	dhcpOff := "[[interface]]\nname = \"eth0\"\ndhcp = false\n[[interface]]\nname = \"eth1\"\n[[interface]]\nname = \"eth2\"\nmethod = \"none\"\n"
	for _, tc := range []struct {
		name string
		toml string
		obs  Observations
		want []Scan
	}{
		{"static done: every searchable link, dhcp and fallback", threeLinks,
			Observations{Present: all(4), Done: []Outcome{{Step: Step{Method: MethodStatic, Index: -1}, Result: NoController}}},
			[]Scan{{0, "eth0", true, true}, {1, "eth1", true, true}}},
		{"dhcp = false: only the probes; none: nothing", dhcpOff, Observations{Present: all(3)},
			[]Scan{{1, "eth1", true, true}, {0, "eth0", false, true}}},
		{"fallback disabled: only DHCP", threeLinks + "[fallback]\nenabled = false\n", Observations{Present: all(4)},
			[]Scan{{0, "eth0", true, false}, {1, "eth1", true, false}}},
		{"a link that appeared mid-round, after the DHCP steps ran: its fallback only", threeLinks,
			Observations{Present: all(4), Done: []Outcome{
				{Step: Step{Method: MethodStatic, Index: -1}, Result: NoController},
				{Step: Step{Method: MethodDHCP, Index: 1, Iface: "eth1"}, Result: Failed}}},
			[]Scan{{0, "eth0", true, true}, {1, "eth1", false, true}}},
		{"found: nothing left", threeLinks, Observations{Present: all(4), Done: []Outcome{{Step: Step{Method: MethodStatic, Index: -1}, Result: Found}}}, nil},
		{"links named by MAC scan under their link's name", "[[interface]]\nmac = \"52:54:00:00:00:09\"\n",
			Observations{Present: all(1), Names: map[int]string{0: "enp3s0"}}, []Scan{{0, "enp3s0", true, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := RoundScans(planConfig(t, tc.toml), tc.obs)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

// A short first DHCP round and longer later ones: an eighth of
// dhcp.timeout, a quarter, half, then all of it; never under 100 ms
// (nor over dhcp.timeout).
func TestDHCPWindow(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		timeout time.Duration
		windows []time.Duration // rounds 1, 2, 3, ...
	}{
		{3 * time.Second, []time.Duration{375 * ms, 750 * ms, 1500 * ms, 3000 * ms, 3000 * ms, 3000 * ms}},
		{2 * time.Second, []time.Duration{250 * ms, 500 * ms, 1000 * ms, 2000 * ms, 2000 * ms}},
		{12 * time.Second, []time.Duration{1500 * ms, 3000 * ms, 6000 * ms, 12000 * ms}},
		{400 * ms, []time.Duration{100 * ms, 100 * ms, 200 * ms, 400 * ms}},
		{100 * ms, []time.Duration{100 * ms, 100 * ms, 100 * ms, 100 * ms}},
	} {
		for k, want := range tc.windows {
			if got := DHCPWindow(tc.timeout, k+1); got != want {
				t.Errorf("dhcp.timeout %v, round %d: window %v, want %v", tc.timeout, k+1, got, want)
			}
		}
	}
}

func TestPickFallback(t *testing.T) {
	subnet := netip.MustParsePrefix("10.254.254.0/24")
	ctrl := netip.MustParseAddr("10.254.254.254")
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[netip.Addr]bool{}
	last := netip.Addr{}
	for i := 0; i < 5000; i++ {
		a, ok := PickFallback(subnet, ctrl, last, nil, r.IntN)
		if !ok {
			t.Fatal("no address")
		}
		b := a.As4()
		if !subnet.Contains(a) || b[3] < 1 || b[3] > 253 {
			t.Fatalf("picked %s: outside 10.254.254.1-253", a)
		}
		if a == last {
			t.Fatalf("picked %s twice in a row", a)
		}
		last = a
		seen[a] = true
	}
	if len(seen) != 253 {
		t.Errorf("only %d of 253 addresses ever picked", len(seen))
	}

	// Known conflicts are avoided until nothing is left.
	avoid := map[netip.Addr]bool{}
	for i := 1; i <= 253; i++ {
		if i != 77 {
			avoid[netip.AddrFrom4([4]byte{10, 254, 254, byte(i)})] = true
		}
	}
	if a, ok := PickFallback(subnet, ctrl, netip.Addr{}, avoid, r.IntN); !ok || a.String() != "10.254.254.77" {
		t.Errorf("with one free address got %s %v", a, ok)
	}
	if _, ok := PickFallback(subnet, ctrl, netip.MustParseAddr("10.254.254.77"), avoid, r.IntN); ok {
		t.Error("picked the last address again / an avoided one")
	}
	// A /30 has two hosts; with the controller on one, only the other is left.
	a, ok := PickFallback(netip.MustParsePrefix("10.0.0.0/30"), netip.MustParseAddr("10.0.0.2"), netip.Addr{}, nil, r.IntN)
	if !ok || a.String() != "10.0.0.1" {
		t.Errorf("/30: %s %v", a, ok)
	}
	// Large subnets sample without enumerating.
	big := netip.MustParsePrefix("10.0.0.0/8")
	for i := 0; i < 100; i++ {
		a, ok := PickFallback(big, netip.Addr{}, netip.Addr{}, nil, r.IntN)
		if !ok || !big.Contains(a) || a == big.Addr() || a.String() == "10.255.255.255" {
			t.Fatalf("/8: %s %v", a, ok)
		}
	}
}

func TestScaledSchedule(t *testing.T) {
	s := RFC5227.Scaled(DefaultACDScale)
	// Worst case to claim a free address: ProbeWait + (ProbeNum-1)*ProbeMax + AnnounceWait.
	worst := s.ProbeWait + time.Duration(s.ProbeNum-1)*s.ProbeMax + s.AnnounceWait
	if worst > 350*time.Millisecond {
		t.Errorf("scaled claim takes up to %v, more than the 0.5 s budget allows with a probe", worst)
	}
	if s.ProbeNum != 3 || s.AnnounceNum != 2 || s.DefendInterval != 10*time.Second {
		t.Errorf("counts or defend interval scaled: %+v", s)
	}
	if RFC5227.Scaled(1) != RFC5227 {
		t.Error("scale 1 is not RFC 5227")
	}
}

func boundNames(c *Config) string {
	var s []string
	for _, ic := range c.Interfaces {
		s = append(s, ic.Label()+"="+string(ic.Method))
	}
	return strings.Join(s, " ")
}

// Patterns bind every link they match that no entry lists by name or MAC,
// first pattern first, in name order, never the loopback link; an entry by
// name stays even when its link is missing, a pattern that matches nothing
// stays as itself.
func TestBind(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	links := []Link{{Name: "lo", Loopback: true}, {Name: "eth1", MAC: mac("52:54:00:00:00:01")}, {Name: "enp2s0"},
		{Name: "eth0"}, {Name: "enp1s0", MAC: mac("52:54:00:00:00:09")}, {Name: "wlan0"}}
	for _, tc := range []struct{ name, toml, want string }{
		{"DHCP everywhere", "[[interface]]\nname = \"en*\"\n[[interface]]\nname = \"eth*\"\n",
			"enp1s0=dhcp enp2s0=dhcp eth0=dhcp eth1=dhcp"},
		{"listed by name or mac wins wherever it is", "[[interface]]\nname = \"e*\"\n[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.0.2/24\"]\n" +
			"[[interface]]\nmac = \"52:54:00:00:00:09\"\nmethod = \"none\"\n",
			"enp2s0=dhcp eth1=dhcp eth0=static mac 52:54:00:00:00:09=none"},
		{"first pattern wins, never lo", "[[interface]]\nname = \"*1\"\nmethod = \"none\"\n[[interface]]\nname = \"*\"\n",
			"eth1=none enp1s0=dhcp enp2s0=dhcp eth0=dhcp wlan0=dhcp"},
		{"missing link and unmatched pattern stay", "[[interface]]\nname = \"eth9\"\n[[interface]]\nname = \"ib*\"\n",
			"eth9=dhcp ib*=dhcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := planConfig(t, tc.toml)
			b, over := Bind(c, links)
			if g := boundNames(b); g != tc.want || len(over) != 0 {
				t.Errorf("got  %s (over %v)\nwant %s", g, over, tc.want)
			}
			if len(c.Interfaces) != len(planConfig(t, tc.toml).Interfaces) {
				t.Error("Bind changed the loaded config")
			}
		})
	}
	// A bound pattern entry is its link's, by name; the unmatched one has none.
	b, _ := Bind(planConfig(t, "[[interface]]\nname = \"wl*\"\n[[interface]]\nname = \"ib*\"\n"), links)
	if w, ib := b.Interfaces[0], b.Interfaces[1]; w.Name != "wlan0" || w.Pattern != "wl*" || ib.Name != "" || ib.Pattern != "ib*" {
		t.Errorf("bound: %+v", b.Interfaces)
	}
}

// However many links a pattern matches, the bound entries stay within
// MaxInterfaces (route metrics depend on it), entries by name keep their
// place, and the links left over are named.
func TestBindStopsAtMaxInterfaces(t *testing.T) {
	var links []Link
	for i := range 100 {
		links = append(links, Link{Name: fmt.Sprintf("veth%03d", i)})
	}
	c := planConfig(t, "[[interface]]\nname = \"veth*\"\n[[interface]]\nname = \"eth0\"\n")
	b, over := Bind(c, links)
	if len(b.Interfaces) != MaxInterfaces || b.Interfaces[MaxInterfaces-1].Name != "eth0" || b.Interfaces[MaxInterfaces-2].Name != "veth030" {
		t.Fatalf("%d bound: %s", len(b.Interfaces), boundNames(b))
	}
	if len(over) != 100-(MaxInterfaces-1) || over[0] != "veth031" {
		t.Errorf("over: %v", over)
	}
}

// A link that appears mid-round (bound again after every step) joins the
// round without any step being tried twice or skipped.
func TestNextStepAfterALinkAppears(t *testing.T) {
	c := planConfig(t, "[[interface]]\nname = \"eth*\"\n[fallback]\nenabled = false\n")
	links := []Link{{Name: "eth1"}, {Name: "eth2"}}
	var got []string
	obs := Observations{Round: 1}
	for k := 0; k < 10; k++ {
		b, _ := Bind(c, links)
		obs.Present, obs.Names = all(len(b.Interfaces)), map[int]string{}
		for i, ic := range b.Interfaces {
			obs.Names[i] = ic.Name
		}
		s, ok := NextStep(b, obs)
		if !ok {
			break
		}
		got = append(got, s.String())
		obs.Done = append(obs.Done, Outcome{Step: s, Result: NoController})
		if s.Iface == "eth1" {
			links = append(links, Link{Name: "eth0"}) // sorts first: every index shifts
		}
	}
	if g := strings.Join(got, " | "); g != "net.toml as written | eth1 dhcp | eth0 dhcp | eth2 dhcp" {
		t.Errorf("got %s", g)
	}
}

func TestListedTwice(t *testing.T) {
	c := planConfig(t, "[[interface]]\nname = \"eth0\"\n[[interface]]\nmac = \"52:54:00:00:00:01\"\n[[interface]]\nname = \"eth1\"\n[[interface]]\nname = \"en*\"\n")
	links := []Link{
		{Name: "eth0", MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}},
		{Name: "eth1", MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}},
		{Name: "enp1", MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 3}},
	}
	got := ListedTwice(c, links)
	if len(got) != 1 || got["eth0"] != "eth0: listed twice in net.toml (line 1 by name, line 3 by mac 52:54:00:00:00:01); neither is applied" {
		t.Errorf("ListedTwice = %q", got)
	}
}

func TestFailoverList(t *testing.T) {
	cfg := &Config{Controllers: []string{"https://a", "https://b", "https://c"}, Fallback: Fallback{Controller: "https://10.254.254.254"}}
	for _, c := range []struct {
		method  Method
		reached string
		want    []string
	}{
		{MethodStatic, "https://a", []string{"https://a", "https://b", "https://c"}},
		{MethodDHCP, "https://b", []string{"https://b", "https://a", "https://c"}},
		{MethodStatic, "https://c", []string{"https://c", "https://a", "https://b"}},
		// The listed controllers are not on the bootstrap LAN.
		{MethodFallback, "https://10.254.254.254", []string{"https://10.254.254.254"}},
	} {
		if got := FailoverList(cfg, c.method, c.reached); !slices.Equal(got, c.want) {
			t.Errorf("%s reached %s: FailoverList = %q, want %q", c.method, c.reached, got, c.want)
		}
	}
}
