package acsession

import (
	"context"
	"time"

	"github.com/g8os/boot/internal/acsession/jobs"
	"github.com/g8os/boot/internal/sd"
)

// restoreApps brings back, after a reboot, the grid apps this node had
// running (internal/apps keeps their records in the unlocked config), then
// runs their health checks until ctx ends. It runs beside the session
// loop: it may wait for g8-fs to mount the sandboxes, and the controller
// must not wait for that.
func (s *Session) restoreApps(ctx context.Context) {
	env := &jobs.Env{StateDir: s.cfg.StateDir, Log: s.log}
	if err := jobs.RestoreApps(ctx, env); err != nil && ctx.Err() == nil {
		s.log.Warn("grid apps not restored; the controller will start them", sd.AppFailed.Attr(), "error", err)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			jobs.CheckAppHealth(ctx, env, now)
		}
	}
}
