package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

// A node whose net.toml lists two controllers of one fleet boots under
// real systemd while the first listed is dead (killed, its address still
// routed): g8-netup finds the second, g8-unlock unlocks through it, the
// session and the sandboxes come up, and the state files name it.
func TestBootWithFirstControllerDown(t *testing.T) {
	site := newChainSite(t, false)
	const secondAddr = "10.0.0.3"
	site.ACHost.Addr("eth0", secondAddr+"/24")
	// The fleet's server certificate names every controller address.
	site.AC.CLI(t, "server-cert", "--name", strings.Join([]string{testenv.SiteACAddr, testenv.SiteFallbackAC, secondAddr}, ","))
	second := site.AC.Peer(t, site.ACHost, secondAddr+":8444") // the first listens on 0.0.0.0:8443
	root := site.NodeRoot(testenv.NetConfig{Static: true})
	one := fmt.Sprintf("controllers = [%q]", testenv.SiteControllerOn)
	netToml := testenv.NetConfig{Static: true}.TOML()
	if !strings.Contains(netToml, one) {
		t.Fatalf("net.toml has no %s line:\n%s", one, netToml)
	}
	root.WriteFile("etc/g8os/net.toml", []byte(strings.Replace(netToml, one,
		fmt.Sprintf("controllers = [%q, %q]", testenv.SiteControllerOn, second.URL), 1)), 0o644)
	site.AC.Kill(t)

	m := site.Node.Boot(root)
	testenv.WaitChain(t, m)
	read := func(f state.File) {
		t.Helper()
		out := m.MustExec("cat", "/run/g8os/"+f.PhaseName()+".json")
		if err := json.Unmarshal([]byte(out), f); err != nil {
			t.Fatalf("%s.json: %v\n%s", f.PhaseName(), err, out)
		}
	}
	var nst state.Net
	var ust state.Unlock
	var ast state.ACSession
	read(&nst)
	read(&ust)
	read(&ast)
	if nst.Controller != second.URL || ust.Controller != second.URL || ast.Controller != second.URL || !ast.Connected {
		t.Errorf("controllers in use: net %s, unlock %s, session %s (connected %v); want %s", nst.Controller, ust.Controller, ast.Controller, ast.Connected, second.URL)
	}
	if want := []string{second.URL, testenv.SiteControllerOn}; strings.Join(ast.Controllers, " ") != strings.Join(want, " ") {
		t.Errorf("session's controller list %q, want %q", ast.Controllers, want)
	}
	site.operatorCanWork(t, strings.Split(testenv.SiteStaticAddr, "/")[0])
}
