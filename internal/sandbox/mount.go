package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/fusectl"
	"github.com/g8os/boot/internal/sd"
)

// fuseName is the subtype of every g8-fs mount ("fuse.g8-fs" in
// /proc/self/mountinfo), which is how stale ones are recognised.
const fuseName = "g8-fs"

// Mounted is one sandbox served over FUSE.
type Mounted struct {
	Name       string
	Mountpoint string
	Flist      *Flist
	server     *fuse.Server
	tree       *tree
	conn       int // FUSE connection id, for fusectl
}

// ReadErrors counts reads answered with EIO.
func (m *Mounted) ReadErrors() int64 { return m.tree.readErr.Load() }

// Mount serves fl read-only at mountpoint, first removing a stale mount a
// crashed g8-fs left there.
func Mount(name, mountpoint string, fl *Flist, fetch *Fetcher, log *slog.Logger) (*Mounted, error) {
	if err := CleanStale(mountpoint, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	t := &tree{fl: fl, fetch: fetch, name: name}
	timeout := cacheTimeout
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			FsName:     "g8fs:" + name,
			Name:       fuseName,
			// default_permissions: the kernel enforces the modes and
			// owners recorded in the flist, as on a local file system.
			Options:       []string{"ro", "default_permissions"},
			MaxWrite:      1 << 20, // also the largest READ (max_pages)
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			DirectMount:   os.Geteuid() == 0,
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
		// Keep mode 0000 files as they are (go-fuse would show 0644).
		NullPermissions: true,
	}
	server, err := fs.Mount(mountpoint, t.root(), opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", name, mountpoint, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		_ = server.Unmount()
		return nil, fmt.Errorf("mount %s at %s: %w", name, mountpoint, err)
	}
	return &Mounted{Name: name, Mountpoint: mountpoint, Flist: fl, server: server, tree: t, conn: fusectl.Conn(st.Dev)}, nil
}

// unmountGrace is how long an unmount may wait for the kernel to close the
// connection before g8-fs aborts it.
const unmountGrace = 2 * time.Second

// Unmount detaches the sandbox; busy mounts are detached lazily so that a
// shell sitting in the tree cannot keep g8-fs from stopping. The flist
// stays mapped until the kernel has let go of the last open file. If the
// connection outlives the unmount by more than unmountGrace (the mount was
// copied into another mount namespace, e.g. a container started meanwhile),
// it is aborted: those copies then fail with ENOTCONN instead of keeping a
// stopped g8-fs alive.
func (m *Mounted) Unmount() error {
	done := make(chan error, 1)
	go func() { done <- m.server.Unmount() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(unmountGrace):
		if aerr := fusectl.Abort(m.conn); aerr != nil {
			return fmt.Errorf("unmount %s: connection still open after %v: %w", m.Mountpoint, unmountGrace, aerr)
		}
		err = <-done
	}
	if err == nil {
		m.Flist.Close()
		return nil
	} else if lerr := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); lerr != nil {
		if ferr := exec.Command("fusermount3", "-u", "-z", m.Mountpoint).Run(); ferr != nil {
			return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
	}
	go func() {
		m.server.Wait()
		m.Flist.Close()
	}()
	return nil
}

// Wait blocks until the kernel closed the mount.
func (m *Mounted) Wait() { m.server.Wait() }

// CleanStale lazily unmounts mountpoint when it is a g8-fs mount nobody
// serves ("transport endpoint is not connected") or any leftover g8-fs
// mount there: at start g8-fs owns its mountpoints.
func CleanStale(mountpoint string, log *slog.Logger) error {
	var st unix.Stat_t
	err := unix.Stat(mountpoint, &st)
	stale := errors.Is(err, unix.ENOTCONN)
	if !stale {
		fstype, ok := mountType(mountpoint)
		stale = ok && fstype == "fuse."+fuseName
	}
	if !stale {
		return nil
	}
	if uerr := unix.Unmount(mountpoint, unix.MNT_DETACH); uerr != nil {
		out, ferr := exec.Command("fusermount3", "-u", "-z", mountpoint).CombinedOutput()
		if ferr != nil {
			return fmt.Errorf("stale mount %s: umount: %v; fusermount3: %v: %s", mountpoint, uerr, ferr, strings.TrimSpace(string(out)))
		}
	}
	if log != nil {
		log.Warn("stale mount cleaned", sd.FSStaleMount.Attr(), "mountpoint", mountpoint)
	}
	return nil
}

// mountType finds the file system type mounted exactly at p.
func mountType(p string) (string, bool) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	var found string
	ok := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || unescapeMount(fields[4]) != abs {
			continue
		}
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) {
				found, ok = fields[i+1], true // the last mount on top wins
				break
			}
		}
	}
	return found, ok
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
