package netup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/atomicfile"
)

// Route metrics: a DHCP lease under test must win over a static gateway, or
// probing through it would prove nothing; static gateways keep config order.
const (
	metricDHCP   = 50
	metricStatic = 100
)

// ErrLinkMissing is returned when an interface in net.toml has no link.
var ErrLinkMissing = errors.New("no such link")

// findLink resolves a bound net.toml entry (Bind) to its link, by name or
// MAC; a pattern's entry with no Name matched no link.
func findLink(ic *Interface) (netlink.Link, error) {
	if ic.Name == "" && ic.MAC == nil {
		return nil, fmt.Errorf("%s: %w (no link matches the pattern)", ic.Label(), ErrLinkMissing)
	}
	if ic.Name != "" {
		l, err := netlink.LinkByName(ic.Name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil, fmt.Errorf("%s: %w", ic.Label(), ErrLinkMissing)
			}
			return nil, fmt.Errorf("%s: %w", ic.Label(), err)
		}
		return l, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netlink: list links: %w", err)
	}
	for _, l := range links {
		if sameMAC(l.Attrs().HardwareAddr, ic.MAC) {
			return l, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", ic.Label(), ErrLinkMissing)
}

// carrierWait is how long a link just set up may take to report its
// carrier (autonegotiation on a real NIC; a veth is immediate).
const carrierWait = 2 * time.Second

// waitCarrier reports whether l has a carrier (IFF_LOWER_UP), waiting up
// to d for it.
func waitCarrier(ctx context.Context, l netlink.Link, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		cur, err := netlink.LinkByIndex(l.Attrs().Index)
		if err == nil && cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// applyInterface makes a link exactly what net.toml says: up, its MTU, and
// for a static entry exactly its addresses and gateway (anything else the
// search added is removed). A dhcp entry loses any address on the fallback
// subnet (left by an earlier run: restarting must not leave two); its lease
// addresses carry their own lifetime. A none link only gets up and MTU.
func applyInterface(l netlink.Link, ic *Interface, index int, fallback netip.Prefix) error {
	name := l.Attrs().Name
	if ic.MTU != 0 && l.Attrs().MTU != ic.MTU {
		if err := netlink.LinkSetMTU(l, ic.MTU); err != nil {
			return fmt.Errorf("%s: set mtu %d: %w", name, ic.MTU, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: set up: %w", name, err)
	}
	if ic.Method == MethodNone {
		return nil
	}
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%s: list addresses: %w", name, err)
	}
	if ic.Method == MethodDHCP {
		for _, a := range have {
			if p := prefixOf(a.IPNet); fallback.IsValid() && fallback.Contains(p.Addr()) {
				if err := netlink.AddrDel(l, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
					return fmt.Errorf("%s: remove address %s: %w", name, p, err)
				}
			}
		}
		return nil
	}
	want := map[netip.Prefix]bool{}
	for _, p := range ic.Addresses {
		want[p] = true
	}
	for _, a := range have {
		p := prefixOf(a.IPNet)
		if want[p] {
			delete(want, p)
			continue
		}
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue // the kernel's own, needed for IPv6 neighbour discovery
		}
		if err := netlink.AddrDel(l, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("%s: remove address %s: %w", name, p, err)
		}
	}
	for _, p := range ic.Addresses {
		if !want[p] {
			continue
		}
		if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return fmt.Errorf("%s: add address %s: %w", name, p, err)
		}
	}
	return setDefaultRoute(l, ic.Gateway, metricStatic+index)
}

// setDefaultRoute leaves exactly one default route on l per family: via gw
// (none when gw is zero).
func setDefaultRoute(l netlink.Link, gw netip.Addr, metric int) error {
	name := l.Attrs().Name
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(l, fam)
		if err != nil {
			return fmt.Errorf("%s: list routes: %w", name, err)
		}
		for _, r := range routes {
			if !isDefault(r) {
				continue
			}
			if gw.IsValid() && r.Gw != nil && r.Gw.Equal(gw.AsSlice()) && r.Priority == metric {
				continue
			}
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("%s: remove default route via %v: %w", name, r.Gw, err)
			}
		}
	}
	if !gw.IsValid() {
		return nil
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice(), Priority: metric, Dst: defaultDst(gw)}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("%s: default route via %s: %w", name, gw, err)
	}
	return nil
}

func defaultDst(gw netip.Addr) *net.IPNet {
	if gw.Is4() {
		return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// addLease puts a lease on l: the address with the lease's lifetime (so the
// kernel drops it if we die and nobody renews), and a default route via the
// lease's router with metric.
func addLease(l netlink.Link, le *Lease, metric int) error {
	name := l.Attrs().Name
	secs := int(le.Duration.Seconds())
	a := &netlink.Addr{IPNet: ipNet(le.Address), ValidLft: secs, PreferedLft: secs}
	if err := netlink.AddrReplace(l, a); err != nil {
		return fmt.Errorf("%s: add lease address %s: %w", name, le.Address, err)
	}
	if le.Router.IsValid() {
		if err := netlink.RouteReplace(leaseRoute(l, le, metric)); err != nil {
			return fmt.Errorf("%s: default route via %s: %w", name, le.Router, err)
		}
	}
	return nil
}

func leaseRoute(l netlink.Link, le *Lease, metric int) *netlink.Route {
	return &netlink.Route{LinkIndex: l.Attrs().Index, Gw: le.Router.AsSlice(), Priority: metric, Dst: defaultDst(le.Router)}
}

// moveLeaseRoute gives a lease's default route metric to instead of from.
func moveLeaseRoute(l netlink.Link, le *Lease, from, to int) error {
	if !le.Router.IsValid() {
		return nil
	}
	if err := netlink.RouteReplace(leaseRoute(l, le, to)); err != nil {
		return fmt.Errorf("%s: default route via %s: %w", l.Attrs().Name, le.Router, err)
	}
	if err := netlink.RouteDel(leaseRoute(l, le, from)); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: remove default route via %s: %w", l.Attrs().Name, le.Router, err)
	}
	return nil
}

// removeLease takes a lease's address and its route (with metric) off l.
func removeLease(l netlink.Link, le *Lease, metric int) error {
	name := l.Attrs().Name
	if le.Router.IsValid() {
		if err := netlink.RouteDel(leaseRoute(l, le, metric)); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("%s: remove default route via %s: %w", name, le.Router, err)
		}
	}
	return delAddr(l, le.Address)
}

func addAddr(l netlink.Link, p netip.Prefix) error {
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
		return fmt.Errorf("%s: add address %s: %w", l.Attrs().Name, p, err)
	}
	return nil
}

func delAddr(l netlink.Link, p netip.Prefix) error {
	if err := netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("%s: remove address %s: %w", l.Attrs().Name, p, err)
	}
	return nil
}

// linkOfAddr finds the link holding a local address, and the prefix it has
// there: how a probe's source address tells which link reached the controller.
func linkOfAddr(a netip.Addr) (netlink.Link, netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("netlink: list addresses: %w", err)
	}
	for _, ad := range addrs {
		p := prefixOf(ad.IPNet)
		if p.Addr() == a.Unmap() {
			l, err := netlink.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return nil, netip.Prefix{}, fmt.Errorf("netlink: link %d: %w", ad.LinkIndex, err)
			}
			return l, p, nil
		}
	}
	return nil, netip.Prefix{}, fmt.Errorf("netlink: no link holds %s", a)
}

// writeResolvConf replaces path with the given name servers, atomically, and
// leaves it alone when there are none (the image's own file stays).
func writeResolvConf(path string, servers []netip.Addr) error {
	if len(servers) == 0 || path == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString("# written by g8-netup; rewritten whenever the network changes\n")
	seen := map[netip.Addr]bool{}
	for _, s := range servers {
		if !seen[s] {
			seen[s] = true
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == b.String() {
		return nil
	}
	if err := atomicfile.Write(path, []byte(b.String()), 0o644); err != nil {
		// A bind-mounted resolv.conf (ReadWritePaths=, containers) cannot
		// be renamed over, and its directory may be read-only: write it in
		// place instead.
		if err2 := os.WriteFile(path, []byte(b.String()), 0o644); err2 != nil {
			return fmt.Errorf("resolv.conf: %w (in place: %v)", err, err2)
		}
	}
	return nil
}
