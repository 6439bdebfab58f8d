package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The image fixtures: the bootstrap OS image (tools/image.sh, `make image`)
// made for a site, and a virtual machine booted from it under QEMU inside
// the site's node namespace. The machine's two virtio NICs are tap devices
// bridged to the node host's eth0 and eth1, so the VM sits on exactly the
// links a container node of the same site would.

// VMTestsEnv gates the VM stage: it boots real virtual machines (minutes
// under TCG), so `go test ./...` leaves it to `make vm-test`, which sets it.
const VMTestsEnv = "G8OS_VM_TESTS"

// RequireVM skips the test unless the VM stage was asked for and QEMU, the
// UEFI firmware and the image tools are here.
func RequireVM(t testing.TB) {
	t.Helper()
	if os.Getenv(VMTestsEnv) == "" {
		t.Skipf("skipped: the VM stage runs with `make vm-test` (%s=1); it boots the image under QEMU", VMTestsEnv)
	}
	RequireRoot(t, "qemu-system-x86_64", "qemu-img", "mkosi", "mke2fs", "mcopy", "sfdisk", "pacman")
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skipf("skipped: no UEFI firmware at %s (Debian package ovmf)", OVMFCode)
	}
}

// UEFI firmware for QEMU (Debian's ovmf package).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// SiteImage builds the bootstrap image for this site: the package of this
// checkout installed by pacman, the controller's trust anchor and netCfg as
// net.toml. The root tree is cached across runs (tools/image.sh); this
// step takes a minute or so.
func (s *Site) SiteImage(netCfg string) string {
	s.t.Helper()
	dir := s.t.TempDir()
	net := filepath.Join(dir, "net.toml")
	if err := os.WriteFile(net, []byte(netCfg), 0o644); err != nil {
		s.t.Fatal(err)
	}
	img, err := runTool("tools/image.sh", "--pkg", Package(s.t), "--ac-ca", s.AC.TrustAnchor, "--net-toml", net,
		"-o", filepath.Join(dir, "g8os.raw"))
	if err != nil {
		s.t.Fatalf("image: %v", err)
	}
	return img
}

// VM is a machine booted from an image. Its disk is a copy-on-write
// overlay of the image, kept across power cycles of the same VM.
type VM struct {
	Name string
	MACs []string // of its NICs, in order (eth0's link, eth1's link)
	host *Host
	disk string
	vars string // its UEFI variables
	t    testing.TB
	proc *Process
}

// NewVM wires a machine's NICs to h's eth0 and eth1; its MACs are known
// from here on (the image's net.toml may name them). UseImage gives it a
// disk, PowerOn boots it.
func (h *Host) NewVM() *VM {
	t := h.tp.t
	t.Helper()
	dir := t.TempDir()
	vm := &VM{Name: h.Name, host: h, t: t, disk: filepath.Join(dir, "disk.qcow2"), vars: filepath.Join(dir, "vars.fd")}
	for i, link := range []string{"eth0", "eth1"} {
		tap, br := fmt.Sprintf("tap%d", i), fmt.Sprintf("vbr%d", i)
		h.MustRun("ip", "tuntap", "add", "dev", tap, "mode", "tap")
		h.MustRun("ip", "link", "set", tap, "up")
		h.Bridge(br, link, tap)
		// Locally administered, unique per topology and NIC.
		vm.MACs = append(vm.MACs, fmt.Sprintf("52:54:00:%s:%02x", macTag(h.tp.Tag()), i))
	}
	return vm
}

// UseImage gives the machine a fresh disk: a copy-on-write overlay of
// image, and fresh UEFI variables.
func (vm *VM) UseImage(image string) {
	vm.t.Helper()
	_ = os.Remove(vm.disk)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, vm.disk).CombinedOutput(); err != nil {
		vm.t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	vars, err := os.ReadFile(OVMFVars)
	if err != nil {
		vm.t.Fatal(err)
	}
	if err := os.WriteFile(vm.vars, vars, 0o644); err != nil {
		vm.t.Fatal(err)
	}
}

// macTag turns a topology tag into two MAC octets.
func macTag(tag string) string {
	var sum uint16
	for _, c := range tag {
		sum = sum*31 + uint16(c)
	}
	return fmt.Sprintf("%02x:%02x", byte(sum>>8), byte(sum))
}

var (
	accelOnce sync.Once
	accel     string
)

// Accel is the accelerator the VMs use: "kvm" where /dev/kvm runs a guest,
// "tcg" (QEMU's software emulation) otherwise. /dev/kvm can open fine and
// still fail the guest's first instructions ("KVM internal error ...
// emulation failure", as on these build machines), which QEMU's own
// `-accel kvm -accel tcg` fallback does not catch; so the firmware is
// started under KVM once, and KVM is used if it still runs after a few
// seconds.
func Accel() string {
	accelOnce.Do(func() {
		accel = "tcg"
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-m", "256",
			"-nodefaults", "-display", "none", "-serial", "none", "-monitor", "none",
			"-drive", "if=pflash,format=raw,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,snapshot=on,file="+OVMFVars).CombinedOutput()
		if ctx.Err() != nil && !strings.Contains(string(out), "KVM internal error") {
			accel = "kvm"
		}
	})
	return accel
}

// PowerOn starts the machine; its serial console is kept (Console).
func (vm *VM) PowerOn() {
	vm.t.Helper()
	args := []string{"-machine", "q35", "-m", "1024", "-smp", "2", "-nodefaults", "-display", "none",
		"-serial", "stdio", "-monitor", "none",
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,file=" + vm.vars,
		"-drive", "if=virtio,format=qcow2,file=" + vm.disk,
		"-accel", Accel()}
	for i, mac := range vm.MACs {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=n%d,ifname=tap%d,script=no,downscript=no", i, i),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, mac))
	}
	vm.proc = vm.host.Start("qemu-system-x86_64", args...)
}

// Console is what the machine printed on its serial console since its
// last power-on.
func (vm *VM) Console() string {
	if vm.proc == nil {
		return ""
	}
	return vm.proc.Output()
}

// ChainReadyPrompt is the login prompt of a node whose chain is up: every
// phase's console line says ready, in order, and the prompt follows.
var ChainReadyPrompt = regexp.MustCompile(`(?s)g8os\s+net\s+ready.*g8os\s+unlock\s+ready.*g8os\s+acsession\s+ready.*g8os\s+sshd\s+ready.*g8os\s+fs\s+ready[^\n]*\n[^\n]*login:`)

// LoginPrompt is any login prompt.
var LoginPrompt = regexp.MustCompile(`login:`)

// WaitConsole waits until the console matches re and returns the console.
func (vm *VM) WaitConsole(re *regexp.Regexp, timeout time.Duration) string {
	vm.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := vm.Console()
		if re.MatchString(c) {
			return c
		}
		select {
		case <-vm.proc.Done():
			vm.t.Fatalf("%s: QEMU exited while waiting for %q: %v\n--- console ---\n%s", vm.Name, re, vm.proc.Err(), c)
		default:
		}
		if time.Now().After(deadline) {
			vm.t.Fatalf("%s: console did not show %q within %v\n--- console ---\n%s", vm.Name, re, timeout, c)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// PowerCut kills QEMU at once: no shutdown, no flush of the guest's caches.
func (vm *VM) PowerCut() {
	vm.t.Helper()
	_ = vm.proc.Signal(syscall.SIGKILL)
	<-vm.proc.Done()
}

// WaitOff waits until the machine powered itself off (or reset: QEMU
// restarts a rebooting guest itself, so a reboot is seen on the console).
func (vm *VM) WaitOff(timeout time.Duration) {
	vm.t.Helper()
	select {
	case <-vm.proc.Done():
	case <-time.After(timeout):
		vm.t.Fatalf("%s: still running %v after poweroff\n--- console ---\n%s", vm.Name, timeout, vm.Console())
	}
}

// NodeWithMAC is the controller's record of the node that has mac, and how
// many nodes the controller knows.
func (s *Site) NodeWithMAC(mac string) (NodeView, int) {
	s.t.Helper()
	all := s.Nodes()
	for _, v := range all {
		for _, m := range v.MACs {
			if strings.EqualFold(m, mac) {
				return v, len(all)
			}
		}
	}
	return NodeView{}, len(all)
}

// WaitNode waits until the record of the node with mac satisfies ok.
func (s *Site) WaitNode(mac string, timeout time.Duration, ok func(NodeView) bool) (NodeView, error) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, _ := s.NodeWithMAC(mac)
		if ok(v) {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("node with MAC %s: not as expected within %v (last seen as %+v)", mac, timeout, v)
		}
		time.Sleep(time.Second)
	}
}
