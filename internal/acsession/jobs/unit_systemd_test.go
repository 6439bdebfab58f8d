package jobs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/apps"
)

// These run against real systemd, inside a machine the e2e harness booted
// (tests/e2e/jobs_test.go sets G8_JOBS_SYSTEMD).
func realSystemd(t *testing.T) apps.Systemd {
	t.Helper()
	if os.Getenv("G8_JOBS_SYSTEMD") == "" {
		t.Skip("skipped: runs inside an e2e machine with real systemd (tests/e2e/jobs_test.go)")
	}
	c, err := systemdConn()
	if err != nil {
		t.Fatalf("systemd: %v", err)
	}
	return c
}

// processes lists the command lines of every process that runs argv.
func processes(t *testing.T, cmdline string) []string {
	t.Helper()
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err == nil && strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ") == cmdline {
			out = append(out, f)
		}
	}
	return out
}

// Issue 16.8: an exec job is its unit's whole cgroup. A process that left
// the job's process group (setsid) does not survive the job, whether the
// job ends by itself or is killed at its timeout; stdin, stdout, stderr
// and the exit status go through; the unit has the memory, task and
// runtime limits.
func TestRealSystemdExecKillsTheCgroup(t *testing.T) {
	sys := realSystemd(t)
	for _, tc := range []struct {
		name    string
		argv    []string
		timeout time.Duration
		wantErr string
	}{
		{"job that ends, leaving a setsid child", []string{"sh", "-c", "setsid sleep 4242 & echo started"}, time.Minute, ""},
		{"job killed at its timeout", []string{"sh", "-c", "setsid sleep 4242 & echo started; sleep 600"}, 2 * time.Second, "killed its unit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			var res acapi.JobResult
			id := "j-cgroup-" + strings.ReplaceAll(tc.name, " ", "-")
			err := runUnit(ctx, sys, id, tc.timeout, process{argv: tc.argv, maxOutput: 1024}, &res)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("job: %v, want %q", err, tc.wantErr)
			}
			if string(res.Stdout) != "started\n" {
				t.Errorf("stdout %q", res.Stdout)
			}
			if left := processes(t, "sleep 4242"); len(left) != 0 {
				t.Fatalf("the setsid child survived the job: %v", left)
			}
			if u, _ := sys.GetUnitPropertiesContext(context.Background(), JobUnitName(id)); u["LoadState"] == "loaded" {
				t.Errorf("unit %s left behind: %v", JobUnitName(id), u["ActiveState"])
			}
		})
	}

	t.Run("stdin, stdout, stderr, exit status", func(t *testing.T) {
		var res acapi.JobResult
		argv := []string{"sh", "-c", "cat; echo oops >&2; exit 3"}
		err := runUnit(context.Background(), sys, "j-io", time.Minute, process{argv: argv, stdin: []byte("hello $HOME\n"), maxOutput: 1024}, &res)
		if err == nil || res.ExitCode != 3 || string(res.Stdout) != "hello $HOME\n" || string(res.Stderr) != "oops\n" {
			t.Fatalf("err %v, exit %d, stdout %q, stderr %q", err, res.ExitCode, res.Stdout, res.Stderr)
		}
	})

	t.Run("limits", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			var res acapi.JobResult
			done <- runUnit(context.Background(), sys, "j-limits", 90*time.Second, process{argv: []string{"sleep", "3"}, maxOutput: 1024}, &res)
		}()
		var props map[string]any
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if p, err := sys.GetUnitTypePropertiesContext(context.Background(), JobUnitName("j-limits"), "Service"); err == nil && p["MainPID"] != uint32(0) {
				props = p
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if props["MemoryMax"] != uint64(ExecMemoryMax) || props["TasksMax"] != uint64(ExecTasksMax) || props["RuntimeMaxUSec"] != uint64(90_000_000) {
			t.Fatalf("unit limits: MemoryMax %v TasksMax %v RuntimeMaxUSec %v", props["MemoryMax"], props["TasksMax"], props["RuntimeMaxUSec"])
		}
	})
}
