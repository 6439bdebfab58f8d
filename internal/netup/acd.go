package netup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"

	"github.com/g8os/boot/internal/backoff"
)

// ACDSchedule is the timing of RFC 5227 address conflict detection.
type ACDSchedule struct {
	ProbeWait        time.Duration // random delay before the first probe
	ProbeNum         int           // probes sent
	ProbeMin         time.Duration // spacing between probes, drawn from [ProbeMin, ProbeMax]
	ProbeMax         time.Duration
	AnnounceWait     time.Duration // quiet time after the last probe before the address is ours
	AnnounceNum      int           // announcements sent once it is
	AnnounceInterval time.Duration
	DefendInterval   time.Duration // a second conflict within this time means retreat
}

// RFC5227 is the schedule of RFC 5227 section 1.1: 4-7 s to claim an address.
var RFC5227 = ACDSchedule{
	ProbeWait: time.Second, ProbeNum: 3, ProbeMin: time.Second, ProbeMax: 2 * time.Second,
	AnnounceWait: 2 * time.Second, AnnounceNum: 2, AnnounceInterval: 2 * time.Second,
	DefendInterval: 10 * time.Second,
}

// DefaultACDScale shrinks the RFC schedule for the fallback subnet, a
// bootstrap LAN where every host is a node or the controller and a conflict
// is answered within milliseconds: 3 probes 50-100 ms apart and 100 ms of
// quiet claim an address in about 0.3 s instead of 4-7 s. The same trade
// n-acd's configurable timeout and systemd#30724 make. The defend interval
// is a rate limit, not a wait, and is not scaled.
const DefaultACDScale = 0.05

// Scaled multiplies every wait of s by f, keeping counts and DefendInterval.
func (s ACDSchedule) Scaled(f float64) ACDSchedule {
	m := func(d time.Duration) time.Duration { return time.Duration(float64(d) * f) }
	return ACDSchedule{
		ProbeWait: m(s.ProbeWait), ProbeNum: s.ProbeNum, ProbeMin: m(s.ProbeMin), ProbeMax: m(s.ProbeMax),
		AnnounceWait: m(s.AnnounceWait), AnnounceNum: s.AnnounceNum, AnnounceInterval: m(s.AnnounceInterval),
		DefendInterval: s.DefendInterval,
	}
}

func (s ACDSchedule) String() string {
	return fmt.Sprintf("%d ARP probes after 0-%v, %v-%v apart, then %v quiet", s.ProbeNum, s.ProbeWait, s.ProbeMin, s.ProbeMax, s.AnnounceWait)
}

// Conflict is another host claiming an address.
type Conflict struct {
	Addr  netip.Addr
	MAC   net.HardwareAddr
	Probe bool // it was probing for the address too, not holding it
}

func (c *Conflict) Error() string {
	if c.Probe {
		return fmt.Sprintf("%s: another host (%s) is probing for it", c.Addr, c.MAC)
	}
	return fmt.Sprintf("%s: in use by %s", c.Addr, c.MAC)
}

// arpConn is a raw ARP socket on one link. mdlayher/arp's own client
// refuses a link without an IPv4 address, which is exactly the state a
// probing link is in, so frames are built with arp.NewPacket and sent over
// mdlayher/packet.
type arpConn struct {
	ifi  *net.Interface
	conn *packet.Conn
}

const etherTypeARP = 0x0806

func openARP(ifname string) (*arpConn, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("arp: %w", err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("arp: %s has no Ethernet address", ifname)
	}
	c, err := packet.Listen(ifi, packet.Raw, etherTypeARP, nil)
	if err != nil {
		return nil, fmt.Errorf("arp: %s: %w", ifname, err)
	}
	return &arpConn{ifi: ifi, conn: c}, nil
}

func (a *arpConn) Close() error { return a.conn.Close() }

// send broadcasts an ARP request from sender about target: a probe when
// sender is 0.0.0.0, an announcement when sender == target (RFC 5227 2.1.1, 2.3).
func (a *arpConn) send(sender, target netip.Addr) error {
	p, err := arp.NewPacket(arp.OperationRequest, a.ifi.HardwareAddr, sender, ethernet.Broadcast, target)
	if err != nil {
		return err
	}
	// RFC 5227: the target hardware address of a probe is ignored and
	// should be zero.
	p.TargetHardwareAddr = make(net.HardwareAddr, 6)
	pb, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	f := &ethernet.Frame{Destination: ethernet.Broadcast, Source: a.ifi.HardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
	fb, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = a.conn.WriteTo(fb, &packet.Addr{HardwareAddr: ethernet.Broadcast})
	return err
}

// arpEvent is what one received frame says about the addresses watched.
type arpEvent struct {
	conflict *Conflict // another host claims or probes for the address
	peer     bool      // the peer address (the fallback controller) is in use on this link
}

// watch reads ARP packets until ctx ends and hands on what readARP finds
// about addr and peer (peer may be the zero Addr: not watched).
func (a *arpConn) watch(ctx context.Context, addr, peer netip.Addr, events chan<- arpEvent) error {
	stop := context.AfterFunc(ctx, func() { _ = a.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, _, err := a.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("arp: %s: read: %w", a.ifi.Name, err)
		}
		c, seen := readARP(buf[:n], a.ifi.HardwareAddr, addr, peer)
		if c == nil && !seen {
			continue
		}
		select {
		case events <- arpEvent{conflict: c, peer: seen}:
		case <-ctx.Done():
			return nil
		}
	}
}

// readARP reads one received Ethernet frame: a Conflict when another host
// (not own) claims addr (sender IP == addr) or probes for it (sender
// 0.0.0.0, request for addr); peerSeen when another host sends with peer
// as its sender address, which it only does holding peer (a reply to our
// probe for it, or its own traffic). Anything else, malformed included,
// says nothing.
func readARP(frame []byte, own net.HardwareAddr, addr, peer netip.Addr) (c *Conflict, peerSeen bool) {
	var f ethernet.Frame
	// A frame still carrying an 802.1Q tag is a VLAN's traffic, not the
	// untagged LAN this link's addresses are on.
	if f.UnmarshalBinary(frame) != nil || f.EtherType != ethernet.EtherTypeARP || f.VLAN != nil || f.ServiceVLAN != nil {
		return nil, false
	}
	var p arp.Packet
	// The decoder checks only that the lengths fit the packet: a packet
	// for another hardware or protocol type, or with another address
	// length, says nothing about an IPv4 address on Ethernet.
	if p.UnmarshalBinary(f.Payload) != nil || p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) ||
		p.HardwareAddrLength != 6 || p.IPLength != 4 {
		return nil, false // malformed or not IPv4-over-Ethernet: not ours to judge
	}
	if sameMAC(p.SenderHardwareAddr, own) {
		return nil, false // our own frames, looped back to packet sockets
	}
	peerSeen = peer.IsValid() && !peer.IsUnspecified() && p.SenderIP == peer
	switch {
	case p.SenderIP == addr:
		c = &Conflict{Addr: addr, MAC: p.SenderHardwareAddr}
	case p.SenderIP.IsUnspecified() && p.TargetIP == addr && p.Operation == arp.OperationRequest:
		c = &Conflict{Addr: addr, MAC: p.SenderHardwareAddr, Probe: true}
	}
	return c, peerSeen
}

func sameMAC(a, b net.HardwareAddr) bool { return a.String() == b.String() }

// Candidate is an address probed on one link (RFC 5227 2.1.1) and watched
// from its first probe until it is claimed or dropped: the search probes
// fallback candidates while DHCP discovery runs and claims one only once
// DHCP had its chance, so a host that probes for or takes the address in
// between must still be seen. It also listens for the fallback
// controller's address, probed alongside: a link where no host answers for
// it is not the controller's LAN, and its fallback step ends without
// claiming anything or waiting out an HTTPS timeout.
type Candidate struct {
	Addr   netip.Addr
	a      *arpConn
	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // a conflict or the watcher's end was recorded

	mu       sync.Mutex
	conflict *Conflict
	peerSeen bool
	err      error // the watcher's, when it ended on its own
}

// ProbeCandidate probes addr on ifname with schedule s, probing for peer
// (the fallback controller; zero: none) at the same times. It returns a
// *Conflict when another host holds or probes for addr, another error when
// the link cannot be used, or the Candidate, still watching, when addr is
// free; Close it.
func ProbeCandidate(ctx context.Context, ifname string, addr, peer netip.Addr, s ACDSchedule) (*Candidate, error) {
	a, err := openARP(ifname)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	c := &Candidate{Addr: addr, a: a, cancel: cancel, done: make(chan struct{}), wake: make(chan struct{}, 1)}
	go c.watch(wctx, peer)
	wait := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			if cf, _, err := c.State(); cf != nil {
				return cf
			} else if err != nil {
				return err
			}
			select {
			case <-c.wake:
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	fail := func(err error) (*Candidate, error) {
		c.Close()
		return nil, err
	}
	if err := wait(randBetween(0, s.ProbeWait)); err != nil {
		return fail(err)
	}
	for i := 0; i < s.ProbeNum; i++ {
		if err := a.send(netip.IPv4Unspecified(), addr); err != nil {
			return fail(fmt.Errorf("arp: %s: probe %s: %w", ifname, addr, err))
		}
		if peer.IsValid() {
			if err := a.send(netip.IPv4Unspecified(), peer); err != nil {
				return fail(fmt.Errorf("arp: %s: probe %s: %w", ifname, peer, err))
			}
		}
		d := randBetween(s.ProbeMin, s.ProbeMax)
		if i == s.ProbeNum-1 {
			d = s.AnnounceWait
		}
		if err := wait(d); err != nil {
			return fail(err)
		}
	}
	return c, nil
}

func (c *Candidate) watch(ctx context.Context, peer netip.Addr) {
	defer close(c.done)
	events := make(chan arpEvent)
	werr := make(chan error, 1)
	go func() { werr <- c.a.watch(ctx, c.Addr, peer, events) }()
	for {
		select {
		case ev := <-events:
			c.mu.Lock()
			if ev.conflict != nil && c.conflict == nil {
				c.conflict = ev.conflict
			}
			c.peerSeen = c.peerSeen || ev.peer
			c.mu.Unlock()
			if ev.conflict != nil {
				c.signal()
			}
		case err := <-werr:
			c.mu.Lock()
			if err == nil {
				err = ctx.Err()
			}
			c.err = err
			c.mu.Unlock()
			c.signal()
			return
		}
	}
}

func (c *Candidate) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// State is what the watcher has seen so far: the first conflict, whether
// the peer answered, and why watching stopped (nil while it goes on).
func (c *Candidate) State() (conflict *Conflict, peerSeen bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conflict, c.peerSeen, c.err
}

// Close stops watching and closes the socket.
func (c *Candidate) Close() {
	c.cancel()
	<-c.done
	_ = c.a.Close()
}

// Announce sends s.AnnounceNum gratuitous ARP announcements for addr, so
// neighbours update stale caches (RFC 5227 2.3).
func Announce(ctx context.Context, ifname string, addr netip.Addr, s ACDSchedule) error {
	a, err := openARP(ifname)
	if err != nil {
		return err
	}
	defer a.Close()
	for i := 0; i < s.AnnounceNum; i++ {
		if i > 0 {
			if err := backoff.Sleep(ctx, s.AnnounceInterval); err != nil {
				return nil
			}
		}
		if err := a.send(addr, addr); err != nil {
			return fmt.Errorf("arp: %s: announce %s: %w", ifname, addr, err)
		}
	}
	return nil
}

// ErrRetreat means a second conflict arrived within the defend interval:
// RFC 5227 2.4 (b) says to give the address up.
var ErrRetreat = errors.New("address taken by another host: retreating")

// Defend watches addr on ifname until ctx ends. On a conflict it announces
// addr once (defending it) and calls onDefend; a second conflict within
// s.DefendInterval returns an error wrapping ErrRetreat and the conflict.
func Defend(ctx context.Context, ifname string, addr netip.Addr, s ACDSchedule, onDefend func(*Conflict)) error {
	a, err := openARP(ifname)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan arpEvent, 1)
	watchErr := make(chan error, 1)
	go func() { watchErr <- a.watch(ctx, addr, netip.Addr{}, events) }()
	var lastDefend time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			if err != nil {
				return err
			}
			return nil
		case ev := <-events:
			c := ev.conflict
			if c.Probe {
				continue // a host probing for our address hears our kernel's ARP reply
			}
			if !lastDefend.IsZero() && time.Since(lastDefend) < s.DefendInterval {
				return fmt.Errorf("arp: %s: %w: %w", ifname, ErrRetreat, c)
			}
			lastDefend = time.Now()
			if err := a.send(addr, addr); err != nil {
				return fmt.Errorf("arp: %s: defend %s: %w", ifname, addr, err)
			}
			if onDefend != nil {
				onDefend(c)
			}
		}
	}
}

func randBetween(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rand.Int64N(int64(hi-lo)))
}
