package sshd

// One process per connection, as OpenSSH does: the listener accepts, applies
// the pre-auth limits and re-executes its own binary with the connection's
// descriptor. A restart or an upgrade of g8-sshd then ends only the
// listener; every open connection keeps its own process (under the unit's
// KillMode=process), and only a stop ends them, after the grace.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/g8os/boot/internal/sd"
)

// ConnectionArg is the hidden subcommand a connection process runs as:
// `g8-sshd connection ADDR` (the address only shows who it serves in ps).
const ConnectionArg = "connection"

// Descriptors a connection process inherits: the TCP connection, and a
// socket to the listener that brings the configuration and takes back the
// news that the client logged in (which frees its --max-startups slot).
const (
	connFD    = 3
	controlFD = 4
)

// maxHandoff bounds what a connection process reads from its listener.
const maxHandoff = maxAuthorizedKeysSize + 64<<10

// handoff is what the listener tells a connection process.
type handoff struct {
	Config Config `json:"config"`
	// AuthorizedKeys is the authorized_keys the listener last loaded, so a
	// connection sees the same keys as the listener reports (and a file
	// unreadable for a moment on the FUSE mount does not lock anyone out).
	AuthorizedKeys []byte `json:"authorized_keys"`
	KeysFile       string `json:"keys_file"`
	KeysPresent    bool   `json:"keys_present"`
}

// authedLine is what a connection process writes once its client logged in.
const authedLine = "authenticated\n"

// StopSessions is --stop-sessions: what SIGTERM does to open connections.
type StopSessions string

const (
	StopSessionsAuto   StopSessions = "auto"   // end them only when systemd stops the unit (not on restart)
	StopSessionsAlways StopSessions = "always" // every SIGTERM ends them after the grace
	StopSessionsNever  StopSessions = "never"  // SIGTERM only ever ends the listener
)

// restartJobs are the systemd job types during which the listener stops only
// to come back: the connections must outlive it.
var restartJobs = map[string]bool{"restart": true, "try-restart": true, "reload-or-restart": true, "reload-or-try-restart": true}

// endSessionsOnTerm decides what a SIGTERM does to open connections, from
// --stop-sessions and the job systemd runs on the unit ("" when none, e.g.
// a kill by hand or an upgrade script; jobErr when systemd could not be
// asked). Only a stop job ends sessions in auto mode: a connection cut by
// mistake is worse than one left running, which `systemctl stop` ends.
func endSessionsOnTerm(mode StopSessions, job string, jobErr error) (bool, string) {
	switch mode {
	case StopSessionsAlways:
		return true, "--stop-sessions=always"
	case StopSessionsNever:
		return false, "--stop-sessions=never"
	}
	switch {
	case jobErr != nil:
		return false, "cannot ask systemd for the unit's job (" + jobErr.Error() + "): keeping sessions"
	case job == "stop":
		return true, "systemd is stopping the unit"
	case restartJobs[job]:
		return false, "systemd is restarting the unit"
	case job == "":
		return false, "no systemd stop job (a restart by hand or an upgrade)"
	default:
		return false, "systemd job " + job + ": keeping sessions"
	}
}

// ParseStopSessions reads --stop-sessions.
func ParseStopSessions(v string) (StopSessions, error) {
	switch m := StopSessions(v); m {
	case StopSessionsAuto, StopSessionsAlways, StopSessionsNever:
		return m, nil
	}
	return "", fmt.Errorf("stop-sessions %q: want auto, always or never", v)
}

// unitJob asks systemd which job runs on the unit this process belongs to.
// Outside a systemd service it returns "" and no error.
func unitJob(ctx context.Context) (string, error) {
	if os.Getenv("INVOCATION_ID") == "" {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, job, err := sd.UnitJob(ctx)
	return job, err
}

// dispatch hands an admitted connection to a new connection process. The
// listener keeps the --max-startups slot until that process says the
// client logged in, or ends.
func (s *Server) dispatch(c net.Conn, st *connState) {
	release := func() { s.releaseUnauth(st) }
	fail := func(err error) {
		s.log.Error("connection not served: cannot start its process", sd.SSHDConnDropped.Attr(), "remote", st.remote, "error", err.Error())
		c.Close()
		release()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		fail(fmt.Errorf("not a TCP connection (%T)", c))
		return
	}
	_ = tc.SetKeepAlive(true)
	_ = tc.SetKeepAlivePeriod(30 * time.Second)
	connFile, err := tc.File()
	c.Close() // the process has its own descriptor now
	if err != nil {
		fail(err)
		return
	}
	defer connFile.Close()
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(fmt.Errorf("socketpair: %w", err))
		return
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "control"), os.NewFile(uintptr(pair[1]), "control-child")
	defer theirs.Close()
	cmd := exec.Command(s.exe, ConnectionArg, st.remote)
	cmd.Args[0] = filepath.Base(s.exe)
	cmd.ExtraFiles = []*os.File{connFile, theirs} // fds 3 and 4
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = childEnv(os.Environ())
	if err := cmd.Start(); err != nil {
		ours.Close()
		fail(err)
		return
	}
	s.childMu.Lock()
	s.children[cmd.Process.Pid] = cmd.Process
	s.childMu.Unlock()
	s.childWG.Add(1)
	go func() {
		defer s.childWG.Done()
		defer ours.Close()
		s.keysMu.Lock()
		h := handoff{Config: s.cfg, AuthorizedKeys: s.keysRaw, KeysFile: s.cfg.AuthorizedKeysPath(), KeysPresent: s.keysPresent}
		s.keysMu.Unlock()
		if err := json.NewEncoder(ours).Encode(&h); err != nil {
			s.log.Warn("connection process did not take its configuration", sd.SSHDConnDropped.Attr(), "remote", st.remote, "pid", cmd.Process.Pid, "error", err.Error())
		}
		// Nothing but the login news comes back; EOF when the process ends.
		br := bufio.NewReader(io.LimitReader(ours, 1024))
		if line, err := br.ReadString('\n'); err == nil && line == authedLine {
			release()
		}
		_, _ = io.Copy(io.Discard, br)
		release()
		_ = cmd.Wait()
		s.childMu.Lock()
		delete(s.children, cmd.Process.Pid)
		s.childMu.Unlock()
	}()
}

// childEnv is the listener's environment without what belongs to the main
// process alone: systemd's notify socket and watchdog, socket activation.
func childEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// connectionProcesses lists the connection processes to end on a stop: the
// listener's own children, and under systemd every connection process in
// the unit's cgroup (those of listeners before a restart too).
func (s *Server) connectionProcesses() []int {
	seen := map[int]bool{}
	var pids []int
	s.childMu.Lock()
	for pid := range s.children {
		seen[pid] = true
		pids = append(pids, pid)
	}
	s.childMu.Unlock()
	if os.Getenv("INVOCATION_ID") == "" {
		return pids // not a unit: the cgroup is not ours alone
	}
	procs, err := unitProcs()
	if err != nil {
		s.log.Warn("cannot list the unit's processes: connections of earlier listeners keep running", sd.PhaseStopping.Attr(), "error", err.Error())
		return pids
	}
	self := os.Getpid()
	for _, pid := range procs {
		if pid == self || seen[pid] {
			continue
		}
		if isConnectionProcess(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unitProcs lists the processes of this process's cgroup in the unified
// (v2) hierarchy: the "0::" line of /proc/self/cgroup, under wherever
// cgroup2 is mounted — /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
// hybrid system, where the v1 controllers hold /sys/fs/cgroup.
func unitProcs() ([]int, error) {
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	path := ""
	for _, l := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			path = p
		}
	}
	if path == "" {
		return nil, errors.New("no cgroup v2 line in /proc/self/cgroup")
	}
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup2"))
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		b, err := os.ReadFile(filepath.Join(m.Mountpoint, path, "cgroup.procs"))
		if err != nil {
			continue
		}
		var pids []int
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids, nil
	}
	return nil, fmt.Errorf("cgroup %s: no cgroup.procs under any cgroup2 mount (%d mounts)", path, len(mounts))
}

func isConnectionProcess(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := bytes.Split(b, []byte{0})
	return len(args) >= 2 && strings.HasPrefix(filepath.Base(string(args[0])), "g8-sshd") && string(args[1]) == ConnectionArg
}

// endConnections asks every connection process to end within the grace
// (each lets its sessions finish, then hangs up) and kills those still
// there after it.
func (s *Server) endConnections() {
	pids := s.connectionProcesses()
	s.log.Info("stopping: sessions may finish", sd.PhaseStopping.Attr(), "grace", s.cfg.ShutdownGrace.String(), "connections", len(pids))
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { s.childWG.Wait(); close(done) }()
	deadline := time.Now().Add(s.cfg.ShutdownGrace + 3*time.Second)
	for time.Now().Before(deadline) {
		alive := 0
		for _, pid := range pids {
			if isConnectionProcess(pid) {
				alive++
			}
		}
		if alive == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range pids {
		if isConnectionProcess(pid) {
			s.log.Warn("connection process still there after the grace: killed", sd.PhaseStopping.Attr(), "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
}

// ServeConnection is a connection process: it serves the one connection
// it inherited until the client leaves, and on SIGTERM (a stop of the
// unit) lets its sessions finish within the grace.
// newLog makes the logger once the listener's --debug is known.
func ServeConnection(newLog func(debug bool) *slog.Logger) error {
	tuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A hang-up of the listener's terminal is not ours, and a log whose
	// reader went away (the listener's stderr pipe outside systemd) must
	// not kill the connection. Caught, not ignored: an ignored signal
	// would stay ignored in the sessions' commands.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP, syscall.SIGPIPE)
	f := os.NewFile(connFD, "connection")
	ctl := os.NewFile(controlFD, "control")
	if f == nil || ctl == nil {
		return errors.New("connection: no inherited descriptors (g8-sshd runs this itself)")
	}
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("connection: fd %d: %w", connFD, err)
	}
	var h handoff
	if err := json.NewDecoder(io.LimitReader(ctl, maxHandoff)).Decode(&h); err != nil {
		conn.Close()
		return fmt.Errorf("connection: configuration from the listener: %w", err)
	}
	log := newLog(h.Config.Debug)
	h.Config.Startups = Startups{} // the listener admitted it
	s, err := newConnServer(h, log)
	if err != nil {
		conn.Close()
		return err
	}
	s.onAuthed = func() { _, _ = ctl.Write([]byte(authedLine)) }
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.srv.HandleConn(conn)
	}()
	select {
	case <-served:
	case <-ctx.Done():
		s.shutdown()
		<-served
	}
	// The sessions' last output and exit statuses are on their way.
	waitTimeout(&s.sessWG, 3*time.Second)
	return nil
}

// Garbage collection of a connection process. x/crypto copies every SSH
// packet it receives into a new slice (up to 32 KiB), so an upload
// allocates as many bytes as it moves while the live heap stays at 1-4
// MiB: at the default GOGC=100 the process collected about 100 times per
// 256 MiB uploaded. A fivefold heap goal collects a fifth as often; the
// soft limit keeps a busy connection's heap bounded all the same. GOGC or
// GOMEMLIMIT in the environment win.
const (
	connGCPercent   = 400
	connMemoryLimit = 48 << 20
)

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(connGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(connMemoryLimit)
	}
}

func waitTimeout(wg interface{ Wait() }, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// newConnServer builds the server of one connection: host keys read from
// the ssh dir (quietly: the listener reported them), authorized_keys as the
// listener handed them over.
func newConnServer(h handoff, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: h.Config, log: log, notify: &sd.Notifier{}, sessions: map[*session]struct{}{}, perSource: map[string]int{}}
	hostKeys, _, err := LoadHostKeys(s.cfg.SSHDir)
	if err != nil {
		return nil, fmt.Errorf("connection: %w", err)
	}
	ks := &KeySet{File: h.KeysFile}
	if h.KeysPresent {
		if ks, err = ParseAuthorizedKeys(bytes.NewReader(h.AuthorizedKeys), h.KeysFile); err != nil {
			return nil, fmt.Errorf("connection: %w", err)
		}
	}
	s.keys.Store(ks)
	s.srv = s.newGliderServer(hostKeys)
	return s, nil
}
