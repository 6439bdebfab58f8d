package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	for _, want := range []string{"pkgname = g8os-boot", "backup = etc/g8os/net.toml", "depend = fuse3", "depend = iproute2",
		"depend = encfs", "optdepend = gocryptfs", "optdepend = openvswitch", "optdepend = docker", "optdepend = qemu", "optdepend = mc"} {
		if !strings.Contains(string(info), want+"\n") && !strings.Contains(string(info), want+":") {
			t.Errorf(".PKGINFO lacks %q:\n%s", want, info)
		}
	}

	root := testenv.NewNodeRoot(t)
	for _, f := range []string{
		"usr/bin/g8-netup", "usr/bin/g8-unlock", "usr/bin/g8-acsession", "usr/bin/g8-sshd", "usr/bin/g8-fs", "usr/bin/g8-status", "usr/bin/g8-ac",
		"usr/lib/systemd/system/g8os.target", "usr/lib/systemd/system/g8os-failed@.service",
		"usr/lib/tmpfiles.d/g8os.conf", "usr/lib/systemd/catalog/g8os.catalog",
		"etc/g8os/net.toml", "usr/share/doc/g8os/units.md", "usr/share/doc/g8os/net.toml.example",
	} {
		if _, err := root.ReadFile(f); err != nil {
			t.Errorf("package did not install /%s: %v", f, err)
		}
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
