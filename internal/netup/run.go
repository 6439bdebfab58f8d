// Package netup is the first boot phase: bring the network up until an agent
// controller answers, then keep it that way. See docs/netup.md.
//
// plan.go decides (pure); netlink.go, dhcp.go, acd.go and probe.go act;
// this file runs the loop between them and reports every step.
package netup

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Options are the command line of g8-netup.
type Options struct {
	Config      string
	StateDir    string
	ResolvConf  string
	TrustAnchor string   // overrides net.toml's trust_anchor when set
	Interfaces  []string // links that may be touched; empty = every link net.toml lists
	Log         *slog.Logger
}

// Run searches for a controller, reports READY when one answers, and keeps
// the network that way until ctx ends (SIGTERM), leaving the configuration
// in place.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = sd.NewLogger("net", false)
	}
	cfg, err := LoadConfig(o.Config)
	if err != nil {
		return cli.Exit(cli.ExitConfig, err)
	}
	anchor := cfg.TrustAnchor
	if o.TrustAnchor != "" {
		anchor = o.TrustAnchor
	}
	roots, err := acapi.LoadPool(anchor)
	if err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("netup: %w", err))
	}
	n := &node{cfg: cfg, o: o, log: log, notify: &sd.Notifier{}, started: time.Now()}
	n.prober = &Prober{Roots: roots, Timeout: cfg.ProbeTimeout, DNS: n.dnsServers}
	log.Info("g8-netup started", sd.PhaseStarted.Attr(), "config", o.Config, "trust_anchor", anchor,
		"interfaces", strings.Join(o.Interfaces, ","))
	defer func() {
		n.notify.Stopping()
		log.Info("stopping, network configuration left in place", sd.PhaseStopping.Attr())
	}()
	// SIGHUP (systemctl reload) re-reads net.toml; its default action
	// would end the phase.
	n.hup = make(chan os.Signal, 1)
	signal.Notify(n.hup, syscall.SIGHUP)
	defer signal.Stop(n.hup)
	var f *found
	for {
		if f == nil {
			stopPings := n.pingWhileSearching(ctx)
			f = n.search(ctx, nil, nil)
			stopPings()
			if f == nil {
				return nil // ctx ended
			}
		}
		n.ready(f)
		next, err := n.maintain(ctx, f)
		if next == nil && err == nil {
			return nil // ctx ended
		}
		n.teardown(f)
		f = next
		if f == nil {
			n.st.Searches++ // a search beside maintain counted itself
			n.writeState()
		}
	}
}

// reload reads the edited net.toml. A file that does not load changes
// nothing (the error names the line and field).
func (n *node) reload() (*Config, *Prober, bool) {
	cfg, err := LoadConfig(n.o.Config)
	if err == nil {
		anchor := cfg.TrustAnchor
		if n.o.TrustAnchor != "" {
			anchor = n.o.TrustAnchor
		}
		var roots *x509.CertPool
		if roots, err = acapi.LoadPool(anchor); err == nil {
			return cfg, &Prober{Roots: roots, Timeout: cfg.ProbeTimeout, DNS: n.dnsServers}, true
		}
	}
	n.log.Error("net.toml refused, nothing changed", sd.NetConfigRejected.Attr(), "config", n.o.Config, "error", err.Error())
	return nil, nil, false
}

type node struct {
	cfg     *Config // net.toml as loaded
	bound   *Config // its entries bound to this round's links (Bind); steps index these
	o       Options
	log     *slog.Logger
	notify  *sd.Notifier
	prober  *Prober
	started time.Time

	// mu guards what a search running beside maintain (while the
	// controller is lost) and maintain both reach: the name servers of
	// the lease under test and of the lease in use.
	mu sync.Mutex

	links   map[int]netlink.Link // resolved for the current round
	skipped map[string]string    // why an interface is left alone, by label, logged on change
	trace   []string             // of the current search only: its rounds count from 1
	// searchStarted is when the current search began (the process start
	// for the first one).
	searchStarted time.Time
	last          map[string]netip.Addr // last fallback address tried per link, never picked twice in a row
	found         *found
	trying        []netip.Addr // name servers of the lease under test
	st            state.Net
	readyOK       bool
	hup           chan os.Signal
}

// found is how the controller was reached.
type found struct {
	step     Step
	reached  *Reached
	link     netlink.Link
	address  netip.Prefix
	gateway  netip.Addr
	lease    *Lease       // dhcp
	metric   int          // of the lease's default route
	fallback netip.Prefix // fallback
	rounds   int
	stopAnn  context.CancelFunc
	ic       *Interface // the net.toml entry of link, as bound when found: teardown needs it after the links were bound again
}

func (f *found) String() string {
	if f.link == nil {
		return string(f.step.Method)
	}
	return fmt.Sprintf("%s %s %s", f.link.Attrs().Name, f.step.Method, f.address)
}

const maxTrace = 64

func (n *node) addTrace(round int, s string) {
	n.trace = append(n.trace, fmt.Sprintf("round %d: %s", round, s))
	if len(n.trace) > maxTrace {
		n.trace = n.trace[len(n.trace)-maxTrace:]
	}
}

// allowed reports whether --interfaces lets us touch a link.
func (n *node) allowed(name string) bool {
	return len(n.o.Interfaces) == 0 || slices.Contains(n.o.Interfaces, name)
}

// resolveLinks binds net.toml's entries to the links there are now and
// returns the ones that are present and allowed.
func (n *node) resolveLinks() map[int]bool {
	if n.skipped == nil {
		n.skipped = map[string]string{}
	}
	all, err := netlink.LinkList()
	if err != nil {
		n.log.Warn("cannot list links", "error", err.Error())
	}
	links := make([]Link, len(all))
	for i, l := range all {
		a := l.Attrs()
		links[i] = Link{Name: a.Name, MAC: a.HardwareAddr, Loopback: a.Flags&net.FlagLoopback != 0}
	}
	var over []string
	n.bound, over = Bind(n.cfg, links)
	skip := func(label, why string) {
		if why != n.skipped[label] {
			n.skipped[label] = why
			if why != "" {
				n.log.Warn("interface left alone", sd.NetLinkSkipped.Attr(), "iface", label, "reason", why)
			}
		}
	}
	for _, name := range over {
		skip(name, fmt.Sprintf("%s: more than %d interfaces", name, MaxInterfaces))
	}
	twice := ListedTwice(n.cfg, links)
	n.links = map[int]netlink.Link{}
	present := map[int]bool{}
	for i := range n.bound.Interfaces {
		ic := &n.bound.Interfaces[i]
		l, err := findLink(ic)
		why := ""
		switch {
		case err != nil:
			why = err.Error()
		case twice[l.Attrs().Name] != "":
			why = twice[l.Attrs().Name]
		case !n.allowed(l.Attrs().Name):
			why = fmt.Sprintf("%s: not in --interfaces", l.Attrs().Name)
		}
		skip(ic.Label(), why)
		if why == "" {
			n.links[i] = l
			present[i] = true
		}
	}
	return present
}

func (n *node) linkNames() map[int]string {
	names := make(map[int]string, len(n.links))
	for i, l := range n.links {
		names[i] = l.Attrs().Name
	}
	return names
}

// pingWhileSearching keeps the watchdog fed until stop is called. The
// search blocks in steps bounded by their own timeouts (DHCP, probes, ARP
// probes) and sleeps between rounds for up to backoff.max, longer than any
// sensible WatchdogSec=, so while searching the watchdog only catches a
// hung process; maintain pings from its own loop.
func (n *node) pingWhileSearching(ctx context.Context) (stop func()) {
	d := sd.WatchdogInterval()
	if d <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				n.notify.Watchdog()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// search runs rounds until a controller answers; nil when ctx ends or
// stop is closed (between steps: none is left half done). With keep (a
// configuration in use whose controller is lost) keep's link is left out
// of every step, so its address stays while the others are tried.
func (n *node) search(ctx context.Context, keep *found, stop <-chan struct{}) *found {
	n.trace = nil
	n.searchStarted = time.Now()
	if !n.readyOK {
		n.searchStarted = n.started
	}
	bo := backoff.New(backoff.Policy{Initial: n.cfg.BackoffInitial, Max: n.cfg.BackoffMax, Factor: 2, Jitter: 0.2})
	// SIGHUP is this search's only while nothing is kept; beside maintain
	// (keep set) maintain takes it and ends this search first.
	var hup chan os.Signal
	if keep == nil {
		hup = n.hup
	}
	for round := 1; ; round++ {
		select {
		case <-hup:
			// Nothing is reached yet, so nothing to keep: the new file
			// starts this round. READY=1 belongs to a found controller:
			// before the first one, a reload only changes what the search
			// tries.
			if n.readyOK {
				n.notify.Reloading()
			}
			if cfg, prober, ok := n.reload(); ok {
				n.cfg, n.prober = cfg, prober
				n.log.Info("net.toml reloaded during the search: starting over with it", sd.NetReloaded.Attr(), "config", n.o.Config)
			}
			if n.readyOK {
				n.notify.Ready(n.readyStatus())
			}
		default:
		}
		obs := Observations{Round: round, Present: n.resolveLinks(), Names: n.linkNames()}
		if keep != nil {
			obs.Keeping = keep.String()
			n.leaveOut(obs.Present, keep)
		}
		f := n.round(ctx, &obs, keep, stop)
		if ctx.Err() != nil || stopped(stop) {
			return nil
		}
		if f != nil {
			f.rounds = round
			return f
		}
		wait := bo.Next()
		status := StatusLine(obs, "", wait)
		n.notify.Status("%s", status)
		tried := make([]string, len(obs.Done))
		for i, o := range obs.Done {
			tried[i] = o.String()
		}
		n.log.Warn("no controller found in this round", sd.NetRoundFailed.Attr(), "round", round,
			"wait", wait.Round(time.Millisecond).String(), "tried", strings.Join(tried, "; "))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-stop:
		case <-t.C:
		case sig := <-hup:
			n.hup <- sig // handled at the top of the next round
		}
		t.Stop()
		if ctx.Err() != nil || stopped(stop) {
			return nil
		}
	}
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// leaveOut takes keep's link out of a round's links.
func (n *node) leaveOut(present map[int]bool, keep *found) {
	if keep.link == nil {
		return
	}
	for i, l := range n.links {
		if l.Attrs().Index == keep.link.Attrs().Index {
			delete(present, i)
		}
	}
}

// round runs one round's steps in order until one finds a controller.
// Before the first DHCP or fallback step, the discovery of all of them
// runs on every link at once (scan); each step then takes its link's
// result, so the order of preference is the steps' and the time is the
// longest link's, not the sum.
func (n *node) round(ctx context.Context, obs *Observations, keep *found, stop <-chan struct{}) *found {
	scans := map[string]*linkScan{}
	// The discovery of links whose steps do not run (a step before them
	// found a controller) is cut short, not waited out.
	sctx, cancelScans := context.WithCancel(ctx)
	defer func() {
		cancelScans()
		for _, ls := range scans {
			ls.close()
		}
	}()
	for {
		step, ok := NextStep(n.bound, *obs)
		if !ok || stopped(stop) {
			return nil
		}
		var ls *linkScan
		if step.Method != MethodStatic {
			name := n.links[step.Index].Attrs().Name
			if scans[name] == nil {
				// The first such step, or a link that appeared since.
				var todo []Scan
				for _, sc := range RoundScans(n.bound, *obs) {
					if scans[sc.Iface] == nil {
						todo = append(todo, sc)
					}
				}
				window := DHCPWindow(n.cfg.DHCPTimeout, obs.Round)
				n.notify.Status("%s", StatusLine(*obs, ScanStatus(todo, window, step), 0))
				n.scan(sctx, todo, window, scans)
			}
			ls = scans[name]
		}
		n.notify.Status("%s", StatusLine(*obs, step.String(), 0))
		out, f := n.runStep(ctx, step, obs.Present, ls)
		if ctx.Err() != nil {
			return nil
		}
		obs.Done = append(obs.Done, out)
		n.addTrace(obs.Round, out.String())
		if f != nil {
			if f.step.Index >= 0 {
				ic := n.bound.Interfaces[f.step.Index]
				f.ic = &ic
			}
			return f
		}
		obs.Present, obs.Names = n.resolveLinks(), n.linkNames()
		if keep != nil {
			n.leaveOut(obs.Present, keep)
		}
	}
}

func (n *node) runStep(ctx context.Context, s Step, present map[int]bool, ls *linkScan) (Outcome, *found) {
	switch s.Method {
	case MethodStatic:
		return n.stepStatic(ctx, s, present)
	case MethodDHCP:
		return n.stepDHCP(ctx, s, ls)
	case MethodFallback:
		return n.stepFallback(ctx, s, ls)
	}
	return Outcome{Step: s, Result: Failed, Detail: "unknown step"}, nil
}

// linkScan is what a round's discovery found on one link.
type linkScan struct {
	linkErr   error // the link could not be brought up
	noCarrier bool
	offer     *Offer // nil: dhcpErr says why
	dhcpErr   error
	cand      *Candidate // a free fallback address, still watched; nil: fbErr says why
	fbErr     error
	taken     []string            // conflicts met on the way, for the trace
	avoid     map[netip.Addr]bool // addresses found taken, or another link's candidate
	last      netip.Addr
	// Closed when the fields above for DHCP (offer, dhcpErr) or for the
	// fallback (cand, fbErr, taken, avoid, last) and the link's own
	// (linkErr, noCarrier) are final: each step waits for its link's
	// part only, so a lease on the first link is not held up by the
	// discovery of the others.
	dhcpDone, fbDone chan struct{}
}

func (ls *linkScan) close() {
	<-ls.dhcpDone
	<-ls.fbDone
	if ls.offer != nil {
		ls.offer.Close()
	}
	if ls.cand != nil {
		ls.cand.Close()
	}
}

// scan starts the discovery of scans on their links at once and records
// each link's result in into as it comes (linkScan's done channels).
func (n *node) scan(ctx context.Context, scans []Scan, window time.Duration, into map[string]*linkScan) {
	if n.last == nil {
		n.last = map[string]netip.Addr{}
	}
	fb := &n.cfg.Fallback
	// Each link starts with its own candidate: two of the node's links on
	// one LAN probing the same address would each see the other's probe
	// as a conflict.
	picked := map[netip.Addr]bool{}
	first := make([]netip.Addr, len(scans))
	for k, sc := range scans {
		if sc.Fallback {
			if a, ok := PickFallback(fb.Subnet, fb.ControllerIP, n.last[sc.Iface], picked, rand.IntN); ok {
				first[k] = a
				picked[a] = true
			}
		}
	}
	for k, sc := range scans {
		ls := &linkScan{avoid: map[netip.Addr]bool{}, last: n.last[sc.Iface], dhcpDone: make(chan struct{}), fbDone: make(chan struct{})}
		for a := range picked {
			if a != first[k] {
				ls.avoid[a] = true
			}
		}
		into[sc.Iface] = ls
		go n.scanLink(ctx, sc, n.links[sc.Index], ls, window, first[k])
	}
}

// scanLink brings a link up and, once it has a carrier, runs DHCP
// discovery and the probing of a fallback candidate side by side.
func (n *node) scanLink(ctx context.Context, sc Scan, l netlink.Link, ls *linkScan, window time.Duration, first netip.Addr) {
	dhcpDone, fbDone := ls.dhcpDone, ls.fbDone
	defer func() {
		if dhcpDone != nil {
			close(dhcpDone)
		}
		close(fbDone)
	}()
	// The link must be up even if the static step could not apply.
	if err := netlink.LinkSetUp(l); err != nil {
		ls.linkErr = fmt.Errorf("link: %w", err)
		return
	}
	// Without a carrier no DHCP server or controller can answer: do not
	// wait out the DHCP window (nor broadcast into nothing) every round.
	if !waitCarrier(ctx, l, min(n.cfg.DHCPTimeout, carrierWait)) {
		ls.noCarrier = true
		return
	}
	name := l.Attrs().Name
	if sc.DHCP {
		dhcpDone = nil // closed by the discovery's own goroutine
		go func() {
			defer close(ls.dhcpDone)
			ls.offer, ls.dhcpErr = DiscoverOffer(ctx, name, window)
		}()
	}
	if sc.Fallback {
		ls.cand, ls.fbErr = n.probeFallback(ctx, name, first, ls)
	}
}

// probeFallback probes fallback addresses on a link, first (if valid) and
// then random ones, until one is free or fallback.max_conflicts were
// taken.
func (n *node) probeFallback(ctx context.Context, name string, first netip.Addr, ls *linkScan) (*Candidate, error) {
	fb := &n.cfg.Fallback
	a := first
	for len(ls.taken) < fb.MaxConflicts {
		if !a.IsValid() {
			var ok bool
			if a, ok = PickFallback(fb.Subnet, fb.ControllerIP, ls.last, ls.avoid, rand.IntN); !ok {
				break
			}
		}
		ls.last = a
		c, err := ProbeCandidate(ctx, name, a, fb.ControllerIP, fb.Schedule)
		var cf *Conflict
		switch {
		case err == nil:
			return c, nil
		case errors.As(err, &cf):
			n.noteConflict(name, cf, ls)
			a = netip.Addr{}
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("no free address: %s", strings.Join(ls.taken, ", "))
}

func (n *node) noteConflict(name string, c *Conflict, ls *linkScan) {
	ls.avoid[c.Addr] = true
	ls.taken = append(ls.taken, c.Error())
	n.log.Info("fallback address in use", sd.NetFallbackConflict.Attr(), "iface", name, "address", c.Addr.String(),
		"peer", c.MAC.String(), "probe", c.Probe)
}

// dnsServers are the name servers in effect: those of a lease under test
// or the winning lease first, then net.toml's.
func (n *node) dnsServers() []netip.Addr {
	n.mu.Lock()
	out := append([]netip.Addr{}, n.trying...)
	if n.found != nil && n.found.lease != nil {
		out = append(out, n.found.lease.DNS...)
	}
	n.mu.Unlock()
	for i := range n.cfg.Interfaces {
		out = append(out, n.cfg.Interfaces[i].DNS...)
	}
	return out
}

func (n *node) setTrying(dns []netip.Addr) {
	n.mu.Lock()
	n.trying = dns
	n.mu.Unlock()
}

func (n *node) writeResolv() {
	servers := n.dnsServers()
	if err := writeResolvConf(n.o.ResolvConf, servers); err != nil {
		n.log.Warn("cannot write resolv.conf", "path", n.o.ResolvConf, "error", err.Error())
	}
}

// applyConfigured puts every present interface back to what net.toml says.
func (n *node) applyConfigured(present map[int]bool) {
	var applied []string
	for i := range n.bound.Interfaces {
		if !present[i] {
			continue
		}
		ic := &n.bound.Interfaces[i]
		if err := applyInterface(n.links[i], ic, i, n.cfg.Fallback.Subnet); err != nil {
			n.log.Warn("cannot apply net.toml to interface", sd.NetLinkSkipped.Attr(), "iface", ic.Label(), "error", err.Error())
			continue
		}
		applied = append(applied, fmt.Sprintf("%s=%s", n.links[i].Attrs().Name, ic.Method))
	}
	n.writeResolv()
	n.log.Info("net.toml applied", sd.NetConfigApplied.Attr(), "interfaces", strings.Join(applied, " "))
}

func (n *node) probe(ctx context.Context, s Step, urls []string) (*Reached, error) {
	r, err := n.prober.First(ctx, urls)
	if err != nil && ctx.Err() == nil {
		// Debug: the round's one net.round-failed line carries this error
		// in its outcome, so a failed round is not logged twice.
		n.log.Debug("no controller answered", sd.NetProbeFailed.Attr(), "step", s.String(), "error", err.Error())
	}
	return r, err
}

func (n *node) stepStatic(ctx context.Context, s Step, present map[int]bool) (Outcome, *found) {
	n.applyConfigured(present)
	if len(n.cfg.Controllers) == 0 {
		return Outcome{Step: s, Result: NoController, Detail: "no controllers listed"}, nil
	}
	r, err := n.probe(ctx, s, n.cfg.Controllers)
	if err != nil {
		return Outcome{Step: s, Result: NoController, Detail: "no controller answered (" + err.Error() + ")"}, nil
	}
	f := &found{step: s, reached: r}
	if err := n.locate(f); err != nil {
		n.log.Warn("controller answered through an unknown link", "error", err.Error())
	}
	return Outcome{Step: s, Result: Found, Detail: "found " + r.URL}, f
}

// locate fills in the link and address a controller was reached through,
// from the probe connection's local address.
func (n *node) locate(f *found) error {
	l, p, err := linkOfAddr(f.reached.Local.Addr())
	if err != nil {
		return err
	}
	f.link, f.address = l, p
	for i := range n.bound.Interfaces {
		if lk, ok := n.links[i]; ok && lk.Attrs().Index == l.Attrs().Index {
			f.step.Index, f.step.Iface = i, n.bound.Interfaces[i].Label()
			f.gateway = n.bound.Interfaces[i].Gateway
		}
	}
	return nil
}

func (n *node) stepDHCP(ctx context.Context, s Step, ls *linkScan) (Outcome, *found) {
	ic := &n.bound.Interfaces[s.Index]
	l := n.links[s.Index]
	name := l.Attrs().Name
	<-ls.dhcpDone
	if out, bad := scanFailed(s, ls); bad {
		return out, nil
	}
	if ls.offer == nil {
		if ctx.Err() == nil {
			// Debug, as for a failed probe: net.round-failed reports it.
			n.log.Debug("no DHCP lease", sd.NetDHCPFailed.Attr(), "iface", name, "error", ls.dhcpErr.Error())
		}
		return Outcome{Step: s, Result: Failed, Detail: "no lease: " + ls.dhcpErr.Error()}, nil
	}
	le, err := ls.offer.Request(ctx, n.cfg.DHCPTimeout)
	ls.offer = nil
	if err != nil {
		return Outcome{Step: s, Result: Failed, Detail: "no lease: " + err.Error()}, nil
	}
	n.log.Info("DHCP lease", sd.NetDHCPLease.Attr(), "iface", name, "address", le.Address.String(),
		"router", le.Router.String(), "server", le.Server.String(), "lease", le.Duration.String())
	restore := func() {
		if err := ReleaseLease(le); err != nil {
			n.log.Debug("cannot release lease", "iface", name, "error", err.Error())
		}
		if err := removeLease(l, le, metricDHCP+s.Index); err != nil {
			n.log.Warn("cannot remove lease", "iface", name, "error", err.Error())
		}
		if err := applyInterface(l, ic, s.Index, n.cfg.Fallback.Subnet); err != nil {
			n.log.Warn("cannot restore net.toml", "iface", name, "error", err.Error())
		}
		n.writeResolv()
	}
	if err := addLease(l, le, metricDHCP+s.Index); err != nil {
		restore()
		return Outcome{Step: s, Result: Failed, Detail: fmt.Sprintf("lease %s: %v", le.Address, err)}, nil
	}
	n.setTrying(le.DNS)
	n.writeResolv()
	r, err := n.probe(ctx, s, n.cfg.Controllers)
	n.setTrying(nil)
	if err != nil {
		if ctx.Err() != nil {
			return Outcome{Step: s, Result: Failed, Detail: "stopped"}, nil
		}
		restore()
		return Outcome{Step: s, Result: NoController, Detail: fmt.Sprintf("lease %s, no controller answered (%v)", le.Address, err)}, nil
	}
	f := &found{step: s, reached: r, link: l, address: le.Address, gateway: le.Router, lease: le, metric: metricDHCP + s.Index}
	return Outcome{Step: s, Result: Found, Detail: fmt.Sprintf("lease %s, found %s", le.Address, r.URL)}, f
}

// scanFailed is the outcome of a step on a link the round's discovery
// could not use.
func scanFailed(s Step, ls *linkScan) (Outcome, bool) {
	switch {
	case ls.linkErr != nil:
		return Outcome{Step: s, Result: Failed, Detail: ls.linkErr.Error()}, true
	case ls.noCarrier:
		return Outcome{Step: s, Result: Failed, Detail: "no carrier (cable unplugged or peer down)"}, true
	}
	return Outcome{}, false
}

func (n *node) stepFallback(ctx context.Context, s Step, ls *linkScan) (Outcome, *found) {
	ic := &n.bound.Interfaces[s.Index]
	l := n.links[s.Index]
	name := l.Attrs().Name
	fb := &n.cfg.Fallback
	<-ls.fbDone
	if out, bad := scanFailed(s, ls); bad {
		return out, nil
	}
	defer func() { n.last[name] = ls.last }()
	var peerSeen bool
	for {
		if ls.cand == nil {
			return Outcome{Step: s, Result: Failed, Detail: ls.fbErr.Error()}, nil
		}
		c, seen, err := ls.cand.State()
		if c == nil && err == nil {
			peerSeen = seen
			break
		}
		// Taken (or the link failed) since it was probed, while DHCP had
		// its turn: probe another address.
		if c != nil {
			n.noteConflict(name, c, ls)
		}
		ls.cand.Close()
		ls.cand, ls.fbErr = n.probeFallback(ctx, name, netip.Addr{}, ls)
		if ctx.Err() != nil {
			return Outcome{Step: s, Result: Failed, Detail: "stopped"}, nil
		}
	}
	cand := ls.cand
	ls.cand = nil
	a := cand.Addr
	p := netip.PrefixFrom(a, fb.Subnet.Bits())
	detail := strings.Join(ls.taken, ", ")
	if detail != "" {
		detail += ", "
	}
	if fb.ControllerIP.IsValid() && !peerSeen {
		// The controller's address is on-link here: without an ARP
		// answer no HTTPS probe could reach it, so do not claim an
		// address nor wait out probe.timeout for nothing.
		cand.Close()
		return Outcome{Step: s, Result: NoController, Detail: fmt.Sprintf("%s%s free, no ARP answer for %s (the fallback controller is not on this link)",
			detail, a, fb.ControllerIP)}, nil
	}
	err := addAddr(l, p)
	cand.Close()
	if err != nil {
		return Outcome{Step: s, Result: Failed, Detail: err.Error()}, nil
	}
	n.log.Info("fallback address claimed", sd.NetFallbackAssigned.Attr(), "iface", name, "address", p.String())
	annCtx, stopAnn := context.WithCancel(context.Background())
	go func() {
		if err := Announce(annCtx, name, a, fb.Schedule); err != nil {
			n.log.Warn("cannot announce fallback address", "iface", name, "error", err.Error())
		}
	}()
	detail += p.String() + " claimed"
	r, err := n.probe(ctx, s, []string{fb.Controller})
	if err != nil {
		stopAnn()
		if err := delAddr(l, p); err != nil {
			n.log.Warn("cannot remove fallback address", "iface", name, "error", err.Error())
		}
		if err := applyInterface(l, ic, s.Index, n.cfg.Fallback.Subnet); err != nil {
			n.log.Warn("cannot restore net.toml", "iface", name, "error", err.Error())
		}
		if ctx.Err() != nil {
			return Outcome{Step: s, Result: Failed, Detail: "stopped"}, nil
		}
		return Outcome{Step: s, Result: NoController, Detail: fmt.Sprintf("%s, no controller answered (%v)", detail, err)}, nil
	}
	f := &found{step: s, reached: r, link: l, address: p, fallback: p, stopAnn: stopAnn}
	return Outcome{Step: s, Result: Found, Detail: detail + ", found " + r.URL}, f
}

// ready records the decision, tells systemd and the console.
func (n *node) ready(f *found) {
	n.mu.Lock()
	n.found = f
	n.mu.Unlock()
	method := f.step.Method
	iface := ""
	mac := ""
	if f.link != nil {
		iface = f.link.Attrs().Name
		mac = f.link.Attrs().HardwareAddr.String()
	}
	searches := n.st.Searches // counted as each search started
	n.st = state.Net{
		Controller:     f.reached.URL,
		Controllers:    FailoverList(n.cfg, f.step.Method, f.reached.URL),
		ControllerName: f.reached.Name,
		Interface:      iface,
		MAC:            mac,
		Method:         string(method),
		Rounds:         f.rounds,
		StartedAt:      n.started.UTC(),
		ReadyAt:        time.Now().UTC(),
		ControllerOK:   true,
		LastCheck:      time.Now().UTC(),
		Trace:          append([]string{}, n.trace...),
	}
	// took and ready_at stay those of the first READY; the log line says
	// how long this search took.
	took := time.Since(n.searchStarted).Round(time.Millisecond).String()
	n.st.Took = took
	if n.readyOK {
		prev := n.prevState()
		n.st.ReadyAt, n.st.Took, n.st.Searches = prev.ReadyAt, prev.Took, searches
	} else {
		n.st.Searches = 1
	}
	if f.address.IsValid() {
		n.st.Address = f.address.String()
	}
	if f.gateway.IsValid() {
		n.st.Gateway = f.gateway.String()
	}
	for _, d := range n.dnsServers() {
		n.st.DNS = append(n.st.DNS, d.String())
	}
	if f.lease != nil {
		n.st.LeaseUntil = f.lease.Expiry().UTC()
		n.st.DHCPServer = f.lease.Server.String()
	}
	n.writeState()
	status := n.readyStatus()
	n.log.Info("controller reached", sd.NetControllerFound.Attr(), "controller", f.reached.URL, "iface", iface,
		"method", string(method), "address", n.st.Address, "rounds", f.rounds, "took", took)
	if !n.readyOK {
		n.readyOK = true
		n.notify.Ready(status)
		n.log.Info("ready", sd.PhaseReady.Attr(), "controller", f.reached.URL)
	} else {
		n.notify.Status("%s", status)
	}
}

// prevState is what net.json said before this search's READY; its
// ready_at and took are the first READY's, kept across searches.
func (n *node) prevState() state.Net {
	var old state.Net
	if state.Read(n.o.StateDir, &old) != nil || old.ReadyAt.IsZero() {
		old = state.Net{ReadyAt: n.st.ReadyAt, Took: n.st.Took}
	}
	return old
}

func (n *node) readyStatus() string {
	s := fmt.Sprintf("controller %s via %s (%s %s)", n.st.Controller, n.st.Interface, n.st.Method, n.st.Address)
	if !n.st.LeaseUntil.IsZero() {
		s += ", lease until " + n.st.LeaseUntil.Format(time.TimeOnly)
	}
	if n.st.ControllerOK {
		s += "; last check ok " + n.st.LastCheck.Format(time.TimeOnly)
	} else {
		s += fmt.Sprintf("; %d checks failed: %s", n.st.CheckFailures, n.st.LastError)
	}
	return s
}

func (n *node) writeState() {
	if err := state.Write(n.o.StateDir, &n.st); err != nil {
		n.log.Error("cannot write state", "error", err.Error())
		return
	}
	n.log.Debug("state written", sd.StateWritten.Attr(), "file", state.Path(n.o.StateDir, &n.st))
}

var errSearchAgain = errors.New("search again")

// A lease kept while its controller is lost has its default route moved
// behind every configuration the search tests (leases 50+index, static
// gateways 100+index), so probes through those are not routed into the
// network without a controller; it moves back when the controller answers.
const metricKept = 200

// research is a search beside maintain, for another configuration while
// the one in use keeps its address.
type research struct {
	stop chan struct{}
	done chan *found
}

func (n *node) startResearch(ctx context.Context, keep *found) *research {
	rs := &research{stop: make(chan struct{}), done: make(chan *found, 1)}
	go func() { rs.done <- n.search(ctx, keep, rs.stop) }()
	return rs
}

// end stops the search after the step under way and returns what that
// step found, if anything.
func (rs *research) end() *found {
	close(rs.stop)
	return <-rs.done
}

// maintain keeps the found network: renews the lease, defends the fallback
// address, re-checks the controller. When the controller is lost, the
// address stays (reachable from its LAN, SSH included, and the lease
// renewed) while a search runs beside it on the other links; the first
// of: the controller answering again there, or another configuration
// finding one, ends that search. It returns (nil, nil) when ctx ends,
// (nil, errSearchAgain) when the address itself was lost, and another
// configuration that found a controller, to replace f.
func (n *node) maintain(ctx context.Context, f *found) (*found, error) {
	recheck := time.NewTicker(n.cfg.Recheck)
	defer recheck.Stop()
	var renew <-chan time.Time
	var renewTimer *time.Timer
	if f.lease != nil {
		renewTimer = time.NewTimer(f.lease.Renewal)
		defer renewTimer.Stop()
		renew = renewTimer.C
	}
	defended := make(chan error, 1)
	if f.fallback.IsValid() {
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		name := f.link.Attrs().Name
		go func() {
			defended <- Defend(dctx, name, f.fallback.Addr(), n.cfg.Fallback.Schedule, func(c *Conflict) {
				n.log.Warn("fallback address defended", sd.NetAddressDefended.Attr(), "iface", name,
					"address", f.fallback.String(), "peer", c.MAC.String())
			})
		}()
	}
	var wdC <-chan time.Time
	if d := sd.WatchdogInterval(); d > 0 {
		t := time.NewTicker(d)
		defer t.Stop()
		wdC = t.C
	}
	var rs *research // while the controller is lost
	var rsDone <-chan *found
	// status is maintain's STATUS=, except while a search runs: its own
	// lines say what it tries and what is kept.
	status := func() {
		if rs == nil {
			n.notify.Status("%s", n.readyStatus())
		}
	}
	// back ends a search when the network in use answers again; a
	// configuration the search found meanwhile is undone.
	back := func() {
		if rs == nil {
			return
		}
		if other := rs.end(); other != nil {
			n.teardown(other)
		}
		rs, rsDone = nil, nil
		n.routeLease(f, metricDHCP+f.step.Index)
	}
	// lost ends a search because the address in use is gone: what it
	// found meanwhile replaces it.
	lost := func() (*found, error) {
		if rs != nil {
			if other := rs.end(); other != nil {
				return other, nil
			}
		}
		return nil, errSearchAgain
	}
	for {
		select {
		case <-ctx.Done():
			if rs != nil {
				rs.end()
			}
			return nil, nil
		case <-n.hup:
			// A search beside (the controller lost) would use the old
			// file: it ends, and starts again after the reload if the
			// controller is still lost.
			back()
			if n.reloadFound(f) {
				return nil, errSearchAgain
			}
		case <-wdC:
			n.notify.Watchdog()
		case other := <-rsDone:
			rs, rsDone = nil, nil
			if other == nil { // ctx ended
				return nil, nil
			}
			if other.link != nil && f.link != nil && other.link.Attrs().Index == f.link.Attrs().Index {
				// A listed controller answered through the network kept.
				n.switchController(f, other.reached, errors.New(n.st.LastError))
				n.routeLease(f, metricDHCP+f.step.Index)
				n.st.ControllerOK, n.st.CheckFailures, n.st.LastError = true, 0, ""
				n.st.LastCheck = time.Now().UTC()
				n.writeState()
				status()
				continue
			}
			n.log.Warn("another network leads to a controller; giving up the one kept", sd.NetChanged.Attr(),
				"kept", f.String(), "found", other.String())
			return other, nil
		case <-recheck.C:
			_, err := n.prober.First(ctx, []string{f.reached.URL})
			if ctx.Err() != nil {
				continue
			}
			switched := false
			if err != nil {
				// Another controller of the list on the same network is a
				// switch, not a lost network: searching again would tear
				// down a lease or address that works.
				if others := n.st.ControllerList()[1:]; len(others) > 0 {
					if r, oerr := n.prober.First(ctx, others); oerr == nil {
						n.switchController(f, r, err)
						switched = true
					}
				}
				if ctx.Err() != nil {
					continue
				}
			}
			n.st.LastCheck = time.Now().UTC()
			if err == nil || switched {
				if !n.st.ControllerOK && !switched {
					n.log.Info("controller answers again", sd.NetChanged.Attr(), "controller", f.reached.URL)
				}
				back()
				n.st.ControllerOK, n.st.CheckFailures, n.st.LastError = true, 0, ""
				n.writeState()
				status()
				continue
			}
			n.st.ControllerOK = false
			n.st.CheckFailures++
			n.st.LastError = err.Error()
			n.writeState()
			status()
			n.log.Warn("controller check failed", sd.NetProbeFailed.Attr(), "controller", f.reached.URL,
				"failures", n.st.CheckFailures, "error", err.Error())
			if n.st.CheckFailures >= n.cfg.LostAfter && rs == nil {
				n.log.Warn("controller lost; keeping the address in use while searching the other links", sd.NetControllerLost.Attr(),
					"controller", f.reached.URL, "kept", f.String())
				n.routeLease(f, metricKept+f.step.Index)
				n.st.Searches++
				n.writeState()
				rs = n.startResearch(ctx, f)
				rsDone = rs.done
			}
		case <-renew:
			name := f.link.Attrs().Name
			nl, err := RenewLease(ctx, f.lease, n.cfg.DHCPTimeout)
			if ctx.Err() != nil {
				continue
			}
			if err != nil {
				left := time.Until(f.lease.Expiry())
				// RFC 2131 4.4.5: a DHCPNAK means stop using the address now.
				var nak *nclient4.ErrNak
				if left <= 0 || errors.As(err, &nak) {
					n.log.Warn("DHCP lease lost", sd.NetLeaseLost.Attr(), "iface", name, "error", err.Error())
					return lost()
				}
				// RFC 2131 4.4.5: retry at half the remaining time, not
				// more often than a minute apart in real life; scaled down
				// for short leases.
				next := max(left/2, time.Second)
				n.log.Warn("DHCP renewal failed", sd.NetDHCPFailed.Attr(), "iface", name, "error", err.Error(),
					"retry_in", next.Round(time.Millisecond).String())
				renewTimer.Reset(next)
				continue
			}
			if err := addLease(f.link, nl, f.metric); err != nil {
				n.log.Warn("cannot refresh lease address", "iface", name, "error", err.Error())
			}
			n.mu.Lock()
			f.lease = nl
			n.mu.Unlock()
			n.st.LeaseUntil = nl.Expiry().UTC()
			n.st.Renewals++
			n.writeState()
			status()
			n.log.Info("DHCP lease renewed", sd.NetLeaseRenewed.Attr(), "iface", name, "address", nl.Address.String(),
				"until", nl.Expiry().UTC().Format(time.RFC3339))
			renewTimer.Reset(nl.Renewal)
		case err := <-defended:
			if ctx.Err() != nil {
				continue
			}
			n.log.Warn("fallback address lost", sd.NetAddressRetreat.Attr(), "iface", f.link.Attrs().Name,
				"address", f.fallback.String(), "error", fmt.Sprint(err))
			return lost()
		}
	}
}

// routeLease moves the default route of f's lease to metric.
func (n *node) routeLease(f *found, metric int) {
	if f.lease == nil || f.metric == metric {
		return
	}
	if err := moveLeaseRoute(f.link, f.lease, f.metric, metric); err != nil {
		n.log.Warn("cannot move the lease's default route", "iface", f.link.Attrs().Name, "error", err.Error())
		return
	}
	f.metric = metric
}

// switchController makes r, which answered on the network of f, the
// controller in use after the one in use failed its check with why.
func (n *node) switchController(f *found, r *Reached, why error) {
	prev := f.reached.URL
	f.reached = r
	n.st.Controller, n.st.ControllerName = r.URL, r.Name
	n.st.Controllers = FailoverList(n.cfg, f.step.Method, r.URL)
	n.log.Warn("controller in use failed its check; switched to another on the same network", sd.NetControllerSwitched.Attr(),
		"controller", r.URL, "previous", prev, "error", why.Error())
}

// reloadFound applies an edited net.toml while the controller is reached
// through f (PlanReload) and reports whether the search must run again.
func (n *node) reloadFound(f *found) bool {
	n.notify.Reloading()
	cfg, prober, ok := n.reload()
	if !ok {
		n.notify.Ready(n.readyStatus())
		return false
	}
	// Both files bound to the links there are: steps and plan.Apply index
	// bound entries.
	was := n.bound
	n.cfg, n.prober = cfg, prober
	n.resolveLinks()
	plan := PlanReload(was, n.bound, f.step, f.reached.URL)
	changes := strings.Join(plan.Changes, ", ")
	if changes == "" {
		changes = "nothing changed"
	}
	if !plan.Keep {
		n.log.Info("net.toml reloaded: searching again", sd.NetReloaded.Attr(), "changes", changes, "reason", plan.Why)
		n.notify.Ready(fmt.Sprintf("net.toml reloaded (%s): %s; searching again", changes, plan.Why))
		n.bound = was // teardown undoes f by the entry it was found with; the search binds afresh
		return true
	}
	var applied []string
	for _, i := range plan.Apply {
		ic := &n.bound.Interfaces[i]
		l, ok := n.links[i]
		if !ok {
			continue
		}
		if err := applyInterface(l, ic, i, n.cfg.Fallback.Subnet); err != nil {
			n.log.Warn("cannot apply net.toml to interface", sd.NetLinkSkipped.Attr(), "iface", ic.Label(), "error", err.Error())
			continue
		}
		applied = append(applied, ic.Label())
	}
	// The found interface keeps its index in the new file.
	for i := range n.bound.Interfaces {
		if f.link != nil && n.links[i] != nil && n.links[i].Attrs().Index == f.link.Attrs().Index {
			f.step.Index = i
		}
	}
	n.writeResolv()
	// The later phases fail over along the new file's list.
	n.st.Controllers = FailoverList(n.cfg, f.step.Method, f.reached.URL)
	n.writeState()
	n.log.Info("net.toml reloaded, controller kept", sd.NetReloaded.Attr(), "changes", changes, "applied", strings.Join(applied, ","),
		"controller", f.reached.URL)
	n.notify.Ready(fmt.Sprintf("net.toml reloaded (%s); kept: %s", changes, n.readyStatus()))
	return false
}

// teardown undoes what the search added for f, before searching again or
// when another configuration replaces it: its lease released and removed,
// its fallback address removed, its link as net.toml says.
func (n *node) teardown(f *found) {
	if f.stopAnn != nil {
		f.stopAnn()
	}
	n.mu.Lock()
	if n.found == f {
		n.found = nil
	}
	n.mu.Unlock()
	if f.link == nil || f.ic == nil {
		return
	}
	if f.lease != nil {
		if err := ReleaseLease(f.lease); err != nil {
			n.log.Debug("cannot release lease", "iface", f.link.Attrs().Name, "error", err.Error())
		}
		_ = removeLease(f.link, f.lease, f.metric)
	}
	if f.fallback.IsValid() {
		_ = delAddr(f.link, f.fallback)
	}
	if err := applyInterface(f.link, f.ic, f.step.Index, n.cfg.Fallback.Subnet); err != nil {
		n.log.Warn("cannot restore net.toml", "iface", f.ic.Label(), "error", err.Error())
	}
}
