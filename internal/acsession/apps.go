package acsession

import (
	"context"

	"github.com/g8os/boot/internal/acsession/jobs"
	"github.com/g8os/boot/internal/sd"
)

// restoreApps brings back, after a reboot, the grid apps this node had
// running (internal/apps keeps their records in the unlocked config). It
// runs beside the session loop: it may wait for g8-fs to mount the
// sandboxes, and the controller must not wait for that.
func (s *Session) restoreApps(ctx context.Context) {
	if err := jobs.RestoreApps(ctx, &jobs.Env{StateDir: s.cfg.StateDir, Log: s.log}); err != nil && ctx.Err() == nil {
		s.log.Warn("grid apps not restored; the controller will start them", sd.AppFailed.Attr(), "error", err)
	}
}
