package backend

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// newBackends returns each backend with a cheap key derivation for tests.
func newBackends(t *testing.T) []Backend {
	var bs []Backend
	for _, n := range Names() {
		b, err := New(n, Tools{GocryptfsScryptN: 10})
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	return bs
}

func mustUnmount(t *testing.T, m *Mount) {
	t.Helper()
	if err := Unmount("", m.Mountpoint); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not exit after unmount", m.Tool)
	}
}

// cleanupMount unmounts whatever is left at mnt when a test fails midway.
func cleanupMount(t *testing.T, mnt string) {
	t.Cleanup(func() {
		if info, _ := MountAt(mnt); info != nil {
			_ = Unmount("", mnt)
		}
	})
}

func TestInitMountRemountWrongKeyStale(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "gocryptfs", "fusermount3")
	for _, b := range newBackends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			private, mnt := filepath.Join(dir, "private"), filepath.Join(dir, "mnt")
			if err := os.Mkdir(mnt, 0o700); err != nil {
				t.Fatal(err)
			}
			cleanupMount(t, mnt)
			pw := []byte(strings.Repeat("ab", 32))

			if st, err := Inspect(b, private); err != nil || st != DirEmpty {
				t.Fatalf("Inspect(absent) = %v, %v", st, err)
			}
			if err := b.Init(ctx, private, pw); err != nil {
				t.Fatal(err)
			}
			if st, err := Inspect(b, private); err != nil || st != DirVolume {
				t.Fatalf("Inspect(after init) = %v, %v", st, err)
			}

			m, err := b.Mount(ctx, private, mnt, pw)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := MountAt(mnt)
			if info == nil || info.FSType != b.FSType() {
				t.Fatalf("mount table at %s: %+v", mnt, info)
			}
			if err := os.WriteFile(filepath.Join(mnt, "marker"), []byte("hello"), 0o600); err != nil {
				t.Fatal(err)
			}
			mustUnmount(t, m)
			if _, err := os.Stat(filepath.Join(mnt, "marker")); !os.IsNotExist(err) {
				t.Fatalf("marker visible after unmount: %v", err)
			}

			m, err = b.Mount(ctx, private, mnt, pw)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(mnt, "marker")); err != nil || string(got) != "hello" {
				t.Fatalf("marker after remount = %q, %v", got, err)
			}
			mustUnmount(t, m)

			before := testenv.HashTree(t, private)
			_, err = b.Mount(ctx, private, mnt, []byte(strings.Repeat("cd", 32)))
			if !errors.Is(err, ErrWrongKey) {
				t.Fatalf("wrong key: err = %v, want ErrWrongKey", err)
			}
			if info, _ := MountAt(mnt); info != nil {
				t.Fatalf("mounted after a wrong key: %+v", info)
			}
			if after := testenv.HashTree(t, private); after != before {
				t.Fatal("wrong key changed the private dir")
			}

			// A FUSE daemon killed hard leaves a stale mount behind.
			m, err = b.Mount(ctx, private, mnt, pw)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := m.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("killed daemon: err = %v", err)
			}
			if !Stale(mnt) {
				t.Fatal("mount not stale after killing the daemon")
			}
			if err := Unmount("", mnt); err != nil {
				t.Fatal(err)
			}
			if info, _ := MountAt(mnt); info != nil || Stale(mnt) {
				t.Fatalf("stale mount not cleaned: %+v", info)
			}
		})
	}
}

func TestMountCorruptConfig(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "gocryptfs", "fusermount3")
	for _, b := range newBackends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			dir := t.TempDir()
			private, mnt := filepath.Join(dir, "private"), filepath.Join(dir, "mnt")
			os.Mkdir(private, 0o700)
			os.Mkdir(mnt, 0o700)
			cleanupMount(t, mnt)
			if err := os.WriteFile(filepath.Join(private, b.ConfigFile()), []byte("garbage\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			before := testenv.HashTree(t, private)
			_, err := b.Mount(ctx, private, mnt, []byte(strings.Repeat("ab", 32)))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if testenv.HashTree(t, private) != before {
				t.Fatal("corrupt private dir was modified")
			}
		})
	}
}

func TestInspect(t *testing.T) {
	enc, gcf := &EncFS{}, &Gocryptfs{}
	for _, tc := range []struct {
		name  string
		files []string
		b     Backend
		want  DirState
		err   string
	}{
		{"empty", nil, enc, DirEmpty, ""},
		{"encfs volume", []string{".encfs6.xml", "abc"}, enc, DirVolume, ""},
		{"gocryptfs volume", []string{"gocryptfs.conf", "gocryptfs.diriv"}, gcf, DirVolume, ""},
		{"other backend", []string{"gocryptfs.conf"}, enc, 0, "another backend"},
		{"junk", []string{"notes.txt"}, gcf, 0, "1 entries but no gocryptfs.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600)
			}
			got, err := Inspect(tc.b, dir)
			if tc.err != "" {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("err = %v, want ErrCorrupt naming %s and %q", err, dir, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Inspect = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestMissingTool(t *testing.T) {
	for _, n := range Names() {
		b, _ := New(n, Tools{EncFS: "/nonexistent/encfs", Gocryptfs: "/nonexistent/gocryptfs"})
		if err := b.Check(); !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "/nonexistent/") {
			t.Errorf("%s: Check = %v", n, err)
		}
	}
	if _, err := New("ecryptfs", Tools{}); err == nil || !strings.Contains(err.Error(), "ecryptfs") {
		t.Errorf("unknown backend: %v", err)
	}
}

func TestTailKeepsLastBytes(t *testing.T) {
	tl := &tail{max: 8}
	tl.Write([]byte("hello "))
	tl.Write([]byte("world!"))
	if got := tl.String(); got != "o world!" {
		t.Fatalf("tail = %q", got)
	}
}
