package netup

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestPlanReload(t *testing.T) {
	pfx := netip.MustParsePrefix
	base := func() *Config {
		return &Config{
			Controllers: []string{"https://10.0.1.1:8443"},
			Recheck:     30 * time.Second,
			Fallback:    Fallback{Enabled: true, Subnet: pfx("10.254.254.0/24"), Controller: "https://10.254.254.254:8443"},
			Interfaces: []Interface{
				{Name: "eth0", Method: MethodStatic, Addresses: []netip.Prefix{pfx("10.0.1.2/24")}, Search: true, DHCP: true},
				{Name: "eth1", Method: MethodStatic, Addresses: []netip.Prefix{pfx("10.5.0.2/24")}, Search: true, DHCP: true},
			},
		}
	}
	viaEth0 := Step{Method: MethodStatic, Index: 0, Iface: "eth0"}
	viaFallback := Step{Method: MethodFallback, Index: 1, Iface: "eth1"}
	ctrl := "https://10.0.1.1:8443"
	for _, c := range []struct {
		name    string
		edit    func(*Config)
		via     Step
		ctrl    string
		keep    bool
		apply   []int
		changes string
		why     string
	}{
		{"nothing changed", func(*Config) {}, viaEth0, ctrl, true, nil, "", ""},
		{"another interface's address", func(c *Config) { c.Interfaces[1].Addresses = []netip.Prefix{pfx("10.5.0.3/24")} }, viaEth0, ctrl, true, []int{1}, "eth1 changed", ""},
		{"an interface added", func(c *Config) {
			c.Interfaces = append(c.Interfaces, Interface{Name: "eth2", Method: MethodDHCP, Search: true, DHCP: true})
		}, viaEth0, ctrl, true, []int{2}, "eth2 added", ""},
		{"an unused interface removed", func(c *Config) { c.Interfaces = c.Interfaces[:1] }, viaEth0, ctrl, true, nil, "eth1 removed", ""},
		{"timings only", func(c *Config) { c.Recheck = time.Minute }, viaEth0, ctrl, true, nil, "timings changed", ""},
		{"a second controller listed", func(c *Config) { c.Controllers = append(c.Controllers, "https://10.0.2.1:8443") }, viaEth0, ctrl, true, nil, "controllers changed", ""},
		{"the interface in use changed", func(c *Config) { c.Interfaces[0].Addresses = []netip.Prefix{pfx("10.0.1.9/24")} }, viaEth0, ctrl, false, nil, "eth0 changed", "eth0, through which"},
		{"the interface in use removed", func(c *Config) { c.Interfaces = c.Interfaces[1:] }, viaEth0, ctrl, false, nil, "eth0 removed", "eth0, through which"},
		{"the controller in use no longer listed", func(c *Config) { c.Controllers = []string{"https://10.0.2.1:8443"} }, viaEth0, ctrl, false, nil, "controllers changed", "no longer listed"},
		{"fallback kept", func(c *Config) { c.Controllers = nil }, viaFallback, "https://10.254.254.254:8443", true, nil, "controllers changed", ""},
		{"fallback disabled under its user", func(c *Config) { c.Fallback.Enabled = false }, viaFallback, "https://10.254.254.254:8443", false, nil, "fallback changed", "fallback"},
	} {
		next := base()
		c.edit(next)
		p := PlanReload(base(), next, c.via, c.ctrl)
		changes := strings.Join(p.Changes, ", ")
		if p.Keep != c.keep || !strings.Contains(changes, c.changes) || (c.changes == "" && changes != "") ||
			!strings.Contains(p.Why, c.why) || len(p.Apply) != len(c.apply) {
			t.Errorf("%s: plan %+v, want keep=%v apply=%v changes~%q why~%q", c.name, p, c.keep, c.apply, c.changes, c.why)
			continue
		}
		for i := range c.apply {
			if p.Apply[i] != c.apply[i] {
				t.Errorf("%s: apply %v, want %v", c.name, p.Apply, c.apply)
			}
		}
	}
}
