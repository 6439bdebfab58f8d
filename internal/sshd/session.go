package sshd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	glider "github.com/gliderlabs/ssh"
	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/sd"
)

// Buffer sizes for the data paths. Bulk output (cat, scp -O) dominates, so
// the stdout pipe is enlarged and read in big chunks: fewer wake-ups per
// byte; the SSH layer splits into packets anyway.
const (
	outBufSize  = 256 << 10
	pipeSize    = 1 << 20
	smallBuffer = 32 << 10
)

var (
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, outBufSize); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuffer); return &b }}
)

// SFTPServerArg is the hidden subcommand g8-sshd re-executes itself with to
// serve SFTP as a user other than the daemon's own (see --users).
const SFTPServerArg = "sftp-server"

type ptyRequest struct {
	Term          string
	Cols, Rows    uint32
	Width, Height uint32
	Modes         string
}

type windowChange struct{ Cols, Rows, Width, Height uint32 }

// session is one "session" channel (RFC 4254 section 6): at most one shell,
// exec or subsystem, with optional PTY, environment and signals.
type session struct {
	srv  *Server
	st   *connState
	conn *gossh.ServerConn
	ch   gossh.Channel
	key  *AuthorizedKey
	user string

	mu       sync.Mutex
	started  bool
	clientEv []string
	pty      *ptyRequest
	ptmx     *os.File
	proc     *os.Process
	procDone bool
	agent    bool
	begin    time.Time
}

// handleSession replaces gliderlabs' session handler: it writes PTY output
// verbatim (gliderlabs rewrites newlines, which breaks full-screen
// programs), reports exit-signal, honours the authorized_keys options, and
// forwards signals to the process.
func (s *Server) handleSession(_ *glider.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx glider.Context) {
	st := connStateOf(ctx)
	if st == nil || !st.authed.Load() {
		nc.Reject(gossh.Prohibited, "not authenticated")
		return
	}
	st.mu.Lock()
	key := st.key
	st.mu.Unlock()
	if key == nil {
		nc.Reject(gossh.Prohibited, "no authorized key")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	st.touch()
	sess := &session{srv: s, st: st, conn: conn, ch: ch, key: key, user: conn.User()}
	s.sessMu.Lock()
	s.sessions[sess] = struct{}{}
	s.sessWG.Add(1)
	s.sessMu.Unlock()
	defer func() {
		s.sessMu.Lock()
		delete(s.sessions, sess)
		s.sessMu.Unlock()
		s.sessWG.Done()
	}()
	sess.serve(reqs)
}

func (s *session) serve(reqs <-chan *gossh.Request) {
	var running sync.WaitGroup
	for req := range reqs {
		s.srv.log.Debug("session request", "type", req.Type, "user", s.user, "remote", s.st.remote)
		ok := false
		var run func()
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if gossh.Unmarshal(req.Payload, &kv) == nil && !s.isStarted() &&
				acceptEnv(kv.Name, append(append([]string{}, baseAccept...), s.srv.cfg.AcceptEnv...)) {
				s.clientEv = append(s.clientEv, kv.Name+"="+kv.Value)
				ok = true
			}
		case "pty-req":
			var p ptyRequest
			switch {
			case gossh.Unmarshal(req.Payload, &p) != nil, s.isStarted(), s.pty != nil:
			case s.key.Options.NoPTY:
				s.srv.log.Info("PTY refused by key option", sd.SSHDSessionStarted.Attr(), "user", s.user, "remote", s.st.remote, "key_line", s.key.Line)
			default:
				s.pty, ok = &p, true
			}
		case "window-change":
			var w windowChange
			if gossh.Unmarshal(req.Payload, &w) == nil {
				ok = s.resize(w)
			}
		case "shell", "exec", "subsystem":
			if !s.isStarted() {
				ok, run = s.prepare(req)
			}
		case "signal":
			var sig struct{ Name string }
			if gossh.Unmarshal(req.Payload, &sig) == nil {
				ok = s.signal(sig.Name)
			}
		case "auth-agent-req@openssh.com":
			ok = s.srv.cfg.AllowAgentForwarding && !s.key.Options.NoAgentForwarding && !s.isStarted()
			s.agent = ok
			s.srv.log.Info("agent forwarding "+map[bool]string{true: "allowed", false: "refused"}[ok], sd.SSHDForward.Attr(),
				"user", s.user, "remote", s.st.remote, "kind", "agent")
		case "x11-req":
			s.srv.log.Info("X11 forwarding refused", sd.SSHDForward.Attr(), "user", s.user, "remote", s.st.remote, "kind", "x11")
		}
		if req.WantReply {
			req.Reply(ok, nil)
		}
		if run != nil {
			running.Add(1)
			go func() { defer running.Done(); run() }()
		}
	}
	s.srv.log.Debug("session channel closed", "user", s.user, "remote", s.st.remote)
	// The client closed the channel or the connection is gone: nobody reads
	// the output any more, so hang up on the process as a terminal would.
	s.hangup()
	running.Wait()
}

func (s *session) isStarted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// prepare decides what a shell/exec/subsystem request runs; the returned
// run is started after the request is answered, so the client sees the
// confirmation before any output.
func (s *session) prepare(req *gossh.Request) (bool, func()) {
	var arg struct{ Value string }
	if req.Type != "shell" {
		if err := gossh.Unmarshal(req.Payload, &arg); err != nil {
			return false, nil
		}
	}
	kind, command := req.Type, arg.Value
	var original *string
	if fc := s.key.Options.Command; fc != nil {
		// command= wins over whatever the client asked for, subsystems
		// included, like sshd; the request is passed on for the command to
		// inspect.
		o := command
		if req.Type == "subsystem" {
			o = ""
		}
		original, command, kind = &o, *fc, "exec"
	} else if req.Type == "subsystem" && command != "sftp" {
		s.srv.log.Info("unknown subsystem refused", sd.SSHDSessionStarted.Attr(), "user", s.user, "remote", s.st.remote, "subsystem", command)
		return false, nil
	}
	s.mu.Lock()
	s.started = true
	s.begin = time.Now()
	s.mu.Unlock()
	logKind := kind
	if kind == "subsystem" {
		logKind = command
	}
	s.srv.log.Info("session started", sd.SSHDSessionStarted.Attr(), "user", s.user, "remote", s.st.remote,
		"kind", logKind, "pty", s.pty != nil, "forced", original != nil)
	return true, func() {
		status, sig := s.run(kind, command, original)
		s.finish(status, sig)
	}
}

// run executes the session and returns its exit status, or the name of the
// signal that killed it.
func (s *session) run(kind, command string, original *string) (int, string) {
	acct, err := lookupAccount("/etc/passwd", s.user)
	if err != nil {
		return s.fail(fmt.Errorf("user %s: %w", s.user, err))
	}
	shell := s.shell(acct)
	inProcess := acct.UID == uint32(os.Geteuid())
	if kind == "subsystem" && inProcess {
		return s.serveSFTP(acct), ""
	}

	var authSock string
	if s.agent {
		sock, stop, err := s.forwardAgent(acct)
		if err != nil {
			s.srv.log.Warn("agent forwarding failed", sd.SSHDForward.Attr(), "user", s.user, "error", err.Error())
		} else {
			defer stop()
			authSock = sock
		}
	}
	er := envRequest{
		Account: acct, Shell: shell, Remote: s.conn.RemoteAddr(), Local: s.conn.LocalAddr(),
		ClientEnv: s.clientEv, Accept: s.srv.cfg.AcceptEnv, KeyEnv: s.key.Options.Environment,
		PermitKey: s.srv.cfg.PermitUserEnvironment, Original: original, AuthSock: authSock,
	}
	var cmd *exec.Cmd
	switch kind {
	case "shell":
		// A leading '-' in argv[0] makes it a login shell, as login(1) does.
		cmd = &exec.Cmd{Path: shell, Args: []string{"-" + filepath.Base(shell)}}
	case "subsystem":
		self, err := os.Executable()
		if err != nil {
			return s.fail(fmt.Errorf("sftp: %w", err))
		}
		cmd = &exec.Cmd{Path: self, Args: []string{filepath.Base(self), SFTPServerArg}}
	default:
		cmd = &exec.Cmd{Path: shell, Args: []string{filepath.Base(shell), "-c", command}}
	}
	cmd.Dir = acct.Home
	if fi, err := os.Stat(acct.Home); err != nil || !fi.IsDir() {
		cmd.Dir = "/"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if !inProcess {
		cred := &syscall.Credential{Uid: acct.UID, Gid: acct.GID}
		if u, err := user.LookupId(strconv.Itoa(int(acct.UID))); err == nil {
			if gids, err := u.GroupIds(); err == nil {
				for _, g := range gids {
					if n, err := strconv.ParseUint(g, 10, 32); err == nil {
						cred.Groups = append(cred.Groups, uint32(n))
					}
				}
			}
		}
		cmd.SysProcAttr.Credential = cred
	}
	if s.pty != nil {
		return s.runPTY(cmd, er)
	}
	cmd.Env = sessionEnv(er)
	return s.runPipes(cmd)
}

func (s *session) shell(acct Account) string {
	for _, sh := range []string{s.srv.cfg.Shell, acct.Shell, "/bin/sh"} {
		if sh == "" {
			continue
		}
		if fi, err := os.Stat(sh); err == nil && !fi.IsDir() {
			return sh
		}
		s.srv.log.Warn("shell not found; trying the next", sd.SSHDSessionStarted.Attr(), "user", s.user, "shell", sh)
	}
	return "/bin/sh"
}

// fail reports a session that could not start the way sshd does: a message
// on stderr and a status the shell would give.
func (s *session) fail(err error) (int, string) {
	s.srv.log.Warn("session failed", sd.SSHDSessionEnded.Attr(), "user", s.user, "remote", s.st.remote, "error", err.Error())
	fmt.Fprintf(s.ch.Stderr(), "g8-sshd: %v\r\n", err)
	return 127, ""
}

// runPipes runs a command without a terminal: stdout and stderr stay
// separate, and the client's EOF closes the command's stdin.
func (s *session) runPipes(cmd *exec.Cmd) (int, string) {
	// A session of its own, as sshd does: no controlling terminal (nothing
	// can prompt on the daemon's), and a process group that signals and
	// the hang-up reach as a whole.
	cmd.SysProcAttr.Setsid = true
	inR, inW, err := os.Pipe()
	if err != nil {
		return s.fail(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return s.fail(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return s.fail(err)
	}
	growPipe(outW)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	err = cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return s.fail(fmt.Errorf("start %s: %w", cmd.Path, err))
	}
	s.setProc(cmd.Process)

	go func() {
		bp := smallBufs.Get().(*[]byte)
		defer smallBufs.Put(bp)
		s.pump(inW, s.ch, *bp)
		inW.Close() // the client's EOF becomes the command's
	}()
	var out sync.WaitGroup
	out.Add(2)
	go func() {
		defer out.Done()
		bp := bigBufs.Get().(*[]byte)
		defer bigBufs.Put(bp)
		s.pump(s.ch, outR, *bp)
		outR.Close()
	}()
	go func() {
		defer out.Done()
		bp := smallBufs.Get().(*[]byte)
		defer smallBufs.Put(bp)
		s.pump(s.ch.Stderr(), errR, *bp)
		errR.Close()
	}()
	// Like sshd, the session ends when the command has exited and its
	// output is drained, so nothing written last is lost.
	out.Wait()
	werr := cmd.Wait()
	s.markDone()
	return exitOf(cmd.ProcessState, werr)
}

// runPTY runs the shell or command on a new terminal whose size follows the
// client's window.
func (s *session) runPTY(cmd *exec.Cmd, er envRequest) (int, string) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return s.fail(fmt.Errorf("pty: %w", err))
	}
	s.mu.Lock()
	req := *s.pty // window-change requests update s.pty concurrently
	s.mu.Unlock()
	if err := setTermModes(tty, []byte(req.Modes)); err != nil {
		s.srv.log.Debug("terminal modes not applied", "error", err.Error())
	}
	_ = pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(req.Rows), Cols: uint16(req.Cols), X: uint16(req.Width), Y: uint16(req.Height)})
	er.Term, er.TTY = req.Term, tty.Name()
	cmd.Env = sessionEnv(er)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setctty = true
	cmd.SysProcAttr.Ctty = 0
	err = cmd.Start()
	tty.Close()
	if err != nil {
		ptmx.Close()
		return s.fail(fmt.Errorf("start %s: %w", cmd.Path, err))
	}
	if u := cmd.SysProcAttr.Credential; u != nil {
		_ = os.Chown(er.TTY, int(u.Uid), int(u.Gid))
	}
	s.mu.Lock()
	s.ptmx = ptmx
	// A resize that came while the shell was starting.
	_ = pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(s.pty.Rows), Cols: uint16(s.pty.Cols), X: uint16(s.pty.Width), Y: uint16(s.pty.Height)})
	s.mu.Unlock()
	s.setProc(cmd.Process)

	go func() {
		bp := smallBufs.Get().(*[]byte)
		defer smallBufs.Put(bp)
		// A terminal has no half-close, so the client's EOF is not passed on.
		s.pump(ptmx, s.ch, *bp)
	}()
	var exited atomic.Bool
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		bp := bigBufs.Get().(*[]byte)
		defer bigBufs.Put(bp)
		buf := *bp
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				s.st.touch()
				if _, werr := s.ch.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return // EIO: every holder of the terminal is gone
			}
			if exited.Load() {
				_ = ptmx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			}
		}
	}()
	werr := cmd.Wait()
	s.markDone()
	// Drain what the shell wrote last, but do not wait for background jobs
	// that keep the terminal open: the session ends with its shell.
	exited.Store(true)
	_ = ptmx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	<-outDone
	s.mu.Lock()
	ptmx.Close()
	s.ptmx = nil
	s.mu.Unlock()
	return exitOf(cmd.ProcessState, werr)
}

func exitOf(ps *os.ProcessState, err error) (int, string) {
	if ps == nil {
		return 255, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
	}
	return ps.ExitCode(), ""
}

// serveSFTP serves the SFTP subsystem in-process; scp uses it too since
// OpenSSH 9.0.
func (s *session) serveSFTP(acct Account) int {
	dir := acct.Home
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = "/"
	}
	srv, err := newSFTPServer(activityRW{s.ch, s.st}, sftp.WithServerWorkingDirectory(dir))
	if err != nil {
		code, _ := s.fail(fmt.Errorf("sftp: %w", err))
		return code
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		s.srv.log.Info("sftp ended with an error", sd.SSHDSessionEnded.Attr(), "user", s.user, "remote", s.st.remote, "error", err.Error())
		return 1
	}
	return 0
}

// ServeSFTP serves SFTP on stdin/stdout in the current directory; it is
// what `g8-sshd sftp-server` runs as a non-root user.
func ServeSFTP() error {
	srv, err := newSFTPServer(stdio{})
	if err != nil {
		return err
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

type stdio struct{}

func (stdio) Read(p []byte) (int, error)  { return os.Stdin.Read(p) }
func (stdio) Write(p []byte) (int, error) { return os.Stdout.Write(p) }
func (stdio) Close() error                { return os.Stdout.Close() }

// activityRW counts SFTP traffic as activity for the idle timeout.
type activityRW struct {
	ch gossh.Channel
	st *connState
}

func (a activityRW) Read(p []byte) (int, error) {
	n, err := a.ch.Read(p)
	if n > 0 {
		a.st.touch()
	}
	return n, err
}

func (a activityRW) Write(p []byte) (int, error) {
	a.st.touch()
	return a.ch.Write(p)
}

func (a activityRW) Close() error { return a.ch.Close() }

// pump copies src to dst with buf, marking the connection active. It does
// not use io.Copy: *os.File's WriteTo/ReadFrom would fall back to their own
// 32 KiB buffers.
func (s *session) pump(dst io.Writer, src io.Reader, buf []byte) {
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.st.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
	}
}

func (s *session) setProc(p *os.Process) {
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

func (s *session) markDone() {
	s.mu.Lock()
	s.procDone = true
	s.mu.Unlock()
}

// kill signals the session's process group (a PTY session's shell leads
// its own session and group, and so does an exec).
func (s *session) kill(sig syscall.Signal) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.procDone {
		return false
	}
	return syscall.Kill(-s.proc.Pid, sig) == nil
}

// signal delivers a client's "signal" request (RFC 4254 section 6.9).
func (s *session) signal(name string) bool {
	sig := unix.SignalNum("SIG" + name)
	if sig == 0 {
		return false
	}
	return s.kill(sig)
}

func (s *session) hangup() {
	s.mu.Lock()
	ptmx := s.ptmx
	s.mu.Unlock()
	if s.kill(syscall.SIGHUP) && ptmx != nil {
		_ = ptmx.SetReadDeadline(time.Now())
	}
}

func (s *session) resize(w windowChange) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pty == nil {
		return false
	}
	s.pty.Cols, s.pty.Rows, s.pty.Width, s.pty.Height = w.Cols, w.Rows, w.Width, w.Height
	if s.ptmx != nil {
		// The kernel sends SIGWINCH to the terminal's foreground group.
		_ = pty.Setsize(s.ptmx, &pty.Winsize{Rows: uint16(w.Rows), Cols: uint16(w.Cols), X: uint16(w.Width), Y: uint16(w.Height)})
	}
	return true
}

// finish reports how the session ended (exit-status or exit-signal, RFC
// 4254 section 6.10) and closes the channel.
func (s *session) finish(status int, sig string) {
	_ = s.ch.CloseWrite()
	if sig != "" {
		msg := struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: sig}
		_, _ = s.ch.SendRequest("exit-signal", false, gossh.Marshal(&msg))
	} else {
		_, _ = s.ch.SendRequest("exit-status", false, gossh.Marshal(&struct{ Status uint32 }{uint32(status)}))
	}
	_ = s.ch.Close()
	attrs := []any{sd.SSHDSessionEnded.Attr(), "user", s.user, "remote", s.st.remote, "duration", time.Since(s.begin).Round(time.Millisecond).String()}
	if sig != "" {
		attrs = append(attrs, "signal", sig)
	} else {
		attrs = append(attrs, "exit_status", status)
	}
	s.srv.log.Info("session ended", attrs...)
}

// forwardAgent makes a socket for SSH_AUTH_SOCK whose connections are
// relayed to the client's agent over auth-agent@openssh.com channels.
func (s *session) forwardAgent(acct Account) (string, func(), error) {
	dir, err := os.MkdirTemp("", "g8-sshd-agent-")
	if err != nil {
		return "", nil, err
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	_ = os.Chown(dir, int(acct.UID), int(acct.GID))
	_ = os.Chown(sock, int(acct.UID), int(acct.GID))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ch, reqs, err := s.conn.OpenChannel("auth-agent@openssh.com", nil)
				if err != nil {
					return
				}
				go gossh.DiscardRequests(reqs)
				defer ch.Close()
				go func() { _, _ = io.Copy(ch, c); _ = ch.CloseWrite() }()
				_, _ = io.Copy(c, ch)
			}()
		}
	}()
	return sock, func() { ln.Close(); os.RemoveAll(dir) }, nil
}
