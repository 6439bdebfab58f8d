package sshd_test

import (
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"

	"github.com/g8os/boot/tests/testenv"
)

// dialFrom opens a TCP connection from inside h's namespace. A socket belongs to
// the namespace of the thread that created it, so the dial runs on a thread
// locked into h's namespace; the connection is then used from anywhere. This
// lets a test hold thousands of connections from one host without a helper
// process per connection.
func dialFrom(h *testenv.Host, addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("dial from %s: current netns: %w", h.Name, err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		return nil, fmt.Errorf("dial from %s: netns %s: %w", h.Name, h.NS, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return nil, fmt.Errorf("dial from %s: setns: %w", h.Name, err)
	}
	// Back to the original namespace before the thread is unlocked, or a
	// later goroutine would run there.
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot leave netns %s: %v", h.NS, err))
		}
	}()
	return net.DialTimeout("tcp", addr, timeout)
}
