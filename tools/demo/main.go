// Command demo is `make demo`: it builds the pacman package, sets up the
// end-to-end site in network namespaces (the real controller, a DHCP
// server, a node with two interfaces), boots the node's Debian root with
// real systemd, prints the boot timeline and what an operator can do next,
// and cleans everything up. With --keep it leaves the site running until
// Ctrl-C (or SIGTERM), then cleans up.
//
// With --vm the node is the bootstrap OS image (tools/image.sh) booted under
// QEMU instead: the demo shows the operator approving the new node, then
// its serial console with the chain's lines at the login prompt.
//
// It reuses the test fixtures of tests/testenv through testenv.Script (a
// failure cleans up and exits 1).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func main() {
	keep := flag.Bool("keep", false, "leave the site running until Ctrl-C, then clean up")
	path := flag.String("path", "dhcp", "how the node finds the controller: static, dhcp or fallback")
	vm := flag.Bool("vm", false, "boot the bootstrap OS image under QEMU instead of a container (`make vm-demo`)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: demo [--keep] [--path static|dhcp|fallback] [--vm]  (as root; `make demo` runs it)\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *path != "static" && *path != "dhcp" && *path != "fallback" {
		fmt.Fprintf(os.Stderr, "demo: --path %q: want static, dhcp or fallback\n", *path)
		os.Exit(2)
	}
	s := testenv.NewScript("demo")
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		fmt.Println("\ncleaning up ...")
		s.Close()
		os.Exit(130)
	}()
	if *vm {
		runVM(s, *keep)
	} else {
		run(s, *path, *keep)
	}
	s.Close()
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

func run(t *testenv.Script, path string, keep bool) {
	testenv.RequireRoot(t, "systemd-nspawn", "debootstrap", "makepkg", "pacman", "dnsmasq", "ssh")
	step("building the pacman package (make pkg) and the Debian root (cached after the first run)")
	pkg := testenv.Package(t)
	fmt.Printf("    package: %s\n    root:    %s\n", pkg, testenv.DebianRoot(t))

	step("site: node (eth0, eth1), controller (10.0.0.1 on the LAN, 10.254.254.254 on eth1's link), DHCP server on the LAN")
	site := testenv.NewSite(t)
	ac := site.StartController()
	fmt.Printf("    controller: g8-ac serving %s, data %s\n", ac.URL, ac.DataDir)
	if path == "dhcp" {
		site.StartDHCP()
		fmt.Printf("    DHCP: dnsmasq on the LAN, %s-%s\n", testenv.SiteDHCPFirst, testenv.SiteDHCPLast)
	}
	mac := site.Node.MAC("eth0")
	id := ac.ApproveMAC(t, mac)
	fmt.Printf("    node %s (eth0 %s) registered and approved\n", id, mac)
	key := site.OperatorKey()
	fmt.Printf("    operator key %s authorized on every node\n", key)
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "README"), []byte("This file came from the controller's content store,\nfetched lazily by g8-fs and verified by its BLAKE3 hash.\n"), 0o644))
	ref := site.PublishSandbox("hello", src, "/opt/g8/hello")
	fmt.Printf("    sandbox \"hello\" (%s) published, mounted at /opt/g8/hello on nodes\n", ref)

	step("booting the node: pacman -U into an overlay of the root, systemd-nspawn -b (path: %s)", path)
	root := site.NodeRoot(testenv.NetConfig{Static: path == "static"})
	start := time.Now()
	m := site.Node.Boot(root)
	if _, err := m.WaitUnit("g8os.target", "active", 3*time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, m.MustExec("systemctl", "status", "--no-pager", "-n", "20", "g8-netup", "g8-unlock", "g8-acsession", "g8-sshd", "g8-fs"))
	}
	fmt.Printf("    g8os.target active %.1fs after the container started\n", time.Since(start).Seconds())
	failed := strings.TrimSpace(m.MustExec("systemctl", "--failed", "--plain", "--no-legend"))

	fmt.Println()
	step("boot timeline (g8-status timeline: each phase's state file, times from the first phase's start; below net, what its search tried)")
	fmt.Print(indent(m.MustExec("g8-status", "timeline")))
	step("systemd: when each unit became active, since the container's systemd started")
	var boot int64
	fmt.Sscan(m.MustExec("systemctl", "show", "--value", "--property=UserspaceTimestampMonotonic"), &boot)
	for _, u := range []string{"g8-netup", "g8-unlock", "g8-acsession", "g8-sshd", "g8-fs", "g8os.target"} {
		if !strings.Contains(u, ".") {
			u += ".service"
		}
		p := m.Show(u, "ActiveState", "ActiveEnterTimestampMonotonic", "StatusText")
		var usec int64
		fmt.Sscan(p["ActiveEnterTimestampMonotonic"], &usec)
		fmt.Printf("    %-22s %-8s +%6.3fs  %s\n", u, p["ActiveState"], float64(usec-boot)/1e6, p["StatusText"])
	}
	if failed != "" {
		fmt.Printf("    failed units:\n%s\n", indent(failed))
	}
	step("console: the lines an operator sees at the node's login prompt")
	fmt.Print(indent(m.MustExec("sh", "-c", "cat /etc/issue.d/*.issue")))

	var n state.Net
	must(t, json.Unmarshal([]byte(m.MustExec("cat", state.Path(state.DefaultDir, &n))), &n))
	addr := strings.Split(n.Address, "/")[0]
	sshFrom := site.LAN
	if path == "fallback" {
		sshFrom = site.ACHost
	}
	step("an operator logs in over SSH (OpenSSH client, key from the controller) and reads the sandbox")
	sshArgs := fmt.Sprintf("ssh -i %s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@%s", key, addr)
	fmt.Printf("    $ ip netns exec %s %s cat /opt/g8/hello/README\n", sshFrom.NS, sshArgs)
	out, err := sshFrom.Run("ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "root@"+addr, "--", "cat", "/opt/g8/hello/README")
	if err != nil {
		t.Fatalf("ssh: %v", err)
	}
	fmt.Print(indent(out))
	step("the controller's view")
	fmt.Printf("    $ %s node list --data %s\n", ac.Bin, ac.DataDir)
	fmt.Print(indent(ac.CLI(t, "node", "list")))

	fmt.Println()
	step("what next")
	fmt.Printf(`    ssh into the node:        ip netns exec %s %s
    the controller's nodes:   %s node list --data %s
    run a job on the node:    %s job exec --data %s %s -- uname -a
    systemd inside the node:  nsenter -t %d -a systemctl status g8os.target
    a phase's journal:        nsenter -t %d -a journalctl -b -u g8-netup -o cat
    the chain at a glance:    nsenter -t %d -a g8-status
`, sshFrom.NS, sshArgs, ac.Bin, ac.DataDir, ac.Bin, ac.DataDir, id, m.PID1, m.PID1, m.PID1)
	if !keep {
		step("cleaning up (make demo KEEP=1 leaves the site running)")
		return
	}
	step("the site stays up; press Ctrl-C to power the node off and remove everything")
	select {}
}

// runVM is `make vm-demo`: the same site, the node a virtual machine booted
// from the image, enrolled the way a new machine is (pending, then approved
// by the operator).
func runVM(t *testenv.Script, keep bool) {
	testenv.RequireRoot(t, "qemu-system-x86_64", "mkosi", "pacman", "dnsmasq", "ssh")
	step("site: controller (10.0.0.1 on the LAN, 10.254.254.254 on the fallback link), DHCP server on the LAN")
	site := testenv.NewSite(t)
	ac := site.StartController()
	site.StartDHCP()
	key := site.OperatorKey()
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "README"), []byte("This file came from the controller's content store,\nfetched lazily by g8-fs and verified by its BLAKE3 hash.\n"), 0o644))
	site.PublishSandbox("hello", src, "/opt/g8/hello")
	vm := site.Node.NewVM()

	step("building the image (make image: mkosi tree, cached; pacman -U of this checkout's package; UEFI disk)")
	start := time.Now()
	img := site.SiteImage(testenv.NetConfig{MACs: vm.MACs, Slow: 5}.TOML())
	vm.UseImage(img)
	if fi, err := os.Stat(img); err == nil {
		fmt.Printf("    %s: %d MiB, made in %.0fs\n", img, fi.Size()>>20, time.Since(start).Seconds())
	}

	step("powering on the VM (QEMU, accelerator %s, NICs %s on the LAN and %s on the fallback link)", testenv.Accel(), vm.MACs[0], vm.MACs[1])
	start = time.Now()
	vm.PowerOn()
	v, err := site.WaitNode(vm.MACs[0], 6*time.Minute, func(v testenv.NodeView) bool { return v.State == "pending" })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	fmt.Printf("    %.0fs: node %s asks to be let in; the operator checks it and approves it\n", time.Since(start).Seconds(), v.ID)
	fmt.Print(indent(ac.CLI(t, "node", "show", v.ID)))
	fmt.Printf("    $ g8-ac node approve %s\n", v.ID)
	ac.CLI(t, "node", "approve", v.ID)
	v, err = site.WaitNode(vm.MACs[0], 6*time.Minute, func(v testenv.NodeView) bool { return v.BootID != "" && v.LastAddr != "" })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	fmt.Printf("    %.0fs: the node's session is up from %s\n", time.Since(start).Seconds(), v.LastAddr)
	time.Sleep(3 * time.Second) // the last console lines and the redrawn prompt

	step("the VM's serial console, from its last login prompt")
	con := vm.Console()
	if i := strings.LastIndex(con, "Debian GNU/Linux"); i >= 0 {
		con = con[i:]
	}
	fmt.Print(indent(strings.ReplaceAll(con, "\r", "")))

	step("an operator logs in over SSH (OpenSSH client, key from the controller) and reads the sandbox")
	fmt.Printf("    $ ip netns exec %s ssh -i %s root@%s cat /opt/g8/hello/README\n", site.LAN.NS, key, v.LastAddr)
	out, err := site.SSH(key, v.LastAddr, "cat", "/opt/g8/hello/README")
	if err != nil {
		t.Fatalf("ssh: %v", err)
	}
	fmt.Print(indent(out))
	step("the controller's view")
	fmt.Print(indent(ac.CLI(t, "node", "list")))
	if !keep {
		step("cleaning up (make vm-demo KEEP=1 leaves the site running)")
		return
	}
	step("the site stays up; press Ctrl-C to power the VM off and remove everything")
	select {}
}

func must(t *testenv.Script, err error) {
	if err != nil {
		t.Fatal(err)
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}
