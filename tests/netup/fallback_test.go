package netup_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"

	"github.com/g8os/boot/tests/testenv"
)

// fallbackSite is a node with two links and no DHCP server it can use on
// either: eth0 leads to a LAN without the fallback controller, eth1 to a
// switch where the controller holds 10.254.254.254 (and 10.0.1.1, for a
// DHCP server tests may add there).
//
//	node eth0 ── quiet (nothing answers)
//	node eth1 ── sw br0 ── ac eth0 10.254.254.254/24, 10.0.1.1/24
//	                   └── extra hosts (Attach)
type fallbackSite struct {
	tp              *testenv.Topology
	node, quiet, sw *testenv.Host
	ac              *testenv.Host
	ctrl            *testenv.Controller
	ports           int
}

func newFallbackSite(t *testing.T) *fallbackSite {
	tp := testenv.NewTopology(t)
	s := &fallbackSite{tp: tp, node: tp.Host("node"), quiet: tp.Host("quiet"), sw: tp.Host("sw"), ac: tp.Host("ac")}
	tp.Link(s.node, "eth0", s.quiet, "eth0")
	tp.Link(s.node, "eth1", s.sw, "p0")
	tp.Link(s.ac, "eth0", s.sw, "p1")
	s.sw.Bridge("br0", "p0", "p1")
	s.ac.Addr("eth0", "10.254.254.254/24")
	s.ac.Addr("eth0", "10.0.1.1/24")
	s.ctrl = testenv.StartController(t, s.ac, testenv.ControllerOptions{Names: []string{"10.254.254.254", "10.0.1.1"}, Listen: []string{"0.0.0.0:8443"}})
	return s
}

// attach puts another host on the switch.
func (s *fallbackSite) attach(name string) *testenv.Host {
	s.ports++
	port := fmt.Sprintf("x%d", s.ports)
	h := s.tp.Host(name)
	s.tp.Link(h, "eth0", s.sw, port)
	s.sw.MustRun("ip", "link", "set", port, "master", "br0")
	return h
}

func (s *fallbackSite) conf(dhcpTimeout string) string {
	return `
controllers = ["https://10.0.1.1:8443"]
[dhcp]
timeout = "` + dhcpTimeout + `"
[[interface]]
name = "eth0"
method = "dhcp"
[[interface]]
name = "eth1"
method = "dhcp"
`
}

// No DHCP server on either link: the fallback no longer waits out two DHCP
// timeouts and an HTTPS probe on the LAN without the controller. DHCP
// discovery and the ARP probes run on both links at once; eth0's fallback
// step ends at once because nothing answers ARP for the controller there.
func TestFallbackWithoutTheWait(t *testing.T) {
	s := newFallbackSite(t)
	start := time.Now()
	r := startNetup(t, s.node, s.conf("3s"), s.ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	st := r.ready(t, 20*time.Second)
	took := time.Since(start)
	if st.Method != "fallback" || st.Interface != "eth1" || st.Rounds != 1 || !strings.HasPrefix(st.Address, "10.254.254.") {
		t.Errorf("net.json: %+v", st)
	}
	trace := strings.Join(st.Trace, "\n")
	for _, w := range []string{
		"eth0 dhcp: no lease: dhcp: no server answered within 375ms",
		"eth1 dhcp: no lease: dhcp: no server answered within 375ms",
		"free, no ARP answer for 10.254.254.254 (the fallback controller is not on this link)",
		"eth1 fallback: " + st.Address + " claimed, found https://10.254.254.254:8443",
	} {
		if !strings.Contains(trace, w) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
	if got := ipv4(t, s.node, "eth0"); len(got) != 0 {
		t.Errorf("eth0 holds %v: a fallback address was claimed on the LAN without the controller", got)
	}
	// Before: 2 x 3 s of DHCP and 2 s of HTTPS probe on eth0, over 8 s.
	// Now a 375 ms window and about 0.3 s of ARP probing, side by side.
	if took > 3*time.Second {
		t.Errorf("READY after %v, want well under the 8 s the sequential steps took", took)
	}
	t.Logf("READY after %v (net.json took %s)", took, st.Took)
	r.stop(t)
}

// A DHCP server that answers late, but within the round's DHCP window,
// still wins over the fallback controller on the same switch, although the
// fallback address was probed and free long before the offer came.
func TestLateDHCPServerWinsOverFallback(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	s := newFallbackSite(t)
	dhcp := s.ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.1.100,10.0.1.150", Mask: "255.255.255.0", ReplyDelay: 1})
	// dhcp.timeout 12 s: round 1 waits 1.5 s for an offer.
	r := startNetup(t, s.node, s.conf("12s"), s.ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	st := r.ready(t, 20*time.Second)
	addr, err := netip.ParsePrefix(st.Address)
	if err != nil || st.Method != "dhcp" || st.Interface != "eth1" || st.Rounds != 1 || st.DHCPServer != "10.0.1.1" ||
		!netip.MustParsePrefix("10.0.1.0/24").Contains(addr.Addr()) {
		t.Errorf("net.json: %+v", st)
	}
	if took, _ := time.ParseDuration(st.Took); took < time.Second {
		t.Errorf("READY after %v: the server's offer was not held back 1 s", took)
	}
	if !strings.Contains(dhcp.Proc.Output(), "DHCPACK(eth0) "+addr.Addr().String()) {
		t.Errorf("the lease did not come from the late server:\n%s", dhcp.Proc.Output())
	}
	if out := r.proc.Output(); strings.Contains(out, `msg="fallback address claimed"`) {
		t.Errorf("a fallback address was claimed although DHCP answered within the round:\n%s", out)
	}
	if got := ipv4(t, s.node, "eth1"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("eth1 holds %v, want only the lease %s", got, st.Address)
	}
	r.stop(t)
}

// A host that takes the probed fallback address after probing ended, while
// DHCP still had its window, is seen: the node claims another address, and
// the two never hold the same one.
func TestFallbackSeesAddressTakenAfterProbing(t *testing.T) {
	testenv.RequireRoot(t, "arping")
	s := newFallbackSite(t)
	rogue := s.attach("rogue")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := rogue.Command(t.Context(), self, "-test.run=^TestGrabProbedAddress$")
	cmd.Env = append(os.Environ(), "G8_GRAB_PROBED=eth0", "G8_GRAB_AFTER=500ms")
	grab := rogue.StartCmd(cmd, "grab")
	grab.WaitOutput(t, "listening", 20*time.Second)
	// dhcp.timeout 12 s: the candidates wait 1.5 s for DHCP after probing.
	r := startNetup(t, s.node, s.conf("12s"), s.ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	st := r.ready(t, 20*time.Second)
	select {
	case <-grab.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the rogue host never took a probed address")
	}
	taken := strings.TrimSpace(lastLine(grab.Output()))
	if st.Method != "fallback" || st.Interface != "eth1" || st.Address == taken+"/24" {
		t.Errorf("net.json: %+v (the rogue took %s)", st, taken)
	}
	out := r.proc.Output()
	if !strings.Contains(out, "address="+taken+" peer="+rogue.MAC("eth0")) {
		t.Errorf("the rogue taking %s was not seen:\n%s", taken, out)
	}
	if got := ipv4(t, s.node, "eth1"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("eth1 holds %v, want only %s", got, st.Address)
	}
	r.stop(t)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestGrabProbedAddress is the rogue host of
// TestFallbackSeesAddressTakenAfterProbing, not a test: run with
// G8_GRAB_PROBED=IFACE inside a namespace, it waits for an ARP probe for a
// 10.254.254.X address (not the controller's), lets G8_GRAB_AFTER pass,
// takes the address and announces it, and prints it.
func TestGrabProbedAddress(t *testing.T) {
	ifname := os.Getenv("G8_GRAB_PROBED")
	if ifname == "" {
		t.Skip("helper process of TestFallbackSeesAddressTakenAfterProbing")
	}
	after, err := time.ParseDuration(os.Getenv("G8_GRAB_AFTER"))
	if err != nil {
		t.Fatal(err)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, 0x0806, nil)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("listening")
	subnet := netip.MustParsePrefix("10.254.254.0/24")
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		var f ethernet.Frame
		var p arp.Packet
		if f.UnmarshalBinary(buf[:n]) != nil || p.UnmarshalBinary(f.Payload) != nil {
			continue
		}
		if p.Operation != arp.OperationRequest || !p.SenderIP.IsUnspecified() || !subnet.Contains(p.TargetIP) ||
			p.TargetIP == netip.MustParseAddr("10.254.254.254") {
			continue
		}
		time.Sleep(after)
		a := p.TargetIP.String()
		if out, err := exec.Command("ip", "addr", "add", a+"/24", "dev", ifname).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if out, err := exec.Command("arping", "-U", "-c", "1", "-I", ifname, "-s", a, a).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		fmt.Println(a)
		os.Exit(0) // before the testing package prints PASS on stdout
	}
}
