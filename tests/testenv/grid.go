package testenv

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

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
