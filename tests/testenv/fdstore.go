package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FDStore plays systemd's side of the notify socket for a phase run by
// hand, including the file descriptor store (sd_pid_notify_with_fds(3)):
// descriptors sent with FDSTORE=1 are kept by FDNAME, FDSTOREREMOVE=1
// closes them, and Command starts the next process with them the way
// systemd starts a unit again (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID,
// descriptors from 3 on). Under real systemd the same phases run in the
// nspawn tests (tests/e2e).
type FDStore struct {
	Path string // NOTIFY_SOCKET

	mu   sync.Mutex
	fds  map[string][]int
	msgs []string
}

// NewFDStore listens until the test ends, then closes what it holds.
func NewFDStore(t testing.TB) *FDStore {
	t.Helper()
	dir, err := os.MkdirTemp("", "g8fdstore-")
	if err != nil {
		t.Fatal(err)
	}
	s := &FDStore{Path: filepath.Join(dir, "notify.sock"), fds: map[string][]int{}}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		os.RemoveAll(dir)
		s.mu.Lock()
		for _, fds := range s.fds {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		s.fds = nil
		s.mu.Unlock()
	})
	go func() {
		buf, oob := make([]byte, 64<<10), make([]byte, 4096)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var got []int
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for i := range cmsgs {
					if fds, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
						got = append(got, fds...)
					}
				}
			}
			s.receive(string(buf[:n]), got)
		}
	}()
	return s
}

func (s *FDStore) receive(msg string, fds []int) {
	fields := map[string]string{}
	for _, l := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			fields[k] = v
		}
	}
	name := fields["FDNAME"]
	if name == "" {
		name = "stored"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, msg)
	switch {
	case fields["FDSTORE"] == "1" && s.fds != nil:
		s.fds[name] = append(s.fds[name], fds...)
		return
	case fields["FDSTOREREMOVE"] == "1":
		for _, fd := range s.fds[name] {
			unix.Close(fd)
		}
		delete(s.fds, name)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Names lists the names that hold descriptors.
func (s *FDStore) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.fds {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Has reports whether a received message holds line (e.g. "READY=1").
func (s *FDStore) Has(line string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		for _, l := range strings.Split(m, "\n") {
			if l == line {
				return true
			}
		}
	}
	return false
}

// Count is how many received messages hold line.
func (s *FDStore) Count(line string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := 0
	for _, m := range s.msgs {
		for _, l := range strings.Split(m, "\n") {
			if l == line {
				c++
				break
			}
		}
	}
	return c
}

// WaitCount waits until n messages hold line.
func (s *FDStore) WaitCount(t testing.TB, line string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.Count(line) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %d× %q on the notify socket within %v", n, line, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Command is bin with args, started as systemd starts a unit that has
// descriptors in its store. LISTEN_PID must be the pid of the process
// that reads it, which exec.Cmd cannot know before it starts: a shell
// sets it to its own pid and execs bin.
func (s *FDStore) Command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin}, args...)...)
	s.mu.Lock()
	var names []string
	for n := range s.fds {
		names = append(names, n)
	}
	sort.Strings(names)
	var fdnames []string
	for _, n := range names {
		for _, fd := range s.fds[n] {
			// The child gets its own copy; the store keeps its own.
			dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				continue
			}
			cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(dup), n))
			fdnames = append(fdnames, n)
		}
	}
	s.mu.Unlock()
	env := []string{"NOTIFY_SOCKET=" + s.Path}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LISTEN_") && !strings.HasPrefix(e, "NOTIFY_SOCKET=") {
			env = append(env, e)
		}
	}
	if len(fdnames) > 0 {
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(fdnames)), "LISTEN_FDNAMES="+strings.Join(fdnames, ":"))
	}
	cmd.Env = env
	return cmd
}
