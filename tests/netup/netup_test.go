// Package netup_test runs the real g8-netup binary in network namespaces
// against the real g8-ac, real dnsmasq and real neighbours.
package netup_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// netupRun is one g8-netup process on a node, with its own files.
type netupRun struct {
	proc     *testenv.Process
	notify   *testenv.Notify
	stateDir string
	resolv   string
}

func startNetup(t *testing.T, node *testenv.Host, netToml, anchor string, extra ...string) *netupRun {
	t.Helper()
	return startNetupEnv(t, node, netToml, anchor, nil, extra...)
}

// startNetupEnv is startNetup with extra environment, e.g. what systemd
// sets for WatchdogSec=.
func startNetupEnv(t *testing.T, node *testenv.Host, netToml, anchor string, env []string, extra ...string) *netupRun {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "net.toml")
	if err := os.WriteFile(cfg, []byte(netToml), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &netupRun{notify: testenv.NotifySocket(t), stateDir: filepath.Join(dir, "run"), resolv: filepath.Join(dir, "resolv.conf")}
	args := append([]string{"--config", cfg, "--state-dir", r.stateDir, "--resolv-conf", r.resolv,
		"--trust-anchor", anchor}, extra...)
	cmd := node.Command(context.Background(), testenv.Bin(t, "g8-netup"), args...)
	// As the unit does: the phase mirrors its STATUS= into this console line.
	if err := os.MkdirAll(filepath.Join(dir, "issue.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), r.notify.Env(),
		sd.ConsoleFileEnv+"="+filepath.Join(dir, "issue.d", "g8-netup.issue"), sd.ConsolePhaseEnv+"=net")
	cmd.Env = append(cmd.Env, env...)
	r.proc = node.StartCmd(cmd, "g8-netup")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("STATUS= history:\n%s", strings.Join(r.notify.Statuses(), "\n"))
		}
	})
	return r
}

func (r *netupRun) ready(t *testing.T, timeout time.Duration) *state.Net {
	t.Helper()
	r.notify.Wait(t, "READY=1", timeout)
	return r.state(t)
}

func (r *netupRun) state(t *testing.T) *state.Net {
	t.Helper()
	var st state.Net
	if err := state.Read(r.stateDir, &st); err != nil {
		t.Fatalf("net.json: %v", err)
	}
	return &st
}

// stop sends SIGTERM and checks the clean exit.
func (r *netupRun) stop(t *testing.T) {
	t.Helper()
	if err := r.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.proc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("g8-netup did not exit within 5 s of SIGTERM")
	}
	if err := r.proc.Err(); err != nil {
		t.Fatalf("g8-netup exited with %v after SIGTERM:\n%s", err, r.proc.Output())
	}
	// Sent before the exit, but the test's reader may not have taken the
	// datagram off the socket yet on a loaded machine.
	r.notify.Wait(t, "STOPPING=1", 5*time.Second)
}

// ipv4 lists a link's IPv4 addresses (CIDR).
func ipv4(t *testing.T, h *testenv.Host, ifname string) []string {
	t.Helper()
	out := h.MustOutput("ip", "-4", "-o", "addr", "show", "dev", ifname)
	var addrs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" {
				addrs = append(addrs, f[i+1])
			}
		}
	}
	return addrs
}

func routes(t *testing.T, h *testenv.Host, ifname string) string {
	t.Helper()
	return strings.TrimSpace(h.MustOutput("ip", "-4", "route", "show", "dev", ifname))
}

// Static config reaches the controller on the first probe. Along the way:
// a none interface keeps what it had, an interface outside --interfaces is
// never touched, SIGTERM leaves the configuration in place.
func TestStaticReachesControllerOnFirstProbe(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac, lan, ovs := tp.Host("node"), tp.Host("ac"), tp.Host("lan"), tp.Host("ovs")
	tp.Link(node, "eth0", ac, "eth0")
	tp.Link(node, "eth1", lan, "eth0")
	tp.Link(node, "eth2", ovs, "eth0")
	tp.Link(node, "eth3", lan, "eth1")
	ac.Addr("eth0", "10.0.1.1/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})

	node.Addr("eth2", "172.16.9.5/24") // what the operator's OVS port holds
	node.MustRun("ip", "link", "set", "eth3", "down")
	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
dns = ["10.0.1.53"]
[[interface]]
name = "eth1"
method = "dhcp"
[[interface]]
name = "eth2"
method = "none"
[[interface]]
name = "eth3"
addresses = ["10.9.9.9/24"]
`, ctrl.TrustAnchor, "--interfaces", "eth0,eth1,eth2")

	st := r.ready(t, 15*time.Second)
	if st.Method != "static" || st.Interface != "eth0" || st.Address != "10.0.1.2/24" || st.Controller != ctrl.URL ||
		st.Rounds != 1 || !st.ControllerOK || st.MAC != node.MAC("eth0") {
		t.Errorf("net.json: %+v", st)
	}
	if len(st.Trace) != 1 || !strings.Contains(st.Trace[0], "net.toml as written: found "+ctrl.URL) {
		t.Errorf("trace: %q", st.Trace)
	}
	if got := ipv4(t, node, "eth2"); len(got) != 1 || got[0] != "172.16.9.5/24" {
		t.Errorf("none interface eth2 changed: %v", got)
	}
	if got := ipv4(t, node, "eth3"); len(got) != 0 {
		t.Errorf("eth3 is outside --interfaces but got %v", got)
	}
	if out := node.MustOutput("ip", "-o", "link", "show", "eth3"); !strings.Contains(out, "state DOWN") {
		t.Errorf("eth3 outside --interfaces was brought up: %s", out)
	}
	if got := ipv4(t, node, "eth1"); len(got) != 0 {
		t.Errorf("dhcp interface eth1 has addresses without a search: %v", got)
	}
	if b, _ := os.ReadFile(r.resolv); !strings.Contains(string(b), "nameserver 10.0.1.53") {
		t.Errorf("resolv.conf: %q", b)
	}
	if !strings.Contains(r.proc.Output(), "eth3: not in --interfaces") {
		t.Error("skipping eth3 was not logged")
	}
	issue, _ := os.ReadFile(filepath.Join(filepath.Dir(r.stateDir), "issue.d", "g8-netup.issue"))
	if !strings.HasPrefix(string(issue), "g8os net       ready    controller "+ctrl.URL+" via eth0") {
		t.Errorf("console line: %q", issue)
	}
	r.stop(t)
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != "10.0.1.2/24" {
		t.Errorf("SIGTERM did not leave eth0 configured: %v", got)
	}
}

// Static unreachable; DHCP on eth0 gives a lease that leads nowhere, DHCP
// on eth1 (listed by MAC) leads to the controller. eth0 ends exactly as
// net.toml says.
func TestDHCPOnSecondInterface(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, lan, ac := tp.Host("node"), tp.Host("lan"), tp.Host("ac")
	tp.Link(node, "eth0", lan, "eth0")
	tp.Link(node, "eth1", ac, "eth0")
	lan.Addr("eth0", "10.0.1.1/24")
	lanDHCP := lan.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.1.100,10.0.1.150", Mask: "255.255.255.0", Router: "10.0.1.1"})
	ac.Addr("eth0", "10.0.2.1/24")
	ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.100,10.0.2.150", Mask: "255.255.255.0", Router: "10.0.2.1", DNS: "10.0.2.1"})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.2.1"}, Listen: []string{"10.0.2.1:8443"}})

	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[probe]
timeout = "1s"
[dhcp]
timeout = "3s"
[[interface]]
name = "eth0"
addresses = ["192.168.77.2/24"]
gateway = "192.168.77.1"
[[interface]]
mac = "`+node.MAC("eth1")+`"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0,eth1")

	st := r.ready(t, 30*time.Second)
	addr, err := netip.ParsePrefix(st.Address)
	if err != nil || st.Method != "dhcp" || st.Interface != "eth1" || !netip.MustParsePrefix("10.0.2.0/24").Contains(addr.Addr()) ||
		st.DHCPServer != "10.0.2.1" || st.Gateway != "10.0.2.1" || time.Until(st.LeaseUntil) < 30*time.Minute {
		t.Errorf("net.json: %+v", st)
	}
	want := []string{"net.toml as written: no controller answered", "eth0 dhcp: lease 10.0.1.1", "no controller answered",
		"eth1 dhcp: lease 10.0.2.1"}
	trace := strings.Join(st.Trace, "\n")
	for _, w := range want {
		if !strings.Contains(trace, w) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
	// eth0 is back to exactly net.toml: its address, its gateway, nothing from the lease.
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != "192.168.77.2/24" {
		t.Errorf("eth0 addresses %v, want exactly 192.168.77.2/24", got)
	}
	rt := routes(t, node, "eth0")
	if !strings.Contains(rt, "default via 192.168.77.1") || strings.Contains(rt, "10.0.1.") {
		t.Errorf("eth0 routes:\n%s", rt)
	}
	if !strings.Contains(lanDHCP.Proc.Output(), "DHCPRELEASE") {
		t.Error("the unhelpful lease on eth0 was not released")
	}
	if got := ipv4(t, node, "eth1"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("eth1 addresses %v, want %s", got, st.Address)
	}
	if b, _ := os.ReadFile(r.resolv); !strings.Contains(string(b), "nameserver 10.0.2.1") {
		t.Errorf("resolv.conf lacks the lease's DNS: %q", b)
	}
	r.stop(t)
}

// No DHCP anywhere: the node claims a random 10.254.254.X with the
// controller at .254 while a squatter on the same segment holds most of
// the subnet. No chosen address is ever one the squatter holds.
func TestFallbackAvoidsSquatter(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac, sq, sw := tp.Host("node"), tp.Host("ac"), tp.Host("squat"), tp.Host("sw")
	tp.Link(node, "eth0", sw, "p0")
	tp.Link(ac, "eth0", sw, "p1")
	tp.Link(sq, "eth0", sw, "p2")
	sw.Bridge("br0", "p0", "p1", "p2")
	ac.Addr("eth0", "10.254.254.254/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{})
	held := map[string]bool{}
	var squat []string
	for i := 1; i <= 240; i++ {
		a := fmt.Sprintf("10.254.254.%d", i)
		held[a] = true
		squat = append(squat, a+"/24")
	}
	sq.Squat(t, "eth0", squat)

	conf := `
[dhcp]
timeout = "500ms"
[fallback]
max_conflicts = 400
[[interface]]
name = "eth0"
method = "dhcp"
`
	r := startNetup(t, node, conf, ctrl.TrustAnchor, "--interfaces", "eth0")
	st := r.ready(t, 60*time.Second)
	if st.Method != "fallback" || st.Interface != "eth0" || st.Controller != "https://10.254.254.254:8443" {
		t.Errorf("net.json: %+v", st)
	}
	a := strings.TrimSuffix(st.Address, "/24")
	if held[a] || !strings.HasPrefix(a, "10.254.254.") || a == "10.254.254.254" {
		t.Errorf("chose %s", st.Address)
	}
	out := r.proc.Output()
	claimed := regexp.MustCompile(`msg="fallback address claimed".* address=(\S+)`).FindAllStringSubmatch(out, -1)
	conflicts := regexp.MustCompile(`msg="fallback address in use".* address=(\S+) peer=(\S+)`).FindAllStringSubmatch(out, -1)
	if len(claimed) == 0 {
		t.Fatalf("no claim logged:\n%s", out)
	}
	for _, m := range claimed {
		if held[strings.TrimSuffix(m[1], "/24")] {
			t.Errorf("claimed %s, which the squatter holds", m[1])
		}
	}
	for _, m := range conflicts {
		if !held[m[1]] || m[2] != sq.MAC("eth0") {
			t.Errorf("conflict on %s with %s: not the squatter's (%s)", m[1], m[2], sq.MAC("eth0"))
		}
	}
	t.Logf("%d conflicts before claiming %s", len(conflicts), st.Address)
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("node eth0: %v", got)
	}
	r.stop(t)

	// Restarting is idempotent: the old fallback address is not kept
	// beside a new one.
	r2 := startNetup(t, node, conf, ctrl.TrustAnchor, "--interfaces", "eth0")
	st2 := r2.ready(t, 60*time.Second)
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != st2.Address || held[strings.TrimSuffix(st2.Address, "/24")] {
		t.Errorf("after a restart node eth0 holds %v (net.json %s)", got, st2.Address)
	}
	r2.stop(t)
}

// Nothing answers at start; the controller appears 5 s later and is found
// without a restart, with every round visible in STATUS=.
func TestControllerAppearsLater(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	// The trust anchor must exist before the controller serves: init it
	// now, start serving later.
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
	ctrl.Stop()

	// As systemd sets it for WatchdogSec=400ms: pings every 200 ms.
	r := startNetupEnv(t, node, `
controllers = ["https://10.0.1.1:8443"]
[probe]
timeout = "500ms"
[backoff]
initial = "200ms"
max = "1s"
[dhcp]
timeout = "300ms"
[fallback]
enabled = false
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
`, ctrl.TrustAnchor, []string{"WATCHDOG_USEC=400000"}, "--interfaces", "eth0")
	time.Sleep(5 * time.Second)
	if r.notify.Has("READY=1") {
		t.Fatal("READY without a controller")
	}
	// The watchdog is fed while searching, whose rounds and backoff
	// waits are longer than WatchdogSec.
	if n := r.notify.Count("WATCHDOG=1"); n < 10 {
		t.Errorf("%d watchdog pings in 5 s of searching with WatchdogSec=400ms, want about 25", n)
	}
	if _, err := os.Stat(filepath.Join(r.stateDir, "net.json")); err == nil {
		t.Fatal("net.json written without a controller")
	}
	ctrl.Restart(t)
	st := r.ready(t, 10*time.Second)
	if st.Rounds < 3 || st.Method != "static" {
		t.Errorf("net.json: rounds %d method %s", st.Rounds, st.Method)
	}
	statuses := strings.Join(r.notify.Statuses(), "\n")
	for _, w := range []string{"no controller yet (round 1)", "no controller yet (round 2)", "next: round 3 in",
		"tried net.toml as written: no controller answered (https://10.0.1.1:8443:", "controller https://10.0.1.1:8443 via eth0"} {
		if !strings.Contains(statuses, w) {
			t.Errorf("STATUS= never said %q:\n%s", w, statuses)
		}
	}
	if !strings.Contains(r.proc.Output(), `msg="no controller found in this round"`) {
		t.Error("rounds not in the journal/log")
	}
	// One line per failed round: the step's probe error is in the round's
	// line, not logged a second time on its own.
	if out := r.proc.Output(); strings.Contains(out, `msg="no controller answered"`) {
		t.Errorf("a failed probe is logged beside its round's line:\n%s", out)
	}
}

// A controller whose certificate does not chain to the trust anchor is
// never counted as reachable.
func TestWrongTrustAnchorNeverCounts(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
	wrong := filepath.Join(t.TempDir(), "other-ca.pem")
	writeOtherCA(t, wrong)

	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[backoff]
initial = "200ms"
max = "500ms"
[dhcp]
timeout = "300ms"
[fallback]
enabled = false
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
`, wrong, "--interfaces", "eth0")
	// Several rounds, each probing the controller and refusing it.
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(strings.Join(r.notify.Statuses(), "\n"), "no controller yet (round 4)") {
		if r.notify.Has("READY=1") {
			t.Fatal("READY with a controller the trust anchor did not sign")
		}
		if time.Now().After(deadline) {
			t.Fatal("round 4 never started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.notify.Has("READY=1") {
		t.Fatal("READY with a controller the trust anchor did not sign")
	}
	var st state.Net
	if err := state.Read(r.stateDir, &st); !errors.Is(err, state.ErrNotRun) {
		t.Errorf("net.json exists: %v %+v", err, st)
	}
	statuses := strings.Join(r.notify.Statuses(), "\n")
	if !strings.Contains(statuses, "certificate not signed by the trust anchor") || !strings.Contains(statuses, "round 3") {
		t.Errorf("STATUS= does not say why:\n%s", statuses)
	}
}

// With a short T1 the lease is renewed while g8-netup keeps running, and
// net.json follows. The controller is named by host name, resolved through
// the DNS server the lease gives.
func TestLeaseRenewal(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.2.1/24")
	srv := ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.100,10.0.2.150", Mask: "255.255.255.0",
		LeaseTime: "2m", RenewSeconds: 2, DNS: "10.0.2.1"})
	dns := ac.StartDNS(t, "eth0", map[string]string{"ac.g8.test": "10.0.2.1"})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"ac.g8.test"}, Listen: []string{"10.0.2.1:8443"}})
	r := startNetup(t, node, `
controllers = ["https://ac.g8.test:8443"]
[[interface]]
name = "eth0"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0")
	first := r.ready(t, 20*time.Second)
	if first.Method != "dhcp" || first.Controller != "https://ac.g8.test:8443" {
		t.Fatalf("net.json: %+v", first)
	}
	if !strings.Contains(dns.Output(), "query[A] ac.g8.test from 10.0.2.1") {
		t.Errorf("the controller's name was not resolved through the lease's DNS server:\n%s", dns.Output())
	}
	deadline := time.Now().Add(15 * time.Second)
	var st *state.Net
	for time.Now().Before(deadline) {
		st = r.state(t)
		if st.Renewals >= 2 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st.Renewals < 2 {
		t.Fatalf("renewals %d after 15 s with T1 = 2 s", st.Renewals)
	}
	if !st.LeaseUntil.After(first.LeaseUntil) || st.Address != first.Address {
		t.Errorf("lease until %v (was %v), address %s (was %s)", st.LeaseUntil, first.LeaseUntil, st.Address, first.Address)
	}
	if n := srv.Acks(); n < 3 {
		t.Errorf("dnsmasq sent %d ACKs, want the lease and 2 renewals", n)
	}
	if !strings.Contains(r.proc.Output(), `msg="DHCP lease renewed"`) {
		t.Error("renewal not logged")
	}
	r.stop(t)
}

// A server that refuses the renewal (DHCPNAK) takes the lease away: the
// address goes, the search runs again and finds the controller with a new
// lease, READY staying as it was.
func TestLeaseRefusedSearchesAgain(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.2.1/24")
	srv := ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.100,10.0.2.150", Mask: "255.255.255.0", RenewSeconds: 2})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.2.1"}, Listen: []string{"10.0.2.1:8443"}})
	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[[interface]]
name = "eth0"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0")
	first := r.ready(t, 20*time.Second)
	// The network is renumbered: a new authoritative server that never
	// handed out the old address refuses it.
	srv.Proc.Stop()
	srv2 := ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.200,10.0.2.250", Mask: "255.255.255.0", RenewSeconds: 2})
	st := waitState(t, r, 20*time.Second, "a new lease", func(st *state.Net) bool { return st.Searches == 2 && st.Address != first.Address })
	if !strings.HasPrefix(st.Address, "10.0.2.2") || st.Method != "dhcp" || !st.ReadyAt.Equal(first.ReadyAt) {
		t.Errorf("after the NAK: %+v", st)
	}
	if !strings.Contains(srv2.Proc.Output(), "DHCPNAK") {
		t.Errorf("the new server sent no NAK:\n%s", srv2.Proc.Output())
	}
	if !strings.Contains(r.proc.Output(), `msg="DHCP lease lost"`) {
		t.Error("the lost lease was not logged")
	}
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("node eth0 holds %v, want only %s", got, st.Address)
	}
	r.stop(t)
}

// Bad net.toml: refuse to start with exit 3 and an error naming file, line
// and field; `check` says the same.
func TestBadConfigRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "net.toml")
	os.WriteFile(cfg, []byte("controllers = [\"http://ac:80\"]\n[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"\n"), 0o644)
	bin := testenv.Bin(t, "g8-netup")
	for _, args := range [][]string{
		{"--config", cfg, "--state-dir", dir, "--resolv-conf", filepath.Join(dir, "r"), "--interfaces", "none0"},
		{"check", "--config", cfg},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("%v: %v, want exit 3\n%s", args, err, out)
		}
		for _, w := range []string{cfg + ":1: controllers[0]: \"http://ac:80\" is not an https URL", cfg + ":5: interface[1].name: interface \"eth0\" listed twice"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("%v: output lacks %q:\n%s", args, w, out)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "net.json")); err == nil {
		t.Error("net.json written for a refused config")
	}
}

// A controller given by host name is resolved through the name servers in
// net.toml (not the host's resolv.conf, which g8-netup may be rewriting),
// and its certificate is checked against that name.
func TestControllerByHostName(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	dns := ac.StartDNS(t, "eth0", map[string]string{"ac.g8.test": "10.0.1.1"})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"ac.g8.test"}, Listen: []string{"10.0.1.1:8443"}})
	r := startNetup(t, node, `
controllers = ["https://ac.g8.test:8443"]
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
dns = ["10.0.1.1"]
`, ctrl.TrustAnchor, "--interfaces", "eth0")
	st := r.ready(t, 15*time.Second)
	t.Logf("READY after %s", st.Took)
	if st.Controller != "https://ac.g8.test:8443" || st.Interface != "eth0" || len(st.DNS) != 1 || st.DNS[0] != "10.0.1.1" {
		t.Errorf("net.json: %+v", st)
	}
	if !strings.Contains(dns.Output(), "query[A] ac.g8.test from 10.0.1.2") {
		t.Errorf("the name was not resolved through net.toml's server:\n%s", dns.Output())
	}
	r.stop(t)
}

// A link that vanishes in the middle of its DHCP step is logged and
// skipped; the search goes on with the next interface.
func TestLinkVanishesMidSearch(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, lan, ac := tp.Host("node"), tp.Host("lan"), tp.Host("ac")
	tp.Link(node, "eth0", lan, "eth0")
	tp.Link(node, "eth1", ac, "eth0")
	ac.Addr("eth0", "10.0.2.1/24")
	ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.100,10.0.2.150", Mask: "255.255.255.0"})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.2.1"}, Listen: []string{"10.0.2.1:8443"}})
	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[dhcp]
timeout = "3s"
[[interface]]
name = "eth0"
[[interface]]
name = "eth1"
`, ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.Join(r.notify.Statuses(), "\n"), "then eth0 dhcp") {
		if time.Now().After(deadline) {
			t.Fatal("never started DHCP on eth0")
		}
		time.Sleep(10 * time.Millisecond)
	}
	node.MustRun("ip", "link", "del", "eth0")
	st := r.ready(t, 20*time.Second)
	if st.Interface != "eth1" || st.Method != "dhcp" {
		t.Errorf("net.json: %+v", st)
	}
	if !strings.Contains(strings.Join(st.Trace, "\n"), "eth0 dhcp: no lease") {
		t.Errorf("trace: %q", st.Trace)
	}
	if !strings.Contains(r.proc.Output(), "interface left alone") {
		t.Error("the vanished link was not logged")
	}
	r.stop(t)
}

// quickRecheck is a net.toml with eth0 static at 10.0.1.2/24, no fallback,
// and the controller re-checked every 200 ms (lost after 3 failures).
func quickRecheck(controllers ...string) string {
	return `controllers = ["` + strings.Join(controllers, `", "`) + `"]
[probe]
timeout = "500ms"
recheck = "200ms"
lost_after = 3
[backoff]
initial = "200ms"
max = "500ms"
[fallback]
enabled = false
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
dhcp = false
`
}

// After READY the controller is re-checked; when it stops answering
// net.json says so, the address in use stays while the other links are
// searched, and the controller is found again when it is back.
func TestControllerLostAndFoundAgain(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
	r := startNetup(t, node, quickRecheck(ctrl.URL), ctrl.TrustAnchor, "--interfaces", "eth0")
	first := r.ready(t, 15*time.Second)
	ctrl.Stop()
	waitState(t, r, 10*time.Second, "controller_ok false", func(st *state.Net) bool { return !st.ControllerOK && st.CheckFailures >= 1 })
	waitStatus(t, r, 10*time.Second, "controller lost, keeping eth0 static 10.0.1.2/24; no controller yet (round 2)")
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != "10.0.1.2/24" {
		t.Errorf("eth0 holds %v during the outage, want 10.0.1.2/24", got)
	}
	ctrl.Restart(t)
	st := waitState(t, r, 15*time.Second, "found again", func(st *state.Net) bool { return st.Searches == 2 && st.ControllerOK })
	if !st.ReadyAt.Equal(first.ReadyAt) || st.Took != first.Took || st.Method != "static" || st.Address != "10.0.1.2/24" {
		t.Errorf("after the controller came back: %+v; want ready_at and took of the first READY (%v, %s)", st, first.ReadyAt, first.Took)
	}
	waitStatus(t, r, 5*time.Second, "controller "+ctrl.URL+" via eth0 (static 10.0.1.2/24); last check ok")
	for _, w := range []string{`msg="controller check failed"`, `msg="controller lost; keeping the address in use while searching the other links"`} {
		if !strings.Contains(r.proc.Output(), w) {
			t.Errorf("log lacks %s", w)
		}
	}
	r.stop(t)
}

// Two controllers of one fleet on the node's LAN: whichever answers first
// is used; when it dies the other one becomes the controller in use
// without a new search (the address and routes stay as they are), and
// net.json lists both for the phases that fail over by themselves.
func TestControllerSwitchWithoutSearch(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	ac.Addr("eth0", "10.0.1.3/24")
	a := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1", "10.0.1.3"}, Listen: []string{"10.0.1.1:8443"}})
	b := a.Peer(t, ac, "10.0.1.3:8443")
	r := startNetup(t, node, quickRecheck(a.URL, b.URL), a.TrustAnchor, "--interfaces", "eth0")
	st := r.ready(t, 15*time.Second)
	used, other := a, b
	if st.Controller == b.URL {
		used, other = b, a
	}
	if want := []string{used.URL, other.URL}; !slices.Equal(st.ControllerList(), want) {
		t.Errorf("net.json controllers = %q, want %q", st.ControllerList(), want)
	}
	used.Kill(t)
	st = waitState(t, r, 10*time.Second, "the other controller in use", func(st *state.Net) bool { return st.Controller == other.URL })
	if want := []string{other.URL, used.URL}; !slices.Equal(st.ControllerList(), want) || !st.ControllerOK || st.Searches != 1 {
		t.Errorf("after the switch: controllers %q, ok %v, searches %d", st.ControllerList(), st.ControllerOK, st.Searches)
	}
	if !strings.Contains(r.proc.Output(), "switched to another on the same network") {
		t.Error("the switch was not logged")
	}
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != "10.0.1.2/24" {
		t.Errorf("eth0 after the switch: %v", got)
	}
	r.stop(t)
}

// A controller outage does not take the node off its LAN: the leased
// address stays, is renewed and answers TCP (HTTP) from the LAN (the
// management path left while the controller is away) for the whole
// outage, much longer than probe.lost_after re-checks; when the
// controller is back it is found again on the same address.
func TestControllerOutageKeepsTheAddress(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq", "curl", "python3")
	tp := testenv.NewTopology(t)
	node, lan := tp.Host("node"), tp.Host("lan")
	tp.Link(node, "eth0", lan, "eth0")
	lan.Addr("eth0", "10.0.1.1/24")
	dhcp := lan.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.1.100,10.0.1.150", Mask: "255.255.255.0", LeaseTime: "2m", RenewSeconds: 2})
	ctrl := testenv.StartController(t, lan, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[probe]
timeout = "500ms"
recheck = "200ms"
lost_after = 3
[backoff]
initial = "200ms"
max = "500ms"
[[interface]]
name = "eth0"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0")
	first := r.ready(t, 15*time.Second)
	addr := strings.TrimSuffix(first.Address, "/24")
	if first.Method != "dhcp" || !strings.HasPrefix(addr, "10.0.1.") {
		t.Fatalf("net.json: %+v", first)
	}
	web := node.Start("python3", "-m", "http.server", "--bind", addr, "8080")
	web.WaitOutput(t, "Serving HTTP", 20*time.Second)

	ctrl.Stop()
	acks := dhcp.Acks()
	waitStatus(t, r, 10*time.Second, "controller lost, keeping eth0 dhcp "+first.Address)
	// Five seconds of outage: 25 failed re-checks, several search rounds.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != first.Address {
			t.Fatalf("eth0 holds %v during the outage, want %s", got, first.Address)
		}
		if out, err := lan.Run("curl", "-sf", "--max-time", "2", "-o", "/dev/null", "http://"+addr+":8080/"); err != nil {
			t.Fatalf("the node does not answer TCP from its LAN during the outage: %v\n%s", err, out)
		}
	}
	if st := r.state(t); st.ControllerOK || st.CheckFailures < 10 || st.Address != first.Address {
		t.Errorf("net.json during the outage: %+v", st)
	}
	if dhcp.Acks() < acks+2 {
		t.Errorf("%d DHCPACKs during 5 s of outage with T1 = 2 s: the lease was not renewed", dhcp.Acks()-acks)
	}
	if strings.Contains(dhcp.Proc.Output(), "DHCPRELEASE") {
		t.Errorf("the lease was released during the outage:\n%s", dhcp.Proc.Output())
	}

	ctrl.Restart(t)
	st := waitState(t, r, 15*time.Second, "found again", func(st *state.Net) bool { return st.ControllerOK })
	if st.Address != first.Address || st.Method != "dhcp" || st.Searches != 2 || !st.ReadyAt.Equal(first.ReadyAt) {
		t.Errorf("after the outage: %+v", st)
	}
	waitStatus(t, r, 5*time.Second, "controller "+ctrl.URL+" via eth0 (dhcp "+first.Address+")")
	r.stop(t)
}

// The address kept through an outage is given up only for a configuration
// that reaches a controller: here the controller leaves the LAN but still
// answers on the fallback link, so the node moves there and releases its
// lease.
func TestControllerOutageReplacedByAnotherNetwork(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	tp.Link(node, "eth1", ac, "eth1")
	ac.Addr("eth0", "10.0.1.2/24")
	ac.Addr("eth0", "10.0.1.1/24")
	ac.Addr("eth1", "10.254.254.254/24")
	// Each address answers ARP only on its own link.
	ac.MustRun("sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore")
	dhcp := ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.1.100,10.0.1.150", Mask: "255.255.255.0"})
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1", "10.254.254.254"}, Listen: []string{"0.0.0.0:8443"}})
	r := startNetup(t, node, `
controllers = ["https://10.0.1.1:8443"]
[probe]
timeout = "500ms"
recheck = "200ms"
lost_after = 3
[backoff]
initial = "200ms"
max = "500ms"
[dhcp]
timeout = "1s"
[[interface]]
name = "eth0"
method = "dhcp"
[[interface]]
name = "eth1"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	first := r.ready(t, 15*time.Second)
	if first.Method != "dhcp" || first.Interface != "eth0" {
		t.Fatalf("net.json: %+v", first)
	}
	ac.MustRun("ip", "addr", "del", "10.0.1.1/24", "dev", "eth0") // the controller leaves the LAN
	st := waitState(t, r, 20*time.Second, "the fallback link in use", func(st *state.Net) bool { return st.Method == "fallback" && st.ControllerOK })
	if st.Interface != "eth1" || st.Controller != "https://10.254.254.254:8443" || st.Searches != 2 || !st.ReadyAt.Equal(first.ReadyAt) {
		t.Errorf("after the move: %+v", st)
	}
	if got := ipv4(t, node, "eth0"); len(got) != 0 {
		t.Errorf("eth0 still holds %v after the move", got)
	}
	if !strings.Contains(dhcp.Proc.Output(), "DHCPRELEASE(eth0) "+strings.TrimSuffix(first.Address, "/24")) {
		t.Errorf("the lease given up was not released:\n%s", dhcp.Proc.Output())
	}
	if out := r.proc.Output(); !strings.Contains(out, `msg="another network leads to a controller; giving up the one kept"`) {
		t.Errorf("the move was not logged:\n%s", out)
	}
	r.stop(t)
}

// RFC 5227 defence end to end: another host takes the node's fallback
// address twice within the defend interval; the node defends once, then
// retreats, claims another address and reaches the controller again.
func TestFallbackDefendsThenRetreats(t *testing.T) {
	testenv.RequireRoot(t, "arping")
	tp := testenv.NewTopology(t)
	node, ac, rogue, sw := tp.Host("node"), tp.Host("ac"), tp.Host("rogue"), tp.Host("sw")
	tp.Link(node, "eth0", sw, "p0")
	tp.Link(ac, "eth0", sw, "p1")
	tp.Link(rogue, "eth0", sw, "p2")
	sw.Bridge("br0", "p0", "p1", "p2")
	ac.Addr("eth0", "10.254.254.254/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{})
	r := startNetup(t, node, "[[interface]]\nname = \"eth0\"\ndhcp = false\n", ctrl.TrustAnchor, "--interfaces", "eth0")
	first := r.ready(t, 20*time.Second)
	if first.Method != "fallback" {
		t.Fatalf("net.json: %+v", first)
	}
	taken := strings.TrimSuffix(first.Address, "/24")
	// The rogue host takes the address and announces it, twice, 1 s apart.
	rogue.Addr("eth0", first.Address)
	rogue.MustRun("arping", "-U", "-c", "2", "-I", "eth0", taken)
	st := waitState(t, r, 15*time.Second, "a new address", func(st *state.Net) bool { return st.Searches == 2 && st.Address != first.Address })
	if st.Method != "fallback" || !st.ControllerOK {
		t.Errorf("after retreat: %+v", st)
	}
	out := r.proc.Output()
	for _, w := range []string{`msg="fallback address defended"`, `msg="fallback address lost"`} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %s", w)
		}
	}
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != st.Address {
		t.Errorf("node eth0 holds %v, want only %s", got, st.Address)
	}
	r.stop(t)
}

func waitState(t *testing.T, r *netupRun, timeout time.Duration, what string, ok func(*state.Net) bool) *state.Net {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var st state.Net
		if err := state.Read(r.stateDir, &st); err == nil && ok(&st) {
			return &st
		}
		if time.Now().After(deadline) {
			t.Fatalf("net.json never showed %s within %v: %+v", what, timeout, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitStatus(t *testing.T, r *netupRun, timeout time.Duration, sub string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(strings.Join(r.notify.Statuses(), "\n"), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("STATUS= never said %q", sub)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeOtherCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not the controller's CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// `g8-netup check` prints the plan in order without touching anything.
func TestCheckPrintsThePlan(t *testing.T) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testenv.Bin(t, "g8-netup"), "check", "--config", filepath.Join(root, "packaging/net.toml.example"),
		"--trust-anchor", "/nonexistent/ca.pem", "--interfaces", "eth0,ovs0").CombinedOutput()
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	s := string(out)
	order := []string{
		"packaging/net.toml.example: valid",
		"trust anchor: /nonexistent/ca.pem (warning: not readable here",
		"eth0: link up, addresses 192.0.2.50/24, gateway 192.0.2.1, mtu 1500, dns 192.0.2.1",
		"ovs0: link up only, never touched by the search",
		"en*: each link whose name matches (unless listed by name or mac): link up, address by DHCP during the search",
		"1. apply net.toml as written, probe https://ac.example.net:8443, https://192.0.2.10:8443",
		"2. DHCP on eth0",
		// A MAC entry cannot be matched against --interfaces before boot,
		// so it stays in the plan.
		"3. DHCP on mac 52:54:00:12:34:56",
		"4. DHCP on each link matching en* in turn",
		"5. fallback on eth0: random address in 10.254.254.0/24",
		"probe https://10.254.254.254:8443",
		"7. fallback on each link matching en* in turn",
		"then wait 1s, doubling up to 30s",
	}
	at := 0
	for _, w := range order {
		i := strings.Index(s[at:], w)
		if i < 0 {
			t.Fatalf("check output lacks %q (in order):\n%s", w, s)
		}
		at += i
	}
	if strings.Contains(s, "8. ") {
		t.Errorf("more steps than interfaces allow:\n%s", s)
	}
}

// The net.toml the package ships, unchanged, on a node whose links it does
// not name: the search tries DHCP on every link its patterns match (enp7s0,
// whose LAN has no DHCP server, then eth3), finds the controller as g8-ac
// through the lease's name server, and never touches wg0, which no pattern
// matches.
func TestShippedDefaultFindsUnnamedInterface(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq")
	tp := testenv.NewTopology(t)
	node, quiet, lan, vpn := tp.Host("node"), tp.Host("quiet"), tp.Host("lan"), tp.Host("vpn")
	tp.Link(node, "enp7s0", quiet, "eth0")
	tp.Link(node, "eth3", lan, "eth0")
	tp.Link(node, "wg0", vpn, "eth0")
	node.MustRun("ip", "link", "set", "wg0", "down")
	lan.Addr("eth0", "10.0.3.1/24")
	dhcp := lan.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.3.100,10.0.3.150", Mask: "255.255.255.0", Router: "10.0.3.1", DNS: "10.0.3.1"})
	dns := lan.StartDNS(t, "eth0", map[string]string{"g8-ac": "10.0.3.1"})
	ctrl := testenv.StartController(t, lan, testenv.ControllerOptions{Names: []string{"g8-ac"}, Listen: []string{"10.0.3.1:8443"}})
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile(filepath.Join(root, "packaging/net.toml"))
	if err != nil {
		t.Fatal(err)
	}
	r := startNetup(t, node, string(shipped), ctrl.TrustAnchor)

	st := r.ready(t, 45*time.Second)
	t.Logf("READY after %s:\n%s", st.Took, strings.Join(st.Trace, "\n"))
	addr, err := netip.ParsePrefix(st.Address)
	if err != nil || st.Method != "dhcp" || st.Interface != "eth3" || st.Controller != "https://g8-ac:8443" ||
		!netip.MustParsePrefix("10.0.3.0/24").Contains(addr.Addr()) || st.DHCPServer != "10.0.3.1" {
		t.Errorf("net.json: %+v", st)
	}
	trace := strings.Join(st.Trace, "\n")
	for _, w := range []string{"net.toml as written: no controller answered", "enp7s0 dhcp: no lease", "eth3 dhcp: lease 10.0.3.1", "found https://g8-ac:8443"} {
		if !strings.Contains(trace, w) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
	if !strings.Contains(dhcp.Proc.Output(), "DHCPACK(eth0) "+addr.Addr().String()) {
		t.Errorf("the lease did not come from the LAN's server:\n%s", dhcp.Proc.Output())
	}
	if !strings.Contains(dns.Output(), "query[A] g8-ac from "+addr.Addr().String()) {
		t.Errorf("g8-ac was not resolved through the lease's name server:\n%s", dns.Output())
	}
	if out := node.MustOutput("ip", "-o", "link", "show", "enp7s0"); !strings.Contains(out, "state UP") {
		t.Errorf("enp7s0, matched by en*, was not brought up: %s", out)
	}
	if got := ipv4(t, node, "wg0"); len(got) != 0 {
		t.Errorf("wg0 matches no pattern but got %v", got)
	}
	if out := node.MustOutput("ip", "-o", "link", "show", "wg0"); !strings.Contains(out, "state DOWN") {
		t.Errorf("wg0 matches no pattern but was brought up: %s", out)
	}
	r.stop(t)
}

// One link listed twice, by name and by MAC: neither entry is applied
// (the second used to remove the first's address silently) and the log
// says why; the search goes on with the other links.
func TestLinkListedTwiceIsLeftAlone(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac := tp.Host("node"), tp.Host("ac")
	tp.Link(node, "eth0", ac, "eth0")
	tp.Link(node, "eth1", ac, "eth1")
	ac.Addr("eth0", "10.0.1.1/24")
	ac.Addr("eth1", "10.0.2.1/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.2.1"}, Listen: []string{"10.0.2.1:8443"}})
	r := startNetup(t, node, `
controllers = ["`+ctrl.URL+`"]
[fallback]
enabled = false
[[interface]]
name = "eth0"
addresses = ["10.0.1.2/24"]
[[interface]]
mac = "`+node.MAC("eth0")+`"
addresses = ["10.0.1.3/24"]
[[interface]]
name = "eth1"
addresses = ["10.0.2.2/24"]
`, ctrl.TrustAnchor, "--interfaces", "eth0,eth1")
	if st := r.ready(t, 20*time.Second); st.Interface != "eth1" {
		t.Errorf("net.json: %+v", st)
	}
	if got := ipv4(t, node, "eth0"); len(got) != 0 {
		t.Errorf("eth0 addresses %v: an entry of a link listed twice was applied", got)
	}
	if out := r.proc.Output(); !strings.Contains(out, "eth0: listed twice in net.toml (line 5 by name, line 8 by mac") {
		t.Errorf("log does not say eth0 is listed twice:\n%s", out)
	}
	r.stop(t)
}

// DHCP is not tried on a link without carrier: the round says so at once
// instead of waiting out the DHCP timeout.
func TestNoDHCPWithoutCarrier(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, dark := tp.Host("node"), tp.Host("dark")
	tp.Link(node, "eth0", dark, "eth0")
	dark.MustRun("ip", "link", "set", "eth0", "down") // the cable is out
	ctrl := testenv.StartController(t, nil, testenv.ControllerOptions{})
	r := startNetup(t, node, `
controllers = ["https://10.0.9.9:8443"]
[probe]
timeout = "200ms"
[dhcp]
timeout = "10s"
[backoff]
initial = "100ms"
max = "200ms"
[fallback]
enabled = false
[[interface]]
name = "eth0"
method = "dhcp"
`, ctrl.TrustAnchor, "--interfaces", "eth0")
	start := time.Now()
	waitStatus(t, r, 15*time.Second, "no controller yet (round 2)")
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("round 1 took %v: DHCP waited out its 10 s timeout on a link without carrier", took)
	}
	if s := strings.Join(r.notify.Statuses(), "\n"); !strings.Contains(s, "eth0 dhcp: no carrier") {
		t.Errorf("STATUS= never said eth0 has no carrier:\n%s", s)
	}
	r.stop(t)
}
