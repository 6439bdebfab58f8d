package unlock

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/internal/unlock/backend"
)

// Restarts keep /mnt/etc mounted (docs/unlock.md, "Restarts"): on a
// restart (or a crash) g8-unlock exits and leaves its FUSE tool serving;
// the next g8-unlock adopts the tool instead of asking for the key and
// mounting again. Only a stop unmounts, after stopping the units that use
// the mount (StopFirst).

// adoptFacts is what decides whether a mount can be adopted.
type adoptFacts struct {
	Mounted bool // something is mounted at the mountpoint
	Ours    bool // ...this config, by the configured backend
	Stale   bool // ...and its FUSE daemon is gone (ENOTCONN)
	Record  bool // unlock.json of the run that mounted it, for this private dir, mountpoint and backend
	Serving bool // the FUSE pid it records is the backend's tool serving this config
}

// planAdopt: a live mount of this config whose unlock.json names the
// process serving it is adopted; anything else goes through the normal
// start (prepareMountpoint cleans a dead mount, remounts a healthy one
// nobody recorded, refuses a foreign one).
func planAdopt(f adoptFacts) (adopt bool, why string) {
	switch {
	case !f.Mounted:
		return false, "nothing mounted"
	case !f.Ours:
		return false, "not this config's mount"
	case f.Stale:
		return false, "its FUSE process is gone"
	case !f.Record:
		return false, "no unlock.json from the run that mounted it"
	case !f.Serving:
		return false, "the FUSE process unlock.json names does not serve it"
	}
	return true, "live mount of this config, FUSE process recorded"
}

// adoptable returns the adopted mount and the previous run's state, or nil.
func (u *unlocker) adoptable(dir backend.DirState) (*backend.Mount, *state.Unlock) {
	if dir == backend.DirEmpty {
		return nil, nil
	}
	var f adoptFacts
	info, err := backend.MountAt(u.Mountpoint)
	if err != nil || info == nil {
		return nil, nil
	}
	f.Mounted = true
	f.Ours = info.FSType == u.be.FSType() && (u.be.Name() == "encfs" || info.Source == u.Private)
	f.Stale = backend.Stale(u.Mountpoint)
	var prev state.Unlock
	if state.Read(u.StateDir, &prev) == nil && prev.Private == u.Private && prev.Mountpoint == u.Mountpoint && prev.Backend == u.be.Name() {
		f.Record = true
		f.Serving = backend.Serving(u.be, prev.FUSEPID, u.Private, u.Mountpoint)
	}
	ok, why := planAdopt(f)
	if !ok {
		u.Log.Debug("not adopting the mount", "mountpoint", u.Mountpoint, "reason", why)
		return nil, nil
	}
	m, err := backend.Adopt(u.be, u.Private, u.Mountpoint, prev.FUSEPID)
	if err != nil {
		u.Log.Warn("cannot adopt the mount; mounting again", "mountpoint", u.Mountpoint, "error", err.Error())
		return nil, nil
	}
	return m, &prev
}

// adopted is the rest of the phase for an adopted mount: no key, no
// enrolment (the run that mounted it did both), READY at once.
func (u *unlocker) adopted(ctx context.Context, m *backend.Mount, prev *state.Unlock) error {
	u.mount = m
	u.st = *prev
	u.st.StartedAt, u.st.ReadyAt = u.started.UTC(), time.Now().UTC()
	log := u.Log.With("node_id", prev.NodeID, "controller", prev.Controller)
	if err := state.Write(u.StateDir, &u.st); err != nil {
		return err
	}
	log.Info("adopted the mounted config", sd.UnlockAdopted.Attr(), "mountpoint", u.Mountpoint, "fuse_pid", m.PID(),
		"backend", u.be.Name(), "took", time.Since(u.started).Round(time.Millisecond))
	u.readyStatus = fmt.Sprintf("%s unlocked at %s (node %s, %s, pid %d, adopted)", u.Private, u.Mountpoint, prev.NodeID, u.be.Name(), m.PID())
	u.Notify.Ready(u.readyStatus)
	return u.serve(ctx, log)
}

// stopUsers stops the units that use the mount before a stop unmounts it
// (they are only Wants=/After= g8-unlock, so that a restart of g8-unlock
// does not restart them).
func (u *unlocker) stopUsers(log *slog.Logger) {
	if len(u.StopFirst) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := sd.StopUnits(ctx, u.StopFirst); err != nil {
		log.Warn("stopping the units that use the config", "units", fmt.Sprint(u.StopFirst), "error", err.Error())
	}
}
