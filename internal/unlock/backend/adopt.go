package backend

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// outputFile is where a FUSE tool writes: a memfd that no reader's death
// can turn into SIGPIPE.
func outputFile(tool string) (*os.File, error) {
	fd, err := unix.MemfdCreate(filepath.Base(tool)+"-output", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: output: %w", tool, err)
	}
	return os.NewFile(uintptr(fd), filepath.Base(tool)+"-output"), nil
}

// lastWords is the end of what the tool wrote, for error messages.
func lastWords(f *os.File) string {
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-4096, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	return string(buf[:n])
}

// Serving reports whether process pid is b's tool serving private at
// mountpoint: its executable is the tool and its command line names both
// directories (the tools take them as arguments).
func Serving(b Backend, pid int, private, mountpoint string) bool {
	if pid <= 1 {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(cmdline) == 0 {
		return false
	}
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	if filepath.Base(string(args[0])) != b.Name() {
		return false
	}
	var hasPrivate, hasMount bool
	for _, a := range args[1:] {
		hasPrivate = hasPrivate || filepath.Clean(string(a)) == private
		hasMount = hasMount || filepath.Clean(string(a)) == mountpoint
	}
	return hasPrivate && hasMount
}

// Adopt takes over the FUSE tool (pid) that an earlier g8-unlock started
// and left serving private at mountpoint, instead of mounting again: the
// config stays mounted through a restart, an upgrade or a crash of
// g8-unlock. The caller has checked the mount (PlanAdopt). Done is closed
// when the process exits (a pidfd: it is not our child, so there is no
// exit status, and no zombie of ours to reap).
func Adopt(b Backend, private, mountpoint string, pid int) (*Mount, error) {
	if !Serving(b, pid, private, mountpoint) {
		return nil, fmt.Errorf("adopt: pid %d is not %s serving %s at %s", pid, b.Name(), private, mountpoint)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("adopt: pid %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("adopt: %s: %w", mountpoint, err)
	}
	m := &Mount{Tool: b.Name(), Private: private, Mountpoint: mountpoint, pid: pid, done: make(chan struct{}), conn: int(unix.Minor(st.Dev))}
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		m.err = fmt.Errorf("%s %s (pid %d, adopted): exited", b.Name(), private, pid)
		close(m.done)
	}()
	return m, nil
}
