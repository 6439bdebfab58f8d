package netup_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// An edited net.toml is applied with SIGHUP (systemctl reload g8-netup):
// a change to an interface the controller is not reached through is
// applied in place, the controller is kept (no new search) and STATUS=
// says what changed; a controller added to the list is kept and net.json's
// failover list follows; an invalid file changes nothing; dropping the
// controller in use from the list makes the search run again with the new
// file.
func TestReloadKeepsWhatStillWorks(t *testing.T) {
	tp := testenv.NewTopology(t)
	node, ac, lan := tp.Host("node"), tp.Host("ac"), tp.Host("lan")
	tp.Link(node, "eth0", ac, "eth0")
	tp.Link(node, "eth1", lan, "eth0")
	ac.Addr("eth0", "10.0.1.1/24")
	ctrl := testenv.StartController(t, ac, testenv.ControllerOptions{Names: []string{"10.0.1.1"}, Listen: []string{"10.0.1.1:8443"}})
	conf := func(eth1, controllers string) string {
		return "controllers = [" + controllers + "]\n[[interface]]\nname = \"eth0\"\naddresses = [\"10.0.1.2/24\"]\n" +
			"[[interface]]\nname = \"eth1\"\naddresses = [\"" + eth1 + "\"]\n"
	}
	r := startNetup(t, node, conf("10.5.0.2/24", `"`+ctrl.URL+`"`), ctrl.TrustAnchor)
	st := r.ready(t, 15*time.Second)
	cfg := filepath.Join(filepath.Dir(r.stateDir), "net.toml")
	reload := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		reloading, ready := r.notify.Count("RELOADING=1"), r.notify.Count("READY=1")
		if err := r.proc.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for r.notify.Count("RELOADING=1") == reloading || r.notify.Count("READY=1") == ready {
			if time.Now().After(deadline) {
				t.Fatalf("no RELOADING=1 ... READY=1 after SIGHUP; statuses %q", r.notify.Statuses())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	reload(conf("10.5.0.3/24", `"`+ctrl.URL+`"`))
	waitStatus(t, r, 10*time.Second, "eth1 changed")
	if got := ipv4(t, node, "eth1"); len(got) != 1 || got[0] != "10.5.0.3/24" {
		t.Errorf("eth1 after the reload: %v", got)
	}
	if got := ipv4(t, node, "eth0"); len(got) != 1 || got[0] != "10.0.1.2/24" {
		t.Errorf("eth0 was touched: %v", got)
	}
	if now := r.state(t); now.Searches != st.Searches || now.Controller != ctrl.URL {
		t.Errorf("the reload searched again: %+v, was %+v", now, st)
	}

	// A controller added to the list: kept, and net.json's failover list
	// (what g8-unlock and g8-acsession fail over along) follows the file.
	other := "https://10.0.1.9:8443"
	reload(conf("10.5.0.3/24", `"`+ctrl.URL+`", "`+other+`"`))
	waitStatus(t, r, 10*time.Second, "controllers changed")
	if now := r.state(t); now.Searches != st.Searches || !slices.Equal(now.ControllerList(), []string{ctrl.URL, other}) {
		t.Errorf("after adding a controller to the list: searches %d (was %d), failover list %q", now.Searches, st.Searches, now.ControllerList())
	}

	reload("controllers = [\n")
	if !strings.Contains(r.proc.Output(), "net.config-rejected") && !strings.Contains(r.proc.Output(), "net.toml refused") {
		t.Errorf("the invalid file was not refused loudly:\n%s", r.proc.Output())
	}
	if now := r.state(t); now.Searches != st.Searches {
		t.Errorf("an invalid file changed something: %+v", now)
	}

	reload(conf("10.5.0.3/24", `"https://10.0.1.1:9999"`))
	waitStatus(t, r, 10*time.Second, "no longer listed")
	r.stop(t)
}
