// Package apps runs the grid's apps on a node: each app is a transient
// systemd unit (g8-app-<name>.service) started over D-Bus, chrooted into
// its sandbox, which g8-fs mounts. What the node installed is persisted in
// the unlocked config, so the app comes back after a reboot and a restart
// of g8-acsession never starts anything twice. g8-acsession's app.* jobs
// are thin wrappers around a Runner.
package apps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
)

// Systemd is the part of go-systemd's *dbus.Conn the runner uses.
type Systemd interface {
	StartTransientUnitContext(ctx context.Context, name, mode string, props []sddbus.Property, ch chan<- string) (int, error)
	StartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	StopUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	ResetFailedUnitContext(ctx context.Context, name string) error
	GetUnitPropertiesContext(ctx context.Context, unit string) (map[string]any, error)
	GetUnitTypePropertiesContext(ctx context.Context, unit, unitType string) (map[string]any, error)
}

// Sandboxes mounts and unmounts app sandboxes (g8-fs on a node).
type Sandboxes interface {
	// Mount makes the sandbox named name serve flist and returns its
	// mountpoint once it is mounted.
	Mount(ctx context.Context, name, flist string) (string, error)
	Unmount(ctx context.Context, name string) error
}

// Record is what the node keeps per installed app, one JSON file each.
type Record struct {
	Spec       acapi.AppSpec `json:"spec"`
	Hash       string        `json:"hash,omitempty"` // the controller's hash of Spec, reported as is
	Mountpoint string        `json:"mountpoint"`
	Sandbox    string        `json:"sandbox,omitempty"` // its g8-fs sandbox: SandboxName, or RollSandboxName after a roll`
	Stopped    bool          `json:"stopped"`           // stopped on request: not restored at boot
	Restarts   int           `json:"restarts"`          // restarts of earlier incarnations of the unit
	Since      time.Time     `json:"since"`
	Error      string        `json:"error,omitempty"` // last start failure
}

// sandbox is the g8-fs sandbox the record's unit runs in.
func (rec *Record) sandbox() string {
	if rec.Sandbox != "" {
		return rec.Sandbox
	}
	return SandboxName(rec.Spec.Name)
}

// SpecHash is the hash the node reports for the record's spec.
func (rec *Record) SpecHash() string {
	if rec.Hash != "" {
		return rec.Hash
	}
	return rec.Spec.Hash()
}

// Runner carries out app jobs on one node.
type Runner struct {
	Dir       string // one <app>.json per installed app (persistent: /mnt/etc/g8os/apps)
	Systemd   Systemd
	Sandboxes Sandboxes
	Log       *slog.Logger
	Probe     Prober // health checks; ChrootProber when nil

	mu     sync.Mutex // one job at a time: jobs on the same app must not interleave
	hmu    sync.Mutex
	health map[string]*health
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (r *Runner) path(app string) string { return filepath.Join(r.Dir, app+".json") }

func (r *Runner) load(app string) (*Record, error) {
	if !nameRE.MatchString(app) {
		return nil, fmt.Errorf("apps: %q is not an app name", app)
	}
	data, err := os.ReadFile(r.path(app))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("apps: %s: not installed", app)
	}
	if err != nil {
		return nil, fmt.Errorf("apps: %s: %w", app, err)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("apps: %s: %w", r.path(app), err)
	}
	return &rec, nil
}

// save writes a record atomically and durably.
func (r *Runner) save(rec *Record) error {
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return fmt.Errorf("apps: %w", err)
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(r.path(rec.Spec.Name), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("apps: %w", err)
	}
	return nil
}

// Installed lists the installed apps' records, by name.
func (r *Runner) Installed() ([]*Record, error) {
	ents, err := os.ReadDir(r.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("apps: %w", err)
	}
	var out []*Record
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		rec, err := r.load(name)
		if err != nil {
			r.log().Warn("apps: skipping unreadable record", "file", e.Name(), "error", err)
			continue
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out, nil
}

func (r *Runner) unit(ctx context.Context, app string) (UnitState, error) {
	name := UnitName(app)
	u, err := r.Systemd.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return UnitState{}, fmt.Errorf("apps: %s: %w", name, err)
	}
	svc := map[string]any{}
	if u["LoadState"] == "loaded" {
		if svc, err = r.Systemd.GetUnitTypePropertiesContext(ctx, name, "Service"); err != nil {
			return UnitState{}, fmt.Errorf("apps: %s: %w", name, err)
		}
	}
	return unitState(u, svc), nil
}

// Install makes the app run exactly spec: a new app is mounted and
// started; one running another spec is stopped and started anew (a roll,
// re-mounting its sandbox when the flist changed); one already running
// spec is left alone.
//
// hash is the controller's hash of spec (AppInstallArgs.Hash); empty means
// spec.Hash().
func (r *Runner) Install(ctx context.Context, spec acapi.AppSpec, hash string) error {
	if err := CheckSpec(&spec); err != nil {
		return err
	}
	if hash == "" {
		hash = spec.Hash()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, err := r.load(spec.Name)
	if err != nil {
		old = nil
	}
	u, err := r.unit(ctx, spec.Name)
	if err != nil {
		return err
	}
	live := u.LoadState == "loaded" && u.ActiveState != "inactive"
	if old != nil && old.SpecHash() == hash && live && u.ActiveState != "failed" {
		if old.Stopped {
			return r.startLocked(ctx, old, u)
		}
		return nil
	}
	rec := &Record{Spec: spec, Hash: hash}
	if old != nil {
		rec.Restarts = old.Restarts
		rec.Mountpoint, rec.Sandbox = old.Mountpoint, old.Sandbox
	}
	if live && old != nil {
		return r.roll(ctx, old, u, rec)
	}
	if live {
		// A unit without a record (written by hand, or a record lost):
		// nothing to fall back to.
		if err := r.stopUnit(ctx, spec.Name, "roll"); err != nil {
			return err
		}
		rec.Restarts += int(u.NRestarts)
	}
	// Always through g8-fs: after a reboot the record survives but the
	// mount may not; Mount is a no-op for a sandbox already mounted.
	mp, err := r.Sandboxes.Mount(ctx, rec.sandbox(), spec.Flist)
	if err != nil {
		return fmt.Errorf("apps: %s: sandbox: %w", spec.Name, err)
	}
	rec.Mountpoint = mp
	// Persist before starting: if the session dies between the two, the
	// next Restore or install finds the record and does not start a twin.
	if err := r.save(rec); err != nil {
		return err
	}
	return r.startTransient(ctx, rec)
}

// roll replaces a running app by rec's spec, make before break: a new
// flist is mounted as the app's other sandbox (RollSandboxName and
// SandboxName take turns) and its command checked there while the old
// version keeps running; only then is the old unit stopped and the new
// one started. Whatever fails before the stop leaves the old version
// untouched; a new unit that does not start gets the old one started
// again in its old sandbox. Either way the old record stays, with why the
// roll failed, and the error goes back in the job's result (the grid
// retries with its backoff). r.mu is held.
func (r *Runner) roll(ctx context.Context, old *Record, u UnitState, rec *Record) error {
	app := rec.Spec.Name
	fresh := rec.Spec.Flist != old.Spec.Flist || old.Mountpoint == ""
	if fresh {
		sb := otherSandbox(app, old.sandbox())
		mp, err := r.Sandboxes.Mount(ctx, sb, rec.Spec.Flist)
		if err != nil {
			r.dropSandbox(ctx, app, sb, mp)
			return r.rollFailed(old, rec, fmt.Errorf("apps: %s: sandbox: %w", app, err))
		}
		rec.Sandbox, rec.Mountpoint = sb, mp
	}
	if err := checkCommand(rec.Mountpoint, rec.Spec.Command[0]); err != nil {
		if fresh {
			r.dropSandbox(ctx, app, rec.Sandbox, rec.Mountpoint)
		}
		return r.rollFailed(old, rec, fmt.Errorf("apps: %s: %w", app, err))
	}
	if err := r.stopUnit(ctx, app, "roll"); err != nil {
		return err
	}
	rec.Restarts = old.Restarts + int(u.NRestarts)
	old.Restarts = rec.Restarts
	if err := r.save(rec); err != nil {
		return err
	}
	if err := r.startTransient(ctx, rec); err != nil {
		// Back to the old version, in the sandbox it ran in.
		if serr := r.startTransient(ctx, old); serr != nil {
			err = errors.Join(err, fmt.Errorf("apps: %s: the old spec did not start again either: %w", app, serr))
		}
		if fresh {
			r.dropSandbox(ctx, app, rec.Sandbox, rec.Mountpoint)
		}
		return r.rollFailed(old, rec, err)
	}
	if fresh {
		r.dropSandbox(ctx, app, old.sandbox(), old.Mountpoint)
	}
	return nil
}

// RollSandboxName is the app's second sandbox: a roll to a new flist
// mounts it while the first still serves the running version.
func RollSandboxName(app string) string { return SandboxName(app) + ".b" }

func otherSandbox(app, cur string) string {
	if cur == SandboxName(app) {
		return RollSandboxName(app)
	}
	return SandboxName(app)
}

// checkCommand makes sure the new sandbox has the command to run, before
// the old version is stopped for it.
func checkCommand(sandbox, command string) error {
	st, err := os.Lstat(filepath.Join(sandbox, command))
	switch {
	case err != nil:
		return fmt.Errorf("command %s: not in the new sandbox: %w", command, err)
	case st.Mode().IsRegular() && st.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("command %s: not executable in the new sandbox (mode %v)", command, st.Mode().Perm())
	case st.IsDir():
		return fmt.Errorf("command %s: a directory in the new sandbox", command)
	}
	return nil
}

// rollFailed keeps the old record, with why the roll to rec failed.
func (r *Runner) rollFailed(old, rec *Record, err error) error {
	err = fmt.Errorf("roll to spec %s failed, spec %s keeps running: %w", rec.SpecHash(), old.SpecHash(), err)
	old.Error = err.Error()
	if serr := r.save(old); serr != nil {
		err = errors.Join(err, serr)
	}
	r.log().Error("apps: roll of "+old.Spec.Name+" failed, the old version keeps running", sd.AppFailed.Attr(),
		"app", old.Spec.Name, "spec", rec.SpecHash(), "running", old.SpecHash(), "error", err)
	return err
}

// dropSandbox unmounts one of the app's sandboxes and removes its chroot's
// mountpoints; a failure is logged, not returned: the app runs, and the
// next remove unmounts both.
func (r *Runner) dropSandbox(ctx context.Context, app, sandbox, mountpoint string) {
	if mountpoint != "" {
		removeMountpoints(RootDir(mountpoint))
	}
	if err := r.Sandboxes.Unmount(ctx, sandbox); err != nil {
		r.log().Warn("apps: "+app+": could not unmount "+sandbox, "app", app, "sandbox", sandbox, "error", err)
	}
}

// startTransient creates the unit from the record and waits for systemd's
// start job.
func (r *Runner) startTransient(ctx context.Context, rec *Record) error {
	name := UnitName(rec.Spec.Name)
	// A failed transient unit keeps its name until reset.
	_ = r.Systemd.ResetFailedUnitContext(ctx, name)
	binds, err := rootBinds(rec.Mountpoint, ownPaths(&rec.Spec))
	if err != nil {
		return r.startFailed(rec, fmt.Errorf("apps: %s: sandbox: %w", rec.Spec.Name, err))
	}
	root := RootDir(rec.Mountpoint)
	// 0755 whatever the session's umask (0077): the app's dynamic user
	// must be able to enter its own root.
	if err := os.MkdirAll(root, 0o755); err != nil {
		return r.startFailed(rec, fmt.Errorf("apps: %s: %w", rec.Spec.Name, err))
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return r.startFailed(rec, fmt.Errorf("apps: %s: %w", rec.Spec.Name, err))
	}
	props, err := UnitProperties(&rec.Spec, rec.SpecHash(), root, binds)
	if err != nil {
		return r.startFailed(rec, err)
	}
	done := make(chan string, 1)
	if _, err := r.Systemd.StartTransientUnitContext(ctx, name, "replace", props, done); err != nil {
		return r.startFailed(rec, fmt.Errorf("apps: start %s: %w", name, err))
	}
	if res, err := wait(ctx, done); err != nil || res != "done" && !(res == "failed" && r.ranAnyway(ctx, name)) {
		if err == nil {
			err = fmt.Errorf("apps: start %s: systemd job %s (journalctl -u %s)", name, res, name)
		}
		return r.startFailed(rec, err)
	}
	rec.Stopped, rec.Error, rec.Since = false, "", time.Now().UTC()
	if err := r.save(rec); err != nil {
		return err
	}
	r.log().Info("apps: started "+rec.Spec.Name, sd.AppStarted.Attr(), "app", rec.Spec.Name, "unit", name, "spec", rec.SpecHash())
	return nil
}

// ranAnyway reports whether a start job that failed still ran the
// command. Under Type=exec systemd fails the job when the process exits
// before it handled the exec's success, a race a command that exits at once
// wins on a loaded machine; the app then ran and crashed, which its status
// and restarts show, as when it crashes a moment later. Only systemd's own
// exit codes (exec, chroot, namespace... failures) mean it never ran. While
// the unit restarts, the next attempt's outcome decides.
func (r *Runner) ranAnyway(ctx context.Context, name string) bool {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		u, err := r.Systemd.GetUnitPropertiesContext(ctx, name)
		if err != nil {
			return false
		}
		if u["ActiveState"] == "active" {
			return true
		}
		svc, err := r.Systemd.GetUnitTypePropertiesContext(ctx, name, "Service")
		if err != nil {
			return false
		}
		code, _ := svc["ExecMainCode"].(int32)
		status, _ := svc["ExecMainStatus"].(int32)
		if ran, known := execOutcome(code, status); known {
			return ran
		}
		if u["ActiveState"] != "activating" || backoff.Sleep(ctx, 50*time.Millisecond) != nil {
			return false
		}
	}
}

// execOutcome classifies the main process's last exit (ExecMainCode is a
// CLD_* code, 0 while none is recorded): known says there was one, ran
// that the command itself exited. systemd reserves exit statuses 200-243
// for failures before the command ran (systemd.exec(5)).
func execOutcome(code, status int32) (ran, known bool) {
	switch code {
	case 1: // CLD_EXITED
		return status < 200 || status > 243, true
	case 2, 3: // CLD_KILLED, CLD_DUMPED
		return true, true
	}
	return false, false
}

func (r *Runner) startFailed(rec *Record, err error) error {
	rec.Error = err.Error()
	if serr := r.save(rec); serr != nil {
		err = errors.Join(err, serr)
	}
	r.log().Error("apps: "+rec.Spec.Name+" did not start", sd.AppFailed.Attr(), "app", rec.Spec.Name, "error", err)
	return err
}

func wait(ctx context.Context, done <-chan string) (string, error) {
	select {
	case res := <-done:
		return res, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (r *Runner) stopUnit(ctx context.Context, app, reason string) error {
	name := UnitName(app)
	done := make(chan string, 1)
	if _, err := r.Systemd.StopUnitContext(ctx, name, "replace", done); err != nil {
		if isNoSuchUnit(err) {
			return nil
		}
		return fmt.Errorf("apps: stop %s: %w", name, err)
	}
	if res, err := wait(ctx, done); err != nil {
		return fmt.Errorf("apps: stop %s: %w", name, err)
	} else if res != "done" {
		return fmt.Errorf("apps: stop %s: systemd job %s", name, res)
	}
	_ = r.Systemd.ResetFailedUnitContext(ctx, name)
	r.log().Info("apps: stopped "+app, sd.AppStopped.Attr(), "app", app, "unit", name, "reason", reason)
	return nil
}

func isNoSuchUnit(err error) bool {
	return strings.Contains(err.Error(), "NoSuchUnit") || strings.Contains(err.Error(), "not loaded")
}

// Start starts an installed app that is not running; a running one is
// left alone.
func (r *Runner) Start(ctx context.Context, app string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.load(app)
	if err != nil {
		return err
	}
	u, err := r.unit(ctx, app)
	if err != nil {
		return err
	}
	return r.startLocked(ctx, rec, u)
}

func (r *Runner) startLocked(ctx context.Context, rec *Record, u UnitState) error {
	switch {
	case u.ActiveState == "active" || u.ActiveState == "activating":
		if rec.Stopped {
			rec.Stopped = false
			return r.save(rec)
		}
		return nil
	case u.LoadState == "loaded":
		// A failed unit: this start is one more restart, on top of those
		// systemd did before it gave up.
		rec.Restarts += int(u.NRestarts) + 1
	}
	// The sandbox may be gone after a reboot (fs.toml refreshed by the
	// controller); mounting is idempotent.
	mp, err := r.Sandboxes.Mount(ctx, rec.sandbox(), rec.Spec.Flist)
	if err != nil {
		return r.startFailed(rec, fmt.Errorf("apps: %s: sandbox: %w", rec.Spec.Name, err))
	}
	rec.Mountpoint = mp
	return r.startTransient(ctx, rec)
}

// Stop stops an app and keeps it installed; it stays stopped across reboots.
func (r *Runner) Stop(ctx context.Context, app string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.stopInstalled(ctx, app, "stop")
	if err != nil {
		return err
	}
	rec.Stopped, rec.Since = true, time.Now().UTC()
	return r.save(rec)
}

// Restart stops and starts an installed app.
func (r *Runner) Restart(ctx context.Context, app string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.stopInstalled(ctx, app, "restart")
	if err != nil {
		return err
	}
	rec.Restarts++
	return r.startLocked(ctx, rec, UnitState{})
}

// stopInstalled stops an installed app's unit and carries the restarts
// systemd counted for it into its record, which the caller saves. r.mu is
// held.
func (r *Runner) stopInstalled(ctx context.Context, app, why string) (*Record, error) {
	rec, err := r.load(app)
	if err != nil {
		return nil, err
	}
	u, err := r.unit(ctx, app)
	if err != nil {
		return nil, err
	}
	if err := r.stopUnit(ctx, app, why); err != nil {
		return nil, err
	}
	rec.Restarts += int(u.NRestarts)
	return rec, nil
}

// Remove stops the app, unmounts its sandbox and forgets it. Removing an
// app that is not installed succeeds.
func (r *Runner) Remove(ctx context.Context, app string) error {
	if !nameRE.MatchString(app) {
		return fmt.Errorf("apps: %q is not an app name", app)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stopUnit(ctx, app, "remove"); err != nil {
		return err
	}
	if rec, err := r.load(app); err == nil && rec.Mountpoint != "" {
		removeMountpoints(RootDir(rec.Mountpoint))
		other := filepath.Join(filepath.Dir(rec.Mountpoint), otherSandbox(app, rec.sandbox()))
		removeMountpoints(RootDir(other))
	}
	// Both sandboxes: a roll cut short may have left the other mounted.
	for _, sb := range []string{SandboxName(app), RollSandboxName(app)} {
		if err := r.Sandboxes.Unmount(ctx, sb); err != nil {
			return fmt.Errorf("apps: %s: sandbox: %w", app, err)
		}
	}
	if err := os.Remove(r.path(app)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("apps: %w", err)
	}
	return nil
}

// Statuses reports every installed app for the heartbeat.
func (r *Runner) Statuses(ctx context.Context) ([]acapi.AppStatus, error) {
	recs, err := r.Installed()
	if err != nil {
		return nil, err
	}
	out := make([]acapi.AppStatus, 0, len(recs))
	for _, rec := range recs {
		u, err := r.unit(ctx, rec.Spec.Name)
		if err != nil {
			out = append(out, acapi.AppStatus{Name: rec.Spec.Name, Spec: rec.SpecHash(), State: "unknown", Error: err.Error()})
			continue
		}
		st := r.statusWithHealth(rec, u)
		if rec.Stopped && st.State == acapi.AppStopped {
			st.Error = "stopped on request"
		}
		out = append(out, st)
	}
	return out, nil
}

// Restore starts, after a reboot, the installed apps whose unit is gone
// and that were not stopped on request. An app whose unit exists (the
// session restarted, the node did not) is left alone: nothing starts twice.
func (r *Runner) Restore(ctx context.Context) error {
	recs, err := r.Installed()
	if err != nil {
		return err
	}
	var errs []error
	for _, rec := range recs {
		if rec.Stopped {
			continue
		}
		r.mu.Lock()
		u, err := r.unit(ctx, rec.Spec.Name)
		if err == nil && u.LoadState != "loaded" {
			if err = r.startLocked(ctx, rec, u); err == nil {
				r.log().Info("apps: restored "+rec.Spec.Name, sd.AppRestored.Attr(), "app", rec.Spec.Name)
			}
		}
		r.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeMountpoints removes the chroot directory: only the empty
// mountpoints systemd created in it, deepest first. os.Remove never
// removes a directory that still has something in it.
func removeMountpoints(root string) {
	var paths []string
	_ = filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, p)
		}
		return nil
	})
	for i := len(paths) - 1; i >= 0; i-- {
		_ = os.Remove(paths[i])
	}
}
