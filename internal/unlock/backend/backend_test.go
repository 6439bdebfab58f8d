package backend

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
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
		return
	case <-time.After(5 * time.Second):
	}
	// A test running beside this one that makes a mount namespace (the
	// sandbox tests do) copies this mount into it; the unmount here then
	// does not end the FUSE connection, and the daemon waits for the copy
	// to go. Abort the connection, as g8-fs does in that case.
	t.Logf("%s still running 5s after the unmount (mount copied into another namespace?): aborting its connection", m.Tool)
	if err := m.Abort(); err != nil {
		t.Logf("abort: %v", err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not exit after unmount and abort", m.Tool)
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

// volumeDirs returns a context for one test, a private dir (absent) and an
// empty mountpoint unmounted again at the end, and a password.
func volumeDirs(t *testing.T) (ctx context.Context, private, mnt string, pw []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	private, mnt = filepath.Join(dir, "private"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, mnt)
	return ctx, private, mnt, []byte(strings.Repeat("ab", 32))
}

// volumeWith creates a volume in private holding one file, unmounted.
func volumeWith(t *testing.T, ctx context.Context, b Backend, private, mnt string, pw []byte, name string, content []byte) {
	t.Helper()
	if err := b.Init(ctx, private, pw); err != nil {
		t.Fatal(err)
	}
	m, err := b.Mount(ctx, private, mnt, pw)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, name), content, 0o600); err != nil {
		t.Fatal(err)
	}
	mustUnmount(t, m)
}

func TestInitMountRemountWrongKeyStale(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "gocryptfs", "fusermount3")
	for _, b := range newBackends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			ctx, private, mnt, pw := volumeDirs(t)

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

func TestLastWordsKeepsTheEnd(t *testing.T) {
	f, err := outputFile("tool")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString(strings.Repeat("x", 10000) + "the end")
	if got := lastWords(f); len(got) != 4096 || !strings.HasSuffix(got, "xthe end") {
		t.Fatalf("lastWords: %d bytes ending %q", len(got), got[len(got)-10:])
	}
}

// ciphertextFiles lists the regular files in private that hold file data
// (everything but the backend's own metadata).
func ciphertextFiles(t *testing.T, private string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(private, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch d.Name() {
		case ".encfs6.xml", "gocryptfs.conf", "gocryptfs.diriv":
			return nil
		}
		if d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A byte of ciphertext flipped on the disk makes the read fail instead of
// returning altered plaintext: gocryptfs answers EIO, EncFS (block MACs)
// EBADMSG. Every byte position class is tried: the file header, the first
// block and the last.
func TestTamperedCiphertextFailsRead(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "gocryptfs", "fusermount3")
	wantErrno := map[string]syscall.Errno{"encfs": syscall.EBADMSG, "gocryptfs": syscall.EIO}
	content := []byte(strings.Repeat("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey operator@example\n", 40)) // > 2 blocks
	for _, b := range newBackends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			ctx, private, mnt, pw := volumeDirs(t)
			volumeWith(t, ctx, b, private, mnt, pw, "authorized_keys", content)
			files := ciphertextFiles(t, private)
			if len(files) != 1 {
				t.Fatalf("ciphertext files in %s: %v, want one", private, files)
			}
			orig, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			for _, pos := range []int{2, 40, len(orig) - 3} {
				t.Run(strconv.Itoa(pos), func(t *testing.T) {
					bad := bytes.Clone(orig)
					bad[pos] ^= 0x01
					if err := os.WriteFile(files[0], bad, 0o600); err != nil {
						t.Fatal(err)
					}
					defer os.WriteFile(files[0], orig, 0o600)
					m, err := b.Mount(ctx, private, mnt, pw)
					if err != nil {
						t.Fatal(err)
					}
					defer mustUnmount(t, m)
					got, err := os.ReadFile(filepath.Join(mnt, "authorized_keys"))
					if !errors.Is(err, wantErrno[b.Name()]) {
						t.Fatalf("read of a file with byte %d flipped: %d bytes, err = %v; want %v", pos, len(got), err, wantErrno[b.Name()])
					}
				})
			}
			// Untouched again, it reads back whole: the failures above were
			// the tampering, not the volume.
			m, err := b.Mount(ctx, private, mnt, pw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(mnt, "authorized_keys"))
			mustUnmount(t, m)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("restored file: %d bytes, err = %v", len(got), err)
			}
		})
	}
}

// A volume from the seed's standard mode (no MACs), or a config edited to
// drop them, is refused by Mount; MountLegacy still opens the former.
func TestEncFSRequiresMACs(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "fusermount3")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &EncFS{}
	pw := []byte(strings.Repeat("ab", 32))
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	cleanupMount(t, mnt)

	authed := filepath.Join(dir, "authed")
	if err := e.Init(ctx, authed, pw); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.Authenticated(authed); !ok || err != nil {
		t.Fatalf("Authenticated(new volume) = %v, %v", ok, err)
	}
	conf := filepath.Join(authed, e.ConfigFile())
	b, _ := os.ReadFile(conf)
	stripped := bytes.Replace(b, []byte("<blockMACBytes>8<"), []byte("<blockMACBytes>0<"), 1)
	if bytes.Equal(b, stripped) {
		t.Fatal("no blockMACBytes 8 in the new volume's config")
	}
	os.WriteFile(conf, stripped, 0o600)
	if _, err := e.Mount(ctx, authed, mnt, pw); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Mount of a config with its MACs edited away: err = %v, want ErrUnauthenticated", err)
	}

	// The seed's way of creating a volume.
	legacy := filepath.Join(dir, "legacy")
	os.Mkdir(legacy, 0o700)
	m, err := startFUSE(ctx, "encfs", e.FSType(), legacy, mnt, nil, pw, []string{"-f", "--standard", "--stdinpass", legacy, mnt}, e.classify)
	if err != nil {
		t.Fatal(err)
	}
	mustUnmount(t, m)
	if ok, err := e.Authenticated(legacy); ok || err != nil {
		t.Fatalf("Authenticated(standard-mode volume) = %v, %v", ok, err)
	}
	if _, err := e.Mount(ctx, legacy, mnt, pw); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Mount(standard-mode volume): err = %v, want ErrUnauthenticated", err)
	}
	m, err = e.MountLegacy(ctx, legacy, mnt, pw)
	if err != nil {
		t.Fatal(err)
	}
	mustUnmount(t, m)
}

// Passwd re-wraps the volume key: the data stays, the new password opens
// it, the old one no longer does, and a wrong old password changes
// nothing.
func TestPasswd(t *testing.T) {
	testenv.RequireRoot(t, "encfs", "encfsctl", "gocryptfs", "fusermount3")
	for _, b := range newBackends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			ctx, private, mnt, pw := volumeDirs(t)
			volumeWith(t, ctx, b, private, mnt, pw, "marker", []byte("kept"))
			data := ciphertextFiles(t, private)
			before := testenv.HashTree(t, private)

			newPW := []byte(strings.Repeat("9f", 32))
			if err := b.Passwd(ctx, private, []byte(strings.Repeat("00", 32)), newPW); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Passwd with a wrong old password: %v, want ErrWrongKey", err)
			}
			if testenv.HashTree(t, private) != before {
				t.Fatal("a failed Passwd changed the private dir")
			}
			if err := b.Passwd(ctx, private, pw, newPW); err != nil {
				t.Fatal(err)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(private), ".*passwd*")); len(leftovers) != 0 {
				t.Fatalf("Passwd left %v", leftovers)
			}
			after := ciphertextFiles(t, private)
			if len(after) != len(data) || after[0] != data[0] {
				t.Fatalf("file data changed: %v -> %v", data, after)
			}
			if _, err := b.Mount(ctx, private, mnt, pw); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("old password after Passwd: %v, want ErrWrongKey", err)
			}
			m, err := b.Mount(ctx, private, mnt, newPW)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(mnt, "marker"))
			mustUnmount(t, m)
			if err != nil || string(got) != "kept" {
				t.Fatalf("marker after Passwd: %q, %v", got, err)
			}
		})
	}
}
