// Command bootbench measures the boot chain under real systemd (bench/boot.sh
// runs it for `make bench`): for each path to the controller, the time from
// `systemctl start g8os.target` to every phase active, median of repeated
// boots of the same (already enrolled) node root, beside the boot of the
// same container without the g8 units; then each daemon's idle RSS and
// stripped size beside a minimal Go program's. It prints markdown rows:
// | benchmark | g8 | baseline | ratio | target |
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

var daemons = []string{"g8-netup", "g8-unlock", "g8-acsession", "g8-sshd", "g8-fs"}

func main() {
	boots := flag.Int("boots", 5, "measured boots per path (after one enrolling boot)")
	flag.Parse()
	t := testenv.NewScript("bootbench")
	defer t.Close()
	testenv.RequireRoot(t, "systemd-nspawn", "dnsmasq")
	floorRSS, floorSize := goFloor(t)
	sandboxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(sandboxDir, "tool"), []byte("#!/bin/sh\necho bench\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	type path struct {
		name, target string
		cfg          testenv.NetConfig
		dhcp         bool
		gocryptfs    bool
	}
	var rss map[string]int64
	var sizes map[string]int64
	for _, p := range []path{
		{"static, encfs", "< 2 s added", testenv.NetConfig{Static: true}, false, false},
		{"static, gocryptfs", "< 1 s added", testenv.NetConfig{Static: true}, false, true},
		{"DHCP, encfs", "", testenv.NetConfig{}, true, false},
		{"fallback, encfs", "", testenv.NetConfig{}, false, false},
	} {
		site := testenv.NewSite(t)
		site.StartController()
		if p.dhcp {
			site.StartDHCP()
		}
		site.AC.ApproveMAC(t, site.Node.MAC("eth0"))
		site.PublishSandbox("bench", sandboxDir, "/opt/g8/bench")
		root := site.NodeRoot(p.cfg)
		// Booted without the chain; the benchmark starts it by hand. Only
		// the target's own link goes: `systemctl disable g8os.target`
		// would take its phases with it (Also=), and starting the target
		// would then start nothing.
		if err := os.Remove(filepath.Join(root.Dir, "etc/systemd/system/multi-user.target.wants/g8os.target")); err != nil {
			t.Fatalf("keep g8os.target from starting at boot: %v", err)
		}
		// The unlock key is 256 random bits: scrypt stretching adds
		// nothing but time (docs/units.md, "gocryptfs").
		if p.gocryptfs {
			root.WriteFile("etc/systemd/system/g8-unlock.service.d/backend.conf", []byte(
				"[Service]\nExecStart=\nExecStart=/usr/bin/g8-unlock --private /etc/g8os/private --mount /mnt/etc --backend gocryptfs --gocryptfs-scryptn 10\n"), 0o644)
		}
		var chain, boot []float64
		for i := 0; i <= *boots; i++ {
			m := site.Node.Boot(root)
			bootSec := waitBooted(t, m)
			start := time.Now()
			m.MustExec("systemctl", "start", "g8os.target")
			wall := time.Since(start).Seconds()
			for _, u := range daemons {
				if st := m.Show(u+".service", "ActiveState")["ActiveState"]; st != "active" {
					t.Fatalf("%s: %s is %s after systemctl start g8os.target returned", p.name, u, st)
				}
			}
			// systemd's own clock: from g8-netup leaving inactive to the
			// target active (excludes the nsenter round trip).
			began := monotonic(t, m, "g8-netup.service", "InactiveExitTimestampMonotonic")
			done := monotonic(t, m, "g8os.target", "ActiveEnterTimestampMonotonic")
			if i == 0 {
				// The first boot enrolls the node (creates the volume);
				// it is not what every later boot costs.
				fmt.Fprintf(os.Stderr, "bootbench: %s: enrolling boot %.2fs (wall %.2fs)\n", p.name, float64(done-began)/1e6, wall)
			} else {
				chain = append(chain, float64(done-began)/1e6)
				boot = append(boot, bootSec)
			}
			if rss == nil {
				time.Sleep(2 * time.Second)
				rss = idleRSS(t, m)
				sizes = binarySizes(t, root)
			}
			m.Poweroff()
		}
		c, b := median(chain), median(boot)
		row(fmt.Sprintf("boot chain, %s path: start g8os.target to all active (median of %d)", p.name, len(chain)),
			fmt.Sprintf("%.2f s", c), fmt.Sprintf("container boot %.2f s", b), c/b, p.target)
	}
	for _, d := range daemons {
		row(d+" idle RSS", mib(rss[d]), "Go idle floor "+mib(floorRSS), float64(rss[d])/float64(floorRSS), "< 10 MiB")
	}
	for _, d := range append(daemons, "g8-status") {
		row(d+" stripped size", mib(sizes[d]), "Go hello "+mib(floorSize), float64(sizes[d])/float64(floorSize), "")
	}
}

func row(name, g8, base string, ratio float64, target string) {
	fmt.Printf("| %s | %s | %s | %.2f | %s |\n", name, g8, base, ratio, target)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func monotonic(t *testenv.Script, m *testenv.Machine, unit, prop string) int64 {
	v, err := strconv.ParseInt(m.Show(unit, prop)[prop], 10, 64)
	if err != nil || v == 0 {
		t.Fatalf("%s %s: %q", unit, prop, m.Show(unit, prop)[prop])
	}
	return v
}

// waitBooted waits for the container's boot to finish and returns how long
// it took by systemd's clock (userspace start to the default target).
func waitBooted(t *testenv.Script, m *testenv.Machine) float64 {
	_, _ = m.Exec("systemctl", "is-system-running", "--wait")
	out := m.MustExec("systemctl", "show", "--value", "--property=UserspaceTimestampMonotonic,FinishTimestampMonotonic")
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("boot timestamps: %q", out)
	}
	us, _ := strconv.ParseInt(f[0], 10, 64)
	fin, _ := strconv.ParseInt(f[1], 10, 64)
	if us == 0 || fin == 0 {
		t.Fatalf("boot timestamps: %q", out)
	}
	return float64(fin-us) / 1e6
}

func idleRSS(t *testenv.Script, m *testenv.Machine) map[string]int64 {
	rss := map[string]int64{}
	for _, d := range daemons {
		pid := m.Show(d+".service", "MainPID")["MainPID"]
		rss[d] = vmRSS(t, m.MustExec("cat", "/proc/"+pid+"/status"))
	}
	return rss
}

func vmRSS(t *testenv.Script, status string) int64 {
	for _, l := range strings.Split(status, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/PID/status")
	return 0
}

func binarySizes(t *testenv.Script, root *testenv.NodeRoot) map[string]int64 {
	sizes := map[string]int64{}
	for _, d := range append(daemons, "g8-status") {
		st, err := os.Stat(root.Path("usr/bin/" + d))
		if err != nil {
			t.Fatal(err)
		}
		sizes[d] = st.Size()
	}
	return sizes
}

// goFloor builds a minimal Go program with the package's flags (PIE,
// stripped) and measures its size and its RSS while it sleeps.
func goFloor(t *testenv.Script) (rss, size int64) {
	dir := t.TempDir()
	src := "package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Hour) }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module floor\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "floor")
	cmd := exec.Command("go", "build", "-trimpath", "-buildmode=pie", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build floor: %v: %s", err, out)
	}
	st, _ := os.Stat(bin)
	p := exec.Command(bin)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Process.Kill(); _ = p.Wait() }()
	time.Sleep(time.Second)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return vmRSS(t, string(status)), st.Size()
}
