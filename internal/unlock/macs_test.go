package unlock

import (
	"slices"
	"testing"
)

func TestNodeMACs(t *testing.T) {
	eth := func(name, kind, mac string) Link { return Link{Name: name, Kind: kind, Ether: true, MAC: mac} }
	for _, tc := range []struct {
		name    string
		links   []Link
		primary string
		want    []string
	}{
		{"primary first, others by name",
			[]Link{eth("eth1", "device", "02:00:00:00:00:02"), eth("eth0", "device", "02:00:00:00:00:01"), eth("eno3", "device", "02:00:00:00:00:03")},
			"02:00:00:00:00:02",
			[]string{"02:00:00:00:00:02", "02:00:00:00:00:03", "02:00:00:00:00:01"}},
		{"skips loopback, bridge, tun, dummy, vlan, bond; keeps veth",
			[]Link{
				{Name: "lo", Kind: "device", Ether: false, MAC: "00:00:00:00:00:00"},
				eth("br0", "bridge", "02:00:00:00:00:10"),
				{Name: "tun0", Kind: "tuntap"},
				eth("tap0", "tuntap", "02:00:00:00:00:11"),
				eth("dummy0", "dummy", "02:00:00:00:00:12"),
				eth("eth0.7", "vlan", "02:00:00:00:00:13"),
				eth("bond0", "bond", "02:00:00:00:00:14"),
				eth("wg0", "wireguard", ""),
				eth("eth0", "veth", "02:00:00:00:00:01"),
			},
			"",
			[]string{"02:00:00:00:00:01"}},
		{"bond members sharing a MAC count once; case folded",
			[]Link{eth("eth0", "device", "02:AA:00:00:00:01"), eth("eth1", "device", "02:aa:00:00:00:01")},
			"02:aa:00:00:00:01",
			[]string{"02:aa:00:00:00:01"}},
		{"primary kept even when its link is not listed",
			[]Link{eth("eth0", "device", "02:00:00:00:00:01")},
			"02:00:00:00:00:09",
			[]string{"02:00:00:00:00:09", "02:00:00:00:00:01"}},
		{"non-ethernet NIC skipped", []Link{{Name: "ib0", Kind: "device", MAC: ""}}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NodeMACs(tc.links, tc.primary); !slices.Equal(got, tc.want) {
				t.Fatalf("NodeMACs = %v, want %v", got, tc.want)
			}
		})
	}
}
