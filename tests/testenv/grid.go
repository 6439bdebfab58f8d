package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/grid"
)

// GridSite is a site whose controller runs the grid manager on a
// repository the test edits, with the app's sandbox in its content store.
type GridSite struct {
	*Site
	Repo string
}

// NewGridSite starts the controller with the grid manager (1 s rounds) on
// an empty repository, approves the node and publishes the node's other
// sandbox (SandboxMount), which app changes must leave alone.
func NewGridSite(t testing.TB) *GridSite {
	t.Helper()
	RequireRoot(t, "systemd-nspawn", "encfs", "go")
	s := &GridSite{Site: NewSite(t), Repo: t.TempDir()}
	s.AC = StartController(t, s.ACHost, ControllerOptions{
		Names:  []string{SiteACAddr, SiteFallbackAC},
		Listen: []string{"0.0.0.0:8443"},
		Args:   []string{"--grid-repo", s.Repo, "--grid-interval", "1s", "--offline-after", "30s"},
	})
	s.AC.ApproveMAC(t, s.Node.MAC("eth0"))
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, SandboxFile), []byte(SandboxText), 0o644); err != nil {
		t.Fatal(err)
	}
	s.PublishSandbox("hello", src, SandboxMount)
	return s
}

// Write writes a file of the grid repository (name relative to it).
func (s *GridSite) Write(t testing.TB, name, data string) {
	t.Helper()
	p := filepath.Join(s.Repo, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// SpecHash is the hash the node reports for the repository's app.
func (s *GridSite) SpecHash(t testing.TB, app string) string {
	t.Helper()
	r, err := grid.LoadRepo(s.Repo)
	if err != nil {
		t.Fatal(err)
	}
	return r.Apps[app].Hash
}

// AppUnit is the unit of the grid app "web" the tests deploy.
const AppUnit = "g8-app-web.service"

// AppRunning waits until the node runs the app with spec hash.
func AppRunning(t testing.TB, m *Machine, hash string, timeout time.Duration) map[string]string {
	t.Helper()
	var p map[string]string
	Eventually(t, timeout, func() string {
		p = m.Show(AppUnit, "ActiveState", "Description", "MainPID", "NRestarts", "RootDirectory")
		if p["ActiveState"] != "active" || !strings.Contains(p["Description"], hash) {
			return fmt.Sprintf("%s: %v, want active with spec %s", AppUnit, p, hash)
		}
		return ""
	})
	return p
}

// BuildFlist chunks dir into the controller's content store with the real
// `g8-fs build` and returns the flist reference ("blake3:<hex>") a grid
// app or fs.toml names it by. Unlike PublishSandbox it does not add it to
// the nodes' fs.toml.
func (s *Site) BuildFlist(t testing.TB, dir string) string {
	t.Helper()
	flist := filepath.Join(t.TempDir(), "app.flist")
	out, err := exec.Command(Bin(t, "g8-fs"), "build", "--store", filepath.Join(s.AC.DataDir, "store"), "-o", flist, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("g8-fs build %s: %v: %s", dir, err, out)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "blake3:") {
			return f
		}
	}
	t.Fatalf("g8-fs build printed no flist reference:\n%s", out)
	return ""
}

// GridCLI runs `g8-ac ARGS --data DIR` (grid and app commands take their
// flags after the command words) and returns its combined output and exit
// code.
func (c *Controller) GridCLI(args ...string) (string, int) {
	cmd := exec.Command(c.Bin, append(args, "--data", c.DataDir)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		return string(out) + err.Error(), -1
	}
	return string(out), 0
}
