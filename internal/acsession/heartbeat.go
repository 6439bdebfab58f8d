package acsession

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/chain"
	"github.com/g8os/boot/internal/hoststat"
	"github.com/g8os/boot/internal/state"
)

// System reports the node's own status for a heartbeat: everything but
// the node id and the phases, which the session fills in.
type System interface {
	Status(ctx context.Context, hb *acapi.Heartbeat)
}

// unitPatterns are the units a heartbeat reports.
var unitPatterns = []string{"g8-*", "g8os.target"}

// HostSystem reads the running machine: boot id, uptime, addresses, the g8
// units' states over the systemd D-Bus API, and load, memory and disk
// (internal/hoststat). Without a system bus (containers, netns tests) Units stays
// empty and a D-Bus connection is retried at most once a minute.
type HostSystem struct {
	DiskPath string // file system whose usage is reported, default /

	mu        sync.Mutex
	bus       *dbus.Conn
	busTried  time.Time
	busErr    error
	bootID    string
	bootIDErr error
	bootTime  time.Time         // read once: /proc/stat is a table of every CPU, and it does not change within a boot
	subStates map[string]string // unit → ActiveState/SubState, from the last units()
	listed    map[string]dbus.UnitStatus
}

// BootID returns the kernel's id of this boot.
func BootID() (string, error) {
	// One value, not a table: this is the documented interface (random(4)).
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Status implements System.
func (h *HostSystem) Status(ctx context.Context, hb *acapi.Heartbeat) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bootID == "" && h.bootIDErr == nil {
		h.bootID, h.bootIDErr = BootID()
	}
	hb.BootID = h.bootID
	hb.Hostname, _ = os.Hostname()
	if h.bootTime.IsZero() {
		h.bootTime, _ = hoststat.BootTime()
	}
	if !h.bootTime.IsZero() {
		hb.Uptime = acapi.Duration(time.Since(h.bootTime).Truncate(time.Second))
	}
	hb.Addresses = addresses()
	if l, err := hoststat.Load1(); err == nil {
		hb.Load1 = l
	}
	if total, used, err := hoststat.Memory(); err == nil {
		hb.MemUsed, hb.MemTotal = used, total
	}
	path := h.DiskPath
	if path == "" {
		path = "/"
	}
	if total, used, err := hoststat.DiskUsage(path); err == nil {
		hb.DiskUsed, hb.DiskTotal = used, total
	}
	hb.Units = h.units(ctx)
}

// units lists the g8 units and their ActiveState, or nil without systemd.
func (h *HostSystem) units(ctx context.Context) map[string]string {
	if h.bus == nil {
		if time.Since(h.busTried) < time.Minute {
			return nil
		}
		h.busTried = time.Now()
		// systemd's private socket needs no bus daemon (we run as root);
		// the system bus is the fallback. The connection outlives this
		// call: godbus closes a connection when the context it was made
		// with ends, and ctx is one heartbeat's.
		h.bus, h.busErr = dbus.NewSystemdConnectionContext(context.Background())
		if h.busErr != nil {
			h.bus, h.busErr = dbus.NewSystemConnectionContext(context.Background())
		}
		if h.busErr != nil {
			return nil
		}
	}
	us, err := h.bus.ListUnitsByPatternsContext(ctx, nil, unitPatterns)
	if err != nil {
		// The bus went away (systemd re-exec, dbus restart): reconnect later.
		h.bus.Close()
		h.bus, h.busErr = nil, err
		return nil
	}
	out := make(map[string]string, len(us))
	h.subStates = make(map[string]string, len(us))
	h.listed = make(map[string]dbus.UnitStatus, len(us))
	for _, u := range us {
		out[u.Name] = u.ActiveState
		h.subStates[u.Name] = u.ActiveState + "/" + u.SubState
		h.listed[u.Name] = u
	}
	return out
}

// UnitStates lists the g8 units' ActiveState/SubState with one D-Bus call;
// the session compares it every second to send a heartbeat on change.
func (h *HostSystem) UnitStates(ctx context.Context) map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.units(ctx)
	return h.subStates
}

// Unit implements chain.Units over the same connection, so the heartbeat
// says what g8-status says. A unit the last listing (Status) showed
// running, or did not list (not loaded: never started), needs no more;
// only the others (starting, restarting, failed) are asked for their
// STATUS= and result, so a healthy chain costs no extra D-Bus call.
func (h *HostSystem) Unit(ctx context.Context, name string) (*chain.Unit, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bus == nil {
		return nil, fmt.Errorf("no systemd D-Bus connection: %v", h.busErr)
	}
	l, ok := h.listed[name]
	switch {
	case !ok:
		return &chain.Unit{ActiveState: "inactive", SubState: "dead"}, nil
	case l.ActiveState == "active" && l.SubState == "running":
		return &chain.Unit{ActiveState: l.ActiveState, SubState: l.SubState}, nil
	}
	return chain.NewBus(h.bus).Unit(ctx, name)
}

// BusError is why unit states are missing, or nil.
func (h *HostSystem) BusError() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.busErr
}

// Close releases the D-Bus connection.
func (h *HostSystem) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bus != nil {
		h.bus.Close()
		h.bus = nil
	}
}

// addresses lists the node's global addresses as CIDRs, loopback and
// link-local left out: they say nothing about where the node is.
func addresses() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 {
			continue
		}
		as, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsLoopback() {
				continue
			}
			out = append(out, i.Name+" "+ipn.String())
		}
	}
	return out
}

// phaseView is what the heartbeat and the boot timeline need from one
// phase's state file.
type phaseView struct {
	Phase     string
	StartedAt time.Time
	ReadyAt   time.Time
	Summary   string
}

// readPhases reads every phase's state file. A phase that has not run
// reads "not run"; a broken file reads as its error, so the operator sees
// it from the controller.
func readPhases(dir string) []phaseView {
	var out []phaseView
	add := func(f state.File, view func() phaseView) {
		err := state.Read(dir, f)
		switch {
		case errors.Is(err, state.ErrNotRun):
			out = append(out, phaseView{Phase: f.PhaseName(), Summary: "not run"})
		case err != nil:
			out = append(out, phaseView{Phase: f.PhaseName(), Summary: "error: " + err.Error()})
		default:
			v := view()
			v.Phase = f.PhaseName()
			out = append(out, v)
		}
	}
	var n state.Net
	add(&n, func() phaseView {
		return phaseView{StartedAt: n.StartedAt, ReadyAt: n.ReadyAt,
			Summary: fmt.Sprintf("%s %s %s via %s", n.Interface, n.Method, n.Address, n.Controller)}
	})
	var u state.Unlock
	add(&u, func() phaseView {
		return phaseView{StartedAt: u.StartedAt, ReadyAt: u.ReadyAt,
			Summary: fmt.Sprintf("node %s, %s mounted at %s", u.NodeID, u.Backend, u.Mountpoint)}
	})
	var a state.ACSession
	add(&a, func() phaseView {
		s := "disconnected"
		if a.Connected {
			s = "connected since " + a.ConnectedSince.Format(time.RFC3339)
		}
		return phaseView{StartedAt: a.StartedAt, ReadyAt: a.ReadyAt, Summary: fmt.Sprintf("%s to %s, %d events queued", s, a.Controller, a.QueueDepth)}
	})
	var s state.SSHD
	add(&s, func() phaseView {
		return phaseView{StartedAt: s.StartedAt, ReadyAt: s.ReadyAt,
			Summary: fmt.Sprintf("listening on %s, %d authorized keys", strings.Join(s.Listen, " "), s.AuthorizedKeys)}
	})
	var f state.FS
	add(&f, func() phaseView {
		mounted := 0
		for _, sb := range f.Sandboxes {
			if sb.State == "mounted" {
				mounted++
			}
		}
		return phaseView{StartedAt: f.StartedAt, ReadyAt: f.ReadyAt,
			Summary: fmt.Sprintf("%d of %d sandboxes mounted", mounted, len(f.Sandboxes))}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Phase < out[j].Phase })
	return out
}

// phaseSummaries is each phase's line as g8-status prints it: its unit's
// state from systemd (when units is not nil) combined with its state file.
func phaseSummaries(ctx context.Context, units chain.Units, dir string) map[string]string {
	now := time.Now()
	m := make(map[string]string, len(chain.Phases))
	for _, s := range chain.Collect(ctx, units, dir) {
		m[s.Phase] = s.State + ": " + s.Summary(now)
	}
	return m
}
