package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

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
	// dev is a descriptor of the connection's /dev/fuse of our own (go-fuse
	// owns another): the one handed to systemd's fd store, and where the
	// RESEND notification of a takeover is written.
	dev *os.File
	// Init is the kernel's INIT of this connection: a process that takes
	// the connection over replays it to its go-fuse server (the kernel
	// sends INIT once per connection).
	Init KernelInit
	// Passthrough: the mount answers OPEN, giving files whole in the cache
	// a backing file.
	Passthrough bool

	unmountOnce sync.Once
	unmountErr  error
}

// KernelInit is what the kernel sent in a connection's INIT request: the
// protocol version and capabilities the connection was set up with. Only
// the version and flag fields are kept (state.FUSEConn).
type KernelInit struct {
	Major, Minor, MaxReadAhead, Flags, Flags2 uint32
}

// ReadErrors counts reads answered with EIO.
func (m *Mounted) ReadErrors() int64 { return m.tree.readErr.Load() }

// Dev is the connection's /dev/fuse descriptor (for the fd store).
func (m *Mounted) Dev() *os.File { return m.dev }

// OpenTable is the memfd of the mount's open-file table (opentable.go),
// which goes to the fd store with Dev; nil for a mount that never answers
// OPEN.
func (m *Mounted) OpenTable() *os.File {
	if tab := m.tree.open.Load(); tab != nil {
		return tab.File()
	}
	return nil
}

// closeFiles lets go of the connection and what served it, once the
// kernel is done with it.
func (m *Mounted) closeFiles() {
	m.dev.Close()
	if tab := m.tree.open.Load(); tab != nil {
		// Not unmapped: go-fuse may still be running a RELEASE handler
		// after Wait returns. The mapping holds the pages of the nodes
		// that were open, a few KiB.
		tab.File().Close()
	}
	m.Flist.Close()
}

func mountOptions(name string) fuse.MountOptions {
	return fuse.MountOptions{
		AllowOther: true,
		FsName:     "g8fs:" + name,
		Name:       fuseName,
		// default_permissions: the kernel enforces the modes and owners
		// recorded in the flist, as on a local file system.
		Options:       []string{"ro", "default_permissions"},
		MaxWrite:      1 << 20, // also the largest READ (max_pages)
		MaxReadAhead:  1 << 20,
		MaxBackground: 64,
	}
}

// Mount serves fl read-only at mountpoint, first removing a stale mount a
// crashed g8-fs left there (one it could not take over).
//
// g8-fs opens /dev/fuse and calls mount(2) itself (it runs as root) rather
// than through go-fuse or fusermount3, because it must keep the
// connection's descriptor: that is what outlives a restart (handover.go).
// go-fuse then serves the descriptor through its /dev/fd/N mountpoint
// convention, which takes an already mounted connection.
func Mount(name, mountpoint string, fl *Flist, fetch *Fetcher, log *slog.Logger) (*Mounted, error) {
	if err := CleanStale(mountpoint, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	opts := mountOptions(name)
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", name, err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=0,group_id=0,max_read=%d,allow_other,default_permissions",
		dev.Fd(), st.Mode&unix.S_IFMT, opts.MaxWrite)
	if err := unix.Mount(opts.FsName, mountpoint, "fuse."+fuseName, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		dev.Close()
		return nil, fmt.Errorf("mount %s at %s: mount(2): %w (g8-fs mounts need root)", name, mountpoint, err)
	}
	t := newTree(name, fl, fetch)
	if fetch.noPassthroughCap {
		opts.DisabledCapabilities = fuse.CAP_PASSTHROUGH
	}
	// Passthrough is on from the first request when it is wanted: an OPEN
	// answered ENOSYS would put the connection in no-open mode for good.
	// Until the probe below, opens simply get no backing file.
	pass := fetch.Passthrough == PassthroughOn || fetch.Passthrough == PassthroughAuto && passthroughPays(fl)
	if pass {
		tab, err := newOpenTable(name, fl)
		if err != nil {
			log.Warn("FUSE passthrough unavailable: cached files are served through g8-fs", sd.FSPassthroughUnavailable.Attr(),
				"sandbox", name, "error", err.Error())
			pass = false
		} else {
			t.open.Store(tab)
			t.passthrough.Store(true)
		}
	}
	server, init, err := serveNew(t, opts, dev)
	if err != nil {
		_ = unix.Unmount(mountpoint, unix.MNT_DETACH)
		dev.Close()
		if tab := t.open.Load(); tab != nil {
			tab.close()
		}
		return nil, fmt.Errorf("mount %s at %s: %w", name, mountpoint, err)
	}
	if pass {
		if err := probePassthrough(server, fetch.Cache); err != nil {
			log.Warn("FUSE passthrough unavailable: cached files are served through g8-fs", sd.FSPassthroughUnavailable.Attr(),
				"sandbox", name, "error", err.Error())
			// No backing file: the cheaper no-open mode. The opens
			// answered meanwhile got none either.
			t.passthrough.Store(false)
			t.open.Load().File().Close()
			t.open.Store(nil)
			pass = false
		}
	}
	m := &Mounted{Name: name, Mountpoint: mountpoint, Flist: fl, server: server, tree: t, dev: dev, Init: init, Passthrough: pass, gone: make(chan struct{})}
	if err := unix.Stat(mountpoint, &st); err != nil {
		_ = m.Unmount()
		return nil, fmt.Errorf("mount %s at %s: %w", name, mountpoint, err)
	}
	m.conn = fusectl.Conn(st.Dev)
	go m.watchDetached(st.Dev)
	pollHack(mountpoint)
	return m, nil
}

// pollHack is go-fuse's (fuse/poll_unix.go), which its own mount path runs
// and the /dev/fd/N one cannot: Go's runtime adds every file it opens to
// its epoll set, and on a FUSE file that sends POLL to the server. The
// server answers POLL on go-fuse's hack file with ENOSYS, after which the
// kernel never sends POLL on this connection again. Without it the first
// file a Go program opens in a sandbox costs an extra round trip, and a
// g8-fs that reads its own mount (tests) can leave a thread waiting on
// itself at exit. (The flag lives in the kernel's connection, so a resumed
// connection already has it.)
func pollHack(mountpoint string) {
	fd, err := unix.Open(filepath.Join(mountpoint, ".go-fuse-epoll-hack"), unix.O_RDONLY, 0)
	if err != nil {
		return
	}
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	unix.Close(fd)
}

// serveNew answers the INIT of a connection just mounted and serves it.
func serveNew(t *tree, opts fuse.MountOptions, dev *os.File) (*fuse.Server, KernelInit, error) {
	fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, KernelInit{}, err
	}
	server, err := fuse.NewServer(t, "/dev/fd/"+strconv.Itoa(fd), &opts)
	if err != nil {
		unix.Close(fd)
		return nil, KernelInit{}, err
	}
	t.server = server
	go server.Serve()
	k := server.KernelSettings()
	return server, KernelInit{Major: k.Major, Minor: k.Minor, MaxReadAhead: k.MaxReadAhead, Flags: k.Flags, Flags2: k.Flags2}, nil
}

// Resume serves a connection that another g8-fs process mounted and
// served (dev from the fd store, init from its state) with fl, which must
// be the flist that process served: node ids are flist indexes. tableFile
// is the open-file table of a mount in passthrough mode (from the fd store
// too; nil if there is none).
//
// A mount that answered OPEN goes on answering it: opens of files the
// kernel still has open follow the table, so their backing id (registered
// with the connection, not the process) is answered again; other files
// get a backing file only if this process has passthrough on. Files open
// with a backing file keep reading it whatever the new process does, but
// the kernel fails (EIO) a new open of such a file that does not name the
// same backing file, no-open mode included. So without a usable table
// (lost, or from another version) the connection goes to no-open mode
// (OPEN answers ENOSYS), and new opens of the files that are open with a
// backing file fail until their last close; all others work.
//
// The kernel sends INIT once per connection, and go-fuse's server only
// starts after answering one. So the server is first given a socket on
// which the recorded INIT is waiting (its answer goes nowhere), and the
// connection's descriptor is then dup3(2)ed over that socket's number
// before the server reads anything else. Requests the old process had
// read but not answered (it was killed, or exited, in between) are in the
// kernel's processing queue, where nobody would ever answer them: the
// FUSE_NOTIFY_RESEND notification (Linux 6.9) puts them back in the
// pending queue, and the new server answers them.
func Resume(name, mountpoint string, fl *Flist, fetch *Fetcher, dev, tableFile *os.File, init KernelInit) (*Mounted, error) {
	// Nothing here may touch the mount itself (stat, open): until this
	// process serves the connection, nobody answers, and a request from
	// g8-fs to its own mount would wait forever. The mount table has what
	// is needed.
	ms, err := mountsAtPath(mountpoint)
	if err != nil || len(ms) == 0 || ms[len(ms)-1].FSType != "fuse."+fuseName {
		return nil, fmt.Errorf("resume %s: %s is no longer a g8-fs mount (%v)", name, mountpoint, err)
	}
	devNum := unix.Mkdev(uint32(ms[len(ms)-1].Major), uint32(ms[len(ms)-1].Minor))
	opts := mountOptions(name)
	t := newTree(name, fl, fetch)
	var tableErr error
	if tableFile != nil {
		var tab *openTable
		if tab, tableErr = loadOpenTable(tableFile, fl); tableErr != nil {
			tableFile.Close()
		} else {
			t.open.Store(tab)
		}
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("resume %s: %w", name, err)
	}
	defer unix.Close(sp[1])
	if _, err := unix.Write(sp[1], initRequest(init)); err != nil {
		unix.Close(sp[0])
		return nil, fmt.Errorf("resume %s: replay INIT: %w", name, err)
	}
	closeTable := func() {
		if tab := t.open.Load(); tab != nil {
			tab.close()
		}
	}
	// go-fuse owns sp[0] from here (closed on error).
	server, err := fuse.NewServer(t, "/dev/fd/"+strconv.Itoa(sp[0]), &opts)
	if err != nil {
		closeTable()
		return nil, fmt.Errorf("resume %s: replay INIT: %w", name, err)
	}
	if err := unix.Dup3(int(dev.Fd()), sp[0], unix.O_CLOEXEC); err != nil {
		closeTable()
		return nil, fmt.Errorf("resume %s: %w", name, err)
	}
	t.server = server
	// Before it serves: the first OPEN decides no-open mode.
	pass := t.open.Load() != nil && fetch.Passthrough != PassthroughOff
	if pass {
		if perr := probePassthrough(server, fetch.Cache); perr != nil {
			pass, tableErr = false, perr
		}
	}
	t.passthrough.Store(pass)
	go server.Serve()
	m := &Mounted{Name: name, Mountpoint: mountpoint, Flist: fl, server: server, tree: t, dev: dev, Init: init, Passthrough: pass, conn: fusectl.Conn(devNum), gone: make(chan struct{})}
	go m.watchDetached(devNum)
	// FUSE_NOTIFY_RESEND: an unsolicited message (unique 0) whose error
	// field is the notification code.
	var resend [16]byte
	binary.NativeEndian.PutUint32(resend[0:], 16)
	binary.NativeEndian.PutUint32(resend[4:], notifyResend)
	if _, err := dev.Write(resend[:]); err != nil {
		// A kernel before 6.9: only requests that were in flight stay
		// unanswered; say so rather than failing the takeover.
		return m, fmt.Errorf("resume %s: FUSE_NOTIFY_RESEND: %w", name, err)
	}
	if tableErr != nil {
		return m, fmt.Errorf("resume %s: no new passthrough backing files until the sandbox is mounted again: %w", name, tableErr)
	}
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

// notifyResend is FUSE_NOTIFY_RESEND (include/uapi/linux/fuse.h).
const notifyResend = 7

// initRequest is a FUSE INIT request carrying what the kernel sent when
// the connection was set up.
func initRequest(k KernelInit) []byte {
	var in fuse.InitIn
	in.Length = uint32(unsafe.Sizeof(in))
	in.Opcode = 26 // FUSE_INIT
	in.Unique = 1
	in.Major, in.Minor, in.MaxReadAhead, in.Flags, in.Flags2 = k.Major, k.Minor, k.MaxReadAhead, k.Flags, k.Flags2
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in))...)
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
	m.unmountOnce.Do(func() { m.unmountErr = m.unmount() })
	return m.unmountErr
}

func (m *Mounted) unmount() error {
	// Only this connection's mount: another may have been mounted at the
	// same path since an unmount from outside.
	var st unix.Stat_t
	if err := unix.Stat(m.Mountpoint, &st); err != nil || fusectl.Conn(st.Dev) != m.conn {
		go func() {
			m.server.Wait()
			m.closeFiles()
		}()
		return nil
	}
	done := make(chan error, 1)
	go func() {
		err := unix.Unmount(m.Mountpoint, 0)
		if err == nil {
			m.server.Wait()
		}
		done <- err
	}()
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
		m.closeFiles()
		return nil
	} else if lerr := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmount %s: %w; lazily: %v", m.Mountpoint, err, lerr)
	}
	go func() {
		m.server.Wait()
		m.closeFiles()
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
