package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// baseEnv is all a job's process gets besides its own env lines: the
// session's environment (NOTIFY_SOCKET, WATCHDOG_*, INVOCATION_ID) is not
// the job's business.
var baseEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
}

// pipeGrace is how long output is still read after the command exits or is
// killed, for members of its group that still hold the pipes.
const pipeGrace = 500 * time.Millisecond

type process struct {
	argv      []string
	env       []string
	stdin     []byte
	dir       string
	maxOutput int
}

// runProcess runs p as the leader of a new process group. The job is the
// whole group: on timeout the group is killed with SIGKILL, and whatever
// of it is still alive when the leader exits is killed too, so a job
// leaves nothing behind holding its pipes or running unaccounted.
func runProcess(ctx context.Context, p process, res *acapi.JobResult) error {
	env := append(append([]string{}, baseEnv...), p.env...)
	path, err := lookPath(p.argv[0], env)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, p.argv[1:]...)
	cmd.Args[0] = p.argv[0]
	cmd.Env = env
	cmd.Dir = p.dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.Stdin = bytes.NewReader(p.stdin)
	stdout, stderr := &cappedBuffer{max: p.maxOutput}, &cappedBuffer{max: p.maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = pipeGrace
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", p.argv[0], err)
	}
	err = cmd.Wait()
	_ = killGroup(cmd.Process.Pid)
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	res.Truncated = stdout.truncated || stderr.truncated
	res.ExitCode = cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.ExitCode = 128 + int(ws.Signal())
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s: killed its process group: %w", p.argv[0], ctx.Err())
	case errors.As(err, &exitErr):
		return fmt.Errorf("%s: %s", p.argv[0], exitErr.ProcessState)
	case errors.Is(err, exec.ErrWaitDelay):
		return nil // exited 0; a member of its group held the pipes and was killed
	default:
		return fmt.Errorf("%s: %w", p.argv[0], err)
	}
}

func killGroup(pgid int) error {
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// lookPath resolves name with the job's PATH, not the session's.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathList := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathList = v
		}
	}
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %s: not found in PATH %s", name, pathList)
}

// cappedBuffer keeps the first max bytes written and drops the rest,
// still accepting them so the writer never blocks on a full pipe.
type cappedBuffer struct {
	max       int
	buf       bytes.Buffer
	truncated bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if room < len(p) {
		c.truncated = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *cappedBuffer) Bytes() []byte {
	if c.buf.Len() == 0 {
		return nil
	}
	return c.buf.Bytes()
}
