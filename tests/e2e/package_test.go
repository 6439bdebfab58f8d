package e2e

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// The package installs what a node needs, declares its dependencies, and
// pacman keeps an operator's net.toml across a reinstall (backup=).
func TestPackageInstallsTheChain(t *testing.T) {
	testenv.RequireRoot(t, "pacman", "bsdtar")
	pkg := testenv.Package(t)
	info, err := exec.Command("bsdtar", "-xOf", pkg, ".PKGINFO").Output()
	if err != nil {
		t.Fatalf("read .PKGINFO of %s: %v", pkg, err)
	}
	for _, want := range []string{"pkgname = g8os-boot", "pkgbase = g8os", "backup = etc/g8os/net.toml", "depend = systemd", "depend = fuse3",
		"depend = encfs", "optdepend = gocryptfs", "optdepend = openvswitch", "optdepend = docker", "optdepend = qemu", "optdepend = mc"} {
		if !strings.Contains(string(info), want+"\n") && !strings.Contains(string(info), want+":") {
			t.Errorf(".PKGINFO lacks %q:\n%s", want, info)
		}
	}
	// Nothing runs ip(8): the phases talk netlink.
	if strings.Contains(string(info), "depend = iproute2") {
		t.Errorf(".PKGINFO depends on iproute2, which nothing uses:\n%s", info)
	}

	root := testenv.NewNodeRoot(t)
	for _, f := range []string{
		"usr/bin/g8-netup", "usr/bin/g8-unlock", "usr/bin/g8-acsession", "usr/bin/g8-sshd", "usr/bin/g8-fs", "usr/bin/g8-status",
		"usr/lib/systemd/system/g8os.target", "usr/lib/systemd/system/g8os-failed@.service",
		"usr/lib/tmpfiles.d/g8os.conf", "usr/lib/systemd/catalog/g8os.catalog",
		"etc/g8os/net.toml", "usr/share/doc/g8os/units.md", "usr/share/doc/g8os/net.toml.example",
	} {
		if _, err := root.ReadFile(f); err != nil {
			t.Errorf("package did not install /%s: %v", f, err)
		}
	}
	// The default net.toml, not the example with its live values.
	modRoot, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	shipped, _ := os.ReadFile(filepath.Join(modRoot, "packaging/net.toml"))
	if got, err := root.ReadFile("etc/g8os/net.toml"); err != nil || len(shipped) == 0 || string(got) != string(shipped) {
		t.Errorf("/etc/g8os/net.toml is not packaging/net.toml (%v):\n%s", err, got)
	}
	if msg, err := exec.Command("bsdtar", "-xOf", pkg, ".INSTALL").Output(); err != nil || !strings.Contains(string(msg), "g8-netup check --config /etc/g8os/net.toml") {
		t.Errorf("the install script does not say how to check net.toml: %v\n%s", err, msg)
	}
	// The controller has its own package; nodes do not carry it.
	if _, err := root.ReadFile("usr/bin/g8-ac"); err == nil {
		t.Error("the node package ships the controller (usr/bin/g8-ac)")
	}
	for _, b := range []string{"g8-netup", "g8-unlock", "g8-acsession", "g8-sshd", "g8-fs", "g8-status"} {
		fullRELRO(t, filepath.Join(root.Dir, "usr/bin", b))
	}
	db := filepath.Join(root.Dir, "var/lib/pacman")
	pacman := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("pacman", append([]string{"--root", root.Dir, "--dbpath", db}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("pacman %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// Every file the database lists is on disk, as installed.
	if out := pacman("-Qkk", "g8os-boot"); !strings.Contains(out, "0 altered files") {
		t.Errorf("pacman -Qkk g8os-boot:\n%s", out)
	}
	mine := []byte("# this node's own network\ncontrollers = [\"https://10.0.0.1:8443\"]\n")
	root.WriteFile("etc/g8os/net.toml", mine, 0o644)
	pacman("-U", "--noconfirm", "-dd", pkg)
	if got, _ := root.ReadFile("etc/g8os/net.toml"); string(got) != string(mine) {
		t.Errorf("reinstalling replaced the operator's net.toml:\n%s", got)
	}
}

// fullRELRO checks what `checksec` calls full RELRO: a PT_GNU_RELRO segment
// and BIND_NOW (DT_FLAGS BIND_NOW or DT_FLAGS_1 NOW), so the GOT is
// read-only before main runs.
func fullRELRO(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	relro := false
	for _, p := range f.Progs {
		relro = relro || p.Type == elf.PT_GNU_RELRO
	}
	now := false
	if ds := f.Section(".dynamic"); ds != nil {
		data, err := ds.Data()
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+16 <= len(data); i += 16 {
			tag, val := elf.DynTag(binary.LittleEndian.Uint64(data[i:])), binary.LittleEndian.Uint64(data[i+8:])
			now = now || (tag == elf.DT_FLAGS && val&uint64(elf.DF_BIND_NOW) != 0) || (tag == elf.DT_FLAGS_1 && val&uint64(elf.DF_1_NOW) != 0)
		}
	}
	if !relro || !now || f.Type != elf.ET_DYN {
		t.Errorf("%s: GNU_RELRO %v, BIND_NOW %v, type %v; want full RELRO in a PIE", path, relro, now, f.Type)
	}
}

// The controller's package: binary, unit, user, data directory and
// config, installed with pacman into an empty root; systemd-sysusers and
// systemd-tmpfiles make the user and the directory from its files.
func TestControllerPackage(t *testing.T) {
	testenv.RequireRoot(t, "pacman", "bsdtar", "systemd-sysusers", "systemd-tmpfiles")
	pkg := testenv.PackageAC(t)
	info, err := exec.Command("bsdtar", "-xOf", pkg, ".PKGINFO").Output()
	if err != nil {
		t.Fatalf("read .PKGINFO of %s: %v", pkg, err)
	}
	for _, want := range []string{"pkgname = g8os-ac", "pkgbase = g8os", "backup = etc/conf.d/g8-ac"} {
		if !strings.Contains(string(info), want+"\n") {
			t.Errorf(".PKGINFO lacks %q:\n%s", want, info)
		}
	}
	if msg, err := exec.Command("bsdtar", "-xOf", pkg, ".INSTALL").Output(); err != nil || !strings.Contains(string(msg), "g8-ac init --data /var/lib/g8-ac") ||
		!strings.Contains(string(msg), "systemctl enable --now g8-ac") {
		t.Errorf("the install script does not say what to do next: %v\n%s", err, msg)
	}
	root := t.TempDir()
	db := filepath.Join(root, "var/lib/pacman")
	if err := os.MkdirAll(db, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("pacman", "-U", "--noconfirm", "-dd", "--noscriptlet", "--root", root, "--dbpath", db, pkg).CombinedOutput(); err != nil {
		t.Fatalf("pacman -U %s: %v\n%s", pkg, err, out)
	}
	for _, f := range []string{"usr/bin/g8-ac", "usr/lib/systemd/system/g8-ac.service", "usr/lib/sysusers.d/g8-ac.conf",
		"usr/lib/tmpfiles.d/g8-ac.conf", "etc/conf.d/g8-ac", "usr/share/doc/g8os-ac/controller.md"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("package did not install /%s: %v", f, err)
		}
	}
	fullRELRO(t, filepath.Join(root, "usr/bin/g8-ac"))
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"systemd-sysusers", "--root=" + root}, {"systemd-tmpfiles", "--create", "--root=" + root}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	var uid int = -1
	for _, l := range strings.Split(string(passwd), "\n") {
		if f := strings.Split(l, ":"); len(f) > 3 && f[0] == "g8-ac" {
			uid, _ = strconv.Atoi(f[2])
		}
	}
	if uid <= 0 {
		t.Fatalf("systemd-sysusers made no g8-ac user:\n%s", passwd)
	}
	fi, err := os.Stat(filepath.Join(root, "var/lib/g8-ac"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || fi.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/g8-ac: owner %d mode %v, want g8-ac (%d) 0700", st.Uid, fi.Mode().Perm(), uid)
	}
	// The unit passes systemd's own checks, with the binary where it says
	// and the host's units (the targets it refers to) beside it.
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	for _, c := range [][]string{{"sh", "-c", "cp -an /usr/lib/systemd/system/. " + unitDir + "/ || cp -an /lib/systemd/system/. " + unitDir + "/"},
		{"mkdir", "-p", filepath.Join(root, "bin")}, {"cp", "-L", "/bin/sh", filepath.Join(root, "bin/sh")}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, "/usr/lib/systemd/system/g8-ac.service").CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify g8-ac.service: %v\n%s", err, out)
	}
}

// The controller as its package runs it: g8os-ac installed by pacman into
// the Debian root, its user and data directory made by systemd-sysusers
// and systemd-tmpfiles (what pacman's hooks run on Arch), the install
// message's steps followed as written, g8-ac.service started by real
// systemd with all its sandboxing, as user g8-ac. A client on the LAN
// checks its health against the trust anchor the message says to ship, and
// `systemctl reload` (new server certificate) keeps it serving.
func TestControllerPackageServesUnderSystemd(t *testing.T) {
	testenv.RequireRoot(t, "systemd-nspawn", "pacman", "curl")
	tp := testenv.NewTopology(t)
	host, lan := tp.Host("acpkg"), tp.Host("lan")
	tp.Link(host, "eth0", lan, "eth0")
	host.Addr("eth0", "10.0.9.1/24")
	lan.Addr("eth0", "10.0.9.2/24")
	m := host.Boot(testenv.NewControllerRoot(t))
	m.MustExec("systemd-sysusers")
	m.MustExec("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/g8-ac.conf")
	as := func(args ...string) string {
		return m.MustExec("runuser", append([]string{"-u", "g8-ac", "--", "g8-ac"}, args...)...)
	}
	as("init", "--data", "/var/lib/g8-ac", "--name", "10.0.9.1")
	anchor := filepath.Join(t.TempDir(), "ac-ca.pem")
	if err := os.WriteFile(anchor, []byte(as("ca", "--data", "/var/lib/g8-ac")), 0o644); err != nil {
		t.Fatal(err)
	}
	m.MustExec("systemctl", "enable", "--now", "g8-ac")
	p := m.MustWaitUnit("g8-ac.service", "active", time.Minute)
	uid := strings.TrimSpace(m.MustExec("id", "-u", "g8-ac"))
	if st := m.MustExec("cat", "/proc/"+p["ExecMainPID"]+"/status"); !strings.Contains(st, "\nUid:\t"+uid+"\t") {
		t.Errorf("g8-ac serve does not run as g8-ac (uid %s):\n%s", uid, st)
	}
	if owner := strings.TrimSpace(m.MustExec("stat", "-c", "%U %a", "/var/lib/g8-ac", "/var/lib/g8-ac/ac.db")); owner != "g8-ac 700\ng8-ac 600" {
		t.Errorf("data directory and store: %q, want g8-ac's, 0700 and 0600", owner)
	}
	healthy := func(when string) {
		t.Helper()
		out, err := lan.Run("curl", "-sS", "--max-time", "10", "--cacert", anchor, "https://10.0.9.1:8443/v1/health")
		if err != nil || !strings.Contains(out, `"status":"ok"`) {
			t.Fatalf("%s: health from the LAN: %v\n%s\n%s", when, err, out, m.Journal("g8-ac.service"))
		}
	}
	healthy("started")
	m.MustExec("systemctl", "reload", "g8-ac")
	if p2 := m.MustWaitUnit("g8-ac.service", "active", 30*time.Second); p2["ExecMainPID"] != p["ExecMainPID"] {
		t.Errorf("reload restarted the controller (pid %s, then %s)", p["ExecMainPID"], p2["ExecMainPID"])
	}
	healthy("reloaded")
}
