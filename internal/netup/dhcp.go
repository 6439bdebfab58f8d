package netup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// Lease is a DHCPv4 lease as the node uses it.
type Lease struct {
	Iface    string
	Address  netip.Prefix
	Router   netip.Addr // zero when the server gave none
	DNS      []netip.Addr
	Server   netip.Addr
	Duration time.Duration
	Renewal  time.Duration // T1
	Obtained time.Time

	raw *nclient4.Lease
}

// Expiry is when the lease ends unless renewed.
func (l *Lease) Expiry() time.Time { return l.Obtained.Add(l.Duration) }

func (l *Lease) String() string {
	return fmt.Sprintf("%s from %s for %v", l.Address, l.Server, l.Duration)
}

// leaseFromACK checks a server's ACK and turns it into a Lease. Servers can
// be wrong or hostile; a reply missing what an address needs is refused with
// a reason naming the server.
func leaseFromACK(iface string, raw *nclient4.Lease, now time.Time) (*Lease, error) {
	ack := raw.ACK
	if ack == nil {
		return nil, errors.New("no ACK")
	}
	server, _ := netip.AddrFromSlice(ack.ServerIdentifier().To4())
	peer := server.String()
	if !server.IsValid() {
		peer = "unknown server"
		server = netip.Addr{}
	}
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return nil, fmt.Errorf("dhcp server %s: offered unusable address %v", peer, ack.YourIPAddr)
	}
	mask := ack.SubnetMask()
	if mask == nil {
		// RFC 2131 lets a server omit it; assume the classful-free default
		// of a host route rather than guessing a LAN size.
		mask = net.CIDRMask(32, 32)
	}
	ones, bits := mask.Size()
	if bits != 32 || ones == 0 {
		return nil, fmt.Errorf("dhcp server %s: invalid subnet mask %v", peer, net.IP(mask))
	}
	l := &Lease{Iface: iface, Address: netip.PrefixFrom(ip, ones), Server: server, Obtained: now, raw: raw}
	if ones < 31 && (ip == l.Address.Masked().Addr() || ip == lastAddr(l.Address)) {
		return nil, fmt.Errorf("dhcp server %s: offered %s, the network or broadcast address of its subnet", peer, l.Address)
	}
	l.Duration = ack.IPAddressLeaseTime(0)
	if l.Duration <= 0 {
		return nil, fmt.Errorf("dhcp server %s: no lease time", peer)
	}
	l.Renewal = ack.IPAddressRenewalTime(l.Duration / 2)
	if l.Renewal <= 0 || l.Renewal >= l.Duration {
		l.Renewal = l.Duration / 2
	}
	for _, r := range ack.Router() {
		if a, ok := netip.AddrFromSlice(r.To4()); ok && !a.IsUnspecified() && a != ip {
			l.Router = a
			break
		}
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok && !a.IsUnspecified() {
			l.DNS = append(l.DNS, a)
		}
	}
	return l, nil
}

func dhcpClient(ifname string, timeout time.Duration) (*nclient4.Client, error) {
	// Retransmit quickly (a LAN server answers in milliseconds) and let the
	// caller's deadline bound the whole exchange.
	per := timeout / 8
	if per < 100*time.Millisecond {
		per = 100 * time.Millisecond
	}
	c, err := nclient4.New(ifname, nclient4.WithTimeout(per), nclient4.WithRetry(4))
	if err != nil {
		return nil, fmt.Errorf("dhcp: %w", err)
	}
	return c, nil
}

// Offer is a DHCP server's answer to our DISCOVER, held with the client
// that got it until the search's DHCP step on its link requests it (or
// the round ends): discovery runs on every link at once, the requests one
// link at a time, in config order.
type Offer struct {
	iface  string
	client *nclient4.Client
	msg    *dhcpv4.DHCPv4
}

// DiscoverOffer broadcasts DHCPDISCOVER on ifname and waits up to window
// for an offer.
func DiscoverOffer(ctx context.Context, ifname string, window time.Duration) (*Offer, error) {
	c, err := dhcpClient(ifname, window)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	m, err := c.DiscoverOffer(ctx)
	if err != nil {
		c.Close()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nclient4.ErrNoResponse) {
			return nil, fmt.Errorf("dhcp: no server answered within %v", window)
		}
		return nil, fmt.Errorf("dhcp: %w", err)
	}
	return &Offer{iface: ifname, client: c, msg: m}, nil
}

// Request asks for the offered lease (DHCPREQUEST, RFC 2131 4.3.2) and
// waits up to timeout for the server's ACK; the offer is closed either way.
func (o *Offer) Request(ctx context.Context, timeout time.Duration) (*Lease, error) {
	defer o.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := o.client.RequestFromOffer(ctx, o.msg)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nclient4.ErrNoResponse) {
			return nil, fmt.Errorf("dhcp: offer of %v from %v not confirmed within %v", o.msg.YourIPAddr, o.msg.ServerIdentifier(), timeout)
		}
		return nil, fmt.Errorf("dhcp: %w", err)
	}
	l, err := leaseFromACK(o.iface, raw, time.Now())
	if err != nil {
		return nil, fmt.Errorf("dhcp: %w", err)
	}
	return l, nil
}

// Close lets the offer go unrequested (the server forgets it); closing
// twice is harmless, so a round can close every offer it still holds.
func (o *Offer) Close() {
	if o.client != nil {
		_ = o.client.Close()
		o.client = nil
	}
}

// RenewLease asks the lease's server to extend it (RFC 2131 4.4.5).
func RenewLease(ctx context.Context, l *Lease, timeout time.Duration) (*Lease, error) {
	c, err := dhcpClient(l.Iface, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := c.Renew(ctx, l.raw)
	if err != nil {
		return nil, fmt.Errorf("dhcp: renew %s: %w", l.Address, err)
	}
	nl, err := leaseFromACK(l.Iface, raw, time.Now())
	if err != nil {
		return nil, fmt.Errorf("dhcp: renew: %w", err)
	}
	if nl.Address != l.Address {
		return nil, fmt.Errorf("dhcp: renew: server %s changed the address from %s to %s", nl.Server, l.Address, nl.Address)
	}
	return nl, nil
}

// ReleaseLease tells the server the address is free again (RFC 2131
// 4.4.6); best effort. It must run while the address is still assigned:
// the release goes unicast from the leased address, because a server's
// kernel drops unicast from 0.0.0.0, which is all nclient4's raw socket
// can send.
func ReleaseLease(l *Lease) error {
	if l.raw == nil || l.raw.ACK == nil || !l.Server.IsValid() {
		return nil
	}
	msg, err := dhcpv4.NewReleaseFromACK(l.raw.ACK)
	if err != nil {
		return fmt.Errorf("dhcp: release: %w", err)
	}
	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: l.Address.Addr().AsSlice(), Port: nclient4.ClientPort},
		&net.UDPAddr{IP: l.Server.AsSlice(), Port: nclient4.ServerPort})
	if err != nil {
		return fmt.Errorf("dhcp: release %s: %w", l.Address, err)
	}
	defer conn.Close()
	if _, err := conn.Write(msg.ToBytes()); err != nil {
		return fmt.Errorf("dhcp: release %s: %w", l.Address, err)
	}
	return nil
}
