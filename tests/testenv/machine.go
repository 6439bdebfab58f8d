package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end fixtures: a cached Debian root, the project's pacman
// package installed into a per-test overlay of it, and that root booted
// with real systemd under systemd-nspawn inside one of the topology's
// namespaces. Everything is undone when the test ends, also on failure:
// the container is powered off (killed if it hangs), the overlay unmounted.

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
	pkgOnce  sync.Once
	pkgPath  string
	pkgErr   error
	rebuilt  sync.Map // suffix -> *rebuild
)

type rebuild struct {
	once sync.Once
	path string
	err  error
}

// DebianRoot returns the cached debootstrapped root the machines boot
// (tools/e2e-root.sh builds it on first use, about a minute). Never write to
// it: NewNodeRoot overlays it.
func DebianRoot(t testing.TB) string {
	t.Helper()
	RequireRoot(t, "debootstrap", "systemd-nspawn", "nsenter")
	rootOnce.Do(func() { rootDir, rootErr = runTool("tools/e2e-root.sh") })
	if rootErr != nil {
		t.Fatalf("e2e root: %v", rootErr)
	}
	return rootDir
}

// Package returns the pacman package of this checkout, built once per test
// process with `make pkg` (tools/mkpkg.sh). G8OS_PKG names a prebuilt one.
func Package(t testing.TB) string {
	t.Helper()
	RequireRoot(t, "makepkg", "pacman")
	pkgOnce.Do(func() {
		if p := os.Getenv("G8OS_PKG"); p != "" {
			pkgPath, pkgErr = filepath.Abs(p)
			return
		}
		pkgPath, pkgErr = runTool("tools/mkpkg.sh")
	})
	if pkgErr != nil {
		t.Fatalf("package: %v", pkgErr)
	}
	return pkgPath
}

// PackageAC returns the controller's package (g8os-ac), built beside the
// node's by the same `make pkg`.
func PackageAC(t testing.TB) string {
	t.Helper()
	node := Package(t)
	p := filepath.Join(filepath.Dir(node), strings.Replace(filepath.Base(node), "g8os-boot-", "g8os-ac-", 1))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("controller package beside %s: %v", node, err)
	}
	return p
}

// RebuiltPackage returns the package of this checkout built again with
// ".suffix" appended to its version, as an upgrade of Package's (built once
// per test process and suffix, outside packaging/out).
func RebuiltPackage(t testing.TB, suffix string) string {
	t.Helper()
	RequireRoot(t, "makepkg", "pacman")
	v, _ := rebuilt.LoadOrStore(suffix, &rebuild{})
	r := v.(*rebuild)
	r.once.Do(func() {
		out, err := os.MkdirTemp("", "g8os-pkg-"+suffix+"-")
		if err != nil {
			r.err = err
			return
		}
		r.path, r.err = runToolEnv([]string{"G8OS_PKGVER_SUFFIX=" + suffix, "G8OS_PKG_OUT=" + out}, "tools/mkpkg.sh")
	})
	if r.err != nil {
		t.Fatalf("rebuilt package: %v", r.err)
	}
	return r.path
}

// runTool runs a script of the repository and returns the last line it
// printed (the path it made).
func runTool(script string, args ...string) (string, error) { return runToolEnv(nil, script, args...) }

// runToolEnv is runTool with extra environment variables (KEY=VALUE).
func runToolEnv(env []string, script string, args ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, script), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// NodeRoot is a writable root file system for one node: an overlay whose
// lower layer is the cached Debian root, with the package installed. It
// survives power cycles of the machine booted from it (second-boot tests).
type NodeRoot struct {
	Dir string // the merged root
	t   testing.TB
}

// NewNodeRoot makes a node root with the package installed by pacman, as an
// image build would (pacman -U --root).
func NewNodeRoot(t testing.TB) *NodeRoot {
	t.Helper()
	return newRoot(t, Package(t))
}

// NewControllerRoot is the same with the controller's package (g8os-ac)
// installed instead: a machine that runs g8-ac.service as a site would.
func NewControllerRoot(t testing.TB) *NodeRoot {
	t.Helper()
	return newRoot(t, PackageAC(t))
}

func newRoot(t testing.TB, pkg string) *NodeRoot {
	t.Helper()
	lower := DebianRoot(t)
	base := t.TempDir()
	r := &NodeRoot{Dir: filepath.Join(base, "root"), t: t}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, base, base)
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, r.Dir).CombinedOutput(); err != nil {
		t.Fatalf("mount overlay: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// Lazy: a process of a killed container may still hold a file
		// open for a moment; the mount is gone from the tree either way.
		if out, err := exec.Command("umount", "-l", r.Dir).CombinedOutput(); err != nil {
			t.Logf("cleanup: umount %s: %v: %s", r.Dir, err, out)
		}
	})
	r.MkdirAll("var/lib/pacman")
	out, err := exec.Command("pacman", "-U", "--noconfirm", "-dd", "--root", r.Dir,
		"--dbpath", filepath.Join(r.Dir, "var/lib/pacman"), pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("pacman -U %s: %v\n%s", pkg, err, out)
	}
	return r
}

// Path is rel's path on the host.
func (r *NodeRoot) Path(rel string) string { return filepath.Join(r.Dir, rel) }

// MkdirAll creates a directory inside the root.
func (r *NodeRoot) MkdirAll(rel string) {
	r.t.Helper()
	if err := os.MkdirAll(r.Path(rel), 0o755); err != nil {
		r.t.Fatal(err)
	}
}

// WriteFile writes a file inside the root, creating its directory.
func (r *NodeRoot) WriteFile(rel string, data []byte, mode os.FileMode) {
	r.t.Helper()
	r.MkdirAll(filepath.Dir(rel))
	if err := os.WriteFile(r.Path(rel), data, mode); err != nil {
		r.t.Fatal(err)
	}
}

// ReadFile reads a file of the root from the host.
func (r *NodeRoot) ReadFile(rel string) ([]byte, error) { return os.ReadFile(r.Path(rel)) }

// Enable enables units in the root offline (systemctl --root).
func (r *NodeRoot) Enable(units ...string) {
	r.t.Helper()
	out, err := exec.Command("systemctl", append([]string{"--root=" + r.Dir, "enable"}, units...)...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("systemctl --root enable %v: %v: %s", units, err, out)
	}
}

// Machine is a node root booted with real systemd (systemd-nspawn -b) in a
// topology namespace.
type Machine struct {
	Name string
	Root *NodeRoot
	PID1 int // systemd, seen from the host
	t    testing.TB
	cmd  *exec.Cmd
	log  *SyncBuffer
	done chan struct{}
}

// Boot boots root inside h's namespace (its interfaces are the machine's)
// and waits until systemd answers. The machine is powered off when the test
// ends.
func (h *Host) Boot(root *NodeRoot) *Machine {
	t := h.tp.t
	t.Helper()
	RequireRoot(t, "systemd-nspawn", "nsenter")
	m := &Machine{Name: h.NS, Root: root, t: t, log: &SyncBuffer{}, done: make(chan struct{})}
	// --keep-unit and --register=no: the host's PID 1 is not systemd.
	// --console=read-only: the console (where failures are printed) is
	// captured in m.Console().
	// With --keep-unit nspawn puts the container in its own cgroup's
	// "payload" child: two machines started from one cgroup would share it
	// and their systemds would fight over the same unit cgroups (units fail
	// with 219/CGROUP). So each machine starts in a cgroup of its own.
	cgroups := machineCgroups(t, "g8os-"+h.NS)
	m.cmd = exec.Command("sh", "-c", `for d in $G8OS_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"`, "sh",
		"systemd-nspawn", "-D", root.Dir, "-b", "-M", h.NS,
		"--register=no", "--keep-unit", "--console=read-only",
		// A private network namespace, but nspawn 252 drops CAP_NET_ADMIN
		// unless told: the node owns its network.
		"--capability=CAP_NET_ADMIN",
		"--network-namespace-path=/run/netns/"+h.NS, "--bind=/dev/fuse")
	m.cmd.Env = append(os.Environ(), "G8OS_CGROUPS="+strings.Join(cgroups, " "))
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() { _ = m.cmd.Wait(); close(m.done) }()
	t.Cleanup(func() {
		m.Poweroff()
		for _, d := range cgroups {
			removeCgroup(t, d)
		}
		if t.Failed() {
			t.Logf("--- console of %s ---\n%s", m.Name, m.Console())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for m.PID1 == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: systemd did not start:\n%s", m.Name, m.Console())
		}
		select {
		case <-m.done:
			t.Fatalf("%s: systemd-nspawn exited:\n%s", m.Name, m.Console())
		case <-time.After(50 * time.Millisecond):
		}
		m.PID1 = containerInit(m.cmd.Process.Pid)
	}
	// systemd answers on its bus once the boot transaction is queued.
	for {
		out, _ := m.Exec("systemctl", "is-system-running")
		if s := strings.TrimSpace(out); s != "" && s != "offline" && !strings.Contains(s, "Failed to connect") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: systemd does not answer:\n%s", m.Name, m.Console())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m
}

// machineCgroups creates a cgroup named name below this process's own in
// the hierarchies systemd uses (the named "systemd" one of a hybrid host
// and the unified one) and returns their directories.
func machineCgroups(t testing.TB, name string) []string {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	path := func(match func(ctrl string) bool) string {
		for _, l := range strings.Split(string(own), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && match(f[1]) {
				return f[2]
			}
		}
		return ""
	}
	var dirs []string
	for _, l := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		var p string
		switch {
		case f[2] == "cgroup2":
			p = path(func(c string) bool { return c == "" })
		case f[2] == "cgroup" && strings.Contains(","+f[3]+",", ",name=systemd,"):
			p = path(func(c string) bool { return c == "name=systemd" })
		default:
			continue
		}
		d := filepath.Join(f[1], p, name)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("cgroup for the machine: %v", err)
		}
		dirs = append(dirs, d)
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy for systemd found in /proc/self/mounts")
	}
	return dirs
}

// removeCgroup removes a machine's cgroup tree, deepest first (a cgroup
// can only be removed once it has no children and no processes).
func removeCgroup(t testing.TB, dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Logf("cleanup: rmdir %s: %v", dirs[i], err)
		}
	}
}

// containerInit returns the container's systemd as seen from the host: the
// child of systemd-nspawn once it has exec'd systemd (before that the child
// is nspawn's own setup process). 0 if not there yet.
func containerInit(nspawn int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawn, nspawn))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "systemd" {
			return pid
		}
	}
	return 0
}

// Console is everything the machine printed on its console so far.
func (m *Machine) Console() string { return m.log.String() }

// Exec runs a command inside the machine (all its namespaces) and returns
// its combined output; it is killed after a minute.
func (m *Machine) Exec(name string, args ...string) (string, error) {
	return m.ExecWithin(time.Minute, name, args...)
}

// ExecWithin is Exec with another time limit.
func (m *Machine) ExecWithin(limit time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(m.PID1), "-a", name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", m.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustExec is Exec that fails the test on error.
func (m *Machine) MustExec(name string, args ...string) string {
	m.t.Helper()
	out, err := m.Exec(name, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	return out
}

// Show returns systemd properties of a unit.
func (m *Machine) Show(unit string, props ...string) map[string]string {
	m.t.Helper()
	out := m.MustExec("systemctl", "show", unit, "--property="+strings.Join(props, ","))
	res := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			res[k] = v
		}
	}
	return res
}

// ErrUnitFailed is returned by WaitUnit when the unit failed instead.
var ErrUnitFailed = errors.New("unit failed")

// WaitUnit waits until unit's ActiveState is state (e.g. "active") and
// returns its properties then; it gives up early when the unit failed and
// state is not "failed".
func (m *Machine) WaitUnit(unit, state string, timeout time.Duration) (map[string]string, error) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	var p map[string]string
	for {
		p = m.Show(unit, "ActiveState", "SubState", "Result", "StatusText", "ExecMainStatus", "NRestarts",
			"ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic", "ExecMainPID")
		if p["ActiveState"] == state {
			return p, nil
		}
		if p["ActiveState"] == "failed" && state != "failed" {
			return p, fmt.Errorf("%s: %s: %w (%s, status %s): %s", m.Name, unit, ErrUnitFailed, p["Result"], p["ExecMainStatus"], p["StatusText"])
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("%s: %s is %s/%s after %v, want %s; status: %q", m.Name, unit, p["ActiveState"], p["SubState"], timeout, state, p["StatusText"])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MustWaitUnit is WaitUnit that fails the test (with the unit's journal).
func (m *Machine) MustWaitUnit(unit, state string, timeout time.Duration) map[string]string {
	m.t.Helper()
	p, err := m.WaitUnit(unit, state, timeout)
	if err != nil {
		m.t.Fatalf("%v\n--- journal of %s ---\n%s", err, unit, m.Journal(unit))
	}
	return p
}

// Journal is this boot's journal of one unit.
func (m *Machine) Journal(unit string) string {
	out, _ := m.Exec("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-u", unit)
	return out
}

// Poweroff shuts the machine down cleanly and waits; a machine that does
// not stop within 20 s is killed. Safe to call twice.
func (m *Machine) Poweroff() {
	select {
	case <-m.done:
		return
	default:
	}
	_, _ = m.Exec("systemctl", "poweroff", "--no-block")
	select {
	case <-m.done:
		return
	case <-time.After(20 * time.Second):
	}
	m.t.Logf("%s: did not power off within 20 s; killing it", m.Name)
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	_ = syscall.Kill(m.PID1, syscall.SIGKILL)
	<-m.done
}

// Done is closed when the machine has stopped.
func (m *Machine) Done() <-chan struct{} { return m.done }
