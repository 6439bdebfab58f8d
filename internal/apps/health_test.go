package apps

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/tests/testenv"
)

func TestHealthFailuresRestartTheApp(t *testing.T) {
	ctx := context.Background()
	r, sys, _ := newRunner(t)
	healthy := true
	var probes []string
	r.Probe = func(_ context.Context, root string, argv, env []string, _ bool) error {
		probes = append(probes, root+" "+strings.Join(argv, " ")+" "+strings.Join(env, ","))
		if healthy {
			return nil
		}
		return errors.New("connection refused")
	}
	s := webSpec()
	s.Env = map[string]string{"PORT": "80"}
	s.Health = &acapi.AppHealth{Command: []string{"/bin/check"}, Interval: acapi.Duration(time.Second),
		Timeout: acapi.Duration(time.Second), Retries: 2}
	if err := r.Install(ctx, s, ""); err != nil {
		t.Fatal(err)
	}
	sys.takeCalls()
	t0 := time.Now()
	r.CheckHealth(ctx, t0)
	want := filepath.Join(r.Sandboxes.(*fakeSandboxes).dir, "app-web") + " /bin/check PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,PORT=80"
	if len(probes) != 1 || probes[0] != want {
		t.Fatalf("probes = %q, want %q", probes, want)
	}
	healthy = false
	r.CheckHealth(ctx, t0.Add(500*time.Millisecond)) // not due
	r.CheckHealth(ctx, t0.Add(time.Second))          // failure 1 of 2
	if st := statusOf(t, r, "web"); st.State != acapi.AppRunning || len(probes) != 2 || len(sys.takeCalls()) != 0 {
		t.Fatalf("after one failure: %+v, %d probes", st, len(probes))
	}
	r.CheckHealth(ctx, t0.Add(2*time.Second)) // failure 2 of 2: restart
	if got := sys.takeCalls(); !reflect.DeepEqual(got, []string{"stop g8-app-web.service", "start-transient g8-app-web.service"}) {
		t.Fatalf("unhealthy app: calls %q", got)
	}
	if st := statusOf(t, r, "web"); st.State != acapi.AppRunning || st.Restarts != 1 {
		t.Fatalf("after the restart: %+v", st)
	}
}

func TestHealthSkipsStoppedApps(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newRunner(t)
	r.Probe = func(context.Context, string, []string, []string, bool) error {
		t.Fatal("probed a stopped app")
		return nil
	}
	s := webSpec()
	s.Health = &acapi.AppHealth{Command: []string{"/bin/check"}, Interval: acapi.Duration(time.Second), Timeout: acapi.Duration(time.Second), Retries: 1}
	if err := r.Install(ctx, s, ""); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r.CheckHealth(ctx, time.Now())
}

// TestChrootProber runs a real check chrooted into a directory holding a
// static binary, as it runs inside a sandbox.
func TestChrootProber(t *testing.T) {
	testenv.RequireRoot(t, "go")
	root := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(root, "bin", "probe"), "./testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
	ctx := context.Background()
	argv := []string{"/bin/probe"}
	if err := ChrootProber(ctx, root, argv, []string{"APP_MODE=healthy"}, true); err == nil || !strings.Contains(err.Error(), "not ok") {
		t.Fatalf("without /ok in the root: %v", err)
	}
	os.WriteFile(filepath.Join(root, "ok"), nil, 0o644)
	if err := ChrootProber(ctx, root, argv, []string{"APP_MODE=healthy"}, true); err != nil {
		t.Fatalf("healthy: %v", err)
	}
	if err := ChrootProber(ctx, root, argv, nil, true); err == nil {
		t.Fatal("the check saw an environment it was not given")
	}
	if err := ChrootProber(ctx, root, []string{"/bin/missing"}, nil, true); err == nil {
		t.Fatal("a missing command passed")
	}
	// The check of an app that does not run as root runs as nobody.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ChrootProber(ctx, root, argv, []string{"APP_MODE=uid-65534"}, false); err != nil {
		t.Errorf("check of a non-root app: %v", err)
	}
	if err := ChrootProber(ctx, root, argv, []string{"APP_MODE=uid-0"}, true); err != nil {
		t.Errorf("check of a root app: %v", err)
	}
}
