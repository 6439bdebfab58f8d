// Package sshd is g8-sshd: the node's SSH daemon for operators. It serves
// root logins by public key with the host keys and authorized_keys that
// enrollment put in the unlocked config (/mnt/etc/ssh), independent of the
// controller session, so it still works when the controller is gone.
package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	glider "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Exit codes of g8-sshd beyond the shared ones.
const (
	ExitNoHostKey = 10 // the ssh dir is missing, unreadable or has no usable host key
	ExitListen    = 11 // a --listen address could not be bound
)

// Config is everything g8-sshd is told on its command line.
type Config struct {
	SSHDir   string   // host keys and authorized_keys
	Listen   []string // host:port, each bound before READY=1
	StateDir string
	Users    []string // who may log in; root by default
	Shell    string   // "" means the user's login shell from /etc/passwd

	IdleTimeout       time.Duration // no session data either way for this long closes the connection; 0 off
	KeepaliveInterval time.Duration // keepalive@openssh.com probes; 0 off
	KeepaliveCountMax int           // unanswered probes before the peer counts as gone
	BannerTimeout     time.Duration // the client's version string must arrive within this
	LoginGraceTime    time.Duration // handshake plus authentication must finish within this
	ShutdownGrace     time.Duration // on a stop, how long sessions may still run
	StopSessions      StopSessions  // which SIGTERMs end the connections, not only the listener
	ReloadInterval    time.Duration // how often authorized_keys is checked for changes

	Startups     Startups // limits on connections not yet authenticated
	MaxAuthTries int      // authentication attempts per connection

	AcceptEnv             []string // client variables taken beyond LANG, LC_*, TERM
	PermitUserEnvironment bool     // honour environment= in authorized_keys
	AllowTCPForwarding    bool
	AllowAgentForwarding  bool

	Debug bool
}

// DefaultConfig holds the defaults the flags show.
func DefaultConfig() Config {
	return Config{
		SSHDir:            "/mnt/etc/ssh",
		StateDir:          state.DefaultDir,
		Users:             []string{"root"},
		KeepaliveInterval: 15 * time.Second,
		KeepaliveCountMax: 3,
		BannerTimeout:     10 * time.Second,
		LoginGraceTime:    30 * time.Second,
		ShutdownGrace:     20 * time.Second,
		StopSessions:      StopSessionsAuto,
		ReloadInterval:    2 * time.Second,
		Startups:          DefaultStartups,
		MaxAuthTries:      6,
	}
}

// AuthorizedKeysPath is the authorized_keys file in the ssh dir.
func (c *Config) AuthorizedKeysPath() string { return filepath.Join(c.SSHDir, "authorized_keys") }

// Server is a running g8-sshd.
type Server struct {
	cfg    Config
	log    *slog.Logger
	notify *sd.Notifier
	srv    *glider.Server

	keys        atomic.Pointer[KeySet]
	keysMu      sync.Mutex
	keysRaw     []byte // the authorized_keys behind keys, handed to connection processes
	keysPresent bool

	exe       string // this binary, re-executed per connection
	childMu   sync.Mutex
	children  map[int]*os.Process // connection processes this listener started
	childWG   sync.WaitGroup
	onAuthed  func() // in a connection process: tell the listener
	keysStat  fileStamp
	certsStat fileStamp // of the host certificates, renewed by g8-acsession

	startMu   sync.Mutex
	unauth    int            // connections not yet authenticated
	perSource map[string]int // the same, by SourceKey
	refusedAt time.Time      // last refusal logged
	refused   int            // refusals not logged since
	nextConn  atomic.Uint64

	sessMu   sync.Mutex
	sessions map[*session]struct{}
	sessWG   sync.WaitGroup

	st state.SSHD
}

type ctxKey struct{ name string }

var connStateKey = &ctxKey{"g8-conn-state"}

// connState is what the server knows about one TCP connection.
type connState struct {
	id        uint64
	raw       net.Conn
	remote    string
	remoteIP  net.IP
	source    string // SourceKey(remoteIP)
	started   time.Time
	banner    atomic.Bool // the client's version string has arrived
	authed    atomic.Bool
	activity  atomic.Uint64 // bumped by every chunk of session data either way
	unauthRel sync.Once

	mu       sync.Mutex
	user     string
	key      *AuthorizedKey          // the line the last offered key matched; see publicKey
	lastFP   string                  // fingerprint of the last key offered
	lastWhy  string                  // why that key was refused
	forwards map[string]net.Listener // remote forwards by "bindaddr:port"
}

// touch marks the connection active. It is on the data path, so it only
// bumps a counter; the watchdog notices the change (no clock read per
// packet).
func (c *connState) touch() { c.activity.Add(1) }

// Run serves until ctx ends or SIGTERM, then lets sessions finish within
// the shutdown grace.
func Run(ctx context.Context, cfg Config, log *slog.Logger, notify *sd.Notifier) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	s, lns, err := New(cfg, log, notify)
	if err != nil {
		return err
	}
	return s.Serve(ctx, lns, hup)
}

// New loads the host keys and authorized_keys and binds the listeners.
func New(cfg Config, log *slog.Logger, notify *sd.Notifier) (*Server, []net.Listener, error) {
	if len(cfg.Listen) == 0 {
		cfg.Listen = []string{":22"}
	}
	if len(cfg.Users) == 0 {
		cfg.Users = []string{"root"}
	}
	s := &Server{cfg: cfg, log: log, notify: notify, sessions: map[*session]struct{}{}, perSource: map[string]int{},
		children: map[int]*os.Process{}}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("sshd: own binary, to run connections: %w", err)
	}
	s.exe = exe
	s.st.StartedAt = time.Now().UTC()
	s.st.SSHDir = cfg.SSHDir
	s.st.AuthorizedKeysFile = cfg.AuthorizedKeysPath()

	notify.Status("loading host keys from %s", cfg.SSHDir)
	hostKeys, skipped, err := LoadHostKeys(cfg.SSHDir)
	for _, e := range skipped {
		log.Warn("host key skipped", sd.SSHDHostKeySkipped.Attr(), "error", e.Error())
	}
	if err != nil {
		return nil, nil, cli.Exit(ExitNoHostKey, fmt.Errorf("sshd: %w", err))
	}
	hasEd := false
	for _, hk := range hostKeys {
		if hk.Cert != nil {
			s.logHostCert(hk)
			continue
		}
		if fi, err := os.Stat(hk.File); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("host key is accessible to group or others", sd.SSHDHostKeySkipped.Attr(), "file", hk.File, "mode", fi.Mode().Perm().String())
		}
		log.Info("host key loaded", sd.SSHDHostKeyLoaded.Attr(), "file", hk.File, "key_type", hk.Signer.PublicKey().Type(), "fingerprint", hk.Fingerprint)
		s.st.HostKeys = append(s.st.HostKeys, hk.Fingerprint)
		hasEd = hasEd || filepath.Base(hk.File) == HostKeyFile
	}
	if !hasEd {
		log.Warn("no ed25519 host key; serving with the others", sd.SSHDHostKeySkipped.Attr(), "file", filepath.Join(cfg.SSHDir, HostKeyFile))
	}
	for _, u := range cfg.Users {
		// Not fatal: /etc/passwd may gain the account later; until then its
		// logins fail with this same message.
		if _, err := lookupAccount("/etc/passwd", u); err != nil {
			log.Warn("a --users account does not exist", sd.PhaseStarted.Attr(), "user", u, "error", err.Error())
		}
	}
	s.reloadKeys("start")
	s.certsStat = s.hostCertsStamp()

	s.srv = s.newGliderServer(hostKeys)

	var lns []net.Listener
	for _, addr := range cfg.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, nil, cli.Exit(ExitListen, fmt.Errorf("sshd: listen %s: %w", addr, err))
		}
		lns = append(lns, ln)
		s.st.Listen = append(s.st.Listen, ln.Addr().String())
	}
	return s, lns, nil
}

// Serve accepts on lns until ctx ends; hup triggers a reload.
func (s *Server) Serve(ctx context.Context, lns []net.Listener, hup <-chan os.Signal) error {
	serveErr := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { serveErr <- s.acceptLoop(ln) }()
	}
	s.st.ReadyAt = time.Now().UTC()
	s.writeState()
	s.log.Info("serving", sd.PhaseReady.Attr(), "listen", strings.Join(s.st.Listen, ","), "users", strings.Join(s.cfg.Users, ","))
	s.notify.Ready(s.statusLine())

	var tick <-chan time.Time
	if s.cfg.ReloadInterval > 0 {
		t := time.NewTicker(s.cfg.ReloadInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return s.stopListener(lns)
		case err := <-serveErr:
			if err == nil {
				continue
			}
			for _, ln := range lns {
				ln.Close()
			}
			return fmt.Errorf("sshd: serve: %w", err)
		case <-hup:
			s.notify.Reloading()
			s.reloadHostKeys()
			s.reloadKeys("SIGHUP")
			s.notify.Ready(s.statusLine())
		case <-tick:
			if s.keysChanged() {
				s.reloadKeys("file changed")
				s.notify.Status("%s", s.statusLine())
			}
			if st := s.hostCertsStamp(); st != s.certsStat {
				s.certsStat = st
				s.reloadHostKeys()
			}
		}
	}
}

func (s *Server) statusLine() string {
	ks := s.keys.Load()
	n := 0
	if ks != nil {
		n = len(ks.Keys)
	}
	return fmt.Sprintf("listening on %s; %d authorized keys", strings.Join(s.st.Listen, ", "), n)
}

// acceptLoop admits connections on ln within the pre-auth limits and
// hands each to its own process. It returns nil once ln is closed.
func (s *Server) acceptLoop(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors or memory for a moment: back off as
			// net/http does rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", sd.SSHDConnDropped.Attr(), "listen", ln.Addr().String(), "error", err.Error(), "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
		st := s.admit(c)
		if st == nil {
			c.Close()
			continue
		}
		go s.dispatch(c, st)
	}
}

// stopListener ends the listener at SIGTERM. The connections go on unless
// this is a stop (see endSessionsOnTerm): a restart or an upgrade must not
// cut the operators' sessions.
func (s *Server) stopListener(lns []net.Listener) error {
	s.notify.Stopping()
	for _, ln := range lns {
		ln.Close()
	}
	job, jobErr := unitJob(context.Background())
	end, why := endSessionsOnTerm(s.cfg.StopSessions, job, jobErr)
	if end {
		s.log.Info("stopping the listener and the connections: "+why, sd.PhaseStopping.Attr())
		s.endConnections()
		return nil
	}
	s.childMu.Lock()
	n := len(s.children)
	s.childMu.Unlock()
	s.log.Info("stopping the listener; connections keep running: "+why, sd.PhaseStopping.Attr(), "connections", n)
	return nil
}

// shutdown (in a connection process) stops serving, waits for the
// connection to end within the grace, then closes it and hangs up on its
// processes.
func (s *Server) shutdown() error {
	s.notify.Stopping()
	s.log.Info("stopping: no new connections; sessions may finish", sd.PhaseStopping.Attr(), "grace", s.cfg.ShutdownGrace.String(), "sessions", s.sessionCount())
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Info("grace over: closing remaining connections", sd.PhaseStopping.Attr(), "sessions", s.sessionCount())
		s.srv.Close()
	}
	// Closed channels hang up on their processes (SIGHUP, as a terminal
	// would). Processes that ignore it were meant to outlive the session,
	// like under OpenSSH, so nothing is killed harder here.
	done := make(chan struct{})
	go func() { s.sessWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		s.log.Warn("sessions still winding down at exit", sd.PhaseStopping.Attr(), "sessions", s.sessionCount())
	}
	return nil
}

func (s *Server) sessionCount() int {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	return len(s.sessions)
}

func (s *Server) writeState() {
	if err := state.Write(s.cfg.StateDir, &s.st); err != nil {
		s.log.Warn("state file not written", sd.PhaseFailed.Attr(), "error", err.Error())
		return
	}
	s.log.Debug("state written", sd.StateWritten.Attr(), "file", state.Path(s.cfg.StateDir, &s.st))
}

// fileStamp identifies a version of a file cheaply. Polling it works on
// every file system, FUSE included, where change notification does not.
type fileStamp struct {
	ok    bool
	size  int64
	mtime time.Time
	ino   uint64
	ctime int64
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	fs := fileStamp{ok: true, size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fs.ino = st.Ino
		fs.ctime = st.Ctim.Nano()
	}
	return fs
}

// hostCertsStamp identifies the host certificate files present, so that one
// renewed (or added) is picked up without a SIGHUP.
func (s *Server) hostCertsStamp() fileStamp {
	var st fileStamp
	paths, _ := filepath.Glob(filepath.Join(s.cfg.SSHDir, "ssh_host_*_key"+HostCertSuffix))
	for _, p := range paths {
		fs := stampOf(p)
		st.ok = true
		st.size += fs.size
		st.ino ^= fs.ino
		st.ctime += fs.ctime
		if fs.mtime.After(st.mtime) {
			st.mtime = fs.mtime
		}
	}
	return st
}

func (s *Server) keysChanged() bool { return stampOf(s.cfg.AuthorizedKeysPath()) != s.keysStat }

// reloadKeys swaps in a freshly parsed authorized_keys. Sessions already
// open keep running: they were authorized by the set they logged in with.
// A file that cannot be read (other than gone) keeps the previous set, so
// a hiccup of the FUSE mount does not lock operators out.
func (s *Server) reloadKeys(why string) {
	path := s.cfg.AuthorizedKeysPath()
	stamp := stampOf(path)
	raw, err := readAuthorizedKeys(path)
	var ks *KeySet
	if err == nil {
		ks, err = ParseAuthorizedKeys(bytes.NewReader(raw), path)
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.log.Warn("no authorized_keys: nobody can log in until it exists", sd.SSHDKeysLoaded.Attr(), "file", path, "reason", why)
		ks = &KeySet{File: path}
	case err != nil:
		s.log.Error("authorized_keys unreadable; keeping the keys loaded before", sd.SSHDKeysLoaded.Attr(), "file", path, "error", err.Error(), "reason", why)
		s.keysStat = stamp
		return
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o022 != 0 {
		// sshd's StrictModes would refuse the file; on the FUSE mount the
		// modes may be an artefact, so this only warns.
		s.log.Warn("authorized_keys is writable by group or others", sd.SSHDKeysLoaded.Attr(), "file", path, "mode", fi.Mode().Perm().String())
	}
	for _, le := range ks.Skipped {
		s.log.Warn("authorized_keys line skipped", sd.SSHDKeyLineSkipped.Attr(), "file", le.File, "line", le.Line, "error", le.Err.Error())
	}
	s.keysMu.Lock()
	s.keysRaw, s.keysPresent = raw, err == nil
	s.keysMu.Unlock()
	s.keys.Store(ks)
	s.keysStat = stamp
	s.log.Info("authorized_keys loaded", sd.SSHDKeysLoaded.Attr(), "file", path, "keys", len(ks.Keys), "skipped", len(ks.Skipped), "reason", why)
	s.st.AuthorizedKeys = len(ks.Keys)
	s.st.SkippedLines = len(ks.Skipped)
	s.st.KeysLoadedAt = time.Now().UTC()
	if !s.st.ReadyAt.IsZero() {
		s.writeState()
	}
}

// reloadHostKeys picks up host keys rotated in the ssh dir. A key type that
// disappeared keeps being served until restart; if none loads, the keys in
// use stay.
func (s *Server) reloadHostKeys() {
	keys, skipped, err := LoadHostKeys(s.cfg.SSHDir)
	for _, e := range skipped {
		s.log.Warn("host key skipped", sd.SSHDHostKeySkipped.Attr(), "error", e.Error())
	}
	if err != nil {
		s.log.Error("host keys not reloaded; keeping those in use", sd.SSHDHostKeySkipped.Attr(), "error", err.Error())
		return
	}
	s.st.HostKeys = nil
	for _, hk := range keys {
		s.srv.AddHostKey(hk.Signer)
		if hk.Cert != nil {
			s.logHostCert(hk)
			continue
		}
		s.st.HostKeys = append(s.st.HostKeys, hk.Fingerprint)
		s.log.Info("host key loaded", sd.SSHDHostKeyLoaded.Attr(), "file", hk.File, "key_type", hk.Signer.PublicKey().Type(), "fingerprint", hk.Fingerprint)
	}
}

func (s *Server) logHostCert(hk HostKey) {
	c := hk.Cert
	attrs := []any{sd.SSHDHostKeyLoaded.Attr(), "file", hk.File, "key_type", c.Type(), "fingerprint", hk.Fingerprint,
		"cert_id", c.KeyId, "cert_serial", c.Serial, "principals", strings.Join(c.ValidPrincipals, ","),
		"ca_fingerprint", gossh.FingerprintSHA256(c.SignatureKey)}
	if c.ValidBefore != gossh.CertTimeInfinity {
		until := time.Unix(int64(c.ValidBefore), 0).UTC()
		attrs = append(attrs, "valid_before", until)
		if time.Now().After(until) {
			s.log.Warn("host certificate expired: clients trusting the CA will refuse it", attrs...)
			return
		}
	}
	s.log.Info("host certificate loaded", attrs...)
}

func (s *Server) newGliderServer(hostKeys []HostKey) *glider.Server {
	srv := &glider.Server{
		Version:          "g8-sshd",
		PublicKeyHandler: s.publicKey,
		ConnCallback:     s.acceptConn,
		ChannelHandlers: map[string]glider.ChannelHandler{
			"session":      s.handleSession,
			"direct-tcpip": s.handleDirectTCPIP,
		},
		RequestHandlers: map[string]glider.RequestHandler{
			"tcpip-forward":        s.handleTCPIPForward,
			"cancel-tcpip-forward": s.handleTCPIPForward,
		},
		ServerConfigCallback: func(ctx glider.Context) *gossh.ServerConfig {
			cfg := &gossh.ServerConfig{
				MaxAuthTries:    s.cfg.MaxAuthTries,
				AuthLogCallback: func(md gossh.ConnMetadata, method string, err error) { s.authLog(ctx, md, method, err) },
			}
			cfg.Ciphers = cipherOrder(hasAESGCM())
			return cfg
		},
		ConnectionFailedCallback: s.connFailed,
	}
	for _, hk := range hostKeys {
		srv.AddHostKey(hk.Signer)
	}
	return srv
}

// acceptConn starts a connection's watchdog (banner and login deadlines,
// idle, keepalive); in the listener, admit already applied the limits.
func (s *Server) acceptConn(ctx glider.Context, c net.Conn) net.Conn {
	st := s.admit(c)
	if st == nil {
		return nil
	}
	st.touch()
	ctx.SetValue(connStateKey, st)
	go s.watchConn(ctx, st)
	return &bannerConn{Conn: c, st: st}
}

// admit applies the --max-startups limits to a new connection and counts
// it as unauthenticated; nil means refused (and logged).
func (s *Server) admit(c net.Conn) *connState {
	st := &connState{id: s.nextConn.Add(1), raw: c, remote: c.RemoteAddr().String(), started: time.Now()}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		st.remoteIP = ta.IP
	}
	st.source = SourceKey(st.remoteIP)
	s.startMu.Lock()
	total, fromSource := s.unauth, s.perSource[st.source]
	why := s.cfg.Startups.Admit(total, fromSource, rand.IntN(100))
	logIt, suppressed := false, 0
	if why == "" {
		s.unauth++
		s.perSource[st.source]++
	} else if now := time.Now(); now.Sub(s.refusedAt) >= time.Second {
		// A flood is one line a second, with the count of the refusals
		// in between, not a line per connection.
		logIt, suppressed = true, s.refused
		s.refusedAt, s.refused = now, 0
	} else {
		s.refused++
	}
	s.startMu.Unlock()
	if why != "" {
		// Closed before a byte is read: a refused connection costs no
		// handshake.
		if logIt {
			s.log.Warn("connection refused: "+why, sd.SSHDConnDropped.Attr(), "remote", st.remote,
				"unauthenticated", total, "from_source", fromSource, "max_startups", s.cfg.Startups.String(),
				"per_source", s.cfg.Startups.PerSource, "refused_unlogged", suppressed)
		}
		return nil
	}
	return st
}

func (s *Server) releaseUnauth(st *connState) {
	st.unauthRel.Do(func() {
		s.startMu.Lock()
		defer s.startMu.Unlock()
		s.unauth--
		if s.perSource[st.source]--; s.perSource[st.source] <= 0 {
			delete(s.perSource, st.source)
		}
	})
}

// bannerConn notes when the client's version line has arrived, for the
// banner deadline. x/crypto reads the version line before anything else.
type bannerConn struct {
	net.Conn
	st *connState
}

func (c *bannerConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.st.banner.Load() && bytes.IndexByte(p[:n], '\n') >= 0 {
		c.st.banner.Store(true)
	}
	return n, err
}

func connStateOf(ctx glider.Context) *connState {
	st, _ := ctx.Value(connStateKey).(*connState)
	return st
}

// watchConn enforces, per connection: the login grace time until
// authenticated, then the idle timeout and keepalive probes.
func (s *Server) watchConn(ctx glider.Context, st *connState) {
	defer s.releaseUnauth(st)
	tick := 250 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastProbe time.Time
	var unanswered atomic.Int32
	seen, lastActive := st.activity.Load(), time.Now()
	drop := func(reason string, attrs ...any) {
		s.log.Info("connection closed: "+reason, append([]any{sd.SSHDConnDropped.Attr(), "remote", st.remote, "user", st.userName()}, attrs...)...)
		// The slot first: a client that sees the close and comes back at
		// once must not find it still taken.
		s.releaseUnauth(st)
		st.raw.Close()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if !st.authed.Load() {
			if s.cfg.BannerTimeout > 0 && !st.banner.Load() && now.Sub(st.started) > s.cfg.BannerTimeout {
				drop("no SSH version string from the client within the banner timeout", "banner_timeout", s.cfg.BannerTimeout.String())
				return
			}
			if s.cfg.LoginGraceTime > 0 && now.Sub(st.started) > s.cfg.LoginGraceTime {
				drop("not authenticated within the login grace time", "grace", s.cfg.LoginGraceTime.String())
				return
			}
			continue
		}
		if a := st.activity.Load(); a != seen {
			seen, lastActive = a, now
		}
		if s.cfg.IdleTimeout > 0 && now.Sub(lastActive) > s.cfg.IdleTimeout {
			drop("idle timeout", "idle_timeout", s.cfg.IdleTimeout.String())
			return
		}
		if s.cfg.KeepaliveInterval > 0 && now.Sub(lastProbe) >= s.cfg.KeepaliveInterval {
			if int(unanswered.Load()) >= s.cfg.KeepaliveCountMax {
				drop("client stopped answering keepalives", "keepalives", unanswered.Load())
				return
			}
			sc, _ := ctx.Value(glider.ContextKeyConn).(*gossh.ServerConn)
			if sc == nil {
				continue
			}
			lastProbe = now
			unanswered.Add(1)
			go func() {
				// Any reply, even "unknown request", proves the peer is alive.
				if _, _, err := sc.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					unanswered.Store(0)
				}
			}()
		}
	}
}

func (st *connState) userName() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.user
}

// publicKey decides whether key may log in as the requested user. x/crypto
// guarantees the last call before success is for the key that signed (its
// key cache holds one entry), so the line remembered here is the one the
// session must obey.
func (s *Server) publicKey(ctx glider.Context, key glider.PublicKey) bool {
	st := connStateOf(ctx)
	if st == nil {
		return false
	}
	fp := gossh.FingerprintSHA256(key)
	if c, ok := key.(*gossh.Certificate); ok {
		fp = gossh.FingerprintSHA256(c.Key)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.user, st.lastFP, st.key, st.lastWhy = ctx.User(), fp, nil, ""
	perms := ctx.Permissions()
	if perms.Extensions == nil {
		perms.Extensions = map[string]string{}
	}
	delete(perms.Extensions, "no-touch-required")
	if !slices.Contains(s.cfg.Users, ctx.User()) {
		st.lastWhy = fmt.Sprintf("user %q may not log in (allowed: %s)", ctx.User(), strings.Join(s.cfg.Users, ","))
		return false
	}
	ak, err := s.keys.Load().Authorize(key, ctx.User(), st.remoteIP, time.Now())
	if err != nil {
		st.lastWhy = err.Error()
		return false
	}
	if ak.Options.NoTouchRequired {
		perms.Extensions["no-touch-required"] = ""
	}
	st.key = ak
	return true
}

// authLog records every authentication outcome: the login with the key
// that made it, or the rejection with the reason.
func (s *Server) authLog(ctx glider.Context, md gossh.ConnMetadata, method string, err error) {
	st := connStateOf(ctx)
	if st == nil {
		return
	}
	st.mu.Lock()
	fp, why, key := st.lastFP, st.lastWhy, st.key
	st.mu.Unlock()
	if err == nil {
		st.authed.Store(true)
		st.touch()
		s.releaseUnauth(st)
		if s.onAuthed != nil {
			s.onAuthed()
		}
		attrs := []any{sd.SSHDLogin.Attr(), "user", md.User(), "remote", st.remote, "method", method, "fingerprint", fp}
		if key != nil {
			attrs = append(attrs, "key_line", key.Line, "key_comment", key.Comment)
			if c := key.Cert; c != nil {
				attrs = append(attrs, "cert_id", c.KeyId, "cert_serial", c.Serial, "ca_fingerprint", gossh.FingerprintSHA256(c.SignatureKey))
			}
		}
		s.log.Info("login accepted", attrs...)
		return
	}
	if method == "none" {
		// Clients start with "none" to learn the methods; not an attempt.
		return
	}
	attrs := []any{sd.SSHDLoginRejected.Attr(), "user", md.User(), "remote", st.remote, "method", method}
	switch method {
	case "publickey":
		if why == "" {
			why = err.Error()
		}
		attrs = append(attrs, "fingerprint", fp, "reason", why)
	case "password", "keyboard-interactive":
		attrs = append(attrs, "reason", "only public key authentication is accepted")
	default:
		attrs = append(attrs, "reason", err.Error())
	}
	s.log.Info("login rejected", attrs...)
}

func (s *Server) connFailed(c net.Conn, err error) {
	if errors.Is(err, net.ErrClosed) {
		return // closed by our own watchdog, which said why
	}
	s.log.Info("connection closed before login", sd.SSHDConnDropped.Attr(), "remote", c.RemoteAddr().String(), "error", err.Error())
}

func (s *Server) allowLocalForward(ctx glider.Context, host string, port uint32) bool {
	return s.allowForward(ctx, "local", host, port, func(ak *AuthorizedKey) []string { return ak.Options.PermitOpen })
}

func (s *Server) allowRemoteForward(ctx glider.Context, host string, port uint32) bool {
	return s.allowForward(ctx, "remote", host, port, func(ak *AuthorizedKey) []string { return ak.Options.PermitListen })
}

func (s *Server) allowForward(ctx glider.Context, kind, host string, port uint32, permits func(*AuthorizedKey) []string) bool {
	st := connStateOf(ctx)
	if st == nil {
		return false
	}
	st.mu.Lock()
	ak := st.key
	st.mu.Unlock()
	ok := s.cfg.AllowTCPForwarding && ak != nil && !ak.Options.NoPortForwarding && forwardPermitted(permits(ak), host, port)
	s.log.Info("port forwarding "+map[bool]string{true: "allowed", false: "refused"}[ok], sd.SSHDForward.Attr(),
		"remote", st.remote, "user", st.userName(), "kind", kind, "target", net.JoinHostPort(host, fmt.Sprint(port)))
	if ok {
		st.touch()
	}
	return ok
}

// forwardPermitted applies permitopen=/permitlisten=: none listed means any.
func forwardPermitted(permits []string, host string, port uint32) bool {
	if len(permits) == 0 {
		return true
	}
	for _, p := range permits {
		ph, pp := "", p
		if i := strings.LastIndexByte(p, ':'); i >= 0 {
			ph, pp = p[:i], p[i+1:]
		}
		ph = strings.TrimSuffix(strings.TrimPrefix(ph, "["), "]")
		if (ph == "" || ph == "*" || strings.EqualFold(ph, host)) && (pp == "*" || pp == fmt.Sprint(port)) {
			return true
		}
	}
	return false
}
