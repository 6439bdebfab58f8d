package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// DHCPOptions configure a DHCP server. Range and Mask are required.
type DHCPOptions struct {
	Range     string // "10.0.1.100,10.0.1.150"
	Mask      string // "255.255.255.0"
	LeaseTime string // dnsmasq syntax, "2m" minimum (dnsmasq's floor); default "1h"
	Router    string // option 3; none when empty
	DNS       string // option 6; none when empty
	// RenewSeconds sets option 58 (T1) so a client renews long before the
	// 2-minute lease floor: how tests watch renewals happen.
	RenewSeconds int
	// ReplyDelay holds every DHCPOFFER back this many seconds
	// (dnsmasq --dhcp-reply-delay): a server that answers late.
	ReplyDelay int
}

// DHCPServer is a real dnsmasq serving DHCP (DNS off) on one interface of
// a host; the interface needs an address inside Range. Its output (with
// --log-dhcp) is the server's log.
type DHCPServer struct {
	Proc      *Process
	LeaseFile string
}

// StartDHCP runs dnsmasq on h's interface ifname until the test ends.
func (h *Host) StartDHCP(t testing.TB, ifname string, o DHCPOptions) *DHCPServer {
	t.Helper()
	RequireRoot(t, "dnsmasq")
	if o.LeaseTime == "" {
		o.LeaseTime = "1h"
	}
	dir := t.TempDir()
	s := &DHCPServer{LeaseFile: filepath.Join(dir, "leases")}
	args := []string{
		"--no-daemon", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp",
		"--interface=" + ifname, "--bind-interfaces", "--except-interface=lo",
		// --no-ping: without it dnsmasq pings each address before offering
		// it, and the first lease takes 256 ms.
		"--no-ping", "--dhcp-authoritative", "--user=root", "--group=root", "--pid-file=",
		"--dhcp-leasefile=" + s.LeaseFile,
		fmt.Sprintf("--dhcp-range=%s,%s,%s", o.Range, o.Mask, o.LeaseTime),
	}
	if o.Router != "" {
		args = append(args, "--dhcp-option=option:router,"+o.Router)
	} else {
		args = append(args, "--dhcp-option=option:router") // dnsmasq would offer itself
	}
	if o.DNS != "" {
		args = append(args, "--dhcp-option=option:dns-server,"+o.DNS)
	} else {
		args = append(args, "--dhcp-option=option:dns-server")
	}
	if o.RenewSeconds > 0 {
		args = append(args, fmt.Sprintf("--dhcp-option=option:T1,%d", o.RenewSeconds),
			fmt.Sprintf("--dhcp-option=option:T2,%d", o.RenewSeconds*2))
	}
	if o.ReplyDelay > 0 {
		args = append(args, fmt.Sprintf("--dhcp-reply-delay=%d", o.ReplyDelay))
	}
	s.Proc = h.Start("dnsmasq", args...)
	s.Proc.WaitOutput(t, "DHCP, IP range", 10*time.Second)
	return s
}

// Acks counts the DHCPACKs the server sent (initial leases and renewals).
func (s *DHCPServer) Acks() int { return strings.Count(s.Proc.Output(), "DHCPACK(") }

// Leases returns the lease file's lines (expiry mac ip name client-id).
func (s *DHCPServer) Leases() []string {
	b, _ := os.ReadFile(s.LeaseFile)
	return strings.Fields(strings.ReplaceAll(string(b), "\n", " \n"))
}

// Squat makes h hold every address in addrs (CIDR) on ifname, so its kernel
// answers ARP for them: a host already using part of a subnet.
func (h *Host) Squat(t testing.TB, ifname string, addrs []string) {
	t.Helper()
	var b strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&b, "addr add %s dev %s\n", a, ifname)
	}
	cmd := h.Command(t.Context(), "ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("squat on %s/%s: %v: %s", h.Name, ifname, err, out)
	}
}

// StartDNS runs dnsmasq as an authoritative-enough DNS server on h's
// interface ifname (which needs an address), answering only the given
// names (name -> IPv4) and nothing else.
func (h *Host) StartDNS(t testing.TB, ifname string, records map[string]string) *Process {
	t.Helper()
	RequireRoot(t, "dnsmasq")
	args := []string{"--no-daemon", "--conf-file=/dev/null", "--log-facility=-", "--log-queries",
		"--interface=" + ifname, "--bind-interfaces", "--except-interface=lo",
		"--no-resolv", "--no-hosts", "--user=root", "--group=root", "--pid-file="}
	for name, ip := range records {
		args = append(args, fmt.Sprintf("--address=/%s/%s", name, ip))
	}
	p := h.Start("dnsmasq", args...)
	p.WaitOutput(t, "started", 10*time.Second)
	return p
}
