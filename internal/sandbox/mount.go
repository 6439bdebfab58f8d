package sandbox

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
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
	gone       chan struct{}
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
	if fetch.noPassthroughCap {
		opts.DisabledCapabilities = fuse.CAP_PASSTHROUGH
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
	if fetch.Passthrough == PassthroughOn || fetch.Passthrough == PassthroughAuto && passthroughPays(fl) {
		if err := probePassthrough(server, fetch.Cache); err != nil {
			log.Warn("FUSE passthrough unavailable: cached files are served through g8-fs", sd.FSPassthroughUnavailable.Attr(),
				"sandbox", name, "error", err.Error())
		} else {
			t.passthrough.Store(true)
		}
	}
	m := &Mounted{Name: name, Mountpoint: mountpoint, Flist: fl, server: server, tree: t, conn: fusectl.Conn(st.Dev), gone: make(chan struct{})}
	go m.watchDetached(st.Dev)
	return m, nil
}

// probePassthrough registers a file of the cache's file system as a
// backing file of server's connection: the kernel refuses it when it lacks
// passthrough, when g8-fs lacks CAP_SYS_ADMIN, or when the cache sits on
// a stack of file systems too deep. Refused, the mount keeps the no-open
// mode, which is cheaper than opens that cannot use a backing file.
func probePassthrough(server *fuse.Server, c *Cache) error {
	fd, err := unix.Open(c.root, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("probe file in %s: %w", c.root, err)
	}
	defer unix.Close(fd)
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return fmt.Errorf("kernel refused a backing file: %w", errno)
	}
	server.UnregisterBackingFd(id)
	return nil
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

// mountType finds the file system type mounted exactly at p (the top one
// when mounts are stacked).
func mountType(p string) (string, bool) {
	ms, err := mountsAtPath(p)
	if err != nil || len(ms) == 0 {
		return "", false
	}
	return ms[len(ms)-1].FSType, true
}

func mountsAtPath(p string) ([]*mountinfo.Info, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return mountsAt(f, abs)
}

// mountsAt lists the entries of mount table r mounted exactly at abs,
// bottom first.
func mountsAt(r io.Reader, abs string) ([]*mountinfo.Info, error) {
	return mountinfo.GetMountsFromReader(r, func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != abs, false
	})
}

// holds reports whether one of ms is the FUSE connection with device dev.
func holds(ms []*mountinfo.Info, dev uint64) bool {
	for _, m := range ms {
		if uint32(m.Major) == unix.Major(dev) && uint32(m.Minor) == unix.Minor(dev) {
			return true
		}
	}
	return false
}

// watchDetached closes m.gone once the mountpoint no longer holds m's
// connection in this mount namespace (an operator's `umount -l`) even
// while the connection lives on through a copy of the mount in another
// namespace, or once the connection has ended. The kernel flags
// /proc/self/mountinfo with POLLPRI on every change of the mount table, so
// this sleeps until something is mounted or unmounted.
func (m *Mounted) watchDetached(dev uint64) {
	defer close(m.gone)
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		m.server.Wait()
		return
	}
	defer unix.Close(stop)
	go func() {
		m.server.Wait()
		unix.Write(stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		m.server.Wait()
		return
	}
	defer f.Close()
	for {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			m.server.Wait()
			return
		}
		if ms, err := mountsAt(f, m.Mountpoint); err == nil && !holds(ms, dev) {
			return
		}
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}, {Fd: int32(stop), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			m.server.Wait()
			return
		}
		if fds[1].Revents != 0 {
			return
		}
	}
}

// Gone is closed when the sandbox is no longer served at its mountpoint:
// unmounted (by g8-fs or from outside), detached while a copy in another
// mount namespace keeps the connection (then Wait still blocks), or its
// connection ended.
func (m *Mounted) Gone() <-chan struct{} { return m.gone }
