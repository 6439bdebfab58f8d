package netup

import (
	"fmt"
	"slices"
)

// Reload (SIGHUP, `systemctl reload g8-netup`) applies an edited net.toml
// to a running node without starting over: what still leads to the
// controller is kept, interfaces whose entry changed are re-applied in
// place, and only when the way the controller is reached no longer holds
// does the search run again.

// ReloadPlan is what an edited net.toml changes on a node that reaches its
// controller through via.
type ReloadPlan struct {
	Keep    bool     // the controller stays reached as it is
	Apply   []int    // interfaces (index in the new file) to re-apply in place
	Changes []string // what changed, for STATUS= and the journal
	Why     string   // when !Keep: why the search runs again
}

// PlanReload compares the running configuration with the edited one. via
// is the step that reached controller (Index: the interface it went
// through, -1 when unknown).
func PlanReload(old, next *Config, via Step, controller string) ReloadPlan {
	var p ReloadPlan
	oldAt := map[string]int{}
	for i := range old.Interfaces {
		oldAt[ifaceKey(&old.Interfaces[i])] = i
	}
	seen := map[string]bool{}
	viaKey := ""
	if via.Index >= 0 && via.Index < len(old.Interfaces) {
		viaKey = ifaceKey(&old.Interfaces[via.Index])
	}
	viaChanged := false
	for i := range next.Interfaces {
		ic := &next.Interfaces[i]
		k := ifaceKey(ic)
		seen[k] = true
		j, ok := oldAt[k]
		switch {
		case !ok:
			p.Changes = append(p.Changes, ic.Label()+" added")
			p.Apply = append(p.Apply, i)
		case !sameInterface(&old.Interfaces[j], ic):
			p.Changes = append(p.Changes, ic.Label()+" changed")
			if k == viaKey {
				viaChanged = true
			} else {
				p.Apply = append(p.Apply, i)
			}
		}
	}
	for i := range old.Interfaces {
		if k := ifaceKey(&old.Interfaces[i]); !seen[k] {
			p.Changes = append(p.Changes, old.Interfaces[i].Label()+" removed (left as it is)")
			if k == viaKey {
				viaChanged = true
			}
		}
	}
	if !slices.Equal(old.Controllers, next.Controllers) {
		p.Changes = append(p.Changes, "controllers changed")
	}
	if old.TrustAnchor != next.TrustAnchor {
		p.Changes = append(p.Changes, "trust anchor changed")
	}
	if old.Fallback != next.Fallback {
		p.Changes = append(p.Changes, "fallback changed")
	}
	if old.ProbeTimeout != next.ProbeTimeout || old.Recheck != next.Recheck || old.LostAfter != next.LostAfter ||
		old.DHCPTimeout != next.DHCPTimeout || old.BackoffInitial != next.BackoffInitial || old.BackoffMax != next.BackoffMax {
		p.Changes = append(p.Changes, "timings changed")
	}
	listed := slices.Contains(next.Controllers, controller)
	switch {
	case viaChanged:
		p.Why = fmt.Sprintf("the entry of %s, through which the controller is reached, changed", via.Iface)
	case via.Method == MethodFallback && !(next.Fallback.Enabled && next.Fallback.Controller == controller && next.Fallback.Subnet == old.Fallback.Subnet):
		p.Why = "the fallback the controller is reached through changed"
	case via.Method != MethodFallback && !listed:
		p.Why = "the controller " + controller + " is no longer listed"
	default:
		p.Keep = true
	}
	return p
}

// ifaceKey identifies an [[interface]] across edits: its name or MAC.
func ifaceKey(ic *Interface) string {
	if ic.Name != "" {
		return "name " + ic.Name
	}
	return "mac " + ic.MAC.String()
}

func sameInterface(a, b *Interface) bool {
	return a.Name == b.Name && a.MAC.String() == b.MAC.String() && a.Method == b.Method &&
		slices.Equal(a.Addresses, b.Addresses) && a.Gateway == b.Gateway && slices.Equal(a.DNS, b.DNS) &&
		a.MTU == b.MTU && a.Search == b.Search && a.DHCP == b.DHCP
}
