package netup

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Check validates a net.toml and writes the plan: what would be applied and
// what each search round tries, in order. It touches nothing.
func Check(w io.Writer, o Options) error {
	cfg, err := LoadConfig(o.Config)
	if err != nil {
		return err
	}
	anchor := cfg.TrustAnchor
	if o.TrustAnchor != "" {
		anchor = o.TrustAnchor
	}
	fmt.Fprintf(w, "%s: valid\n", o.Config)
	if _, err := os.Stat(anchor); err != nil {
		fmt.Fprintf(w, "trust anchor: %s (warning: not readable here: %v)\n", anchor, err)
	} else {
		fmt.Fprintf(w, "trust anchor: %s\n", anchor)
	}
	if len(cfg.Controllers) == 0 {
		fmt.Fprintln(w, "controllers: none listed (only the fallback controller can be found)")
	} else {
		fmt.Fprintf(w, "controllers: %s\n", strings.Join(cfg.Controllers, ", "))
	}
	present := map[int]bool{}
	fmt.Fprintln(w, "\napply:")
	for i := range cfg.Interfaces {
		ic := &cfg.Interfaces[i]
		// Names can be checked against --interfaces here; MAC entries only
		// resolve on the node.
		if ic.Name != "" && len(o.Interfaces) > 0 && !slices.Contains(o.Interfaces, ic.Name) {
			fmt.Fprintf(w, "  %s: left alone (not in --interfaces)\n", ic.Label())
			continue
		}
		present[i] = true
		match := ""
		if ic.Pattern != "" {
			match = "each link whose name matches (unless listed by name or mac): "
		}
		fmt.Fprintf(w, "  %s: %s%s\n", ic.Label(), match, describeInterface(ic))
	}
	fmt.Fprintf(w, "\nuntil a controller answers GET /v1/health (verified TLS, %v timeout), each round:\n", cfg.ProbeTimeout)
	for k, s := range RoundSteps(cfg, present) {
		fmt.Fprintf(w, "  %d. %s\n", k+1, describeStep(cfg, s))
	}
	fmt.Fprintf(w, "  (before the first DHCP or fallback step, DHCP discovery and the ARP probes of the fallback run on every link at once;\n"+
		"   the steps then use what they found, in this order; DHCP offers are awaited %v in round 1, %v in round 2, %v from round 4 on)\n",
		DHCPWindow(cfg.DHCPTimeout, 1), DHCPWindow(cfg.DHCPTimeout, 2), DHCPWindow(cfg.DHCPTimeout, 4))
	fmt.Fprintf(w, "  then wait %v, doubling up to %v (jittered), and start again\n", cfg.BackoffInitial, cfg.BackoffMax)
	fmt.Fprintf(w, "\nonce found: READY, renew a DHCP lease, defend a fallback address, re-check the controller every %v (search again after %d failures)\n",
		cfg.Recheck, cfg.LostAfter)
	return nil
}

func describeInterface(ic *Interface) string {
	var parts []string
	switch ic.Method {
	case MethodNone:
		parts = append(parts, "link up only, never touched by the search")
	case MethodDHCP:
		parts = append(parts, "link up, address by DHCP during the search")
	case MethodStatic:
		as := make([]string, len(ic.Addresses))
		for i, a := range ic.Addresses {
			as[i] = a.String()
		}
		parts = append(parts, "link up, addresses "+strings.Join(as, " "))
		if ic.Gateway.IsValid() {
			parts = append(parts, "gateway "+ic.Gateway.String())
		}
	}
	if ic.MTU != 0 {
		parts = append(parts, fmt.Sprintf("mtu %d", ic.MTU))
	}
	if len(ic.DNS) > 0 {
		ds := make([]string, len(ic.DNS))
		for i, d := range ic.DNS {
			ds[i] = d.String()
		}
		parts = append(parts, "dns "+strings.Join(ds, " "))
	}
	if ic.Method != MethodNone && !ic.Search {
		parts = append(parts, "not used by the search")
	} else if ic.Method != MethodNone && !ic.DHCP {
		parts = append(parts, "no DHCP in the search")
	}
	return strings.Join(parts, ", ")
}

func describeStep(cfg *Config, s Step) string {
	ctrls := strings.Join(cfg.Controllers, ", ")
	if ctrls == "" {
		ctrls = "(none listed)"
	}
	on := s.Iface
	if s.Index >= 0 && cfg.Interfaces[s.Index].Pattern != "" {
		on = "each link matching " + s.Iface + " in turn"
	}
	switch s.Method {
	case MethodStatic:
		return "apply net.toml as written, probe " + ctrls
	case MethodDHCP:
		return fmt.Sprintf("DHCP on %s, probe %s; without a controller release the lease and restore the link", on, ctrls)
	default:
		fb := &cfg.Fallback
		return fmt.Sprintf("fallback on %s: random address in %s claimed by ARP probing (%s; up to %d conflicts) if the controller's address answers ARP there, probe %s",
			on, fb.Subnet, fb.Schedule, fb.MaxConflicts, fb.Controller)
	}
}
