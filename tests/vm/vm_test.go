// Package vm boots the bootstrap OS image (tools/image.sh) on a virtual
// machine under QEMU — its own kernel, udev naming its virtio NICs, UEFI
// firmware, a serial console with agetty — against the real controller in
// the same network-namespace site the container tests use. It runs in the
// VM stage (`make vm-test`); `go test ./...` skips it with a message.
package vm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	sandboxMount = "/opt/g8/hello"
	sandboxFile  = "greeting.txt"
	sandboxText  = "hello from the g8os content store\n"
	// A boot under TCG (no KVM) takes half a minute on an idle machine of
	// this size, and several minutes on one loaded with other work.
	bootTimeout = 10 * time.Minute
)

// node is one image-booted node of a site and the operator's view of it.
type node struct {
	*testenv.Site
	vm  *testenv.VM
	key string // operator's SSH key
	id  string
}

// sshFrom is where SSH to addr goes from: the LAN host, or for a fallback
// address the controller's host (it alone shares that link).
func (n *node) sshFrom(addr string) *testenv.Host {
	if strings.HasPrefix(addr, "10.254.254.") {
		return n.ACHost
	}
	return n.LAN
}

// trySSH runs a command on the node as root with the OpenSSH client.
func (n *node) trySSH(addr string, command ...string) (string, error) {
	args := []string{"-i", n.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
		"root@" + addr, "--"}
	// A command that hangs must not hang the test.
	return n.sshFrom(addr).Run("timeout", append([]string{"120", "ssh"}, append(args, command...)...)...)
}

// ssh is trySSH that fails the test.
func (n *node) ssh(t *testing.T, addr string, command ...string) string {
	t.Helper()
	out, err := n.trySSH(addr, command...)
	if err != nil {
		t.Fatalf("ssh root@%s %v: %v\n--- console ---\n%s", addr, command, err, n.vm.Console())
	}
	return out
}

// waitSession waits until the node's session reports a boot other than
// notBoot; the record's LastAddr is where its heartbeats come from.
func (n *node) waitSession(t *testing.T, notBoot string) testenv.NodeView {
	t.Helper()
	v, err := n.WaitNode(n.vm.MACs[0], bootTimeout, func(v testenv.NodeView) bool {
		return v.State == "approved" && v.BootID != "" && v.BootID != notBoot && v.LastAddr != ""
	})
	if err != nil {
		t.Fatalf("no session from the VM: %v\n--- console ---\n%s", err, n.vm.Console())
	}
	return v
}

// readState reads a phase's state file on the node over SSH.
func (n *node) readState(t *testing.T, addr string, f state.File) {
	t.Helper()
	out := n.ssh(t, addr, "cat", state.Path(state.DefaultDir, f))
	if err := json.Unmarshal([]byte(out), f); err != nil {
		t.Fatalf("%s: %v\n%s", state.Path(state.DefaultDir, f), err, out)
	}
}

// operatorCanWork waits until the whole chain is up (the session comes
// before g8-sshd and g8-fs), then logs in and reads the sandbox.
func (n *node) operatorCanWork(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := n.trySSH(addr, "systemctl", "is-active", "g8os.target")
		if err == nil && strings.TrimSpace(out) == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("g8os.target not active over SSH to %s: %q %v\n--- console ---\n%s", addr, out, err, n.vm.Console())
		}
		time.Sleep(2 * time.Second)
	}
	if got := n.ssh(t, addr, "cat", sandboxMount+"/"+sandboxFile); got != sandboxText {
		t.Fatalf("sandbox read over SSH: %q, want %q", got, sandboxText)
	}
}

// One node's life on its own machine: first boot (pending until the
// operator approves it, then unlock, session, SSH, sandbox), a reboot
// (no enrolment again), a power cut with events queued while the
// controller was away (delivered after the next boot, nothing repaired by
// hand), and a boot with no DHCP server (the fallback link).
func TestImageOnAVirtualMachine(t *testing.T) {
	testenv.RequireVM(t)
	site := testenv.NewSite(t)
	site.StartController()
	site.StartDHCP()
	n := &node{Site: site, key: site.OperatorKey()}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, sandboxFile), []byte(sandboxText), 0o644); err != nil {
		t.Fatal(err)
	}
	site.PublishSandbox("hello", src, sandboxMount)

	n.vm = site.Node.NewVM()
	// udev names the VM's links (enp0s…): net.toml matches them by MAC.
	// The power cut below happens with the controller stopped for
	// minutes; the node stays reachable over SSH meanwhile because a lost
	// controller keeps the address in use (docs/netup.md).
	n.vm.UseImage(site.SiteImage(testenv.NetConfig{MACs: n.vm.MACs, Slow: 5}.TOML()))

	// First boot: the node asks, the operator approves what it sees.
	n.vm.PowerOn()
	v, err := site.WaitNode(n.vm.MACs[0], bootTimeout, func(v testenv.NodeView) bool { return v.State == "pending" })
	if err != nil {
		t.Fatalf("the VM never asked the controller: %v\n--- console ---\n%s", err, n.vm.Console())
	}
	n.id = v.ID
	site.AC.CLI(t, "node", "approve", n.id)
	v = n.waitSession(t, "")
	firstBoot := v.BootID
	n.operatorCanWork(t, v.LastAddr)
	// The login prompt on the serial console is drawn again as the phases
	// come up: it ends with every phase's line saying ready.
	n.vm.WaitConsole(testenv.ChainReadyPrompt, 2*time.Minute)

	// Reboot: the later-boot path, no new enrolment.
	n.ssh(t, v.LastAddr, "systemctl", "reboot")
	v = n.waitSession(t, firstBoot)
	if _, count := site.NodeWithMAC(n.vm.MACs[0]); count != 1 || v.ID != n.id {
		t.Fatalf("after a reboot: node %s among %d nodes, want %s alone", v.ID, count, n.id)
	}
	n.operatorCanWork(t, v.LastAddr)

	// Power cut while events wait on disk: with the controller away, a
	// restart of g8-sshd (which needs no controller) makes a phase.ready
	// event that can only be queued.
	var sshd state.SSHD
	site.AC.Stop()
	n.ssh(t, v.LastAddr, "systemctl", "restart", "--no-block", "g8-sshd.service")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var as state.ACSession
		if out, err := n.trySSH(v.LastAddr, "cat", state.Path(state.DefaultDir, &as)); err == nil && json.Unmarshal([]byte(out), &as) == nil && as.QueueDepth > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event queued while the controller is down\n--- console ---\n%s", n.vm.Console())
		}
		time.Sleep(2 * time.Second)
	}
	n.readState(t, v.LastAddr, &sshd)
	n.ssh(t, v.LastAddr, "sync") // the queue is fsynced anyway; the cut must not depend on it
	n.vm.PowerCut()
	site.StartController()
	before := v.BootID
	n.vm.PowerOn()
	v = n.waitSession(t, before)
	n.operatorCanWork(t, v.LastAddr)
	events := site.AC.CLI(t, "events", n.id, "--json")
	if !strings.Contains(events, sshd.ReadyAt.UTC().Format(time.RFC3339Nano)) && !strings.Contains(events, sshd.ReadyAt.Format(time.RFC3339Nano)) {
		t.Errorf("the phase.ready event queued before the power cut (g8-sshd ready at %s) never reached the controller:\n%s",
			sshd.ReadyAt, events)
	}

	// No DHCP server: the node finds the controller on the fallback link.
	site.DHCP.Stop()
	before = v.BootID
	n.ssh(t, v.LastAddr, "systemctl", "reboot")
	v = n.waitSession(t, before)
	if !strings.HasPrefix(v.LastAddr, "10.254.254.") {
		t.Fatalf("without DHCP the node's session comes from %s, want the fallback subnet", v.LastAddr)
	}
	n.operatorCanWork(t, v.LastAddr)
	var net state.Net
	n.readState(t, v.LastAddr, &net)
	if net.Method != "fallback" {
		t.Errorf("net.json method %q, want fallback", net.Method)
	}
}
