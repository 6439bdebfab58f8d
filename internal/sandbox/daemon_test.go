package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// daemonProc is a running `g8-fs mount` with its output and sd_notify
// messages collected.
type daemonProc struct {
	cmd    *exec.Cmd
	out    testenv.SyncBuffer
	mu     sync.Mutex
	notes  []string
	done   chan struct{}
	notify *net.UnixConn
}

func startDaemon(t *testing.T, bin string, args ...string) *daemonProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: exec.Command(bin, args...), done: make(chan struct{}), notify: conn}
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			d.mu.Lock()
			d.notes = append(d.notes, string(buf[:n]))
			d.mu.Unlock()
		}
	}()
	go func() { d.cmd.Wait(); close(d.done); conn.Close() }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				d.cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("g8-fs output:\n%s", d.out.String())
		}
	})
	return d
}

func (d *daemonProc) notified(s string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.notes {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sandboxStates(stateDir string) map[string]string {
	var st state.FS
	out := map[string]string{}
	if state.Read(stateDir, &st) != nil {
		return out
	}
	for _, s := range st.Sandboxes {
		out[s.Name] = s.State
	}
	return out
}

func isG8Mount(p string) bool {
	typ, ok := mountType(p)
	return ok && typ == "fuse."+fuseName
}

func TestDaemonReloadAndStaleMount(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	write(t, filepath.Join(tmp, "a/hello"), []byte("from a\n"), 0o644)
	write(t, filepath.Join(tmp, "b/bin/tool"), []byte("from b\n"), 0o755)
	flistA, _ := buildTo(t, filepath.Join(tmp, "a"), store)
	_, resB := buildTo(t, filepath.Join(tmp, "b"), store)
	mntA, mntB := filepath.Join(tmp, "mnt/a"), filepath.Join(tmp, "mnt/b")
	conf := filepath.Join(tmp, "fs.toml")
	sbA := fmt.Sprintf("[[sandbox]]\nname = \"a\"\nflist = %q\nmountpoint = %q\n", flistA, mntA)
	// b is referenced by hash: fetched from the store and verified.
	sbB := fmt.Sprintf("[[sandbox]]\nname = \"b\"\nflist = \"blake3:%s\"\nmountpoint = %q\n", resB.Ref, mntB)
	writeConf := func(s string) { write(t, conf, []byte(s), 0o644) }
	stateDir := filepath.Join(tmp, "run")
	args := []string{"mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"), "--state-dir", stateDir,
		"--store", store.Root, "--config-root", filepath.Join(tmp, "no-etc")}
	t.Cleanup(func() {
		for _, m := range []string{mntA, mntB} {
			unix.Unmount(m, unix.MNT_DETACH)
		}
	})

	writeConf(sbA)
	d := startDaemon(t, bin, args...)
	waitFor(t, "READY=1 with a mounted", func() bool { return d.notified("READY=1") && sandboxStates(stateDir)["a"] == "mounted" })
	if got, err := os.ReadFile(filepath.Join(mntA, "hello")); err != nil || string(got) != "from a\n" {
		t.Fatalf("a/hello: %q %v", got, err)
	}
	held, err := os.Open(filepath.Join(mntA, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var before unix.Stat_t
	unix.Stat(mntA, &before)

	// Reload adds b without touching a.
	writeConf(sbA + sbB)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "b mounted after reload", func() bool { return sandboxStates(stateDir)["b"] == "mounted" })
	if got, err := os.ReadFile(filepath.Join(mntB, "bin/tool")); err != nil || string(got) != "from b\n" {
		t.Fatalf("b/bin/tool: %q %v", got, err)
	}
	var after unix.Stat_t
	unix.Stat(mntA, &after)
	buf := make([]byte, 64)
	if n, err := held.ReadAt(buf, 0); string(buf[:n]) != "from a\n" || before.Dev != after.Dev {
		t.Fatalf("a was disturbed by the reload: read %q %v, device %d -> %d", buf[:n], err, before.Dev, after.Dev)
	}
	if !d.notified("RELOADING=1") {
		t.Error("no RELOADING=1 on SIGHUP")
	}

	// An invalid configuration changes nothing.
	writeConf(sbA + sbB + "[[sandbox]]\nname = \"a\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the rejection logged", func() bool { return strings.Contains(d.out.String(), sd.FSConfigRejected.ID) })
	if !isG8Mount(mntA) || !isG8Mount(mntB) {
		t.Fatal("a rejected configuration unmounted a sandbox")
	}

	// Removing a unmounts it (lazily: a file in it is still open) and
	// leaves b alone.
	writeConf(sbB)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "a unmounted", func() bool { _, ok := sandboxStates(stateDir)["a"]; return !ok && !isG8Mount(mntA) })
	if !isG8Mount(mntB) {
		t.Fatal("b was unmounted when a was removed")
	}
	held.Close()

	// An operator's umount behind g8-fs's back: it mounts b again.
	if out, err := exec.Command("fusermount3", "-u", mntB).CombinedOutput(); err != nil {
		t.Fatalf("fusermount3 -u: %v %s", err, out)
	}
	waitFor(t, "b mounted again", func() bool {
		got, err := os.ReadFile(filepath.Join(mntB, "bin/tool"))
		return err == nil && string(got) == "from b\n"
	})

	// A crash leaves b's mount behind, dead.
	d.cmd.Process.Kill()
	<-d.done
	// (stat may still answer from the kernel's attribute cache; opening
	// needs the dead daemon.)
	if _, err := os.ReadDir(mntB); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("after SIGKILL, reading %s: %v, want ENOTCONN", mntB, err)
	}
	// The next start cleans it and mounts again.
	d2 := startDaemon(t, bin, args...)
	waitFor(t, "b mounted after restart", func() bool { return d2.notified("READY=1") && sandboxStates(stateDir)["b"] == "mounted" })
	if got, err := os.ReadFile(filepath.Join(mntB, "bin/tool")); err != nil || !bytes.Equal(got, []byte("from b\n")) {
		t.Fatalf("b after restart: %q %v", got, err)
	}
	if !strings.Contains(d2.out.String(), sd.FSStaleMount.ID) {
		t.Errorf("no fs.stale-mount-cleaned log:\n%s", d2.out.String())
	}

	// SIGTERM unmounts everything and exits cleanly.
	d2.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d2.done:
	case <-time.After(20 * time.Second):
		t.Fatal("g8-fs did not stop on SIGTERM")
	}
	if code := d2.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	if isG8Mount(mntB) {
		t.Error("b still mounted after SIGTERM")
	}
	if !d2.notified("STOPPING=1") {
		t.Error("no STOPPING=1")
	}
}

func TestDaemonConfigErrors(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	conf := filepath.Join(tmp, "fs.toml")
	write(t, conf, []byte("[[sandbox]]\nname = \"x\"\nmountpoint = \"/x\"\n"), 0o644)
	out, err := exec.Command(bin, "--config", conf, "--store", tmp, "--cache", filepath.Join(tmp, "c"), "--state-dir", tmp).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), `sandbox "x": flist: missing`) {
		t.Errorf("bad config: %v\n%s", err, out)
	}
	// Sandboxes but no store anywhere: exit 3 naming where it looked.
	write(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"x\"\nflist = \"blake3:%064x\"\nmountpoint = \"/x\"\n", 1)), 0o644)
	out, err = exec.Command(bin, "--config", conf, "--cache", filepath.Join(tmp, "c"), "--state-dir", tmp).CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "net.json") {
		t.Errorf("no store: %v\n%s", err, out)
	}
}

// A reload that adds a sandbox whose store is down still ends (READY=1
// again, so `systemctl reload` returns); the sandbox stays pending and
// says why.
func TestDaemonReloadWithStoreDown(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String() + "/v1/store"
	ln.Close() // nothing listens there any more: connection refused
	conf := filepath.Join(tmp, "fs.toml")
	write(t, conf, nil, 0o644)
	stateDir := filepath.Join(tmp, "run")
	d := startDaemon(t, bin, "mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"), "--state-dir", stateDir,
		"--store", down, "--config-root", filepath.Join(tmp, "no-etc"))
	waitFor(t, "READY=1 with no sandboxes", func() bool { return d.notified("READY=1") })
	mnt := filepath.Join(tmp, "mnt")
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	write(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"later\"\nflist = \"blake3:%064x\"\nmountpoint = %q\n", 1, mnt)), 0o644)
	d.mu.Lock()
	d.notes = nil
	d.mu.Unlock()
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "READY=1 after the reload", func() bool { return d.notified("READY=1") })
	var st state.FS
	if err := state.Read(stateDir, &st); err != nil || len(st.Sandboxes) != 1 ||
		st.Sandboxes[0].State != "pending" || !strings.Contains(st.Sandboxes[0].Error, "connection refused") {
		t.Errorf("fs.json after the reload: %+v (%v)", st.Sandboxes, err)
	}
	if !d.notified("waiting for: later") {
		t.Errorf("STATUS does not name the pending sandbox: %q", d.notes)
	}
}

// No fs.toml yet: ready with no sandboxes, waiting for one and a reload.
// No sandboxes need no store, so neither --store nor net.json is needed
// until a reload adds one; a reload with a sandbox but still no store is
// refused and changes nothing.
func TestDaemonWithoutConfig(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	conf, stateDir := filepath.Join(tmp, "absent.toml"), filepath.Join(tmp, "run")
	d := startDaemon(t, bin, "--config", conf, "--cache", filepath.Join(tmp, "cache"), "--state-dir", stateDir,
		"--config-root", filepath.Join(tmp, "no-etc"))
	waitFor(t, "READY=1", func() bool { return d.notified("READY=1") && d.notified("0 sandboxes mounted") })

	reload := func() {
		d.mu.Lock()
		d.notes = nil
		d.mu.Unlock()
		d.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "READY=1 after the reload", func() bool { return d.notified("READY=1") })
	}
	mnt := filepath.Join(tmp, "mnt")
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	sandbox := fmt.Sprintf("[[sandbox]]\nname = \"later\"\nflist = \"blake3:%064x\"\nmountpoint = %q\n", 1, mnt)
	write(t, conf, []byte(sandbox), 0o644)
	reload()
	var st state.FS
	if err := state.Read(stateDir, &st); err != nil || len(st.Sandboxes) != 0 || !strings.Contains(d.out.String(), "no store") {
		t.Fatalf("a sandbox without a store was not refused: %+v (%v)", st.Sandboxes, err)
	}

	store := filepath.Join(tmp, "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, conf, []byte(fmt.Sprintf("store = %q\n%s", store, sandbox)), 0o644)
	reload()
	if err := state.Read(stateDir, &st); err != nil || len(st.Sandboxes) != 1 || st.Sandboxes[0].Name != "later" {
		t.Fatalf("fs.json after the reload with a store: %+v (%v)", st.Sandboxes, err)
	}
	select {
	case <-d.done:
		t.Fatalf("g8-fs exited:\n%s", d.out.String())
	default:
	}
}

// An operator's `umount -l` of a sandbox while a copy of the mount lives
// in another mount namespace (a container started meanwhile) keeps the
// FUSE connection up; g8-fs must still notice that its mountpoint is empty
// and mount the sandbox again, and the copy keeps working.
func TestDaemonRemountsAfterLazyUmountWithCopyElsewhere(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3", "unshare", "umount")
	bin := testenv.Bin(t, "g8-fs")
	tmp := t.TempDir()
	store := &DirStore{Root: filepath.Join(tmp, "store")}
	write(t, filepath.Join(tmp, "a/hello"), []byte("from a\n"), 0o644)
	flist, _ := buildTo(t, filepath.Join(tmp, "a"), store)
	mnt := filepath.Join(tmp, "mnt/a")
	conf := filepath.Join(tmp, "fs.toml")
	write(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"a\"\nflist = %q\nmountpoint = %q\n", flist, mnt)), 0o644)
	stateDir := filepath.Join(tmp, "run")
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	d := startDaemon(t, bin, "mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"), "--state-dir", stateDir,
		"--store", store.Root, "--config-root", filepath.Join(tmp, "no-etc"))
	waitFor(t, "a mounted", func() bool { return d.notified("READY=1") && sandboxStates(stateDir)["a"] == "mounted" })
	var before unix.Stat_t
	must(t)(unix.Stat(mnt, &before))

	// The copy: a private mount namespace that reads the sandbox through
	// its own copy of the mount whenever asked (a line on stdin).
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"while read x; do cat "+filepath.Join(mnt, "hello")+" || echo FAILED; done")
	in, err := holder.StdinPipe()
	must(t)(err)
	var out testenv.SyncBuffer
	holder.Stdout, holder.Stderr = &out, &out
	must(t)(holder.Start())
	t.Cleanup(func() { in.Close(); holder.Process.Kill(); holder.Wait() })
	time.Sleep(200 * time.Millisecond) // let unshare copy the mount table

	if o, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -l: %v %s", err, o)
	}
	waitFor(t, "a mounted again", func() bool {
		var st unix.Stat_t
		if unix.Stat(mnt, &st) != nil || st.Dev == before.Dev || !isG8Mount(mnt) {
			return false
		}
		got, err := os.ReadFile(filepath.Join(mnt, "hello"))
		return err == nil && string(got) == "from a\n"
	})
	if !strings.Contains(d.out.String(), sd.FSSandboxUnmounted.ID) {
		t.Errorf("no fs.sandbox-unmounted log:\n%s", d.out.String())
	}
	// The copy in the other namespace is still served by the old connection.
	fmt.Fprintln(in)
	waitFor(t, "the copy read", func() bool { return strings.Contains(out.String(), "\n") })
	if got := out.String(); got != "from a\n" {
		t.Errorf("read through the copy: %q", got)
	}
}
