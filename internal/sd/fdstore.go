package sd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// systemd's file descriptor store (sd_pid_notify_with_fds(3), FDSTORE=1):
// a service hands systemd descriptors that it wants back after a restart,
// a crash or `systemctl daemon-reexec`; systemd passes them to the next
// start of the same unit as LISTEN_FDS/LISTEN_FDNAMES (sd_listen_fds(3)),
// and closes them when the unit is stopped for good. The unit must allow
// it with FileDescriptorStoreMax=.

// ErrNoFDStore: not started by systemd (no NOTIFY_SOCKET).
var ErrNoFDStore = errors.New("no systemd fd store (NOTIFY_SOCKET unset)")

// StoreFD hands files to the fd store under name, which must be 1-255
// printable ASCII characters without ':' (fdname_is_valid in systemd), in
// one message. systemd keeps its own copies: the caller may close them
// afterwards.
func StoreFD(name string, files ...*os.File) error {
	if err := checkFDName(name); err != nil {
		return err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	return sendFDs("FDSTORE=1\nFDNAME="+name, fds...)
}

// RemoveFD asks systemd to close every stored descriptor named name.
func RemoveFD(name string) error {
	if err := checkFDName(name); err != nil {
		return err
	}
	return sendFDs("FDSTOREREMOVE=1\nFDNAME=" + name)
}

// StoredFDs takes the descriptors systemd passed to this process (the fd
// store's content, and any sockets of the unit) by name, and unsets the
// LISTEN_* variables so that children do not take them as theirs. A name
// may carry several descriptors.
func StoredFDs() map[string][]*os.File {
	out := map[string][]*os.File{}
	for _, f := range activation.Files(true) {
		out[f.Name()] = append(out[f.Name()], f)
	}
	return out
}

func checkFDName(name string) error {
	if name == "" || len(name) > 255 || strings.ContainsRune(name, ':') {
		return fmt.Errorf("fd store: name %q: want 1-255 printable ASCII characters without ':'", name)
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("fd store: name %q: want 1-255 printable ASCII characters without ':'", name)
		}
	}
	return nil
}

// sendFDs sends one notification with fds attached (SCM_RIGHTS).
func sendFDs(msg string, fds ...int) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return ErrNoFDStore
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fd store: %w", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(s, []byte(msg), oob, &unix.SockaddrUnix{Name: path}, 0); err != nil {
		return fmt.Errorf("fd store: %s: %w", strings.ReplaceAll(msg, "\n", " "), err)
	}
	return nil
}
