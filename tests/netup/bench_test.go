//go:build bench

// The benchmark behind bench/netup.sh: time from start to READY=1 for each
// path g8-netup can take, against the same steps done by hand with ip,
// curl, a minimal DHCP client and arping, measured in the same run.
package netup_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/g8os/boot/tests/testenv"
)

const benchRuns = 5

// TestTinyDHCPClient is the baseline's DHCP client, not a test: the
// benchmark runs this test binary with G8_TINY_DHCP=IFACE inside the node,
// it does one DORA and prints address/prefix.
func TestTinyDHCPClient(t *testing.T) {
	ifname := os.Getenv("G8_TINY_DHCP")
	if ifname == "" {
		t.Skip("helper process of TestBenchNetup")
	}
	c, err := nclient4.New(ifname, nclient4.WithTimeout(250*time.Millisecond), nclient4.WithRetry(4))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l, err := c.Request(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ones, _ := l.ACK.SubnetMask().Size()
	fmt.Printf("%s/%d\n", l.ACK.YourIPAddr, ones)
	os.Exit(0) // before the testing package prints PASS on stdout
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func row(name string, g8, base []time.Duration, target string) string {
	g, b := median(g8), median(base)
	return fmt.Sprintf("| netup: %s (median of %d) | %s | %s | %.2f | %s |", name, len(g8), ms(g), ms(b), float64(g)/float64(b), target)
}

// timeG8 starts g8-netup and returns the time until READY=1 arrived.
func timeG8(t *testing.T, node *testenv.Host, netToml, anchor string, ifaces string) time.Duration {
	t.Helper()
	start := time.Now()
	r := startNetup(t, node, netToml, anchor, "--interfaces", ifaces)
	r.notify.Wait(t, "READY=1", 30*time.Second)
	at, _ := r.notify.When("READY=1")
	r.stop(t)
	return at.Sub(start)
}

func timeShell(t *testing.T, node *testenv.Host, script string) time.Duration {
	t.Helper()
	start := time.Now()
	if out, err := node.Run("sh", "-ec", script); err != nil {
		t.Fatalf("baseline: %v\n%s", err, out)
	}
	return time.Since(start)
}

func flush(node *testenv.Host, ifaces ...string) {
	for _, i := range ifaces {
		node.Run("ip", "addr", "flush", "dev", i)
		node.Run("ip", "route", "flush", "dev", i)
	}
}

func TestBenchNetup(t *testing.T) {
	testenv.RequireRoot(t, "dnsmasq", "arping", "curl")
	testenv.Bin(t, "g8-netup") // build before any clock starts
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var rows []string

	t.Run("static", func(t *testing.T) {
		tp := testenv.NewTopology(t)
		node, ac := tp.Host("node"), tp.Host("ac")
		tp.Link(node, "eth0", ac, "eth0")
		ac.Addr("eth0", "10.0.1.1/24")
		ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
		conf := fmt.Sprintf("controllers = [%q]\n[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.1.2/24\"]\n", ctrl.URL)
		script := fmt.Sprintf("ip addr add 10.0.1.2/24 dev eth0; ip link set eth0 up; curl -sf --max-time 2 --cacert %s %s/v1/health >/dev/null", ctrl.TrustAnchor, ctrl.URL)
		var g8, base []time.Duration
		for i := 0; i < benchRuns; i++ {
			flush(node, "eth0")
			g8 = append(g8, timeG8(t, node, conf, ctrl.TrustAnchor, "eth0"))
			flush(node, "eth0")
			base = append(base, timeShell(t, node, script))
		}
		rows = append(rows, row("static, start to READY", g8, base, "< 100 ms"))
	})

	t.Run("dhcp", func(t *testing.T) {
		tp := testenv.NewTopology(t)
		node, lan, ac := tp.Host("node"), tp.Host("lan"), tp.Host("ac")
		tp.Link(node, "eth0", lan, "eth0")
		tp.Link(node, "eth1", ac, "eth0")
		lan.Addr("eth0", "10.0.1.1/24")
		lan.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.1.100,10.0.1.150", Mask: "255.255.255.0"})
		ac.Addr("eth0", "10.0.2.1/24")
		ac.StartDHCP(t, "eth0", testenv.DHCPOptions{Range: "10.0.2.100,10.0.2.150", Mask: "255.255.255.0"})
		ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.2.1"}, Listen: []string{"10.0.2.1:8443"}})
		conf := fmt.Sprintf("controllers = [%q]\n[[interface]]\nname = \"eth0\"\naddresses = [\"192.168.77.2/24\"]\n[[interface]]\nname = \"eth1\"\nmethod = \"dhcp\"\n", ctrl.URL)
		curl := fmt.Sprintf("curl -sf --max-time 1 --cacert %s %s/v1/health >/dev/null", ctrl.TrustAnchor, ctrl.URL)
		dhcp := func(i string) string {
			return fmt.Sprintf("G8_TINY_DHCP=%s %s -test.run='^TestTinyDHCPClient$'", i, self)
		}
		script := strings.Join([]string{
			"ip addr add 192.168.77.2/24 dev eth0; ip link set eth0 up; ip link set eth1 up",
			"! " + curl,
			"L=$(" + dhcp("eth0") + "); ip addr add $L dev eth0",
			"! " + curl,
			"ip addr del $L dev eth0",
			"L=$(" + dhcp("eth1") + "); ip addr add $L dev eth1",
			curl,
		}, "\n")
		var g8, base []time.Duration
		for i := 0; i < benchRuns; i++ {
			flush(node, "eth0", "eth1")
			g8 = append(g8, timeG8(t, node, conf, ctrl.TrustAnchor, "eth0,eth1"))
			flush(node, "eth0", "eth1")
			base = append(base, timeShell(t, node, script))
		}
		rows = append(rows, row("DHCP, controller behind the 2nd interface, start to READY", g8, base, "< 1 s per answering interface (2 here)"))
	})

	t.Run("fallback", func(t *testing.T) {
		tp := testenv.NewTopology(t)
		node, ac, sw := tp.Host("node"), tp.Host("ac"), tp.Host("sw")
		tp.Link(node, "eth0", sw, "p0")
		tp.Link(ac, "eth0", sw, "p1")
		sw.Bridge("br0", "p0", "p1")
		ac.Addr("eth0", "10.254.254.254/24")
		ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{})
		conf := "[[interface]]\nname = \"eth0\"\nmethod = \"dhcp\"\ndhcp = false\n"
		// By hand, as fast as arping goes: iputils arping takes whole
		// seconds only, so one probe and one second of quiet (weaker
		// than g8-netup's three probes).
		script := fmt.Sprintf(`X=$(( $(od -An -N2 -tu2 /dev/urandom) %% 253 + 1 )); A=10.254.254.$X
ip link set eth0 up
arping -D -q -I eth0 -c 1 -w 1 $A
ip addr add $A/24 dev eth0
curl -sf --max-time 2 --cacert %s https://10.254.254.254:8443/v1/health >/dev/null`, ctrl.TrustAnchor)
		var g8, base []time.Duration
		for i := 0; i < benchRuns; i++ {
			flush(node, "eth0")
			g8 = append(g8, timeG8(t, node, conf, ctrl.TrustAnchor, "eth0"))
			flush(node, "eth0")
			base = append(base, timeShell(t, node, script))
		}
		rows = append(rows, row("fallback 10.254.254.X (first address free), start to READY", g8, base, "< 0.5 s per interface"))
	})

	for _, r := range rows {
		fmt.Println(r)
	}
}
