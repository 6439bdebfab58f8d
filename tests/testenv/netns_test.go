package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

func TestTopologyLinksHostsAndCleansUp(t *testing.T) {
	var tag string
	t.Run("build", func(t *testing.T) {
		tp := NewTopology(t)
		tag = tp.Tag()
		a, b, c := tp.Host("a"), tp.Host("b"), tp.Host("sw")
		tp.Link(a, "eth0", c, "pa")
		tp.Link(b, "eth0", c, "pb")
		c.Bridge("br0", "pa", "pb")
		a.Addr("eth0", "192.0.2.1/24")
		b.Addr("eth0", "192.0.2.2/24")
		a.MustRun("arping", "-c1", "-w2", "-I", "eth0", "192.0.2.2")
		if mac := b.MAC("eth0"); len(mac) != 17 {
			t.Errorf("MAC = %q", mac)
		}
		p := a.Start("sh", "-c", "echo hello; sleep 30")
		p.WaitOutput(t, "hello", 5e9)
	})
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(out), tag) {
		t.Fatalf("namespaces left behind:\n%s", out)
	}
	links, _ := exec.Command("ip", "link").CombinedOutput()
	if strings.Contains(string(links), tag) {
		t.Fatalf("links left behind:\n%s", links)
	}
}
