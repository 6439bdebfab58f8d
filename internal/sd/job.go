package sd

import (
	"context"
	"fmt"
	"os"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
)

// A daemon that keeps what it serves across a restart (g8-fs's FUSE
// connections, g8-unlock's mount) must do different things on a stop and
// on a restart, and systemd sends the same SIGTERM for both. The job
// systemd runs on the unit tells them apart; it exists until the process
// has exited.

// UnitJob asks systemd (its private socket, as root) which unit this
// process runs in and the type of the job systemd is running on it:
// "stop", "restart", ... or "" when there is none (a SIGTERM from `kill`
// or `systemctl kill`).
func UnitJob(ctx context.Context) (unit, job string, err error) {
	conn, err := sdbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		return "", "", fmt.Errorf("systemd: %w", err)
	}
	defer conn.Close()
	unit, err = conn.GetUnitNameByPID(ctx, uint32(os.Getpid()))
	if err != nil {
		return "", "", fmt.Errorf("systemd: unit of pid %d: %w", os.Getpid(), err)
	}
	jobs, err := conn.ListJobsContext(ctx)
	if err != nil {
		return unit, "", fmt.Errorf("systemd: jobs: %w", err)
	}
	for _, j := range jobs {
		if j.Unit == unit {
			return unit, j.JobType, nil
		}
	}
	return unit, "", nil
}

// Restarting decides, on SIGTERM, whether the unit is being restarted
// (leave what the daemon serves to the next process) or stopped (tear it
// down). When that cannot be known the answer is "stopped": what a stop
// leaves behind would be dead (the fd store is closed, nobody adopts).
func Restarting(underSystemd bool, job string, jobErr error) (bool, string) {
	switch {
	case !underSystemd:
		return false, "not started by systemd: nothing keeps it for a next process"
	case jobErr != nil:
		return false, "cannot tell a stop from a restart: " + jobErr.Error()
	}
	switch job {
	case "restart", "try-restart", "reload-or-restart", "reload-or-try-restart":
		return true, "systemd job " + job
	case "":
		// kill or systemctl kill: Restart= starts the unit again.
		return true, "SIGTERM outside a systemd job; Restart= starts the unit again"
	default:
		return false, "systemd job " + job
	}
}

// AskRestarting asks systemd (UnitJob) and decides (Restarting).
func AskRestarting() (restart bool, job, why string) {
	under := os.Getenv("NOTIFY_SOCKET") != ""
	var err error
	if under {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, job, err = UnitJob(ctx)
		cancel()
	}
	restart, why = Restarting(under, job, err)
	return restart, job, why
}

// StopUnits stops units (systemctl stop, mode "replace") and waits until
// each stop job ended.
func StopUnits(ctx context.Context, units []string) error {
	conn, err := sdbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("systemd: %w", err)
	}
	defer conn.Close()
	var chans []chan string
	for _, u := range units {
		ch := make(chan string, 1)
		if _, err := conn.StopUnitContext(ctx, u, "replace", ch); err != nil {
			return fmt.Errorf("systemd: stop %s: %w", u, err)
		}
		chans = append(chans, ch)
	}
	for i, ch := range chans {
		select {
		case r := <-ch:
			if r != "done" {
				return fmt.Errorf("systemd: stop %s: %s", units[i], r)
			}
		case <-ctx.Done():
			return fmt.Errorf("systemd: stop %s: %w", units[i], ctx.Err())
		}
	}
	return nil
}
