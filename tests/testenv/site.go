package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Site is the end-to-end topology: one node with two interfaces, the real
// controller, and a DHCP server.
//
//	node eth0 ── lan (bridge br0 10.0.0.2/24, dnsmasq) ── ac eth0 10.0.0.1/24
//	node eth1 ─────────────────────────────────────────── ac eth1 10.254.254.254/24
//
// eth0 is the site's LAN (static or DHCP); eth1 leads only to the fallback
// subnet, where the controller also answers.
type Site struct {
	Topo   *Topology
	Node   *Host
	LAN    *Host // switch and DHCP server
	ACHost *Host
	AC     *Controller // nil until StartController
	DHCP   *Process    // nil until StartDHCP
	t      testing.TB
	ports  int // LAN bridge ports of AddNode's nodes
}

// Addresses of the site.
const (
	SiteACAddr       = "10.0.0.1"
	SiteStaticAddr   = "10.0.0.5/24"
	SiteFallbackAC   = "10.254.254.254"
	SiteDHCPFirst    = "10.0.0.100"
	SiteDHCPLast     = "10.0.0.150"
	SiteControllerOn = "https://10.0.0.1:8443"
)

// NewSite builds the topology; the controller and the DHCP server are
// started separately so tests can boot a node before they are up.
func NewSite(t testing.TB) *Site {
	t.Helper()
	tp := NewTopology(t)
	s := &Site{Topo: tp, t: t}
	s.Node = tp.Host("node")
	s.LAN = tp.Host("lan")
	s.ACHost = tp.Host("ac")
	tp.Link(s.Node, "eth0", s.LAN, "n0")
	tp.Link(s.ACHost, "eth0", s.LAN, "a0")
	tp.Link(s.Node, "eth1", s.ACHost, "eth1")
	s.LAN.Bridge("br0", "n0", "a0")
	s.LAN.Addr("br0", "10.0.0.2/24")
	s.ACHost.Addr("eth0", SiteACAddr+"/24")
	s.ACHost.Addr("eth1", SiteFallbackAC+"/24")
	// Answer ARP only on the interface that holds the address, so the
	// fallback controller is reachable on eth1's link alone (Linux answers
	// for any local address on any link by default).
	s.ACHost.MustRun("sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore")
	return s
}

// StartController starts the real g8-ac in the controller's namespace,
// serving on both of its networks. Calling it again after AC.Stop restarts
// the same controller.
func (s *Site) StartController() *Controller {
	s.t.Helper()
	if s.AC != nil {
		s.AC.Restart(s.t)
		return s.AC
	}
	s.AC = StartController(s.t, s.ACHost, ControllerOptions{
		Names:  []string{SiteACAddr, SiteFallbackAC},
		Listen: []string{"0.0.0.0:8443"},
	})
	return s.AC
}

// StartDHCP runs dnsmasq as the LAN's DHCP server (no DNS: --port=0).
func (s *Site) StartDHCP() *Process {
	s.t.Helper()
	RequireRoot(s.t, "dnsmasq")
	leases := filepath.Join(s.t.TempDir(), "leases")
	s.DHCP = s.LAN.Start("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "--no-ping", "--log-dhcp",
		"--dhcp-range="+SiteDHCPFirst+","+SiteDHCPLast+",255.255.255.0,1h",
		"--dhcp-leasefile="+leases)
	s.DHCP.WaitOutput(s.t, "DHCP, IP range", 10*time.Second)
	return s.DHCP
}

// AddNode adds one more node host to the site's LAN (eth0 only: no link
// to the fallback subnet), for tests of several nodes under one
// controller; boot it with a NodeRoot whose NetConfig.Addr is its own.
func (s *Site) AddNode(name string) *Host {
	s.t.Helper()
	s.ports++
	port := fmt.Sprintf("x%d", s.ports)
	h := s.Topo.Host(name)
	s.Topo.Link(h, "eth0", s.LAN, port)
	s.LAN.MustRun("ip", "link", "set", port, "master", "br0")
	return h
}

// NetConfig is the node's net.toml for one path to the controller.
type NetConfig struct {
	// Static gives eth0 SiteStaticAddr (or Addr); otherwise eth0 and eth1
	// use DHCP and then the fallback subnet.
	Static bool
	// Addr is eth0's static address (CIDR) instead of SiteStaticAddr: a
	// node of AddNode's.
	Addr string
	// Extra is appended verbatim.
	Extra string
	// MACs, when set, match eth0 and eth1 by hardware address instead of
	// by name (a VM's links are named by udev: enp0s2, ...).
	MACs []string
	// Slow scales the probe and DHCP timeouts, which suit a container one
	// veth hop away, for a node that is slow itself (a VM under emulation).
	Slow int
}

// match is the net.toml key that picks link i (0: eth0, 1: eth1).
func (c NetConfig) match(i int) string {
	if len(c.MACs) > i {
		return fmt.Sprintf("mac = %q", c.MACs[i])
	}
	return fmt.Sprintf("name = \"eth%d\"", i)
}

// TOML renders the net.toml. Timeouts are short because every peer is one
// veth hop away.
func (c NetConfig) TOML() string {
	var b strings.Builder
	scale := max(c.Slow, 1)
	fmt.Fprintf(&b, "controllers = [%q]\n\n[probe]\ntimeout = \"%ds\"\nrecheck = \"5s\"\n", SiteControllerOn, scale)
	fmt.Fprintf(&b, "\n[dhcp]\ntimeout = \"%ds\"\n\n[backoff]\ninitial = \"1s\"\nmax = \"2s\"\n\n", 2*scale)
	if c.Static {
		addr := SiteStaticAddr
		if c.Addr != "" {
			addr = c.Addr
		}
		fmt.Fprintf(&b, "[[interface]]\n%s\nmethod = \"static\"\naddresses = [%q]\n\n", c.match(0), addr)
	} else {
		fmt.Fprintf(&b, "[[interface]]\n%s\nmethod = \"dhcp\"\n\n", c.match(0))
	}
	fmt.Fprintf(&b, "[[interface]]\n%s\nmethod = \"dhcp\"\n", c.match(1))
	b.WriteString(c.Extra)
	return b.String()
}

// NodeRoot makes the node's root: the package installed, net.toml, the
// controller's trust anchor (the controller must have been started once)
// and g8os.target enabled, as an image for this site would be.
func (s *Site) NodeRoot(cfg NetConfig) *NodeRoot {
	s.t.Helper()
	if s.AC == nil {
		s.t.Fatal("site: start the controller before making a node root (the image ships its trust anchor)")
	}
	r := NewNodeRoot(s.t)
	ca, err := os.ReadFile(s.AC.TrustAnchor)
	if err != nil {
		s.t.Fatal(err)
	}
	r.WriteFile("etc/g8os/ac-ca.pem", ca, 0o644)
	r.WriteFile("etc/g8os/net.toml", []byte(cfg.TOML()), 0o644)
	r.Enable("g8os.target")
	return r
}

// OperatorKey makes an SSH key pair and authorizes it on every node through
// the controller (g8-ac ssh-key add); it returns the private key's path.
func (s *Site) OperatorKey() string {
	s.t.Helper()
	RequireRoot(s.t, "ssh-keygen", "ssh")
	key := filepath.Join(s.t.TempDir(), "operator")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@g8os-e2e", "-f", key).CombinedOutput(); err != nil {
		s.t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	s.AC.AddSSHKey(s.t, key+".pub")
	return key
}

// SSH runs a command on the node as root over SSH from the LAN (outside the
// machine), with the OpenSSH client and the operator's key.
func (s *Site) SSH(key, addr string, command ...string) (string, error) {
	args := []string{"-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
		"root@" + addr, "--"}
	return s.LAN.Run("ssh", append(args, command...)...)
}

// PublishSandbox chunks dir into the controller's content store with the
// real g8-fs build and makes it the node's only sandbox, mounted at
// mountpoint (the controller pushes fs.toml to /mnt/etc/g8os/fs.toml).
// It returns the flist reference (blake3:<hex>).
func (s *Site) PublishSandbox(name, dir, mountpoint string) string {
	s.t.Helper()
	flist := filepath.Join(s.t.TempDir(), name+".flist")
	out, err := exec.Command(Bin(s.t, "g8-fs"), "build", "--store", filepath.Join(s.AC.DataDir, "store"), "-o", flist, dir).CombinedOutput()
	if err != nil {
		s.t.Fatalf("g8-fs build %s: %v: %s", dir, err, out)
	}
	var ref string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "blake3:") {
			ref = f
		}
	}
	if ref == "" {
		s.t.Fatalf("g8-fs build printed no flist reference:\n%s", out)
	}
	s.AC.SetConfig(s.t, "g8os/fs.toml", []byte(fmt.Sprintf("[[sandbox]]\nname = %q\nflist = %q\nmountpoint = %q\n", name, ref, mountpoint)))
	return ref
}

// Nodes is `g8-ac node list --json`.
func (s *Site) Nodes() []NodeView {
	s.t.Helper()
	var ns []NodeView
	if err := json.Unmarshal([]byte(s.AC.CLI(s.t, "node", "list", "--json")), &ns); err != nil {
		s.t.Fatalf("g8-ac node list --json: %v", err)
	}
	return ns
}

// NodeView is the part of the controller's node record the tests read.
type NodeView struct {
	ID       string     `json:"id"`
	State    string     `json:"state"`
	MACs     []string   `json:"macs"`
	LastSeen *time.Time `json:"last_seen"`
	LastAddr string     `json:"last_addr"`
	BootID   string     `json:"boot_id"`
	Status   *struct {
		Units  map[string]string `json:"units"`
		Phases map[string]string `json:"phases"`
	} `json:"status"`
}
