package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/tests/testenv"
)

// The PKGBUILD's pkgver() reads the version git archive stamped into
// VERSION (export-subst of `git describe`), in the form Arch's VCS
// guidelines use: at a tag the tag's version, after it X.rN.gHASH, and
// without any tag the PKGBUILD's own pkgver. make pkg (tools/mkpkg.sh)
// names the package from `git describe` of the same commit through the
// same function, so makepkg never has to change the version it was given.
func TestPkgverFromGitDescribe(t *testing.T) {
	for _, c := range []string{"git", "bash", "tar"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s: %v", c, err)
		}
	}
	mod, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	run := func(dir string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// The repository's own VERSION and .gitattributes, in a repository
	// whose tags the test controls.
	for _, f := range []string{"VERSION", ".gitattributes"} {
		data, err := os.ReadFile(filepath.Join(mod, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(repo, "git", "init", "-q")
	run(repo, "git", "add", ".")
	run(repo, "git", "commit", "-qm", "one")
	pkgbuild := filepath.Join(mod, "packaging/PKGBUILD")
	// pkgver() as makepkg calls it: in $srcdir, the archive extracted there.
	pkgver := func(rev string) string {
		t.Helper()
		src := t.TempDir()
		run(repo, "sh", "-c", "git archive --prefix=boot-0/ "+rev+" | tar -x -C "+src)
		return run(src, "bash", "-c", `set -eu; source "$1"; pkgver`, "pkgver", pkgbuild)
	}
	// What tools/mkpkg.sh computes for the same commit.
	described := func(rev string) string {
		t.Helper()
		d, _ := exec.Command("git", "-C", repo, "describe", "--tags", "--abbrev=7", rev).Output()
		out, err := exec.Command("bash", "-c", `source "$1"; _pkgver_of "$2" || echo none`, "x", pkgbuild, strings.TrimSpace(string(d))).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := pkgver("HEAD"); got != "0" {
		t.Errorf("no tag: pkgver() = %q, want the PKGBUILD's 0", got)
	}
	if got := described("HEAD"); got != "none" {
		t.Errorf("no tag: mkpkg would use %q, want its own fallback", got)
	}
	run(repo, "git", "tag", "v1.2.0")
	if got, d := pkgver("v1.2.0"), described("v1.2.0"); got != "1.2.0" || d != got {
		t.Errorf("at the tag: pkgver() = %q, mkpkg %q, want 1.2.0", got, d)
	}
	run(repo, "git", "commit", "-q", "--allow-empty", "-m", "two")
	want := "1.2.0.r1.g" + run(repo, "git", "rev-parse", "--short=7", "HEAD")
	if got, d := pkgver("HEAD"), described("HEAD"); got != want || d != want {
		t.Errorf("after the tag: pkgver() = %q, mkpkg %q, want %s", got, d, want)
	}
}
