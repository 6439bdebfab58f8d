package apps

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/state"
)

// fakeSystemd keeps transient units the way systemd does for what the
// runner relies on: a start creates the unit, a stop of an inactive
// transient unit collects it, a failed one stays until reset. Real systemd
// is only available under the e2e nspawn harness.
type fakeSystemd struct {
	mu    sync.Mutex
	units map[string]*fakeUnit
	calls []string
	// failNextStart fails the next start job outright (the unit is left
	// failed), as a chroot or namespace error does.
	failNextStart bool
	// exitAtStart makes a start job fail as systemd's does when the main
	// process exited (CLD_EXITED with this status) before the job ended;
	// the unit stays, restarting.
	exitAtStart *int32
}

type fakeUnit struct {
	active     string
	nrestarts  uint32
	props      []sddbus.Property
	exitStatus *int32
}

func ptr[T any](v T) *T { return &v }

func newFakeSystemd() *fakeSystemd { return &fakeSystemd{units: map[string]*fakeUnit{}} }

func (f *fakeSystemd) record(s string) { f.calls = append(f.calls, s) }

func (f *fakeSystemd) StartTransientUnitContext(_ context.Context, name, _ string, props []sddbus.Property, ch chan<- string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("start-transient " + name)
	if _, ok := f.units[name]; ok {
		return 0, fmt.Errorf("Unit %s was already loaded or has a fragment file", name)
	}
	if f.failNextStart {
		f.failNextStart = false
		f.units[name] = &fakeUnit{active: "failed", props: props, exitStatus: ptr(int32(226))}
		ch <- "failed"
		return 1, nil
	}
	if f.exitAtStart != nil {
		f.units[name] = &fakeUnit{active: "activating", props: props, exitStatus: f.exitAtStart}
		ch <- "failed"
		return 1, nil
	}
	f.units[name] = &fakeUnit{active: "active", props: props}
	ch <- "done"
	return 1, nil
}

func (f *fakeSystemd) StartUnitContext(_ context.Context, name, _ string, ch chan<- string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("start " + name)
	u, ok := f.units[name]
	if !ok {
		return 0, errors.New("org.freedesktop.systemd1.NoSuchUnit")
	}
	u.active = "active"
	ch <- "done"
	return 1, nil
}

func (f *fakeSystemd) StopUnitContext(_ context.Context, name, _ string, ch chan<- string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("stop " + name)
	if _, ok := f.units[name]; !ok {
		return 0, fmt.Errorf("org.freedesktop.systemd1.NoSuchUnit: Unit %s not loaded.", name)
	}
	delete(f.units, name) // CollectMode=inactive: a stopped transient unit is gone
	ch <- "done"
	return 1, nil
}

func (f *fakeSystemd) ResetFailedUnitContext(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.units[name]; ok && u.active == "failed" {
		f.record("reset-failed " + name)
		delete(f.units, name)
	}
	return nil
}

func (f *fakeSystemd) GetUnitPropertiesContext(_ context.Context, name string) (map[string]any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		return map[string]any{"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}, nil
	}
	return map[string]any{"LoadState": "loaded", "ActiveState": u.active, "SubState": "running",
		"StateChangeTimestamp": uint64(1_700_000_000_000_000)}, nil
}

func (f *fakeSystemd) GetUnitTypePropertiesContext(_ context.Context, name, _ string) (map[string]any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.units[name]
	res := "success"
	if u.active == "failed" {
		res = "exit-code"
	}
	if u.exitStatus != nil {
		return map[string]any{"NRestarts": u.nrestarts, "Result": "exit-code", "ExecMainCode": int32(1), "ExecMainStatus": *u.exitStatus}, nil
	}
	return map[string]any{"NRestarts": u.nrestarts, "Result": res, "ExecMainStatus": int32(3)}, nil
}

// crash is a process that failed for good: systemd restarted it n times,
// then gave up.
func (f *fakeSystemd) crash(app string, n uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.units[UnitName(app)]
	u.active, u.nrestarts = "failed", n
}

// reboot forgets every unit, as a reboot does.
func (f *fakeSystemd) reboot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.units = map[string]*fakeUnit{}
}

func (f *fakeSystemd) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// fakeSandboxes mounts every sandbox as a directory holding bin/.
type fakeSandboxes struct {
	dir     string
	mounted map[string]string
}

func (s *fakeSandboxes) Mount(_ context.Context, name, flist string) (string, error) {
	if flist == "missing.flist" {
		return "", errors.New("flist not in the store")
	}
	s.mounted[name] = flist
	mp := filepath.Join(s.dir, name)
	if err := os.MkdirAll(filepath.Join(mp, "bin"), 0o755); err != nil {
		return "", err
	}
	// Every flist has /bin/httpd, but empty.flist.
	if flist == "empty.flist" {
		return mp, os.RemoveAll(filepath.Join(mp, "bin", "httpd"))
	}
	return mp, os.WriteFile(filepath.Join(mp, "bin", "httpd"), nil, 0o755)
}

func (s *fakeSandboxes) Unmount(_ context.Context, name string) error {
	delete(s.mounted, name)
	return nil
}

func newRunner(t *testing.T) (*Runner, *fakeSystemd, *fakeSandboxes) {
	sys := newFakeSystemd()
	sb := &fakeSandboxes{dir: t.TempDir(), mounted: map[string]string{}}
	return &Runner{Dir: filepath.Join(t.TempDir(), "apps"), Systemd: sys, Sandboxes: sb}, sys, sb
}

func webSpec() acapi.AppSpec {
	return acapi.AppSpec{Name: "web", Flist: "web.flist", Command: []string{"/bin/httpd", "-f"},
		Restart: "on-failure", RestartSec: acapi.Duration(time.Second)}
}

func statusOf(t *testing.T, r *Runner, app string) acapi.AppStatus {
	t.Helper()
	sts, err := r.Statuses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sts {
		if s.Name == app {
			return s
		}
	}
	return acapi.AppStatus{State: "absent"}
}

func TestInstallStartsOnceAndRolls(t *testing.T) {
	ctx := context.Background()
	r, sys, sb := newRunner(t)
	spec := webSpec()
	if err := r.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if got := sys.takeCalls(); !reflect.DeepEqual(got, []string{"start-transient g8-app-web.service"}) {
		t.Errorf("install calls = %q", got)
	}
	if sb.mounted["app-web"] != "web.flist" {
		t.Errorf("sandboxes = %v", sb.mounted)
	}
	if st := statusOf(t, r, "web"); st.State != acapi.AppRunning || st.Spec != spec.Hash() {
		t.Errorf("status = %+v", st)
	}

	// The same install again (a retried job, a restarted session): nothing.
	r2 := &Runner{Dir: r.Dir, Systemd: sys, Sandboxes: sb}
	if err := r2.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if got := sys.takeCalls(); len(got) != 0 {
		t.Errorf("repeated install calls = %q", got)
	}

	// A new spec replaces the unit.
	spec.Flist, spec.Command = "web-2.flist", []string{"/bin/httpd", "-v"}
	if err := r2.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if got := sys.takeCalls(); !reflect.DeepEqual(got, []string{"stop g8-app-web.service", "start-transient g8-app-web.service"}) {
		t.Errorf("roll calls = %q", got)
	}
	// The new flist in the other sandbox, the old one unmounted after.
	if st := statusOf(t, r, "web"); st.Spec != spec.Hash() || !reflect.DeepEqual(sb.mounted, map[string]string{"app-web.b": "web-2.flist"}) {
		t.Errorf("after the roll: %+v, sandboxes %v", st, sb.mounted)
	}
	// Rolling again takes turns back to the first sandbox.
	spec.Flist = "web-3.flist"
	if err := r2.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sb.mounted, map[string]string{"app-web": "web-3.flist"}) {
		t.Errorf("after the second roll: sandboxes %v", sb.mounted)
	}
	// A command-only change rolls in the same sandbox.
	spec.Command = []string{"/bin/httpd", "-q"}
	if err := r2.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, r, "web"); st.Spec != spec.Hash() || !reflect.DeepEqual(sb.mounted, map[string]string{"app-web": "web-3.flist"}) {
		t.Errorf("after a command roll: %+v, sandboxes %v", st, sb.mounted)
	}
}

// A roll that cannot complete leaves the old version running, untouched
// until the new one is ready: a flist g8-fs cannot mount, a sandbox
// without the command, a new unit systemd does not start. The old record
// says why; the restarts are kept.
func TestFailedRollKeepsTheOldVersion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(s *acapi.AppSpec, sys *fakeSystemd)
		calls []string
		why   string
	}{
		{"unmountable flist", func(s *acapi.AppSpec, _ *fakeSystemd) { s.Flist = "missing.flist" }, nil, "not in the store"},
		{"command missing from the new sandbox", func(s *acapi.AppSpec, _ *fakeSystemd) { s.Flist = "empty.flist" }, nil, "not in the new sandbox"},
		{"command missing, same flist", func(s *acapi.AppSpec, _ *fakeSystemd) { s.Command = []string{"/bin/nginx"} }, nil, "/bin/nginx"},
		{"new unit does not start", func(s *acapi.AppSpec, sys *fakeSystemd) {
			s.Flist = "web-2.flist"
			sys.failNextStart = true
		}, []string{"stop g8-app-web.service", "start-transient g8-app-web.service", "reset-failed g8-app-web.service", "start-transient g8-app-web.service"}, "systemd job failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, sys, sb := newRunner(t)
			v1 := webSpec()
			if err := r.Install(ctx, v1, ""); err != nil {
				t.Fatal(err)
			}
			sys.units[UnitName("web")].nrestarts = 2
			sys.takeCalls()
			v2 := webSpec()
			tc.edit(&v2, sys)
			err := r.Install(ctx, v2, "")
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("roll: %v, want an error saying %q", err, tc.why)
			}
			if got := sys.takeCalls(); !reflect.DeepEqual(got, tc.calls) {
				t.Errorf("calls %q, want %q", got, tc.calls)
			}
			st := statusOf(t, r, "web")
			if st.State != acapi.AppRunning || st.Spec != v1.Hash() || st.Restarts != 2 {
				t.Errorf("after the failed roll: %+v, want v1 running with its 2 restarts", st)
			}
			if !reflect.DeepEqual(sb.mounted, map[string]string{"app-web": "web.flist"}) {
				t.Errorf("sandboxes %v, want only the old one", sb.mounted)
			}
			rec, _ := r.load("web")
			if !strings.Contains(rec.Error, "roll to spec "+v2.Hash()+" failed") {
				t.Errorf("record error %q", rec.Error)
			}
		})
	}
}

func TestFailedAppIsCountedAndStarted(t *testing.T) {
	ctx := context.Background()
	r, sys, _ := newRunner(t)
	if err := r.Install(ctx, webSpec(), ""); err != nil {
		t.Fatal(err)
	}
	sys.crash("web", 4)
	st := statusOf(t, r, "web")
	if st.State != acapi.AppFailed || st.Restarts != 4 || !strings.Contains(st.Error, "status 3") {
		t.Fatalf("failed status = %+v", st)
	}
	sys.takeCalls()
	if err := r.Start(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if got := sys.takeCalls(); !reflect.DeepEqual(got, []string{"reset-failed g8-app-web.service", "start-transient g8-app-web.service"}) {
		t.Errorf("start calls = %q", got)
	}
	if st := statusOf(t, r, "web"); st.State != acapi.AppRunning || st.Restarts != 5 {
		t.Errorf("after start: %+v (want running, 4 restarts by systemd + 1)", st)
	}
	// Starting a running app does nothing.
	if err := r.Start(ctx, "web"); err != nil || len(sys.takeCalls()) != 0 {
		t.Errorf("start of a running app: %v", err)
	}
}

func TestRemoveForgetsAndUnmounts(t *testing.T) {
	ctx := context.Background()
	r, sys, sb := newRunner(t)
	if err := r.Install(ctx, webSpec(), ""); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if len(sys.units) != 0 || len(sb.mounted) != 0 {
		t.Errorf("after remove: units %v sandboxes %v", sys.units, sb.mounted)
	}
	if sts, _ := r.Statuses(ctx); len(sts) != 0 {
		t.Errorf("removed app still reported: %+v", sts)
	}
	if err := r.Remove(ctx, "web"); err != nil {
		t.Errorf("removing twice: %v", err)
	}
	if err := r.Remove(ctx, "../etc"); err == nil {
		t.Error("a path as an app name was accepted")
	}
}

func TestRestoreAfterReboot(t *testing.T) {
	ctx := context.Background()
	r, sys, _ := newRunner(t)
	for _, name := range []string{"web", "db", "batch"} {
		s := webSpec()
		s.Name = name
		if err := r.Install(ctx, s, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Stop(ctx, "batch"); err != nil {
		t.Fatal(err)
	}
	sys.takeCalls()

	// A session restart: units still run, nothing starts twice.
	if err := (&Runner{Dir: r.Dir, Systemd: sys, Sandboxes: r.Sandboxes}).Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sys.takeCalls(); len(got) != 0 {
		t.Errorf("restore with units running: %q", got)
	}

	sys.reboot()
	if st := statusOf(t, r, "web"); st.State != acapi.AppStopped {
		t.Errorf("after reboot before restore: %+v", st)
	}
	if err := (&Runner{Dir: r.Dir, Systemd: sys, Sandboxes: r.Sandboxes}).Restore(ctx); err != nil {
		t.Fatal(err)
	}
	got := sys.takeCalls()
	want := []string{"start-transient g8-app-db.service", "start-transient g8-app-web.service"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("restore after reboot = %q, want %q (batch was stopped on request)", got, want)
	}
	if st := statusOf(t, r, "batch"); st.State != acapi.AppStopped || st.Error != "stopped on request" {
		t.Errorf("batch = %+v", st)
	}
}

func TestInstallFailureIsRecorded(t *testing.T) {
	r, _, _ := newRunner(t)
	s := webSpec()
	s.Flist = "missing.flist"
	err := r.Install(context.Background(), s, "")
	if err == nil || !strings.Contains(err.Error(), "not in the store") || !strings.Contains(err.Error(), "web") {
		t.Fatalf("err = %v", err)
	}
	bad := webSpec()
	bad.Command = []string{"httpd"}
	if err := r.Install(context.Background(), bad, ""); err == nil || !strings.Contains(err.Error(), "command") {
		t.Fatalf("relative command: %v", err)
	}
}

// props collects a unit's properties by name, each name's values in order
// (SystemCallFilter is set twice: an allow-list, then a deny-list).
func props(t *testing.T, s *acapi.AppSpec, binds []bind) map[string][]any {
	t.Helper()
	ps, err := UnitProperties(s, s.Hash(), "/run/g8os/apps/app-web.root", binds)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]any{}
	for _, p := range ps {
		got[p.Name] = append(got[p.Name], p.Value.Value())
		if p.Name == "ExecStartEx" && p.Value.Signature().String() != "a(sasas)" {
			t.Errorf("ExecStartEx signature %s, want systemd's a(sasas)", p.Value.Signature())
		}
		if p.Name == "BindReadOnlyPaths" && p.Value.Signature().String() != "a(ssbt)" {
			t.Errorf("BindReadOnlyPaths signature %s, want systemd's a(ssbt)", p.Value.Signature())
		}
	}
	return got
}

func TestUnitProperties(t *testing.T) {
	s := webSpec()
	s.Env = map[string]string{"B": "2", "A": "1"}
	s.MemoryMax, s.CPUQuota, s.Restart, s.RestartSec = 128<<20, 50, "always", acapi.Duration(2*time.Second)
	got := props(t, &s, []bind{{Source: "/run/g8os/apps/app-web/bin", Destination: "/bin"}})
	want := map[string]any{
		"Type": "exec", "RootDirectory": "/run/g8os/apps/app-web.root", "MountAPIVFS": true, "Restart": "always",
		"RestartUSec": uint64(2_000_000), "Environment": []string{"A=1", "B=2"},
		"MemoryMax": uint64(128 << 20), "CPUQuotaPerSecUSec": uint64(500_000),
		"BindReadOnlyPaths": []bind{{Source: "/run/g8os/apps/app-web/bin", Destination: "/bin"}},
	}
	for k, v := range want {
		if len(got[k]) != 1 || !reflect.DeepEqual(got[k][0], v) {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if d, _ := got["Description"][0].(string); !strings.Contains(d, s.Hash()) {
		t.Errorf("Description %q does not name the spec", d)
	}
	// The argv as is, with no-env-expand: plain ExecStart would expand $.
	if _, ok := got["ExecStart"]; ok {
		t.Error("ExecStart set: systemd would expand $VAR in the argv")
	}
	if e := fmt.Sprintf("%v", got["ExecStartEx"]); e != "[[{/bin/httpd [/bin/httpd -f] [no-env-expand]}]]" {
		t.Errorf("ExecStartEx = %s", e)
	}
}

// The boundary by default, and what a spec's user and capabilities
// change in it.
func TestUnitBoundary(t *testing.T) {
	always := map[string]any{"NoNewPrivileges": true, "ProtectSystem": "strict", "PrivateTmp": true,
		"PrivateDevices": true, "ProtectKernelTunables": true, "RestrictNamespaces": uint64(0), "UMask": uint32(0o077)}
	for _, tc := range []struct {
		name                  string
		user                  string
		caps                  []string
		state                 bool
		dynamic, privateUsers bool
		bounding, ambient     any // nil: not set
		stateDir, denyFilters any
	}{
		{name: "default", dynamic: true, privateUsers: true, bounding: uint64(0), ambient: uint64(0), denyFilters: true},
		{name: "state", state: true, dynamic: true, privateUsers: true, bounding: uint64(0), ambient: uint64(0),
			stateDir: []string{"g8os/apps/web"}, denyFilters: true},
		{name: "a capability", caps: []string{"CAP_NET_BIND_SERVICE"}, dynamic: true, bounding: uint64(1 << 10), ambient: uint64(1 << 10)},
		{name: "root", user: "root"},
		{name: "root with a capability", user: "root", caps: []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}, bounding: uint64(1<<12 | 1<<13)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := webSpec()
			s.User, s.Capabilities, s.State = tc.user, tc.caps, tc.state
			got := props(t, &s, nil)
			for k, v := range always {
				if len(got[k]) != 1 || !reflect.DeepEqual(got[k][0], v) {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			one := func(k string) any {
				if len(got[k]) == 0 {
					return nil
				}
				return got[k][0]
			}
			if (one("DynamicUser") == true) != tc.dynamic || (one("PrivateUsers") == true) != tc.privateUsers {
				t.Errorf("DynamicUser %v PrivateUsers %v, want %v %v", got["DynamicUser"], got["PrivateUsers"], tc.dynamic, tc.privateUsers)
			}
			if !reflect.DeepEqual(one("CapabilityBoundingSet"), tc.bounding) || !reflect.DeepEqual(one("AmbientCapabilities"), tc.ambient) {
				t.Errorf("bounding %v ambient %v, want %v %v", got["CapabilityBoundingSet"], got["AmbientCapabilities"], tc.bounding, tc.ambient)
			}
			if !reflect.DeepEqual(one("StateDirectory"), tc.stateDir) {
				t.Errorf("StateDirectory %v, want %v", got["StateDirectory"], tc.stateDir)
			}
			if deny := len(got["SystemCallFilter"]) == 2; deny != (tc.denyFilters == true) {
				t.Errorf("SystemCallFilter %v", got["SystemCallFilter"])
			}
		})
	}
	s := webSpec()
	s.Capabilities = []string{"CAP_NET_BIND_SERVICE", "CAP_FLY"}
	if err := CheckSpec(&s); err == nil || !strings.Contains(err.Error(), "CAP_FLY") {
		t.Errorf("unknown capability: %v", err)
	}
	s = webSpec()
	s.User = "nobody"
	if err := CheckSpec(&s); err == nil || !strings.Contains(err.Error(), "user") {
		t.Errorf("user nobody: %v", err)
	}
	// Found by FuzzAppInstallArgs: the quota in µs per second wrapped.
	s = webSpec()
	s.CPUQuota = 1 << 62
	if err := CheckSpec(&s); err == nil || !strings.Contains(err.Error(), "cpu_quota") {
		t.Errorf("cpu_quota 2^62%%: %v", err)
	}
}

// The root is the sandbox's entries, bound read-only, except where
// systemd mounts its own (/proc, /run, /tmp, /var/tmp, the state
// directory): there it binds the entries one level down instead.
func TestRootBinds(t *testing.T) {
	sb := t.TempDir()
	for _, d := range []string{"bin", "dev", "etc", "proc", "run/lock", "tmp", "var/log", "var/tmp", "var/lib/db", "var/lib/g8os/other", "usr/lib"} {
		if err := os.MkdirAll(filepath.Join(sb, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(sb, "init"), nil, 0o755)
	dests := func(bs []bind) []string {
		var out []string
		for _, b := range bs {
			if b.Source != filepath.Join(sb, b.Destination) {
				t.Errorf("bind %+v: source is not the sandbox's %s", b, b.Destination)
			}
			out = append(out, b.Destination)
		}
		return out
	}
	s := webSpec()
	bs, err := rootBinds(sb, ownPaths(&s))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := dests(bs), []string{"/bin", "/etc", "/init", "/usr", "/var/lib", "/var/log"}; !reflect.DeepEqual(got, want) {
		t.Errorf("binds %q, want %q", got, want)
	}
	s.State = true
	bs, _ = rootBinds(sb, ownPaths(&s))
	if got, want := dests(bs), []string{"/bin", "/etc", "/init", "/usr", "/var/lib/db", "/var/lib/g8os/other", "/var/log"}; !reflect.DeepEqual(got, want) {
		t.Errorf("binds with a state directory %q, want %q", got, want)
	}
}

func TestStatusMapping(t *testing.T) {
	rec := &Record{Spec: webSpec(), Restarts: 2}
	healthy := webSpec()
	healthy.Health = &acapi.AppHealth{Command: []string{"/bin/true"}, Retries: 3}
	for _, tc := range []struct {
		u      UnitState
		health int
		state  string
		err    string
		rs     int
	}{
		{UnitState{LoadState: "loaded", ActiveState: "active", NRestarts: 1}, 0, acapi.AppRunning, "", 3},
		{UnitState{LoadState: "not-found", ActiveState: "inactive"}, 0, acapi.AppStopped, "", 2},
		{UnitState{LoadState: "loaded", ActiveState: "activating", SubState: "auto-restart", Result: "exit-code", ExitStatus: 1, NRestarts: 3}, 0, acapi.AppStarting, "exited with status 1", 5},
		{UnitState{LoadState: "loaded", ActiveState: "failed", Result: "signal", ExitStatus: 9}, 0, acapi.AppFailed, "killed by signal 9 (signal)", 2},
		{UnitState{LoadState: "loaded", ActiveState: "failed", Result: "start-limit-hit"}, 0, acapi.AppFailed, "restarted too often (start-limit-hit)", 2},
		{UnitState{LoadState: "loaded", ActiveState: "active"}, 3, acapi.AppUnhealthy, "health check failed 3 times in a row", 2},
	} {
		r := rec
		if tc.health > 0 {
			r = &Record{Spec: healthy, Restarts: 2}
		}
		st := Status(r, tc.u, tc.health)
		if st.State != tc.state || st.Error != tc.err || st.Restarts != tc.rs {
			t.Errorf("%+v: got %s %q %d, want %s %q %d", tc.u, st.State, st.Error, st.Restarts, tc.state, tc.err, tc.rs)
		}
	}
}

// fakeFS plays g8-fs for FSConfig: on reload it reads the config and
// writes fs.json as g8-fs does, failing flists named "bad".
func fakeFS(t *testing.T, cfg *FSConfig) *int {
	reloads := 0
	cfg.Reload = func(context.Context) error {
		reloads++
		c, err := readSandboxes(cfg.Config)
		if err != nil {
			return err
		}
		st := &state.FS{}
		for _, s := range c {
			sb := state.Sandbox{Name: s["name"].(string), Flist: s["flist"].(string), Mountpoint: s["mountpoint"].(string), State: "mounted"}
			if strings.HasPrefix(sb.Flist, "bad") {
				sb.State, sb.Error = "failed", "flist bad: hash mismatch"
			}
			st.Sandboxes = append(st.Sandboxes, sb)
		}
		return state.Write(cfg.StateDir, st)
	}
	return &reloads
}

func readSandboxes(path string) ([]map[string]any, error) {
	c := &FSConfig{Config: path}
	var out []map[string]any
	_, err := c.edit(func(b []map[string]any) []map[string]any { out = b; return b })
	return out, err
}

func TestFSConfigMountAndUnmount(t *testing.T) {
	dir := t.TempDir()
	cfg := &FSConfig{Config: filepath.Join(dir, "fs.toml"), MountRoot: filepath.Join(dir, "apps"),
		StateDir: filepath.Join(dir, "run"), Timeout: 2 * time.Second}
	os.WriteFile(cfg.Config, []byte("store = \"https://ac/v1/store\"\n\n[[sandbox]]\nname = \"jumpscale\"\nflist = \"js.flist\"\nmountpoint = \"/opt/js\"\n"), 0o600)
	reloads := fakeFS(t, cfg)
	ctx := context.Background()

	mp, err := cfg.Mount(ctx, "app-web", "web.flist")
	if err != nil || mp != filepath.Join(dir, "apps", "app-web") {
		t.Fatalf("mount = %q, %v", mp, err)
	}
	if _, err := cfg.Mount(ctx, "app-web", "web.flist"); err != nil || *reloads != 1 {
		t.Errorf("mounting again reloaded g8-fs (%d reloads), %v", *reloads, err)
	}
	data, _ := os.ReadFile(cfg.Config)
	for _, want := range []string{`store = "https://ac/v1/store"`, `name = "jumpscale"`, `name = "app-web"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("fs.toml lost or lacks %s:\n%s", want, data)
		}
	}
	if st, _ := os.Stat(cfg.Config); st.Mode().Perm() != 0o600 {
		t.Errorf("fs.toml mode %v", st.Mode())
	}

	if _, err := cfg.Mount(ctx, "app-db", "bad.flist"); err == nil || !strings.Contains(err.Error(), "hash mismatch") {
		t.Errorf("failed mount: %v", err)
	}

	if err := cfg.Unmount(ctx, "app-web"); err != nil {
		t.Fatal(err)
	}
	sbs, _ := readSandboxes(cfg.Config)
	var names []string
	for _, s := range sbs {
		names = append(names, s["name"].(string))
	}
	if !reflect.DeepEqual(names, []string{"jumpscale", "app-db"}) {
		t.Errorf("after unmount: %v", names)
	}
	if _, err := os.Stat(mp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the empty mountpoint %s stays after unmount: %v", mp, err)
	}
}

func TestFSConfigTimesOutWithoutFS(t *testing.T) {
	dir := t.TempDir()
	cfg := &FSConfig{Config: filepath.Join(dir, "fs.toml"), MountRoot: filepath.Join(dir, "apps"),
		StateDir: filepath.Join(dir, "run"), Timeout: 200 * time.Millisecond,
		Reload: func(context.Context) error { return nil }}
	_, err := cfg.Mount(context.Background(), "app-web", "web.flist")
	if err == nil || !strings.Contains(err.Error(), "fs.json") {
		t.Fatalf("err = %v", err)
	}
}

// A g8-fs that was starting when the config changed misses the first
// signal; Mount signals again until it reports the sandbox.
func TestFSConfigSignalsAgainUntilMounted(t *testing.T) {
	dir := t.TempDir()
	cfg := &FSConfig{Config: filepath.Join(dir, "fs.toml"), MountRoot: filepath.Join(dir, "apps"),
		StateDir: filepath.Join(dir, "run"), Timeout: 10 * time.Second}
	reloads := fakeFS(t, cfg)
	real := cfg.Reload
	cfg.Reload = func(ctx context.Context) error {
		if *reloads == 0 {
			*reloads = -1 // missed
			return nil
		}
		if *reloads < 0 {
			*reloads = 0
		}
		return real(ctx)
	}
	if _, err := cfg.Mount(context.Background(), "app-web", "web.flist"); err != nil {
		t.Fatalf("mount with a missed signal: %v", err)
	}
}

// The node reports the controller's hash as it came: a node whose AppSpec
// differs from the controller's (another build) must not see a new spec.
func TestInstallReportsTheControllersHash(t *testing.T) {
	ctx := context.Background()
	r, sys, _ := newRunner(t)
	if err := r.Install(ctx, webSpec(), "c0ffee0123456789"); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, r, "web"); st.Spec != "c0ffee0123456789" {
		t.Fatalf("reported spec %q", st.Spec)
	}
	sys.takeCalls()
	if err := r.Install(ctx, webSpec(), "c0ffee0123456789"); err != nil || len(sys.takeCalls()) != 0 {
		t.Fatalf("the same install again touched the unit: %v", err)
	}
}

// Under Type=exec a command that exits at once can fail systemd's start
// job (its exit is seen before the exec): it ran, so the install stands
// and the crash shows in the status. A status systemd reserves for its own
// failures before the command ran (203: exec failed) fails the install.
func TestStartJobFailedByAnExitRightAfterExec(t *testing.T) {
	for _, c := range []struct {
		status int32
		ran    bool
	}{{3, true}, {0, true}, {203, false}, {226, false}} {
		r, sys, _ := newRunner(t)
		sys.exitAtStart = &c.status
		err := r.Install(context.Background(), webSpec(), "")
		if (err == nil) != c.ran {
			t.Errorf("exit status %d at start: install error %v, want ran=%v", c.status, err, c.ran)
		}
		if st := statusOf(t, r, "web"); c.ran && (st.State != acapi.AppStarting || st.Error != "") {
			t.Errorf("exit status %d at start: status %+v, want starting (restarting) with no install error", c.status, st)
		}
	}
}

func TestExecOutcome(t *testing.T) {
	for _, c := range []struct {
		code, status int32
		ran, known   bool
	}{
		{0, 0, false, false},  // no exit recorded yet
		{1, 0, true, true},    // exited cleanly
		{1, 3, true, true},    // the app's own failure
		{1, 203, false, true}, // EXIT_EXEC: the command could not be run
		{1, 200, false, true}, // EXIT_CHDIR and the rest of systemd's range
		{1, 243, false, true},
		{1, 255, true, true},
		{2, 9, true, true},  // killed
		{3, 11, true, true}, // dumped core
	} {
		if ran, known := execOutcome(c.code, c.status); ran != c.ran || known != c.known {
			t.Errorf("execOutcome(%d, %d) = %v, %v; want %v, %v", c.code, c.status, ran, known, c.ran, c.known)
		}
	}
}
