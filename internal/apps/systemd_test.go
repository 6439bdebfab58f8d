package apps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/apps/testdata/appreport"
)

// The tests below drive real systemd. They only run inside a machine the
// e2e harness booted (tests/e2e/grid_test.go builds this package's test
// binary into the node's root and runs it there with G8_APPS_SYSTEMD set
// to a directory holding bin/app, built from testdata/app).

// dirSandboxes stands in for g8-fs: every sandbox is the same directory.
type dirSandboxes struct{ dir string }

func (d dirSandboxes) Mount(context.Context, string, string) (string, error) { return d.dir, nil }
func (d dirSandboxes) Unmount(context.Context, string) error                 { return nil }

func realRunner(t *testing.T) (*Runner, *sddbus.Conn) {
	t.Helper()
	sandbox := os.Getenv("G8_APPS_SYSTEMD")
	if sandbox == "" {
		t.Skip("skipped: runs inside an e2e machine with real systemd (tests/e2e/grid_test.go)")
	}
	conn, err := sddbus.NewSystemdConnectionContext(context.Background())
	if err != nil {
		t.Fatalf("systemd: %v", err)
	}
	t.Cleanup(conn.Close)
	dir := os.Getenv("G8_APPS_RECORDS")
	if dir == "" {
		dir = t.TempDir()
	}
	return &Runner{Dir: dir, Systemd: conn, Sandboxes: dirSandboxes{sandbox}}, conn
}

func appSpec(name string, argv ...string) acapi.AppSpec {
	return acapi.AppSpec{Name: name, Flist: "test.flist", Command: append([]string{"/bin/app"}, argv...),
		Env: map[string]string{"APP_GREETING": "hello " + name}, Restart: "on-failure",
		RestartSec: acapi.Duration(200 * time.Millisecond), MemoryMax: 64 << 20, CPUQuota: 50}
}

// waitApp polls the runner's status of app until ok accepts it.
func waitApp(t *testing.T, r *Runner, app string, ok func(acapi.AppStatus) bool) acapi.AppStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var st acapi.AppStatus
	for time.Now().Before(deadline) {
		if st = statusOf(t, r, app); ok(st) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("app %s never got there; last status %+v", app, st)
	return st
}

func unitProps(t *testing.T, conn *sddbus.Conn, app string) (map[string]any, map[string]any) {
	t.Helper()
	ctx := context.Background()
	u, err := conn.GetUnitPropertiesContext(ctx, UnitName(app))
	if err != nil {
		t.Fatal(err)
	}
	s, err := conn.GetUnitTypePropertiesContext(ctx, UnitName(app), "Service")
	if err != nil {
		t.Fatal(err)
	}
	return u, s
}

func TestRealSystemdLifecycle(t *testing.T) {
	r, conn := realRunner(t)
	ctx := context.Background()
	spec := appSpec("web", "serve")
	if err := r.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	waitApp(t, r, "web", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning })
	u, s := unitProps(t, conn, "web")
	if !strings.Contains(u["Description"].(string), spec.Hash()) || s["RootDirectory"] != RootDir(os.Getenv("G8_APPS_SYSTEMD")) ||
		s["MemoryMax"] != uint64(64<<20) || s["CPUQuotaPerSecUSec"] != uint64(500000) || s["Restart"] != "on-failure" {
		t.Fatalf("unit properties: %v %v", u["Description"], s)
	}

	// Killing the process: systemd restarts it and the restart is counted.
	pid := s["MainPID"].(uint32)
	if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := waitApp(t, r, "web", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning && s.Restarts == 1 })
	if _, s := unitProps(t, conn, "web"); s["MainPID"].(uint32) == pid {
		t.Fatalf("same pid after the kill: %+v", st)
	}

	// Installing the same spec again starts nothing.
	if err := r.Install(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	if _, s := unitProps(t, conn, "web"); s["NRestarts"].(uint32) != 1 {
		t.Fatalf("a repeated install restarted the app: %v", s["NRestarts"])
	}

	// A new spec rolls the unit; the restart count carries over.
	v2 := appSpec("web", "serve", "v2")
	if err := r.Install(ctx, v2, ""); err != nil {
		t.Fatal(err)
	}
	st = waitApp(t, r, "web", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning && s.Spec == v2.Hash() })
	if st.Restarts != 1 {
		t.Errorf("restarts after the roll = %d, want 1", st.Restarts)
	}

	// Remove: the unit is gone.
	if err := r.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if u, _ := conn.GetUnitPropertiesContext(ctx, UnitName("web")); u["LoadState"] == "loaded" {
		t.Fatalf("removed app's unit still loaded: %v", u["ActiveState"])
	}
	if sts, _ := r.Statuses(ctx); len(sts) != 0 {
		t.Fatalf("removed app still reported: %+v", sts)
	}
}

func TestRealSystemdCrashLoop(t *testing.T) {
	r, _ := realRunner(t)
	ctx := context.Background()
	if err := r.Install(ctx, appSpec("crasher", "crash"), ""); err != nil {
		// Type=exec: the start itself succeeds; the crashes come after.
		t.Fatal(err)
	}
	st := waitApp(t, r, "crasher", func(s acapi.AppStatus) bool { return s.State == acapi.AppFailed })
	if st.Restarts < 1 || !strings.Contains(st.Error, "status 3") && !strings.Contains(st.Error, "start-limit") {
		t.Fatalf("crash loop status %+v", st)
	}
	before := st.Restarts
	if err := r.Start(ctx, "crasher"); err != nil {
		t.Fatal(err)
	}
	st = waitApp(t, r, "crasher", func(s acapi.AppStatus) bool { return s.Restarts > before })
	if err := r.Remove(ctx, "crasher"); err != nil {
		t.Fatal(err)
	}
}

func TestRealSystemdMissingCommand(t *testing.T) {
	r, _ := realRunner(t)
	s := appSpec("ghost")
	s.Command = []string{"/bin/not-in-the-sandbox"}
	err := r.Install(context.Background(), s, "")
	if err == nil {
		t.Fatal("an app whose command is missing from the sandbox started")
	}
	r.Remove(context.Background(), "ghost")
}

// TestRealSystemdInstallForReboot and TestRealSystemdRestoreAfterReboot run
// in two boots of the same machine, with G8_APPS_RECORDS on its disk.
func TestRealSystemdInstallForReboot(t *testing.T) {
	r, _ := realRunner(t)
	if os.Getenv("G8_APPS_RECORDS") == "" {
		t.Skip("skipped: needs G8_APPS_RECORDS on the machine's disk")
	}
	if err := r.Install(context.Background(), appSpec("survivor", "serve"), ""); err != nil {
		t.Fatal(err)
	}
	waitApp(t, r, "survivor", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning })
	if _, err := os.Stat(filepath.Join(r.Dir, "survivor.json")); err != nil {
		t.Fatal(err)
	}
}

func TestRealSystemdRestoreAfterReboot(t *testing.T) {
	r, conn := realRunner(t)
	if os.Getenv("G8_APPS_RECORDS") == "" {
		t.Skip("skipped: needs G8_APPS_RECORDS on the machine's disk")
	}
	ctx := context.Background()
	if st := statusOf(t, r, "survivor"); st.State != acapi.AppStopped {
		t.Fatalf("after the reboot, before restore: %+v", st)
	}
	if err := r.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	waitApp(t, r, "survivor", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning })
	_, s := unitProps(t, conn, "survivor")
	pid := s["MainPID"]
	// A second restore (a restart of the session) starts nothing twice.
	if err := r.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, s := unitProps(t, conn, "survivor"); s["MainPID"] != pid {
		t.Fatal("a second restore restarted the app")
	}
	r.Remove(ctx, "survivor")
}

// A failing health check, run chrooted into the sandbox, restarts the app
// on real systemd after Retries failures, and the restart is counted.
func TestRealSystemdHealthRestarts(t *testing.T) {
	r, conn := realRunner(t)
	ctx := context.Background()
	s := appSpec("sick", "serve")
	s.Health = &acapi.AppHealth{Command: []string{"/bin/app", "crash"}, Interval: acapi.Duration(time.Second),
		Timeout: acapi.Duration(2 * time.Second), Retries: 2}
	if err := r.Install(ctx, s, ""); err != nil {
		t.Fatal(err)
	}
	defer r.Remove(ctx, "sick")
	waitApp(t, r, "sick", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning })
	_, before := unitProps(t, conn, "sick")
	now := time.Now()
	r.CheckHealth(ctx, now)
	if st := statusOf(t, r, "sick"); st.Restarts != 0 {
		t.Fatalf("restarted after one failure: %+v", st)
	}
	r.CheckHealth(ctx, now.Add(time.Second))
	st := waitApp(t, r, "sick", func(s acapi.AppStatus) bool { return s.State == acapi.AppRunning && s.Restarts == 1 })
	if _, after := unitProps(t, conn, "sick"); after["MainPID"] == before["MainPID"] {
		t.Fatalf("same process after the health restart: %+v", st)
	}
}

// reportOf waits for the report line of app's current incarnation in its
// journal.
func reportOf(t *testing.T, app string) appreport.Report {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := exec.Command("journalctl", "--no-pager", "-o", "cat", "-u", UnitName(app)).Output()
		lines := strings.Split(string(out), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if b64, ok := strings.CutPrefix(lines[i], appreport.Prefix); ok {
				raw, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					t.Fatalf("report line %q: %v", lines[i], err)
				}
				var r appreport.Report
				if err := json.Unmarshal(raw, &r); err != nil {
					t.Fatal(err)
				}
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report from %s in its journal:\n%s", app, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The repository's argv and environment reach the process byte for byte:
// nothing systemd would expand ($VAR, ${VAR}, $$, %n specifiers), quotes,
// backslashes, empty strings and unicode.
func TestRealSystemdExactArgv(t *testing.T) {
	r, _ := realRunner(t)
	ctx := context.Background()
	argv := []string{"/bin/app", "report", "$HOME", "${APP_GREETING}", "$$", "C=$$", "", "$UNSET", "'single'",
		`"double"`, `back\slash`, "%n %i %%", "ünïcødé ✓ 日本", " spaced  out ", "tab\there", "new\nline", ";&|<>*?"}
	env := map[string]string{"APP_GREETING": "$HOME ${X} $$ %n \"q\" 'q' \\", "EMPTY": "", "UNI": "ü ✓", "SPACE": " a  b "}
	s := appSpec("argv")
	s.Command, s.Env = argv, env
	if err := r.Install(ctx, s, ""); err != nil {
		t.Fatal(err)
	}
	defer r.Remove(ctx, "argv")
	rep := reportOf(t, "argv")
	if !reflect.DeepEqual(rep.Args, argv) {
		t.Errorf("argv differs from the spec:\n got %q\nwant %q", rep.Args, argv)
	}
	for k, v := range env {
		if got, ok := rep.Env[k]; !ok || got != v {
			t.Errorf("env %s = %q (set %v), want %q", k, got, ok, v)
		}
	}
}

// securityScore is systemd-analyze's overall exposure of the app's unit.
func securityScore(t *testing.T, app string) (float64, string) {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "security", "--no-pager", UnitName(app)).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security %s: %v\n%s", UnitName(app), err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	return score, string(out)
}

// The default spec's boundary, checked from inside the app: a dynamic
// user with no capabilities and no way to gain any, a read-only root that
// is its sandbox (the sandbox here has var/ and tmp/ of its own), a
// private /tmp and its state directory writable, a private /dev without
// /dev/fuse; systemd scores it at most 3.0. An app that asks for a
// capability gets that one only; one that asks for root gets root.
func TestRealSystemdBoundary(t *testing.T) {
	r, _ := realRunner(t)
	ctx := context.Background()
	s := appSpec("boxed", "report")
	s.State = true
	if err := r.Install(ctx, s, ""); err != nil {
		t.Fatal(err)
	}
	defer r.Remove(ctx, "boxed")
	rep := reportOf(t, "boxed")
	if rep.UID == 0 || rep.CapEff != "0000000000000000" || rep.CapBnd != "0000000000000000" || rep.NoNewPrv != "1" {
		t.Errorf("identity: uid %d CapEff %s CapBnd %s NoNewPrivs %s; want a dynamic user, no capabilities, no new privileges",
			rep.UID, rep.CapEff, rep.CapBnd, rep.NoNewPrv)
	}
	state := rep.Env["STATE_DIRECTORY"]
	if state != "/var/lib/"+StateDir("boxed") {
		t.Errorf("STATE_DIRECTORY = %q", state)
	}
	for dir, want := range map[string]bool{"/": false, "/bin": false, "/etc": false, "/var": false, "/dev": false,
		"/proc/sys/kernel": false, "/tmp": true, state: true} {
		if got, ok := rep.Writable[dir]; !ok || got != want {
			t.Errorf("%s writable = %v (checked %v), want %v", dir, got, ok, want)
		}
	}
	for _, d := range rep.Devices {
		if d == "/dev/fuse" || strings.HasPrefix(d, "/dev/sd") || strings.HasPrefix(d, "/dev/loop") {
			t.Errorf("the app sees %s", d)
		}
	}
	if !slices.Contains(rep.Devices, "/dev/null") || !slices.Contains(rep.Devices, "/dev/urandom") {
		t.Errorf("basic devices missing from the app's /dev: %v", rep.Devices)
	}
	if st, err := os.Stat("/var/lib/private/" + StateDir("boxed")); err != nil || !st.IsDir() {
		t.Errorf("state directory on the node: %v", err)
	}
	if score, out := securityScore(t, "boxed"); score > 3.0 {
		t.Errorf("systemd-analyze security: %.1f, want at most 3.0\n%s", score, out)
	} else {
		t.Logf("systemd-analyze security %s: overall exposure %.1f", UnitName("boxed"), score)
	}

	c := appSpec("binder", "report")
	c.Capabilities = []string{"CAP_NET_BIND_SERVICE"}
	if err := r.Install(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	defer r.Remove(ctx, "binder")
	if rep := reportOf(t, "binder"); rep.UID == 0 || rep.CapEff != "0000000000000400" || rep.CapBnd != "0000000000000400" {
		t.Errorf("app with CAP_NET_BIND_SERVICE: uid %d CapEff %s CapBnd %s", rep.UID, rep.CapEff, rep.CapBnd)
	}

	root := appSpec("rooted", "report")
	root.User = "root"
	if err := r.Install(ctx, root, ""); err != nil {
		t.Fatal(err)
	}
	defer r.Remove(ctx, "rooted")
	if rep := reportOf(t, "rooted"); rep.UID != 0 || rep.CapEff == "0000000000000000" || rep.Writable["/etc"] {
		t.Errorf("app asking for root: uid %d CapEff %s, /etc writable %v", rep.UID, rep.CapEff, rep.Writable["/etc"])
	}
}
