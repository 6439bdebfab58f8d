package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Notify is a NOTIFY_SOCKET a test hands to a phase it runs by hand: it
// records every sd_notify message (READY=1, STATUS=..., STOPPING=1), so a
// test sees exactly what systemd would.
type Notify struct {
	Path string // the value for NOTIFY_SOCKET

	mu   sync.Mutex
	msgs []string
	at   []time.Time // when each message arrived
	conn *net.UnixConn
}

// NotifySocket listens on a fresh datagram socket until the test ends.
// Path-named sockets are reachable from every network namespace.
func NotifySocket(t testing.TB) *Notify {
	t.Helper()
	dir, err := os.MkdirTemp("", "g8notify-")
	if err != nil {
		t.Fatal(err)
	}
	n := &Notify{Path: filepath.Join(dir, "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = conn
	t.Cleanup(func() { conn.Close(); os.RemoveAll(dir) })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.at = append(n.at, now)
			n.mu.Unlock()
		}
	}()
	return n
}

// Env is the environment entry to add to a command.
func (n *Notify) Env() string { return "NOTIFY_SOCKET=" + n.Path }

// Messages returns every datagram received so far.
func (n *Notify) Messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string{}, n.msgs...)
}

// Statuses returns the STATUS= values received so far, in order.
func (n *Notify) Statuses() []string {
	var out []string
	for _, m := range n.Messages() {
		for _, l := range strings.Split(m, "\n") {
			if s, ok := strings.CutPrefix(l, "STATUS="); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// When returns the arrival time of the first message holding line, for
// benchmarks that time a phase from start to READY=1.
func (n *Notify) When(line string) (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, m := range n.msgs {
		if holds(m, line) {
			return n.at[i], true
		}
	}
	return time.Time{}, false
}

// Count is how many messages hold the line (e.g. "WATCHDOG=1").
func (n *Notify) Count(line string) int {
	c := 0
	for _, m := range n.Messages() {
		if holds(m, line) {
			c++
		}
	}
	return c
}

// Has reports whether some message holds the line (e.g. "READY=1").
func (n *Notify) Has(line string) bool { return n.message(line) != "" }

func (n *Notify) message(line string) string {
	for _, m := range n.Messages() {
		if holds(m, line) {
			return m
		}
	}
	return ""
}

func holds(msg, line string) bool {
	for _, l := range strings.Split(msg, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// Wait waits until some message holds line and returns that whole message
// (READY=1 comes with its STATUS=), failing the test after timeout.
func (n *Notify) Wait(t testing.TB, line string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := n.message(line); m != "" {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q on NOTIFY_SOCKET within %v; statuses:\n%s", line, timeout, strings.Join(n.Statuses(), "\n"))
	return ""
}
