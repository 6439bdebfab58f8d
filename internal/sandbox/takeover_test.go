package sandbox

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestPlanTakeover(t *testing.T) {
	conn := func(name string) *state.FUSEConn {
		return &state.FUSEConn{FDName: fdName(name), FlistPath: "/c/x.flist", Major: 7, Minor: 41}
	}
	full := &state.Sandbox{Name: "app", Flist: "blake3:ab", FlistHash: "cd", Mountpoint: "/opt/app", Conn: conn("app")}
	noConn := &state.Sandbox{Name: "app", FlistHash: "cd", Mountpoint: "/opt/app"}
	otherName := &state.Sandbox{Name: "app", FlistHash: "cd", Mountpoint: "/opt/app", Conn: conn("other")}
	noInit := &state.Sandbox{Name: "app", FlistHash: "cd", Mountpoint: "/opt/app", Conn: &state.FUSEConn{FDName: "fuse-app", FlistPath: "/c/x.flist"}}
	noHash := &state.Sandbox{Name: "app", Mountpoint: "/opt/app", Conn: conn("app")}
	for _, c := range []struct {
		name   string
		held   heldConn
		resume bool
		why    string
	}{
		{"described connection", heldConn{"fuse-app", 1, full}, true, ""},
		{"someone else's descriptor", heldConn{"sshd-listener", 1, nil}, false, "not a g8-fs FUSE connection"},
		{"connection and open-file table", heldConn{"fuse-app", 2, full}, true, ""},
		{"three descriptors, one name", heldConn{"fuse-app", 3, full}, false, "3 descriptors"},
		{"no record (fs.json lost)", heldConn{"fuse-app", 1, nil}, false, "fs.json has no sandbox app"},
		{"record without connection", heldConn{"fuse-app", 1, noConn}, false, "records no connection"},
		{"record of another name", heldConn{"fuse-app", 1, otherName}, false, "records no connection"},
		{"no INIT recorded", heldConn{"fuse-app", 1, noInit}, false, "incomplete"},
		{"no flist hash", heldConn{"fuse-app", 1, noHash}, false, "incomplete"},
	} {
		got := planTakeover([]heldConn{c.held})
		if len(got) != 1 || got[0].Resume != c.resume || !strings.Contains(got[0].Why, c.why) || got[0].FDName != c.held.FDName {
			t.Errorf("%s: got %+v, want resume=%v why~%q", c.name, got, c.resume, c.why)
		}
	}
}

// startFS starts g8-fs as systemd would, with what the fd store holds;
// the channel is closed when it exits.
func startFS(t *testing.T, store *testenv.FDStore, out *testenv.SyncBuffer, bin string, args ...string) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := store.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("g8-fs output:\n%s", out.String())
		}
	})
	return cmd, done
}

// TestTakeoverAfterKill is a crash of g8-fs (SIGKILL) while one program
// reads a sandbox's files in a loop and another waits on a chunk the store
// has not sent yet. The next g8-fs, started with the connection systemd's
// fd store kept, serves the same mount: nothing was unmounted, the loop saw
// no error, device and inode numbers did not change, and the read that was
// in flight when the old process died completes with the right bytes
// (FUSE_NOTIFY_RESEND).
func TestTakeoverAfterKill(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	big := lazyTree(t, src, 3)
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	_, res := buildTo(t, src, srv.dir)
	etc := filepath.Join(tmp, "etc")
	write(t, filepath.Join(etc, "ssl/ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.srv.Certificate().Raw}), 0o644)
	mnt := filepath.Join(tmp, "mnt/app")
	conf := filepath.Join(tmp, "fs.toml")
	write(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"app\"\nflist = \"blake3:%s\"\nmountpoint = %q\n", res.Ref, mnt)), 0o644)
	stateDir := filepath.Join(tmp, "run")
	args := []string{"mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"), "--state-dir", stateDir,
		"--store", srv.URL(), "--config-root", etc, "--readahead", "0", "--fetch-timeout", "60s"}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	store := testenv.NewFDStore(t)
	var out1, out2 testenv.SyncBuffer
	old, oldDone := startFS(t, store, &out1, bin, args...)
	store.WaitCount(t, "READY=1", 1, 30*time.Second)
	waitFor(t, "the connection in the fd store", func() bool { return strings.Join(store.Names(), ",") == "fuse-app" })

	// The reader: small files, read once to cache them, then in a loop.
	files := make([]string, 20)
	want := make([][]byte, len(files))
	for i := range files {
		files[i] = filepath.Join("small", fmt.Sprintf("f%03d", i))
		want[i], _ = os.ReadFile(filepath.Join(src, files[i]))
		if got, err := os.ReadFile(filepath.Join(mnt, files[i])); err != nil || !bytes.Equal(got, want[i]) {
			t.Fatalf("%s before the crash: %v", files[i], err)
		}
	}
	var before unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, files[3]), &before); err != nil {
		t.Fatal(err)
	}
	cwd, err := os.Open(filepath.Join(mnt, "small")) // a directory held open across the crash
	if err != nil {
		t.Fatal(err)
	}
	defer cwd.Close()
	var reads, failures atomic.Int64
	stop := make(chan struct{})
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := i % len(files)
			if got, err := os.ReadFile(filepath.Join(mnt, files[k])); err != nil || !bytes.Equal(got, want[k]) {
				failures.Add(1)
				t.Errorf("read %s: %v", files[k], err)
			}
			reads.Add(1)
		}
	}()

	// The read in flight: chunk 1 of big, held at the store.
	release := srv.hold()
	inflight := make(chan error, 1)
	go func() {
		got, err := preadAt(t, filepath.Join(mnt, "big"), 4096, int64(DefaultChunkSize)+100)
		if err == nil && !bytes.Equal(got, big[DefaultChunkSize+100:DefaultChunkSize+100+4096]) {
			err = fmt.Errorf("wrong bytes")
		}
		inflight <- err
	}()
	waitFor(t, "the read to reach the store", func() bool { return srv.totalGets() > 0 })

	old.Process.Signal(syscall.SIGKILL)
	<-oldDone
	if !isG8Mount(mnt) {
		t.Fatal("the mount went away with the process")
	}
	release()
	n := reads.Load()
	restarted := time.Now()
	cur, newDone := startFS(t, store, &out2, bin, args...)
	store.WaitCount(t, "READY=1", 2, 30*time.Second)
	t.Logf("new g8-fs ready %v after start", time.Since(restarted))
	select {
	case err := <-inflight:
		if err != nil {
			t.Fatalf("the read in flight at the crash: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read in flight at the crash never completed")
	}
	waitFor(t, "the loop to go on", func() bool { return reads.Load() > n+100 })
	close(stop)
	loop.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d of %d reads failed", failures.Load(), reads.Load())
	}
	var after unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, files[3]), &after); err != nil {
		t.Fatal(err)
	}
	if after.Dev != before.Dev || after.Ino != before.Ino {
		t.Fatalf("device/inode changed: %d/%d -> %d/%d", before.Dev, before.Ino, after.Dev, after.Ino)
	}
	if names, err := cwd.Readdirnames(-1); err != nil || len(names) != 200 {
		t.Fatalf("directory opened before the crash lists %d entries: %v", len(names), err)
	}
	if !strings.Contains(out2.String(), sd.FSTakenOver.ID) {
		t.Errorf("no fs.taken-over in the journal:\n%s", out2.String())
	}
	if sandboxStates(stateDir)["app"] != "mounted" {
		t.Errorf("fs.json: %v", sandboxStates(stateDir))
	}
	t.Logf("%d reads across the crash, none failed", reads.Load())

	// Without systemd there is no restart to keep the mount for: SIGTERM
	// unmounts and takes the connection out of the fd store.
	cur.Process.Signal(syscall.SIGTERM)
	select {
	case <-newDone:
	case <-time.After(30 * time.Second):
		t.Fatal("g8-fs did not stop")
	}
	if isG8Mount(mnt) {
		t.Error("still mounted after SIGTERM outside systemd")
	}
	waitFor(t, "the fd store to be emptied", func() bool { return len(store.Names()) == 0 })
}

// TestTakeoverKeepsPassthroughFiles is a crash of g8-fs while files are
// open, two with a passthrough backing file and one without (not whole in
// the cache yet). The kernel refuses (EIO) an open of a file that is open
// with a backing file unless it names the same one, and an open with a
// backing file while the file is open without: the next g8-fs learns from
// the open-file table kept with the connection which files are open how,
// and answers their new opens alike. A g8-fs with --passthrough off still
// answers OPEN on such a connection, following the table for files open
// with a backing file (no-open mode would fail their new opens too).
func TestTakeoverKeepsPassthroughFiles(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	want := map[string][]byte{
		"one":     randBytes(t, 100<<10),                 // its chunk is its whole form
		"multi":   randBytes(t, 3*DefaultChunkSize-1000), // assembled after a read to its end
		"partial": randBytes(t, 3*DefaultChunkSize),      // only its first chunk is read
	}
	for name, data := range want {
		write(t, filepath.Join(src, name), data, 0o644)
	}
	srv := newStoreServer(t, filepath.Join(tmp, "store"))
	flistPath, res := buildTo(t, src, srv.dir)
	fl, err := OpenFlist(flistPath)
	must(t)(err)
	defer fl.Close()
	etc := filepath.Join(tmp, "etc")
	write(t, filepath.Join(etc, "ssl/ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.srv.Certificate().Raw}), 0o644)
	mnt := filepath.Join(tmp, "mnt/app")
	conf := filepath.Join(tmp, "fs.toml")
	write(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"app\"\nflist = \"blake3:%s\"\nmountpoint = %q\n", res.Ref, mnt)), 0o644)
	cacheDir := filepath.Join(tmp, "cache")
	args := func(pass string) []string {
		return []string{"mount", "--config", conf, "--cache", cacheDir, "--state-dir", filepath.Join(tmp, "run"),
			"--store", srv.URL(), "--config-root", etc, "--readahead", "0", "--passthrough", pass}
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	store := testenv.NewFDStore(t)
	var out1, out2, out3 testenv.SyncBuffer
	first, firstDone := startFS(t, store, &out1, bin, args("on")...)
	store.WaitCount(t, "READY=1", 1, 30*time.Second)

	check := func(what, name string, got []byte, err error) {
		t.Helper()
		if err != nil || !bytes.Equal(got, want[name]) {
			t.Fatalf("%s: %s: %v (contents right: %v)", what, name, err, bytes.Equal(got, want[name]))
		}
	}
	readAll := func(what string) {
		t.Helper()
		for _, name := range []string{"one", "multi"} {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			check(what, name, got, err)
		}
	}
	// Cold: read through g8-fs, which caches "one" and assembles "multi".
	readAll("cold")
	root := fl.Node(0)
	multi, _ := fl.Lookup(&root, "multi")
	nd := fl.Node(multi)
	cache := &Cache{root: cacheDir}
	waitFor(t, "multi assembled", func() bool { _, err := os.Stat(cache.FilePath(FileKey(fl, &nd))); return err == nil })

	open := func(name string) *os.File {
		t.Helper()
		f, err := os.Open(filepath.Join(mnt, name))
		must(t)(err)
		t.Cleanup(func() { f.Close() })
		return f
	}
	readAt := func(f *os.File, name string, off int64) {
		t.Helper()
		got := make([]byte, 4096)
		n, err := f.ReadAt(got, off)
		if err != nil || n != len(got) || !bytes.Equal(got, want[name][off:off+int64(n)]) {
			t.Fatalf("%s: read of %d at %d: %d bytes, %v (contents right: %v)", name, len(got), off, n, err, bytes.Equal(got[:n], want[name][off:off+int64(n)]))
		}
	}
	f1, f2, f3 := open("multi"), open("one"), open("partial") // backing, backing, none
	readAt(f3, "partial", 0)

	first.Process.Signal(syscall.SIGKILL)
	<-firstDone
	second, secondDone := startFS(t, store, &out2, bin, args("on")...)
	store.WaitCount(t, "READY=1", 2, 30*time.Second)
	if !strings.Contains(out2.String(), "passthrough=true open_files=3 open_with_backing=2") {
		t.Errorf("the takeover did not find 3 open files, 2 with a backing file:\n%s", out2.String())
	}
	// The files open across the crash read on, the backed ones from their
	// backing files, the other through the new g8-fs.
	readAt(f1, "multi", 2*DefaultChunkSize)
	readAt(f2, "one", 50<<10)
	readAt(f3, "partial", 2*DefaultChunkSize)
	// New opens of them follow the table: without it, each failed (EIO).
	readAll("open again after the crash")
	got, err := os.ReadFile(filepath.Join(mnt, "partial"))
	check("open again after the crash", "partial", got, err)
	f1.Close()
	f2.Close()
	f3.Close()
	readAll("after the last close")

	// A g8-fs without passthrough, while multi is open with a backing file
	// the previous process registered.
	f4 := open("multi")
	second.Process.Signal(syscall.SIGKILL)
	<-secondDone
	third, thirdDone := startFS(t, store, &out3, bin, args("off")...)
	store.WaitCount(t, "READY=1", 3, 30*time.Second)
	if !strings.Contains(out3.String(), "passthrough=false") {
		t.Errorf("passthrough still on with --passthrough off:\n%s", out3.String())
	}
	readAt(f4, "multi", DefaultChunkSize)
	readAll("--passthrough off")
	f4.Close()

	third.Process.Signal(syscall.SIGTERM)
	select {
	case <-thirdDone:
	case <-time.After(30 * time.Second):
		t.Fatal("g8-fs did not stop")
	}
	if isG8Mount(mnt) {
		t.Error("still mounted after SIGTERM outside systemd")
	}
}
