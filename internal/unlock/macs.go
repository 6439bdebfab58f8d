package unlock

import (
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
)

// Link is what the MAC rule needs to know about a network link.
type Link struct {
	Name  string
	Kind  string // netlink link type: "device" (a NIC), "veth", "bridge", "tuntap", ...
	Ether bool   // Ethernet encapsulation
	MAC   string // lower-case colon form
}

// identityKinds are the link types whose MACs identify the node: real NICs
// ("device") and veth, because in containers (systemd-nspawn, the netns
// tests) the node's links are veth. Bridges, bonds, VLANs, tun/tap, dummy,
// macvlan and tunnels borrow or invent addresses and are skipped.
var identityKinds = map[string]bool{"device": true, "veth": true}

// NodeMACs picks the MACs the controller knows the node by: every Ethernet
// NIC or veth link with a non-zero address, primary (the MAC g8-netup
// reached the controller through, from net.json) first and the rest by
// link name, without duplicates (bond members share one).
func NodeMACs(links []Link, primary string) []string {
	sort.Slice(links, func(i, j int) bool { return links[i].Name < links[j].Name })
	seen := map[string]bool{}
	var out []string
	add := func(mac string) {
		mac = strings.ToLower(mac)
		if mac == "" || seen[mac] || mac == "00:00:00:00:00:00" {
			return
		}
		seen[mac] = true
		out = append(out, mac)
	}
	add(primary)
	for _, l := range links {
		if l.Ether && identityKinds[l.Kind] {
			add(l.MAC)
		}
	}
	return out
}

// SystemLinks lists this network namespace's links.
func SystemLinks() ([]Link, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []Link
	for _, l := range ls {
		a := l.Attrs()
		out = append(out, Link{Name: a.Name, Kind: l.Type(), Ether: a.EncapType == "ether", MAC: hwString(a.HardwareAddr)})
	}
	return out, nil
}

func hwString(hw net.HardwareAddr) string {
	if len(hw) != 6 {
		return ""
	}
	return hw.String()
}
