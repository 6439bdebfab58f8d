// Package e2e boots the project's pacman package with real systemd: a
// debootstrapped Debian root with the package installed by pacman, booted
// under systemd-nspawn inside a network-namespace site with the real
// controller and a real DHCP server (tests/testenv). Assertions go through
// systemctl/journalctl inside the machine and through the network from
// outside it. Root only; skipped with a message otherwise.
package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// issueLine is what the login prompt shows for a phase (through the
// /etc/issue.d link, as agetty reads it).
func issueLine(t *testing.T, m *testenv.Machine, link string) string {
	t.Helper()
	out, err := m.Exec("cat", "/etc/issue.d/"+link)
	if err != nil {
		t.Fatalf("console line %s: %v", link, err)
	}
	return strings.TrimSpace(out)
}

func TestNetupReachesTheControllerOnEveryPath(t *testing.T) {
	testenv.RequireRoot(t, "systemd-nspawn", "dnsmasq")
	cases := []struct {
		name   string
		cfg    testenv.NetConfig
		dhcp   bool
		method string
		iface  string
		addr   string // prefix of the address net.json must hold
		ctrl   string
	}{
		{"static", testenv.NetConfig{Static: true}, false, "static", "eth0", testenv.SiteStaticAddr, testenv.SiteControllerOn},
		{"dhcp", testenv.NetConfig{}, true, "dhcp", "eth0", "10.0.0.1", testenv.SiteControllerOn},
		// No DHCP server: eth0 and eth1 get no lease, eth0's fallback
		// address finds no controller, eth1's does.
		{"fallback", testenv.NetConfig{}, false, "fallback", "eth1", "10.254.254.", "https://10.254.254.254:8443"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			site := testenv.NewSite(t)
			site.StartController()
			if c.dhcp {
				site.StartDHCP()
			}
			root := site.NodeRoot(c.cfg)
			m := site.Node.Boot(root)
			p := m.MustWaitUnit("g8-netup.service", "active", 60*time.Second)
			if p["NRestarts"] != "0" {
				t.Errorf("g8-netup restarted %s times", p["NRestarts"])
			}
			var n state.Net
			testenv.ReadState(t, m, &n)
			if n.Method != c.method || n.Interface != c.iface || !strings.HasPrefix(n.Address, c.addr) || n.Controller != c.ctrl {
				t.Errorf("net.json: method %q iface %q address %q controller %q; want %s %s %s* %s",
					n.Method, n.Interface, n.Address, n.Controller, c.method, c.iface, c.addr, c.ctrl)
			}
			// The node holds the address it reported, seen from outside:
			// the controller's side of the link answers for it.
			ip := strings.Split(n.Address, "/")[0]
			peer, dev := site.LAN, "br0"
			if c.iface == "eth1" {
				peer, dev = site.ACHost, "eth1"
			}
			if out, err := peer.Run("arping", "-c1", "-w2", "-I", dev, ip); err != nil {
				t.Errorf("node's %s address %s unreachable from outside: %v\n%s", c.iface, ip, err, out)
			}
			line := issueLine(t, m, "41-g8-netup.issue")
			if !strings.Contains(line, n.Address) || !strings.Contains(line, c.method) {
				t.Errorf("console line %q does not show %s via %s", line, n.Address, c.method)
			}
		})
	}
}

// Scenario 3: the controller is down when the node boots. g8-netup stays
// activating and says why, nothing after it starts; once the controller is
// up the whole chain completes without any unit being restarted.
func TestControllerDownAtBootThenUp(t *testing.T) {
	site := newChainSite(t, false)
	root := site.NodeRoot(testenv.NetConfig{Static: true})
	site.AC.Stop()
	m := site.Node.Boot(root)
	deadline := time.Now().Add(30 * time.Second)
	var p map[string]string
	for {
		// STATUS changes with every step of the search; wait for one that
		// says there is no controller yet and names the one it tried.
		p = m.Show("g8-netup.service", "ActiveState", "StatusText", "MainPID")
		if strings.Contains(p["StatusText"], "no controller yet") && strings.Contains(p["StatusText"], testenv.SiteControllerOn) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("g8-netup never said why it waits, naming %s: %v\n%s", testenv.SiteControllerOn, p, m.Journal("g8-netup.service"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p["ActiveState"] != "activating" {
		t.Errorf("g8-netup is %s while no controller answers, want activating", p["ActiveState"])
	}
	// g8-netup mirrors every STATUS= into its console line.
	for line := ""; !strings.Contains(line, "no controller yet"); {
		if time.Now().After(deadline) {
			t.Fatalf("console line does not say why the node waits: %q", line)
		}
		time.Sleep(200 * time.Millisecond)
		line = issueLine(t, m, "41-g8-netup.issue")
	}
	for _, u := range testenv.ChainUnits[1:] {
		if st := m.Show(u, "ActiveState")["ActiveState"]; st != "inactive" {
			t.Errorf("%s is %s before the network phase is ready", u, st)
		}
	}
	pid := p["MainPID"]
	site.StartController()
	props := testenv.WaitChain(t, m)
	if a := props["g8-netup.service"]; a["ExecMainPID"] != pid {
		t.Errorf("g8-netup's pid changed %s -> %s; it should have gone on by itself", pid, a["ExecMainPID"])
	}
	for u, p := range props {
		if p["NRestarts"] != "0" {
			t.Errorf("%s was restarted %s times; the chain should complete by itself", u, p["NRestarts"])
		}
	}
	site.operatorCanWork(t, strings.Split(testenv.SiteStaticAddr, "/")[0])
}
