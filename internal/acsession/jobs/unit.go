package jobs

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/apps"
	"github.com/g8os/boot/internal/backoff"
)

// Limits of an exec job's unit (issue 16.8): a job is the controller's
// command, not a service; it must not take the node's memory or fork it
// to death.
const (
	ExecMemoryMax = 1 << 30 // bytes
	ExecTasksMax  = 512
)

var (
	execConnMu sync.Mutex
	execConn   *sddbus.Conn
)

// systemdConn is the session's connection to systemd for exec jobs, made
// on first use; nil (and the error) where systemd does not run (the
// package's tests on a host without it).
func systemdConn() (*sddbus.Conn, error) {
	execConnMu.Lock()
	defer execConnMu.Unlock()
	if execConn != nil && execConn.Connected() {
		return execConn, nil
	}
	if execConn != nil {
		// systemd re-executed itself (daemon-reexec, its own upgrade) and
		// closed every connection: a new one talks to the new systemd.
		execConn.Close()
		execConn = nil
	}
	c, err := sddbus.NewSystemdConnectionContext(context.Background())
	if err != nil {
		return nil, err
	}
	execConn = c
	return c, nil
}

// unitLostGrace is how long an exec job's unit may be unreadable (a
// closed connection, or not loaded) before the job fails: systemd
// re-executing or reloading itself on a loaded machine takes seconds.
const unitLostGrace = 30 * time.Second

// JobUnitName is the transient unit an exec job runs as.
func JobUnitName(id string) string {
	safe := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, id)
	return "g8-job-" + safe + ".service"
}

// runUnit runs p as a transient systemd service, g8-job-<id>.service: its
// own cgroup with MemoryMax, TasksMax and a RuntimeMaxSec of the job's
// timeout, so that the job is everything it started. When the main
// process exits, or the job's time is up, the unit is stopped, which
// kills the whole cgroup: a `setsid sleep &` escapes a process group, not
// a cgroup. stdin, stdout and stderr are pipes handed to systemd.
func runUnit(ctx context.Context, sys apps.Systemd, id string, timeout time.Duration, p process, res *acapi.JobResult) error {
	env := append(append([]string{}, baseEnv...), p.env...)
	path, err := lookPath(p.argv[0], env)
	if err != nil {
		return err
	}
	dir := p.dir
	if dir == "" {
		dir = "/"
	}
	var ends [6]*os.File // stdin, stdout, stderr: read and write ends
	for i := 0; i < len(ends); i += 2 {
		if ends[i], ends[i+1], err = os.Pipe(); err != nil {
			for _, f := range ends[:i] {
				f.Close()
			}
			return fmt.Errorf("exec %s: %w", p.argv[0], err)
		}
	}
	inR, inW, outR, outW, errR, errW := ends[0], ends[1], ends[2], ends[3], ends[4], ends[5]
	prop := func(name string, v any) sddbus.Property {
		return sddbus.Property{Name: name, Value: dbus.MakeVariant(v)}
	}
	props := []sddbus.Property{
		sddbus.PropDescription("g8os job " + id + ": " + p.argv[0]),
		sddbus.PropType("exec"),
		apps.ExecStart(path, p.argv),
		prop("Environment", env),
		prop("WorkingDirectory", dir),
		prop("StandardInputFileDescriptor", dbus.UnixFD(inR.Fd())),
		prop("StandardOutputFileDescriptor", dbus.UnixFD(outW.Fd())),
		prop("StandardErrorFileDescriptor", dbus.UnixFD(errW.Fd())),
		// The unit stays after the main process exits, so its exit status
		// can be read; the stop that follows kills what it left behind.
		prop("RemainAfterExit", true),
		prop("MemoryMax", uint64(ExecMemoryMax)),
		prop("TasksMax", uint64(ExecTasksMax)),
		prop("TimeoutStopUSec", uint64(2*time.Second/time.Microsecond)),
		prop("KillMode", "control-group"),
	}
	if timeout > 0 {
		props = append(props, prop("RuntimeMaxUSec", uint64(timeout/time.Microsecond)))
	}
	name := JobUnitName(id)
	_ = sys.ResetFailedUnitContext(ctx, name)
	done := make(chan string, 1)
	_, err = sys.StartTransientUnitContext(ctx, name, "fail", props, done)
	// systemd holds its own copies of the child's ends now.
	inR.Close()
	outW.Close()
	errW.Close()
	stdout, stderr := &cappedBuffer{max: p.maxOutput}, &cappedBuffer{max: p.maxOutput}
	var copying sync.WaitGroup
	copying.Add(2)
	go func() { defer copying.Done(); _, _ = io.Copy(stdout, outR) }()
	go func() { defer copying.Done(); _, _ = io.Copy(stderr, errR) }()
	go func() { _, _ = inW.Write(p.stdin); inW.Close() }()
	finish := func() {
		// Stopping kills the unit's whole cgroup; then the pipes close.
		stopped := make(chan string, 1)
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := sys.StopUnitContext(sctx, name, "replace", stopped); err == nil {
			select {
			case <-stopped:
			case <-sctx.Done():
			}
		}
		_ = sys.ResetFailedUnitContext(sctx, name)
		waited := make(chan struct{})
		go func() { copying.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(pipeGrace):
		}
		outR.Close()
		errR.Close()
		res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
		res.Truncated = stdout.truncated || stderr.truncated
	}
	if err != nil {
		finish()
		return fmt.Errorf("exec %s: start unit %s: %w", p.argv[0], name, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	// Asked often at first (most jobs are short), then every 250 ms.
	poll := 20 * time.Millisecond
	var lostSince time.Time // since when every look at the unit failed
	for {
		if ctx.Err() != nil {
			finish()
			res.ExitCode = 128 + 9
			return fmt.Errorf("%s: killed its unit %s (cgroup): %w", p.argv[0], name, ctx.Err())
		}
		code, status, exited, err := mainExit(ctx, sys, name)
		if err != nil && lostSince.IsZero() {
			lostSince = time.Now()
		}
		if err != nil && ctx.Err() == nil && time.Since(lostSince) < unitLostGrace {
			// The connection may have died under a daemon-reexec, and
			// while systemd re-executes or reloads (daemon-reload, as an
			// upgrade runs) the unit reads as not loaded; it goes on in
			// the new systemd: ask again, over a new connection.
			if c, cerr := systemdConn(); cerr == nil {
				sys = c
			}
			_ = backoff.Sleep(ctx, poll)
			continue
		}
		if err != nil && ctx.Err() == nil {
			finish()
			return fmt.Errorf("exec %s: unit %s: %w", p.argv[0], name, err)
		}
		lostSince = time.Time{}
		if exited {
			finish()
			switch code {
			case 1: // CLD_EXITED
				res.ExitCode = int(status)
				if status >= 200 && status <= 243 {
					return fmt.Errorf("exec %s: systemd could not run it (status %d, journalctl -u %s)", p.argv[0], status, name)
				}
				if status != 0 {
					return fmt.Errorf("%s: exit status %d", p.argv[0], status)
				}
				return nil
			default: // killed or dumped: status is the signal
				res.ExitCode = 128 + int(status)
				return fmt.Errorf("%s: killed by signal %d", p.argv[0], status)
			}
		}
		if backoff.Sleep(ctx, poll) != nil {
			continue
		}
		poll = min(poll*3/2, 250*time.Millisecond)
	}
}

// mainExit reads whether the unit's main process exited, and how
// (ExecMainCode is a CLD_* code, ExecMainStatus the status or signal).
func mainExit(ctx context.Context, sys apps.Systemd, name string) (code, status int32, exited bool, err error) {
	u, err := sys.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return 0, 0, false, err
	}
	// After a daemon-reload the unit's transient file is parsed again and
	// may read as a bad setting (its stdio were descriptors, which no file
	// can carry), yet systemd keeps its runtime state: only a unit systemd
	// no longer knows is gone.
	if ls, _ := u["LoadState"].(string); ls == "not-found" || ls == "" {
		return 0, 0, false, fmt.Errorf("unit gone (load state %q)", ls)
	}
	svc, err := sys.GetUnitTypePropertiesContext(ctx, name, "Service")
	if err != nil {
		return 0, 0, false, err
	}
	code, _ = svc["ExecMainCode"].(int32)
	status, _ = svc["ExecMainStatus"].(int32)
	exitTS, _ := svc["ExecMainExitTimestampMonotonic"].(uint64)
	return code, status, code != 0 && exitTS != 0, nil
}
