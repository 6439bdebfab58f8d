package netup

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/g8os/boot/tests/testenv"
)

// inNS runs f on a thread inside the namespace of h. Sockets opened by f
// stay in that namespace whatever thread later uses them.
func inNS(t *testing.T, h *testenv.Host, f func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread() // a thread left in another namespace must die with the goroutine
		}
		orig.Close()
	}()
	f()
}

// A real neighbour holding an address answers our RFC 5227 probe from
// 0.0.0.0; a free address is claimed after the scaled schedule.
func TestProbeAddressAgainstARealNeighbour(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, peer := tp.Host("node"), tp.Host("peer")
	tp.Link(node, "eth0", peer, "eth0")
	peer.Addr("eth0", "10.254.254.7/24")
	peerMAC := peer.MAC("eth0")
	s := RFC5227.Scaled(DefaultACDScale)
	ctx := context.Background()

	var taken, free error
	var cand *Candidate
	var tookFree time.Duration
	inNS(t, node, func() {
		_, taken = ProbeCandidate(ctx, "eth0", netip.MustParseAddr("10.254.254.7"), netip.Addr{}, s)
		start := time.Now()
		cand, free = ProbeCandidate(ctx, "eth0", netip.MustParseAddr("10.254.254.8"), netip.Addr{}, s)
		tookFree = time.Since(start)
	})
	var c *Conflict
	if !errors.As(taken, &c) {
		t.Fatalf("held address: got %v, want a conflict", taken)
	}
	if c.MAC.String() != peerMAC || c.Probe || c.Addr.String() != "10.254.254.7" {
		t.Errorf("conflict %+v, want held by %s", c, peerMAC)
	}
	if free != nil {
		t.Fatalf("free address: %v", free)
	}
	cand.Close()
	t.Logf("free address claimed after %v (schedule: %s)", tookFree, s)

	// The neighbour's kernel must have seen probes only: an ARP probe
	// never puts the probing host into caches (sender 0.0.0.0).
	if out, _ := peer.Run("ip", "neigh", "show", "dev", "eth0"); out != "" {
		for _, a := range []string{"10.254.254.8"} {
			if strings.Contains(out, a) {
				t.Errorf("peer learned %s from a probe:\n%s", a, out)
			}
		}
	}
}

// RFC 5227 2.4 (b): the first conflict is defended with an announcement,
// a second within the defend interval makes the holder retreat.
func TestDefendThenRetreat(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, peer := tp.Host("node"), tp.Host("peer")
	tp.Link(node, "eth0", peer, "eth0")
	node.Addr("eth0", "10.254.254.9/24")
	addr := netip.MustParseAddr("10.254.254.9")
	s := RFC5227.Scaled(DefaultACDScale)

	done := make(chan error, 1)
	defended := make(chan *Conflict, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		runtime.LockOSThread() // Defend opens its socket on this thread, in node
		done <- inNSErr(node, func() error {
			return Defend(ctx, "eth0", addr, s, func(c *Conflict) { defended <- c })
		})
	}()
	time.Sleep(100 * time.Millisecond)
	claim := func() { announceFrom(t, peer, addr) }
	claim()
	select {
	case c := <-defended:
		if c.MAC.String() != peer.MAC("eth0") {
			t.Errorf("defended against %s, want %s", c.MAC, peer.MAC("eth0"))
		}
	case err := <-done:
		t.Fatalf("defender ended at the first conflict: %v", err)
	case <-time.After(3 * time.Second):
		t.Fatal("first conflict not seen")
	}
	claim()
	select {
	case err := <-done:
		if !errors.Is(err, ErrRetreat) {
			t.Fatalf("second conflict: %v, want retreat", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no retreat after a second conflict within the defend interval")
	}
}

// announceFrom sends one ARP announcement of addr from h's eth0, as a host
// taking the address does.
func announceFrom(t *testing.T, h *testenv.Host, addr netip.Addr) {
	t.Helper()
	inNS(t, h, func() {
		a, err := openARP("eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := a.send(addr, addr); err != nil {
			t.Fatal(err)
		}
	})
}

// inNSErr is inNS for a goroutine that already locked its thread.
func inNSErr(h *testenv.Host, f func() error) error {
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	// This thread stays in h's namespace and exits with the goroutine
	// (LockOSThread without Unlock).
	return f()
}

// Another host probing for the same address at the same time is a
// conflict too (RFC 5227 2.1.1): both back off instead of both taking it.
func TestProbeAddressSeesCompetingProbe(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, peer := tp.Host("node"), tp.Host("peer")
	tp.Link(node, "eth0", peer, "eth0")
	addr := netip.MustParseAddr("10.254.254.33")
	s := RFC5227.Scaled(0.2) // a window of about a second to probe into
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		res <- inNSErr(node, func() error {
			c, err := ProbeCandidate(context.Background(), "eth0", addr, netip.Addr{}, s)
			if err == nil {
				c.Close()
			}
			return err
		})
	}()
	time.Sleep(100 * time.Millisecond)
	inNS(t, peer, func() {
		a, err := openARP("eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := a.send(netip.IPv4Unspecified(), addr); err != nil {
			t.Fatal(err)
		}
	})
	var c *Conflict
	if err := <-res; !errors.As(err, &c) || !c.Probe || c.MAC.String() != peer.MAC("eth0") {
		t.Fatalf("got %v, want a competing probe from %s", err, peer.MAC("eth0"))
	}
}

// A candidate stays watched after probing: the search claims it only once
// DHCP had its turn, and a host that takes the address (or probes for it)
// meanwhile is still seen. The fallback controller's address, probed
// alongside, is heard on its own LAN and not on another.
func TestCandidateWatchedUntilClaimed(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac, other := tp.Host("node"), tp.Host("ac"), tp.Host("other")
	tp.Link(node, "eth0", ac, "eth0")
	tp.Link(node, "eth1", other, "eth0")
	ac.Addr("eth0", "10.254.254.254/24")
	ctrl := netip.MustParseAddr("10.254.254.254")
	s := RFC5227.Scaled(DefaultACDScale)
	addr := netip.MustParseAddr("10.254.254.40")

	var onLAN, elsewhere *Candidate
	var err0, err1 error
	inNS(t, node, func() {
		onLAN, err0 = ProbeCandidate(context.Background(), "eth0", addr, ctrl, s)
		elsewhere, err1 = ProbeCandidate(context.Background(), "eth1", addr, ctrl, s)
	})
	if err0 != nil || err1 != nil {
		t.Fatalf("free address: %v, %v", err0, err1)
	}
	defer onLAN.Close()
	defer elsewhere.Close()
	if c, seen, err := onLAN.State(); c != nil || !seen || err != nil {
		t.Errorf("on the controller's LAN: conflict %v, controller heard %v, err %v; want heard", c, seen, err)
	}
	if c, seen, err := elsewhere.State(); c != nil || seen || err != nil {
		t.Errorf("on another LAN: conflict %v, controller heard %v, err %v; want nothing", c, seen, err)
	}
	// The controller's host takes the address after probing ended.
	announceFrom(t, ac, addr)
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, _, _ := onLAN.State()
		if c != nil {
			if c.Probe || c.MAC.String() != ac.MAC("eth0") {
				t.Errorf("conflict %+v, want held by %s", c, ac.MAC("eth0"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an announcement for the candidate after probing was not seen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
