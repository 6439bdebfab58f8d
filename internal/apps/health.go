package apps

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/sd"
)

// Prober runs one health check: argv inside the sandbox root with env,
// within ctx, as root only when asRoot. Nil error means healthy.
type Prober func(ctx context.Context, root string, argv, env []string, asRoot bool) error

// Nobody is the user a health check runs as unless its app runs as root:
// the check is the app's own code, and must not get more than the app.
const Nobody = 65534

// ChrootProber runs the check chrooted into the sandbox, as the app sees
// it, without the session's environment; unless asRoot, as Nobody with no
// capabilities (a setuid away from root drops them all).
func ChrootProber(ctx context.Context, root string, argv, env []string, asRoot bool) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Setpgid: true}
	if !asRoot {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: Nobody, Gid: Nobody, Groups: []uint32{}}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("no answer within the timeout")
	}
	if err != nil {
		if len(out) > 200 {
			out = out[:200]
		}
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

type health struct {
	failures int
	last     time.Time
	err      string
}

func (r *Runner) healthOf(app string) health {
	r.hmu.Lock()
	defer r.hmu.Unlock()
	if h := r.health[app]; h != nil {
		return *h
	}
	return health{}
}

// CheckHealth runs the health checks that are due, once: each app with a
// check whose unit is active, every Interval. Retries failures in a row
// make the app unhealthy, and the runner restarts it (one more restart).
// g8-acsession calls it every second.
func (r *Runner) CheckHealth(ctx context.Context, now time.Time) {
	recs, err := r.Installed()
	if err != nil {
		return
	}
	probe := r.Probe
	if probe == nil {
		probe = ChrootProber
	}
	r.hmu.Lock()
	if r.health == nil {
		r.health = map[string]*health{}
	}
	seen := map[string]bool{}
	for _, rec := range recs {
		seen[rec.Spec.Name] = true
	}
	for name := range r.health {
		if !seen[name] {
			delete(r.health, name)
		}
	}
	r.hmu.Unlock()
	for _, rec := range recs {
		hc := rec.Spec.Health
		if hc == nil || rec.Stopped || rec.Mountpoint == "" {
			continue
		}
		r.hmu.Lock()
		h := r.health[rec.Spec.Name]
		if h == nil {
			h = &health{}
			r.health[rec.Spec.Name] = h
		}
		due := now.Sub(h.last) >= time.Duration(hc.Interval)
		r.hmu.Unlock()
		if !due {
			continue
		}
		if u, err := r.unit(ctx, rec.Spec.Name); err != nil || u.ActiveState != "active" {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(hc.Timeout))
		err := probe(cctx, rec.Mountpoint, hc.Command, envList(rec.Spec.Env), rec.Spec.User == "root")
		cancel()
		r.hmu.Lock()
		h.last = now
		if err == nil {
			h.failures, h.err = 0, ""
			r.hmu.Unlock()
			continue
		}
		h.failures++
		h.err = err.Error()
		failures := h.failures
		r.hmu.Unlock()
		if failures < hc.Retries {
			continue
		}
		r.log().Warn("apps: "+rec.Spec.Name+" unhealthy, restarting", sd.AppFailed.Attr(), "app", rec.Spec.Name,
			"error", fmt.Sprintf("health check failed %d times in a row: %v", failures, err))
		if err := r.Restart(ctx, rec.Spec.Name); err == nil {
			r.hmu.Lock()
			h.failures = 0
			r.hmu.Unlock()
		}
	}
}

func envList(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

// statusWithHealth is Status with the app's current health failures.
func (r *Runner) statusWithHealth(rec *Record, u UnitState) acapi.AppStatus {
	h := r.healthOf(rec.Spec.Name)
	st := Status(rec, u, h.failures)
	if st.State == acapi.AppUnhealthy && h.err != "" {
		st.Error += ": " + h.err
	}
	return st
}
