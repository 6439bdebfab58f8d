package netup

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// FuzzLeaseFromACK: whatever a DHCP server sends, a lease the node uses has
// a unicast host address that is neither the network nor the broadcast
// address of its prefix, a lease time, T1 inside it, a router other than
// itself, and only usable name servers.
func FuzzLeaseFromACK(f *testing.F) {
	for _, mods := range [][]dhcpv4.Modifier{
		{},
		{dhcpv4.WithNetmask(net.CIDRMask(30, 32)), dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 3))},
		{dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 255))},
		{dhcpv4.WithNetmask(net.IPMask{255, 0, 255, 0})},
		{dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(500 * time.Second))},
		{dhcpv4.WithRouter(net.IPv4(192, 0, 2, 50))},
	} {
		base := []dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeAck), dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 50)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)), dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53), net.IPv4zero), dhcpv4.WithLeaseTime(120)}
		m, err := dhcpv4.New(append(base, mods...)...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.ToBytes())
	}
	now := time.Unix(1000, 0)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		l, err := leaseFromACK("eth0", &nclient4.Lease{ACK: m, Offer: m}, now)
		if err != nil {
			return
		}
		a, p := l.Address.Addr(), l.Address
		if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			t.Fatalf("lease of unusable address %s", l.Address)
		}
		if p.Bits() < 1 || p.Bits() > 32 || p.Bits() < 31 && (a == p.Masked().Addr() || a == lastAddr(p)) {
			t.Fatalf("lease %s: the network or broadcast address of its prefix", l.Address)
		}
		if ip, _ := netip.AddrFromSlice(m.YourIPAddr.To4()); ip != a {
			t.Fatalf("lease %s, but the server gave %v", l.Address, m.YourIPAddr)
		}
		if l.Duration <= 0 || l.Renewal <= 0 || l.Renewal >= l.Duration {
			t.Fatalf("lease time %v, T1 %v", l.Duration, l.Renewal)
		}
		if l.Router.IsValid() && (l.Router == a || l.Router.IsUnspecified() || !l.Router.Is4()) {
			t.Fatalf("router %s for lease %s", l.Router, l.Address)
		}
		for _, d := range l.DNS {
			if !d.Is4() || d.IsUnspecified() {
				t.Fatalf("name server %s", d)
			}
		}
	})
}

// arpFrame builds an Ethernet frame holding an ARP packet, as the wire
// carries it.
func arpFrame(op uint16, sha net.HardwareAddr, spa netip.Addr, tpa netip.Addr) []byte {
	var b bytes.Buffer
	b.Write(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	b.Write(sha)
	b.Write([]byte{0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4})
	_ = binary.Write(&b, binary.BigEndian, op)
	b.Write(sha)
	b.Write(spa.AsSlice())
	b.Write(make([]byte, 6))
	b.Write(tpa.AsSlice())
	return b.Bytes()
}

// FuzzReadARP: a received frame is a conflict exactly when it is a
// well-formed ARP packet from another host that claims the address or
// probes for it, and the conflict names that host; it says the peer (the
// fallback controller) is here exactly when such a packet comes from
// another host with the peer's address as sender; nothing else (our own
// frames, other addresses, garbage) ever counts.
func FuzzReadARP(f *testing.F) {
	own := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	peer := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	addr := netip.MustParseAddr("10.254.254.17")
	ctrl := netip.MustParseAddr("10.254.254.254")
	zero := netip.IPv4Unspecified()
	f.Add(arpFrame(1, peer, addr, addr))
	f.Add(arpFrame(2, peer, addr, zero))
	f.Add(arpFrame(1, peer, zero, addr))
	f.Add(arpFrame(2, peer, zero, addr))
	f.Add(arpFrame(1, own, addr, addr))
	f.Add(arpFrame(1, peer, netip.MustParseAddr("10.254.254.18"), addr))
	f.Add(arpFrame(2, peer, ctrl, zero))
	f.Add(arpFrame(2, own, ctrl, zero))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		c, seen := readARP(frame, own, addr, ctrl)
		// The frame as RFC 826 lays it out: Ethernet header, then
		// htype ptype hlen plen op sha spa tha tpa.
		wellFormed := len(frame) >= 14+28 && frame[12] == 0x08 && frame[13] == 0x06 &&
			bytes.Equal(frame[14:20], []byte{0, 1, 0x08, 0x00, 6, 4})
		if !wellFormed {
			if c != nil || seen {
				t.Fatalf("conflict %+v, peer %v from a frame that is no IPv4 ARP packet: %x", c, seen, frame)
			}
			return
		}
		arp := frame[14:]
		op := binary.BigEndian.Uint16(arp[6:8])
		sha := net.HardwareAddr(arp[8:14])
		spa, _ := netip.AddrFromSlice(arp[14:18])
		tpa, _ := netip.AddrFromSlice(arp[24:28])
		fromOther := !bytes.Equal(sha, own)
		claim := fromOther && spa == addr
		probe := fromOther && spa.IsUnspecified() && tpa == addr && op == 1
		if want := fromOther && spa == ctrl; seen != want && (op == 1 || op == 2) || seen && !want {
			t.Fatalf("peer seen %v, want %v: %x (sender %s %s)", seen, want, frame, sha, spa)
		}
		switch {
		case !claim && !probe:
			if c != nil {
				t.Fatalf("conflict %+v from %x (sender %s %s, target %s, op %d)", c, frame, sha, spa, tpa, op)
			}
		case c == nil:
			if op == 1 || op == 2 { // the decoder may refuse other operations
				t.Fatalf("no conflict from %s claiming or probing %s: %x", sha, addr, frame)
			}
		case c.Addr != addr || !bytes.Equal(c.MAC, sha) || c.Probe != (probe && !claim):
			t.Fatalf("conflict %+v, want %s by %s (probe %v)", c, addr, sha, probe && !claim)
		}
	})
}
