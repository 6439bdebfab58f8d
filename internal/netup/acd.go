package netup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
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

// watch reads ARP packets until ctx ends and reports those from other hosts
// that claim addr (sender IP == addr) or probe for it (sender 0.0.0.0,
// target addr).
func (a *arpConn) watch(ctx context.Context, addr netip.Addr, conflicts chan<- *Conflict) error {
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
		c := conflictIn(buf[:n], a.ifi.HardwareAddr, addr)
		if c == nil {
			continue
		}
		select {
		case conflicts <- c:
		case <-ctx.Done():
			return nil
		}
	}
}

// conflictIn reads one received Ethernet frame: a Conflict when another
// host (not own) claims addr (sender IP == addr) or probes for it (sender
// 0.0.0.0, request for addr); nil for anything else, malformed included.
func conflictIn(frame []byte, own net.HardwareAddr, addr netip.Addr) *Conflict {
	var f ethernet.Frame
	if f.UnmarshalBinary(frame) != nil || f.EtherType != ethernet.EtherTypeARP {
		return nil
	}
	var p arp.Packet
	// The decoder checks only the address lengths: a packet for another
	// hardware or protocol type says nothing about an IPv4 address.
	if p.UnmarshalBinary(f.Payload) != nil || p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) {
		return nil // malformed or not IPv4-over-Ethernet: not ours to judge
	}
	if sameMAC(p.SenderHardwareAddr, own) {
		return nil // our own frames, looped back to packet sockets
	}
	switch {
	case p.SenderIP == addr:
		return &Conflict{Addr: addr, MAC: p.SenderHardwareAddr}
	case p.SenderIP.IsUnspecified() && p.TargetIP == addr && p.Operation == arp.OperationRequest:
		return &Conflict{Addr: addr, MAC: p.SenderHardwareAddr, Probe: true}
	}
	return nil
}

func sameMAC(a, b net.HardwareAddr) bool { return a.String() == b.String() }

// ProbeAddress runs RFC 5227 probing for addr on ifname with schedule s.
// It returns nil when addr is free, a *Conflict when another host holds or
// probes for it, or another error when the link cannot be used.
func ProbeAddress(ctx context.Context, ifname string, addr netip.Addr, s ACDSchedule) error {
	a, err := openARP(ifname)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conflicts := make(chan *Conflict, 1)
	watchErr := make(chan error, 1)
	go func() { watchErr <- a.watch(ctx, addr, conflicts) }()

	wait := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case c := <-conflicts:
			return c
		case err := <-watchErr:
			if err == nil {
				err = ctx.Err()
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
	if err := wait(randBetween(0, s.ProbeWait)); err != nil {
		return err
	}
	for i := 0; i < s.ProbeNum; i++ {
		if err := a.send(netip.IPv4Unspecified(), addr); err != nil {
			return fmt.Errorf("arp: %s: probe %s: %w", ifname, addr, err)
		}
		d := randBetween(s.ProbeMin, s.ProbeMax)
		if i == s.ProbeNum-1 {
			d = s.AnnounceWait
		}
		if err := wait(d); err != nil {
			return err
		}
	}
	return nil
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
	conflicts := make(chan *Conflict, 1)
	watchErr := make(chan error, 1)
	go func() { watchErr <- a.watch(ctx, addr, conflicts) }()
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
		case c := <-conflicts:
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
