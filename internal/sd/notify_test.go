package sd

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
