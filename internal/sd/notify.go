// Package sd is the one place the g8 binaries talk to systemd: readiness and
// status notifications, the watchdog, and structured logging to the journal
// with fixed MESSAGE_IDs (see msgid*.go and the generated catalog).
package sd

import (
	"fmt"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages. Outside systemd (no NOTIFY_SOCKET) every
// call is a no-op, so tests and hand runs need no special casing. A unit
// that sets G8_CONSOLE_FILE also gets every status on the console (see
// console.go).
type Notifier struct {
	// LastStatus is the most recent STATUS= text, kept for tests and for
	// phases that copy it into their state file.
	LastStatus string
	ready      bool
}

func (n *Notifier) send(state string) {
	// Errors are deliberately dropped: a lost notification must never stop a
	// phase, and there is nobody to report it to but the journal, which the
	// caller already writes.
	_, _ = daemon.SdNotify(false, state)
}

// Ready reports READY=1 together with a final status line.
func (n *Notifier) Ready(status string) {
	n.LastStatus = status
	n.ready = true
	mirrorStatus(true, status)
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
	// A ready phase mostly idles from here on: hand the start-up garbage
	// (TLS handshakes, key generation, JSON) back to the kernel now rather
	// than minutes later through the runtime's scavenger, so the node's
	// idle footprint is what the phase really holds.
	debug.FreeOSMemory()
}

// Status sets STATUS=, the line `systemctl status` shows; use it for every
// wait so an operator sees what is pending.
func (n *Notifier) Status(format string, a ...any) {
	n.LastStatus = fmt.Sprintf(format, a...)
	mirrorStatus(n.ready, n.LastStatus)
	n.send("STATUS=" + n.LastStatus)
}

// Stopping reports STOPPING=1.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Reloading reports RELOADING=1 with the monotonic timestamp that
// Type=notify-reload requires; call Ready again when the reload is done.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
}

// ExtendTimeout asks systemd for d more before the start (or stop) times out.
func (n *Notifier) ExtendTimeout(d time.Duration) {
	n.send("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// Watchdog pings the watchdog. Call it from the loop that does the work, not
// from a ticker of its own, so a stalled loop gets the unit killed.
func (n *Notifier) Watchdog() { n.send(daemon.SdNotifyWatchdog) }

// WatchdogInterval is how often Watchdog must be called (half of
// WatchdogSec=, as sd_watchdog_enabled(3) advises), or 0 when disabled.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}
