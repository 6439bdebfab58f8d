package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/apps"
)

// The grid's app lifecycle kinds (app.install, app.start, app.stop,
// app.restart, app.remove, app.logs): thin wrappers around the node's app
// runner in internal/apps, which does the work through systemd and g8-fs.

// AppConfig says where the app runner keeps its records and finds g8-fs.
// g8-acsession sets it from its flags before the first job; the default
// is the layout of a booted node.
var AppConfig = apps.DefaultConfig("/mnt/etc", "/run/g8os")

// AppRunner is the runner the app kinds use; nil until the first app job
// (or AppStatuses) connects to systemd. Tests may set it.
var AppRunner *apps.Runner

var appRunnerMu sync.Mutex

func appRunner(ctx context.Context, env *Env) (*apps.Runner, error) {
	appRunnerMu.Lock()
	defer appRunnerMu.Unlock()
	if AppRunner != nil {
		return AppRunner, nil
	}
	var log *slog.Logger
	if env != nil {
		log = env.Log
	}
	r, _, err := apps.Open(AppConfig, log)
	if err != nil {
		return nil, err
	}
	AppRunner = r
	return r, nil
}

// ConfigureApps points the app kinds at the node's unlocked config and
// state directory; g8-acsession calls it once at start, before any job.
func ConfigureApps(configRoot, stateDir string) {
	appRunnerMu.Lock()
	defer appRunnerMu.Unlock()
	AppConfig = apps.DefaultConfig(configRoot, stateDir)
}

// AppStatuses reports every installed app with its unit's state.
func AppStatuses(ctx context.Context, env *Env) ([]acapi.AppStatus, error) {
	r, err := appRunner(ctx, env)
	if err != nil {
		return nil, err
	}
	return r.Statuses(ctx)
}

// AppHeartbeat is the heartbeat's Apps. A node without apps reports none
// without touching systemd. When systemd cannot be asked, the installed
// apps are reported in state "unknown" rather than left out, so the
// controller does not take them for gone and install them again.
func AppHeartbeat(ctx context.Context, env *Env) []acapi.AppStatus {
	appRunnerMu.Lock()
	dir := AppConfig.Dir
	appRunnerMu.Unlock()
	recs, err := (&apps.Runner{Dir: dir}).Installed()
	if err != nil || len(recs) == 0 {
		return nil
	}
	sts, err := AppStatuses(ctx, env)
	if err == nil {
		return sts
	}
	out := make([]acapi.AppStatus, 0, len(recs))
	for _, rec := range recs {
		out = append(out, acapi.AppStatus{Name: rec.Spec.Name, Spec: rec.SpecHash(), State: "unknown", Error: err.Error()})
	}
	return out
}

// RestoreApps starts, at session start, the installed apps a reboot took
// down; apps still running are left alone. A node without apps does
// nothing.
func RestoreApps(ctx context.Context, env *Env) error {
	appRunnerMu.Lock()
	dir := AppConfig.Dir
	appRunnerMu.Unlock()
	if recs, err := (&apps.Runner{Dir: dir}).Installed(); err != nil || len(recs) == 0 {
		return err
	}
	r, err := appRunner(ctx, env)
	if err != nil {
		return err
	}
	return r.Restore(ctx)
}

func appKind(name string, run func(r *apps.Runner, ctx context.Context, app string) error) Kind {
	return Kind{Name: name, Run: func(ctx context.Context, env *Env, job *acapi.Job, res *acapi.JobResult) error {
		var a acapi.AppArgs
		if err := DecodeArgs(job, &a); err != nil {
			return err
		}
		if !apps.ValidName(a.Name) {
			return Rejectf("%s args: name: %q is not an app name", job.Kind, a.Name)
		}
		r, err := appRunner(ctx, env)
		if err != nil {
			return err
		}
		if err := run(r, ctx, a.Name); err != nil {
			return err
		}
		return appOutput(ctx, r, a.Name, res)
	}}
}

// appOutput puts the app's status after the job into the result, so the
// controller need not wait for the next heartbeat to show it.
func appOutput(ctx context.Context, r *apps.Runner, app string, res *acapi.JobResult) error {
	sts, err := r.Statuses(ctx)
	if err != nil {
		return nil
	}
	for _, st := range sts {
		if st.Name == app {
			res.Output, _ = json.Marshal(st)
		}
	}
	return nil
}

func init() {
	Register(Kind{Name: acapi.JobAppInstall, Run: func(ctx context.Context, env *Env, job *acapi.Job, res *acapi.JobResult) error {
		var a acapi.AppInstallArgs
		if err := DecodeArgs(job, &a); err != nil {
			return err
		}
		if err := apps.CheckSpec(&a.Spec); err != nil {
			return Reject(err)
		}
		r, err := appRunner(ctx, env)
		if err != nil {
			return err
		}
		if err := r.Install(ctx, a.Spec, a.Hash); err != nil {
			return err
		}
		return appOutput(ctx, r, a.Spec.Name, res)
	}})
	Register(appKind(acapi.JobAppStart, (*apps.Runner).Start))
	Register(appKind(acapi.JobAppStop, (*apps.Runner).Stop))
	Register(appKind(acapi.JobAppRestart, (*apps.Runner).Restart))
	Register(appKind(acapi.JobAppRemove, (*apps.Runner).Remove))
	Register(Kind{Name: acapi.JobAppShow, Run: appShow})
	Register(Kind{Name: acapi.JobAppLogs, Run: func(ctx context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
		var a acapi.AppLogsArgs
		if err := DecodeArgs(job, &a); err != nil {
			return err
		}
		if !apps.ValidName(a.Name) {
			return Rejectf("app.logs args: name: %q is not an app name", a.Name)
		}
		switch {
		case a.Lines < 0 || a.Lines > maxJournalLines:
			return Rejectf("app.logs args: lines: %d is not in 1..%d", a.Lines, maxJournalLines)
		case a.Lines == 0:
			a.Lines = defaultJournalLines
		}
		argv := []string{"journalctl", "--no-pager", "--quiet", "--output=short-iso",
			"--lines=" + strconv.Itoa(a.Lines), "--unit=" + apps.UnitName(a.Name)}
		return runProcess(ctx, process{argv: argv, maxOutput: acapi.MaxOutput}, res)
	}})
}

// appShow is app.show: systemd's own score of the app's unit as it runs,
// setting by setting, so the operator sees the boundary the app really
// has (docs/grid.md "Boundary").
func appShow(ctx context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
	var a acapi.AppArgs
	if err := DecodeArgs(job, &a); err != nil {
		return err
	}
	if !apps.ValidName(a.Name) {
		return Rejectf("app.show args: name: %q is not an app name", a.Name)
	}
	argv := []string{"systemd-analyze", "security", "--no-pager", apps.UnitName(a.Name)}
	return runProcess(ctx, process{argv: argv, maxOutput: acapi.MaxOutput}, res)
}

// CheckAppHealth runs the apps' health checks that are due (see
// apps.Runner.CheckHealth). A node without apps does nothing.
func CheckAppHealth(ctx context.Context, env *Env, now time.Time) {
	appRunnerMu.Lock()
	dir := AppConfig.Dir
	appRunnerMu.Unlock()
	if recs, err := (&apps.Runner{Dir: dir}).Installed(); err != nil || len(recs) == 0 {
		return
	}
	r, err := appRunner(ctx, env)
	if err != nil {
		return
	}
	r.CheckHealth(ctx, now)
}
