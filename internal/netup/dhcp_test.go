package netup

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

func ack(t *testing.T, mods ...dhcpv4.Modifier) *nclient4.Lease {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 50)),
		dhcpv4.WithServerIP(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53)),
		dhcpv4.WithLeaseTime(120),
	}
	m, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Round-trip through the wire format, as a real reply would arrive.
	m, err = dhcpv4.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return &nclient4.Lease{ACK: m, Offer: m}
}

func TestLeaseFromACK(t *testing.T) {
	now := time.Unix(1000, 0)
	l, err := leaseFromACK("eth1", ack(t), now)
	if err != nil {
		t.Fatal(err)
	}
	if l.Address.String() != "192.0.2.50/24" || l.Router.String() != "192.0.2.1" || l.Server.String() != "192.0.2.1" ||
		len(l.DNS) != 1 || l.DNS[0].String() != "192.0.2.53" || l.Duration != 120*time.Second || l.Renewal != 60*time.Second {
		t.Errorf("lease %+v", l)
	}
	if !l.Expiry().Equal(now.Add(2 * time.Minute)) {
		t.Errorf("expiry %v", l.Expiry())
	}
	l, err = leaseFromACK("eth1", ack(t, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(5*time.Second))), now)
	if err != nil || l.Renewal != 5*time.Second {
		t.Errorf("T1 not honoured: %v %v", l, err)
	}
}

// Malformed replies are refused with a reason naming the server, never used.
func TestLeaseFromMalformedACK(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  dhcpv4.Modifier
		want string
	}{
		{"no address", dhcpv4.WithYourIP(net.IPv4zero), "unusable address"},
		{"broadcast address", dhcpv4.WithYourIP(net.IPv4bcast), "unusable address"},
		{"multicast address", dhcpv4.WithYourIP(net.IPv4(224, 0, 0, 1)), "unusable address"},
		{"subnet broadcast", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 255)), "network or broadcast address"},
		{"subnet network", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 0)), "network or broadcast address"},
		{"no lease time", func(m *dhcpv4.DHCPv4) { m.Options.Del(dhcpv4.OptionIPAddressLeaseTime) }, "no lease time"},
		{"non-contiguous mask", dhcpv4.WithNetmask(net.IPMask{255, 0, 255, 0}), "invalid subnet mask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := leaseFromACK("eth1", ack(t, tc.mod), time.Now())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "192.0.2.1") {
				t.Errorf("err = %v, want %q naming the server", err, tc.want)
			}
		})
	}
}
