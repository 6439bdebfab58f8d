package ac_test

import (
	"strings"
	"testing"

	"github.com/g8os/boot/tests/testenv"
)

// The fixture's namespace mode: g8-ac on the fallback AC address in its own
// namespace, a node reaching it over a veth with curl verifying the anchor.
func TestControllerInNamespace(t *testing.T) {
	testenv.RequireRoot(t, "curl")
	tp := testenv.NewTopology(t)
	acHost, node := tp.Host("ac"), tp.Host("node")
	tp.Link(acHost, "eth0", node, "eth0")
	acHost.Addr("eth0", "10.254.254.254/24")
	node.Addr("eth0", "10.254.254.10/24")
	ac := testenv.StartController(t, acHost, testenv.ControllerOptions{})
	if ac.URL != "https://10.254.254.254:8443" {
		t.Fatalf("URL %s", ac.URL)
	}
	curl := func(args ...string) string {
		out, _ := node.Run("curl", append([]string{"-sS", "--max-time", "10", "--cacert", ac.TrustAnchor, "-w", " %{http_code}"}, args...)...)
		return out
	}
	if out := curl(ac.URL + "/v1/health"); !strings.Contains(out, `"status":"ok"`) || !strings.HasSuffix(out, " 200") {
		t.Fatalf("health from the node: %s", out)
	}
	mac := node.MAC("eth0")
	body := `{"macs":["` + mac + `"],"hostname":"nsnode"}`
	ident := testenv.NewNodeIdentity(t)
	unlock := func() string { return curl(append(ident.CurlArgs(), "-d", body, ac.URL+"/v1/unlock")...) }
	if out := unlock(); !strings.Contains(out, `"state":"pending"`) || !strings.HasSuffix(out, " 202") {
		t.Fatalf("first unlock from the node: %s", out)
	}
	if list := ac.CLI(t, "node", "list"); !strings.Contains(list, "10.254.254.10") || !strings.Contains(list, "nsnode") {
		t.Fatalf("node list does not show the node's address and name:\n%s", list)
	}
	id := ac.ApproveMAC(t, mac)
	if out := unlock(); !strings.Contains(out, `"node_id":"`+id+`"`) || !strings.HasSuffix(out, " 200") {
		t.Fatalf("unlock after approval: %s", out)
	}
	// Without the anchor curl refuses the controller.
	if out, err := node.Run("curl", "-sS", "--max-time", "10", ac.URL+"/v1/health"); err == nil {
		t.Fatalf("curl trusted the controller without its anchor: %s", out)
	}
	ac.Restart(t)
	if out := unlock(); !strings.Contains(out, `"node_id":"`+id+`"`) {
		t.Fatalf("unlock after restart: %s", out)
	}
}
