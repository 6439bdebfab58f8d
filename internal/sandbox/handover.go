package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Restarts without unmounting (docs/fs.md, "Restarts and upgrades").
//
// Each mount's /dev/fuse descriptor is in systemd's fd store under
// fdName(sandbox) from the moment it is mounted, and fs.json records what
// a new process needs to serve it: the flist file and hash (node ids are
// flist indexes, see fusetree.go) and the kernel's INIT. A new g8-fs (after
// `systemctl restart`, an upgrade, a crash or kill -9) gets the
// descriptors back, resumes each connection the record matches, and then
// applies fs.toml like a reload. Only a stop unmounts.

const fdPrefix = "fuse-"

// fdName names a sandbox's connection in the fd store.
func fdName(sandbox string) string { return fdPrefix + sandbox }

// heldConn is one name found in the fd store at start, with fs.json's
// record of the sandbox it belongs to (nil if none).
type heldConn struct {
	FDName string
	Files  int
	Record *state.Sandbox
}

// takeover is what to do with one held connection.
type takeover struct {
	FDName string
	Resume bool
	Why    string // why it is dropped
}

// planTakeover decides which held connections can be served again: those
// that fs.json describes completely. The others are dropped (closed and
// their mountpoint lazily unmounted): without the flist and INIT they
// were set up with, no process can answer them correctly.
func planTakeover(held []heldConn) []takeover {
	out := make([]takeover, 0, len(held))
	for _, h := range held {
		t := takeover{FDName: h.FDName}
		switch r := h.Record; {
		case !strings.HasPrefix(h.FDName, fdPrefix):
			t.Why = "not a g8-fs FUSE connection"
		case h.Files < 1 || h.Files > 2: // the connection, and its open-file table
			t.Why = fmt.Sprintf("%d descriptors under one name", h.Files)
		case r == nil:
			t.Why = "fs.json has no sandbox " + strings.TrimPrefix(h.FDName, fdPrefix)
		case r.Conn == nil || r.Conn.FDName != h.FDName:
			t.Why = "fs.json records no connection for sandbox " + r.Name
		case r.Conn.Major == 0 || r.Conn.FlistPath == "" || r.FlistHash == "" || r.Mountpoint == "":
			t.Why = "fs.json's record of sandbox " + r.Name + " is incomplete"
		default:
			t.Resume = true
		}
		out = append(out, t)
	}
	return out
}

// takeOver serves again every connection the previous g8-fs left in the
// fd store that fs.json describes, and returns the sandboxes now running.
func (d *daemon) takeOver(ctx context.Context) []SandboxConfig {
	stored := sd.StoredFDs()
	if len(stored) == 0 {
		return nil
	}
	var prev state.FS
	if err := state.Read(d.opt.StateDir, &prev); err != nil {
		d.log.Warn("no record of the previous g8-fs's mounts", "error", err.Error())
	}
	records := map[string]*state.Sandbox{}
	for i := range prev.Sandboxes {
		r := &prev.Sandboxes[i]
		records[fdName(r.Name)] = r
	}
	var held []heldConn
	for name, files := range stored {
		held = append(held, heldConn{FDName: name, Files: len(files), Record: records[name]})
	}
	sort.Slice(held, func(i, j int) bool { return held[i].FDName < held[j].FDName })
	var running []SandboxConfig
	for _, t := range planTakeover(held) {
		files := stored[t.FDName]
		rec := records[t.FDName]
		if t.Resume {
			m, err := d.resumeOne(rec, files)
			if m != nil {
				if err != nil {
					d.log.Warn("connection taken over, but requests in flight may stay unanswered", "sandbox", rec.Name, "error", err.Error())
				}
				d.adopt(ctx, rec, m)
				running = append(running, SandboxConfig{Name: rec.Name, Flist: rec.Flist, Mountpoint: rec.Mountpoint})
				continue
			}
			t.Why = err.Error()
		}
		d.drop(t, rec, files)
	}
	return running
}

// connFiles sorts the descriptors stored under a sandbox's name: its
// /dev/fuse connection (a character device) and, for a mount in
// passthrough mode, its open-file table (a memfd, a regular file).
func connFiles(files []*os.File) (dev, table *os.File, err error) {
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return nil, nil, err
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFCHR && dev == nil:
			dev = f
		case st.Mode&unix.S_IFMT == unix.S_IFREG && table == nil:
			table = f
		default:
			return nil, nil, fmt.Errorf("descriptor of mode %o beside the connection", st.Mode)
		}
	}
	if dev == nil {
		return nil, nil, errors.New("no FUSE connection among the stored descriptors")
	}
	return dev, table, nil
}

func (d *daemon) resumeOne(rec *state.Sandbox, files []*os.File) (*Mounted, error) {
	start := time.Now()
	dev, table, err := connFiles(files)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", rec.Name, err)
	}
	fl, err := OpenFlist(rec.Conn.FlistPath)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", rec.Name, err)
	}
	if got := fl.Hash().String(); got != rec.FlistHash {
		fl.Close()
		return nil, fmt.Errorf("sandbox %s: %s now hashes to %s, not %s (the flist served before)", rec.Name, rec.Conn.FlistPath, got, rec.FlistHash)
	}
	c := rec.Conn
	m, err := Resume(rec.Name, rec.Mountpoint, fl, d.fetch, dev, table, KernelInit{Major: c.Major, Minor: c.Minor, MaxReadAhead: c.MaxReadAhead, Flags: c.Flags, Flags2: c.Flags2})
	if m == nil {
		fl.Close()
		return nil, err
	}
	open, backed := 0, 0
	if tab := m.tree.open.Load(); tab != nil {
		open, backed = tab.openNodes()
	}
	d.log.Info("sandbox taken over", sd.FSTakenOver.Attr(), "sandbox", rec.Name, "mountpoint", rec.Mountpoint,
		"flist_hash", rec.FlistHash, "passthrough", m.Passthrough, "open_files", open, "open_with_backing", backed,
		"took", time.Since(start).String())
	return m, err
}

// adopt makes a resumed mount one of the daemon's sandboxes.
func (d *daemon) adopt(ctx context.Context, rec *state.Sandbox, m *Mounted) {
	sctx, cancel := context.WithCancel(ctx)
	r := &sandboxRun{cfg: SandboxConfig{Name: rec.Name, Flist: rec.Flist, Mountpoint: rec.Mountpoint}, m: m, state: "mounted",
		attempts: 1, cancel: cancel, done: make(chan struct{}), first: make(chan struct{})}
	close(r.done)
	close(r.first)
	d.mu.Lock()
	d.sbs[rec.Name] = r
	d.mu.Unlock()
	go d.watch(sctx, r, m)
}

// drop closes a connection nobody can serve and lazily unmounts the
// mountpoint fs.json names for it, if a g8-fs mount is still there.
func (d *daemon) drop(t takeover, rec *state.Sandbox, files []*os.File) {
	if err := sd.RemoveFD(t.FDName); err != nil && !errors.Is(err, sd.ErrNoFDStore) {
		d.log.Warn("fd store", "fd_name", t.FDName, "error", err.Error())
	}
	mp := ""
	if rec != nil && rec.Mountpoint != "" {
		if fstype, ok := mountType(rec.Mountpoint); ok && fstype == "fuse."+fuseName {
			mp = rec.Mountpoint
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	for _, f := range files {
		f.Close()
	}
	d.log.Warn("FUSE connection dropped", sd.FSConnDropped.Attr(), "fd_name", t.FDName, "mountpoint", mp, "error", t.Why)
}

// keep hands a new mount's connection to the fd store (after fs.json
// describes it: writeState runs first).
func (d *daemon) keep(name string, m *Mounted) {
	files := []*os.File{m.Dev()}
	if tab := m.OpenTable(); tab != nil {
		files = append(files, tab)
	}
	if err := sd.StoreFD(fdName(name), files...); err != nil {
		if errors.Is(err, sd.ErrNoFDStore) {
			d.log.Debug("connection not kept: a restart will unmount", "sandbox", name, "error", err.Error())
			return
		}
		d.log.Warn("connection not kept in the fd store: a restart will unmount", "sandbox", name, "error", err.Error())
	}
}

// release takes a connection out of the fd store before it is unmounted.
func (d *daemon) release(name string) {
	if err := sd.RemoveFD(fdName(name)); err != nil && !errors.Is(err, sd.ErrNoFDStore) {
		d.log.Warn("fd store", "fd_name", fdName(name), "error", err.Error())
	}
}

// detach decides, on SIGTERM, whether to leave the mounts to the next
// g8-fs (a restart) or unmount them (a stop): sd.AskRestarting.
func (d *daemon) detach() bool {
	restart, job, why := sd.AskRestarting()
	if restart {
		d.log.Info("exiting with the sandboxes mounted for the next g8-fs", sd.FSDetached.Attr(), "job", job, "reason", why)
	} else {
		d.log.Info("unmounting every sandbox", "job", job, "reason", why)
	}
	return restart
}
