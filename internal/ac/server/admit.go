package server

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
)

// HandshakeListener does the TLS handshakes of the connections it accepts,
// at most limit at a time, and hands net/http only connections whose
// handshake is done. When the whole fleet reconnects at once (a controller
// restart), unbounded handshakes would share the CPU until most of them
// outlast the nodes' timeout and are thrown away, over and over; bounded,
// each finishes in a few milliseconds and the rest wait in the kernel's
// accept queue, where waiting costs nothing.
type HandshakeListener struct {
	net.Listener
	conf    *tls.Config
	slots   chan struct{}
	timeout time.Duration
	log     *slog.Logger
	conns   chan net.Conn
	errs    chan error
	done    chan struct{}
	once    sync.Once
}

// NewHandshakeListener serves ln with conf (which must list "h2" in
// NextProtos for net/http to speak HTTP/2), limit handshakes at a time,
// each given timeout.
func NewHandshakeListener(ln net.Listener, conf *tls.Config, limit int, timeout time.Duration, log *slog.Logger) *HandshakeListener {
	l := &HandshakeListener{Listener: ln, conf: conf, slots: make(chan struct{}, max(limit, 1)), timeout: timeout, log: log,
		conns: make(chan net.Conn), errs: make(chan error, 1), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *HandshakeListener) run() {
	var delay time.Duration
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			if errors.Is(err, net.ErrClosed) {
				l.errs <- err
				return
			}
			// Out of descriptors and the like: as net/http does, wait a
			// little longer each time instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accepting a connection failed", sd.ACRequestFailed.Attr(), "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		go l.handshake(c)
	}
}

func (l *HandshakeListener) handshake(c net.Conn) {
	if peerLeft(c) {
		// Waited in the accept queue past its client's timeout: the
		// client closed, and handshaking it would spend a signature on
		// nobody. When a whole fleet connects at once, the queue's head
		// is all such connections, and handshaking them in turn served
		// nobody at all.
		<-l.slots
		c.Close()
		return
	}
	tc := tls.Server(c, l.conf)
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	<-l.slots
	if err != nil {
		// Scanners, nodes with a foreign certificate, clients that gave up.
		l.log.Info("TLS handshake failed", "peer", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		tc.Close()
	}
}

// peerLeft reports whether the client of c closed its side already (or
// reset the connection); a look at the socket that reads nothing.
func peerLeft(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	left := false
	_ = rc.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(p, 0); err == nil && n > 0 {
			left = p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return left
}

// Accept returns the next connection whose handshake is done.
func (l *HandshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		l.errs <- err // every later Accept fails the same way
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; handshakes under way are dropped.
func (l *HandshakeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// SessionTicketKeys are the keys that encrypt TLS session tickets on day
// now (UTC), current first, then the six days before: a ticket lives at
// most seven days in crypto/tls. They are derived from the server's
// private key, so a restarted controller, or another one with the same
// certificate, resumes the sessions the fleet holds (no signature, no
// certificate verification on either side) instead of a full handshake
// for every node. Whoever holds the key can already impersonate the
// server; past traffic stays protected, as resumption still runs an
// ECDHE exchange.
func SessionTicketKeys(cert *tls.Certificate, now time.Time) ([][32]byte, error) {
	secret, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("session ticket keys: %w", err)
	}
	defer clear(secret)
	day := now.UTC().Unix() / 86400
	keys := make([][32]byte, 7)
	for i := range keys {
		k, err := hkdf.Key(sha256.New, secret, nil, "g8-ac session ticket key, day "+strconv.FormatInt(day-int64(i), 10), 32)
		if err != nil {
			return nil, err
		}
		copy(keys[i][:], k)
	}
	return keys, nil
}
