package e2e

import (
	"strings"
	"testing"
)

// TestExecJobsOnRealSystemd runs the exec job's runner
// (internal/acsession/jobs) against real systemd in a booted node: each
// job is its own transient unit with memory, task and runtime limits, and
// a `setsid sleep 4242 &` does not outlive the job, whether it ends by
// itself or is killed at its timeout (issue 16.8).
func TestExecJobsOnRealSystemd(t *testing.T) {
	h, root := testBinaryNode(t, "./internal/acsession/jobs", "usr/local/bin/jobs.test")
	m := h.Boot(root)
	out, err := m.Exec("env", "G8_JOBS_SYSTEMD=1", "/usr/local/bin/jobs.test", "-test.run", "^TestRealSystemdExec", "-test.v", "-test.count=1")
	if err != nil || !strings.Contains(out, "--- PASS: TestRealSystemdExecKillsTheCgroup") || strings.Contains(out, "--- SKIP") {
		t.Fatalf("exec job tests in the machine: %v\n%s", err, out)
	}
}
