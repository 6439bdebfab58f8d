package sd

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStatusIsMirroredToTheConsoleLineTheUnitAsksFor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "g8-unlock.issue")
	t.Setenv(ConsoleFileEnv, path)
	t.Setenv(ConsolePhaseEnv, "unlock")
	loadConsole()
	t.Cleanup(loadConsole)
	if os.Getenv(ConsoleFileEnv) != "" {
		t.Error("the variables stay in the environment for children to inherit")
	}
	var n Notifier
	read := func() string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	n.Status("denied by %s; asking again in %s", `https://ac\e[31m`, "1m")
	if got, want := read(), "g8os unlock    waiting  denied by https://ac/e[31m; asking again in 1m\n"; got != want {
		t.Errorf("before READY:\n got %q\nwant %q", got, want)
	}
	n.Ready("/etc/g8os/private unlocked")
	n.Status("certificate renewed")
	if got, want := read(), "g8os unlock    ready    certificate renewed\n"; got != want {
		t.Errorf("after READY:\n got %q\nwant %q", got, want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the issue dir, want 1 (no temp files left)", len(entries))
	}
}

// A new line makes every agetty waiting at a prompt draw it again: the
// phase touches the file `agetty --reload` touches.
func TestANewLineRedrawsTheLoginPrompt(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(ConsoleFileEnv, filepath.Join(dir, "g8-fs.issue"))
	t.Setenv(ConsolePhaseEnv, "fs")
	loadConsole()
	t.Cleanup(loadConsole)
	reload := filepath.Join(dir, "agetty.reload")
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.WriteFile(reload, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(reload, old, old); err != nil {
		t.Fatal(err)
	}
	defer func(p string) { AgettyReload = p }(AgettyReload)
	AgettyReload = reload
	var n Notifier
	n.Status("mounting %d sandboxes", 2)
	fi, err := os.Stat(reload)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().After(old) {
		t.Errorf("%s not touched by a new console line (mtime %v)", reload, fi.ModTime())
	}
}

func TestNoConsoleLineUnlessTheUnitAsks(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(ConsoleFileEnv, filepath.Join(dir, "g8-unlock.issue"))
	t.Setenv(ConsolePhaseEnv, "") // both are needed
	loadConsole()
	t.Cleanup(loadConsole)
	var n Notifier
	n.Status("waiting")
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("wrote %d files without being asked", len(entries))
	}
}
