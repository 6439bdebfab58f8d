// Command imagebench measures the bootstrap OS image (bench/image.sh runs it
// for `make bench`): the image's size, and the time from VM power-on (QEMU
// started) to g8os.target reached, median of repeated boots of an enrolled
// node, beside the same image built without the g8os package booting to its
// login prompt. Both are read off the serial console with the host's clock:
// the g8os image is up when its login prompt shows every phase's line ready
// (g8os.target is reached when the last phase is), the baseline at its
// first login prompt. It prints markdown rows:
// | benchmark | g8 | baseline | ratio | target |
package main

import (
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

func main() {
	boots := flag.Int("boots", 3, "measured boots of each image")
	flag.Parse()
	t := testenv.NewScript("imagebench")
	defer t.Close()
	testenv.RequireRoot(t, "qemu-system-x86_64", "mkosi", "pacman", "dnsmasq", "ssh")

	site := testenv.NewSite(t)
	site.StartController()
	site.StartDHCP()
	key := site.OperatorKey()
	vm := site.Node.NewVM()
	g8img := site.SiteImage(testenv.NetConfig{MACs: vm.MACs, Slow: 5}.TOML())
	baseImg := filepath.Join(t.TempDir(), "base.raw")
	if out, err := exec.Command("tools/image.sh", "--no-g8os", "-o", baseImg).CombinedOutput(); err != nil {
		t.Fatalf("tools/image.sh --no-g8os: %v\n%s", err, out)
	}

	// Enrol once (first boot waits for the operator), then power off.
	vm.UseImage(g8img)
	vm.PowerOn()
	v, err := site.WaitNode(vm.MACs[0], 6*time.Minute, func(v testenv.NodeView) bool { return v.State == "pending" })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	site.AC.CLI(t, "node", "approve", v.ID)
	// A pending node already has an address on record: wait for the
	// session, then for sshd's ready line, before logging in.
	v, err = site.WaitNode(vm.MACs[0], 6*time.Minute, func(v testenv.NodeView) bool { return v.BootID != "" && v.LastAddr != "" })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	vm.WaitConsole(testenv.ChainReadyPrompt, 2*time.Minute)
	if out, err := site.SSH(key, v.LastAddr, "systemctl", "poweroff"); err != nil {
		t.Fatalf("poweroff: %v %s", err, out)
	}
	vm.WaitOff(2 * time.Minute)

	g8 := bootTimes(t, vm, *boots, testenv.ChainReadyPrompt)
	vm.UseImage(baseImg)
	base := bootTimes(t, vm, *boots, testenv.LoginPrompt)

	fmt.Printf("| VM power-on to g8os.target, console all ready (%s, median of %d; baseline: the image without g8os to its login prompt) | %.1f s | %.1f s | %.2fx | |\n",
		strings.ToUpper(testenv.Accel()), *boots, g8.Seconds(), base.Seconds(), float64(g8)/float64(base))
	gi, bi := size(t, g8img), size(t, baseImg)
	fmt.Printf("| image size, allocated (baseline: without g8os) | %d MiB | %d MiB | %.2fx | |\n", gi>>20, bi>>20, float64(gi)/float64(bi))
}

// bootTimes powers vm on n times and returns the median time from power-on
// to the console line reached; each boot ends with a power cut (the path
// measured is the same every time).
func bootTimes(t *testenv.Script, vm *testenv.VM, n int, reached *regexp.Regexp) time.Duration {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		vm.PowerOn()
		vm.WaitConsole(reached, 6*time.Minute)
		ds = append(ds, time.Since(start))
		vm.PowerCut()
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// size is the space the image's blocks take (it is a sparse file).
func size(t *testenv.Script, path string) int64 {
	out, err := exec.Command("du", "-B1", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	if _, err := fmt.Sscan(string(out), &n); err != nil {
		t.Fatalf("du %s: %q: %v", path, out, err)
	}
	return n
}
