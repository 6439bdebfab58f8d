package sd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeNotifySocket listens where systemd would and returns what it receives.
func fakeNotifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(2 * time.Second):
		t.Fatal("no notification received")
		return ""
	}
}

func TestNotifierSendsProtocolMessages(t *testing.T) {
	ch := fakeNotifySocket(t)
	var n Notifier
	n.Status("waiting for %s", "eth0")
	if got := recv(t, ch); got != "STATUS=waiting for eth0" {
		t.Errorf("status: got %q", got)
	}
	n.Ready("controller https://ac found")
	if got := recv(t, ch); got != "READY=1\nSTATUS=controller https://ac found" {
		t.Errorf("ready: got %q", got)
	}
	n.Watchdog()
	if got := recv(t, ch); got != "WATCHDOG=1" {
		t.Errorf("watchdog: got %q", got)
	}
	n.ExtendTimeout(1500 * time.Millisecond)
	if got := recv(t, ch); got != "EXTEND_TIMEOUT_USEC=1500000" {
		t.Errorf("extend: got %q", got)
	}
	n.Reloading()
	if got := recv(t, ch); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("reloading: got %q", got)
	}
	n.Stopping()
	if got := recv(t, ch); got != "STOPPING=1" {
		t.Errorf("stopping: got %q", got)
	}
	if n.LastStatus != "controller https://ac found" {
		t.Errorf("LastStatus = %q", n.LastStatus)
	}
}

func TestNotifierWithoutSystemdIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var n Notifier
	n.Ready("x") // must neither block nor panic
	n.Watchdog()
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "4000000")
	t.Setenv("WATCHDOG_PID", "")
	if got := WatchdogInterval(); got != 2*time.Second {
		t.Errorf("interval = %v, want 2s", got)
	}
	t.Setenv("WATCHDOG_USEC", "")
	if got := WatchdogInterval(); got != 0 {
		t.Errorf("disabled interval = %v", got)
	}
}

// TestFDStore sends a descriptor the way systemd's fd store receives it
// and checks that the received descriptor is the same open file.
func TestFDStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	f, err := os.CreateTemp(t.TempDir(), "stored")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := StoreFD("fuse-base", f); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 256), make([]byte, 64)
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "FDSTORE=1\nFDNAME=fuse-base" {
		t.Fatalf("message %q", got)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages %v %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights %v %v", fds, err)
	}
	got := os.NewFile(uintptr(fds[0]), "received")
	defer got.Close()
	if _, err := got.WriteString("same file"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(f.Name()); string(data) != "same file" {
		t.Fatalf("received descriptor is not the stored file: %q", data)
	}
	if err := RemoveFD("fuse-base"); err != nil {
		t.Fatal(err)
	}
	n, err = conn.Read(buf)
	if err != nil || string(buf[:n]) != "FDSTOREREMOVE=1\nFDNAME=fuse-base" {
		t.Fatalf("remove: %q %v", buf[:n], err)
	}
	for _, bad := range []string{"", "a:b", "tab\there", strings.Repeat("x", 256)} {
		if err := StoreFD(bad, f); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := StoreFD("x", f); !errors.Is(err, ErrNoFDStore) {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
}

func TestRestarting(t *testing.T) {
	for _, c := range []struct {
		under   bool
		job     string
		err     error
		restart bool
	}{
		{true, "restart", nil, true},
		{true, "try-restart", nil, true},
		{true, "reload-or-restart", nil, true},
		{true, "", nil, true}, // kill / systemctl kill: Restart= brings it back
		{true, "stop", nil, false},
		{true, "start", nil, false},
		{true, "restart", errors.New("no bus"), false},
		{false, "restart", nil, false},
		{false, "", nil, false},
	} {
		if got, why := Restarting(c.under, c.job, c.err); got != c.restart || why == "" {
			t.Errorf("Restarting(%v, %q, %v) = %v %q, want %v", c.under, c.job, c.err, got, why, c.restart)
		}
	}
}
