package jobs

import (
	"context"
	"path/filepath"
	"strings"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// exec runs argv directly, without a shell, as its own transient systemd
// unit (unit.go): the job is the unit's cgroup, with memory, task and
// runtime limits, killed whole.
func init() {
	Register(Kind{Name: acapi.KindExec, Run: func(ctx context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
		var a acapi.ExecArgs
		if err := DecodeArgs(job, &a); err != nil {
			return err
		}
		if len(a.Argv) == 0 || a.Argv[0] == "" {
			return Rejectf("exec args: argv: empty")
		}
		for i, s := range a.Argv {
			if strings.ContainsRune(s, 0) {
				return Rejectf("exec args: argv[%d]: contains a NUL byte", i)
			}
		}
		for i, kv := range a.Env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" || strings.ContainsRune(kv, 0) {
				return Rejectf("exec args: env[%d]: %q is not KEY=VALUE", i, kv)
			}
		}
		if a.Dir != "" && !filepath.IsAbs(a.Dir) {
			return Rejectf("exec args: dir: %q is not an absolute path", a.Dir)
		}
		max, err := outputCap(a.MaxOutput)
		if err != nil {
			return err
		}
		p := process{argv: a.Argv, env: a.Env, stdin: a.Stdin, dir: a.Dir, maxOutput: max}
		// A job is its own systemd unit wherever systemd runs (every node):
		// limits, and a kill of its whole cgroup. Without systemd (tests on
		// a development host) it is a process group.
		if sys, err := systemdConn(); err == nil {
			return runUnit(ctx, sys, job.ID, time.Duration(job.Timeout), p, res)
		}
		return runProcess(ctx, p, res)
	}})
}

func outputCap(n int) (int, error) {
	switch {
	case n < 0:
		return 0, Rejectf("max_output: %d is negative", n)
	case n == 0:
		return acapi.DefaultMaxOutput, nil
	case n > acapi.MaxOutput:
		return 0, Rejectf("max_output: %d is over the maximum %d", n, acapi.MaxOutput)
	}
	return n, nil
}
