// Package backend runs the FUSE tools that hold the node's encrypted config:
// EncFS (the design's default) and gocryptfs (the recommended choice). Each
// runs as a foreground child of g8-unlock and reads its password on stdin,
// which is closed right after; the password never reaches argv, the
// environment or a file.
package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/fusectl"
)

// Errors a caller acts on; they are wrapped with the tool, directory and
// the tool's own message.
var (
	// ErrWrongKey: the volume does not open with this key (the controller
	// re-keyed the node, or the directory belongs to another node).
	ErrWrongKey = errors.New("key does not open the encrypted directory")
	// ErrCorrupt: the encrypted directory is not a volume of this backend.
	ErrCorrupt = errors.New("encrypted directory is corrupt or not a volume of this backend")
	// ErrBusy: the mountpoint is in use by something that is not ours to
	// replace.
	ErrBusy = errors.New("mountpoint busy")
	// ErrMissingTool: the backend's binary is not installed.
	ErrMissingTool = errors.New("FUSE tool not installed")
)

// Backend is one FUSE encryption tool.
type Backend interface {
	// Name is the --backend value: "encfs" or "gocryptfs".
	Name() string
	// FSType is the mount table's type for its mounts ("fuse.encfs").
	FSType() string
	// ConfigFile is the file inside the encrypted directory that marks a
	// volume of this backend.
	ConfigFile() string
	// Check fails with ErrMissingTool unless the tool can run.
	Check() error
	// Init creates a new volume in the empty directory private.
	Init(ctx context.Context, private string, password []byte) error
	// Mount starts the tool in the foreground, feeds it the password, and
	// returns once private is mounted at mountpoint or the tool has failed.
	Mount(ctx context.Context, private, mountpoint string, password []byte) (*Mount, error)
	// Passwd changes the volume's password from old to new without
	// re-encrypting anything (the tool re-wraps the volume's master key).
	// A wrong old password is ErrWrongKey, and nothing changed.
	Passwd(ctx context.Context, private string, old, new []byte) error
}

// Tools are the binaries the backends run; empty fields are looked up on
// PATH.
type Tools struct {
	EncFS      string
	Gocryptfs  string
	Fusermount string
	// GocryptfsScryptN is the scrypt cost (log2 N) for a new gocryptfs
	// volume; 0 keeps the tool's default. The password is a 256-bit random
	// key, so a slow key derivation adds no strength, only boot time.
	GocryptfsScryptN int
}

// New returns the backend called name.
func New(name string, tools Tools) (Backend, error) {
	switch name {
	case "encfs":
		return &EncFS{Bin: orDefault(tools.EncFS, "encfs"), Fusermount: tools.Fusermount}, nil
	case "gocryptfs":
		return &Gocryptfs{Bin: orDefault(tools.Gocryptfs, "gocryptfs"), ScryptN: tools.GocryptfsScryptN}, nil
	}
	return nil, fmt.Errorf("backend %q: unknown (encfs or gocryptfs)", name)
}

// Names lists the backends New accepts.
func Names() []string { return []string{"encfs", "gocryptfs"} }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func checkTool(bin string) error {
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("%s: %w: %v", bin, ErrMissingTool, err)
	}
	return nil
}

// DirState is what an encrypted directory holds before mounting.
type DirState int

const (
	DirEmpty  DirState = iota // absent or empty: first boot
	DirVolume                 // holds this backend's config file
)

// Inspect tells a first boot (absent or empty private dir) from an
// existing volume of b. Anything else is ErrCorrupt, naming what was found,
// so a mistyped --backend or a half-copied directory is never initialised
// over.
func Inspect(b Backend, private string) (DirState, error) {
	entries, err := os.ReadDir(private)
	if errors.Is(err, fs.ErrNotExist) {
		return DirEmpty, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", private, err)
	}
	if len(entries) == 0 {
		return DirEmpty, nil
	}
	if st, err := os.Stat(private + "/" + b.ConfigFile()); err == nil && st.Mode().IsRegular() {
		return DirVolume, nil
	}
	for _, other := range []string{(&EncFS{}).ConfigFile(), (&Gocryptfs{}).ConfigFile()} {
		if _, err := os.Stat(private + "/" + other); err == nil {
			return 0, fmt.Errorf("%s: %w: it holds %s (another backend), not %s; check --backend", private, ErrCorrupt, other, b.ConfigFile())
		}
	}
	return 0, fmt.Errorf("%s: %w: %d entries but no %s", private, ErrCorrupt, len(entries), b.ConfigFile())
}

// Mount is a running FUSE tool serving one mount: started by this process
// (startFUSE) or adopted from an earlier g8-unlock (Adopt).
type Mount struct {
	Tool       string
	Private    string
	Mountpoint string
	pid        int
	cmd        *exec.Cmd // nil when adopted
	out        *os.File  // the tool's stdout and stderr (a memfd)
	done       chan struct{}
	err        error
	conn       int // FUSE connection id (the mount's device minor), 0 until mounted
}

// PID is the FUSE process's id.
func (m *Mount) PID() int { return m.pid }

// Done is closed when the FUSE process has exited.
func (m *Mount) Done() <-chan struct{} { return m.done }

// Err is why the FUSE process exited (valid after Done), with its last
// words on stderr.
func (m *Mount) Err() error {
	<-m.done
	return m.err
}

// Signal sends sig to the FUSE process.
func (m *Mount) Signal(sig os.Signal) error {
	if m.cmd != nil {
		return m.cmd.Process.Signal(sig)
	}
	return unix.Kill(m.pid, sig.(syscall.Signal))
}

// startFUSE runs a tool in the foreground with answers (the lines a tool
// asks before the password, if any) and password on its stdin (one line,
// then EOF) and waits until mountpoint shows fstype or the tool exits;
// classify turns the tool's exit into ErrWrongKey and friends.
func startFUSE(ctx context.Context, tool, fstype, private, mountpoint string, answers, password []byte, args []string,
	classify func(code int, stderr string) error) (*Mount, error) {
	cmd := exec.Command(tool, args...)
	// The tool outlives g8-unlock on purpose: a restart (or a crash) of
	// g8-unlock leaves the config mounted and the next g8-unlock adopts
	// the tool (Adopt); only a stop unmounts, and the tool then exits on
	// its own. Its output therefore goes to a memfd, not a pipe: a pipe
	// whose reader died would kill it with SIGPIPE on its next message.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := outputFile(tool)
	if err != nil {
		return nil, err
	}
	m := &Mount{Tool: tool, Private: private, Mountpoint: mountpoint, cmd: cmd, out: out, done: make(chan struct{})}
	cmd.Stdout = out
	cmd.Stderr = out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		out.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		out.Close()
		return nil, fmt.Errorf("%s: start: %w", tool, err)
	}
	m.pid = cmd.Process.Pid
	go func() {
		werr := cmd.Wait()
		m.err = exitError(tool, private, werr, lastWords(out), classify)
		out.Close()
		close(m.done)
	}()
	if err := feed(stdin, answers, password); err != nil {
		_ = cmd.Process.Kill()
		<-m.done
		return nil, fmt.Errorf("%s: password pipe: %w", tool, err)
	}
	info, err := waitMounted(ctx, mountpoint, fstype, m.done)
	if info != nil {
		m.conn = info.Minor
	}
	go m.reapStuck()
	select {
	case <-m.done:
		return nil, m.err
	default:
	}
	if err != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-m.done
		return nil, err
	}
	return m, nil
}

// feed writes answers, then password and a newline, to w in one write and
// closes it. The line is built in a buffer of our own that is wiped
// afterwards.
func feed(w io.WriteCloser, answers, password []byte) error {
	line := make([]byte, 0, len(answers)+len(password)+1)
	line = append(append(append(line, answers...), password...), '\n')
	_, err := w.Write(line)
	clear(line)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

func exitError(tool, private string, werr error, stderr string, classify func(int, string) error) error {
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		msg = "no output"
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		code := ee.ExitCode()
		if class := classify(code, stderr); class != nil {
			return fmt.Errorf("%s %s: %w (exit %d: %s)", tool, private, class, code, msg)
		}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("%s %s: killed by signal %v (%s)", tool, private, ws.Signal(), msg)
		}
		return fmt.Errorf("%s %s: exit %d: %s", tool, private, code, msg)
	}
	if werr != nil {
		return fmt.Errorf("%s %s: %w", tool, private, werr)
	}
	return fmt.Errorf("%s %s: exited (%s)", tool, private, msg)
}

// waitMounted polls the mount table until mountpoint carries fstype. The
// FUSE tools give no readiness signal in the foreground, and the poll costs
// little beside their key derivation.
func waitMounted(ctx context.Context, mountpoint, fstype string, exited <-chan struct{}) (*mountinfo.Info, error) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		info, err := MountAt(mountpoint)
		if err != nil {
			return nil, err
		}
		if info != nil && info.FSType == fstype {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s at %s: %w", fstype, mountpoint, ctx.Err())
		case <-exited:
			return nil, nil // the caller reports the exit
		case <-t.C:
		}
	}
}

// reapStuck watches for a FUSE daemon that died with a request to its own
// mount in flight: go-fuse opens a file on the fresh mount right after
// mounting, and a daemon killed then blocks forever in exit flushing that
// file (the thread group leader a zombie, one thread in
// request_wait_answer). Nobody would ever see it exit. Aborting the FUSE
// connection fails the request, the thread exits, and Wait returns.
func (m *Mount) reapStuck() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	zombieSince := time.Time{}
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		if !m.exiting() {
			zombieSince = time.Time{}
			continue
		}
		if zombieSince.IsZero() {
			zombieSince = time.Now()
		} else if time.Since(zombieSince) >= 2*time.Second {
			_ = m.Abort()
		}
	}
}

// exiting reports whether the daemon's main thread has exited while the
// process lingers.
func (m *Mount) exiting() bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(m.pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && (b[i+2] == 'Z' || b[i+2] == 'X')
}

// Abort ends the mount's FUSE connection through fusectl
// (/sys/fs/fuse/connections, mounted by systemd), failing every request
// waiting on the daemon.
func (m *Mount) Abort() error {
	if m.conn == 0 {
		return errors.New("abort: not mounted")
	}
	return fusectl.Abort(m.conn)
}

// AbortAt aborts the FUSE connection of whatever is mounted at mountpoint:
// the way out when its daemon hangs in its own exit (see watch).
func AbortAt(mountpoint string) error {
	info, err := MountAt(mountpoint)
	if err != nil {
		return err
	}
	if info == nil {
		return fmt.Errorf("abort: nothing mounted at %s", mountpoint)
	}
	return fusectl.Abort(info.Minor)
}

// MountAt returns the mount table entry of exactly mountpoint (the top one
// when stacked), or nil.
func MountAt(mountpoint string) (*mountinfo.Info, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mountpoint))
	if err != nil {
		return nil, fmt.Errorf("mount table: %w", err)
	}
	if len(ms) == 0 {
		return nil, nil
	}
	return ms[len(ms)-1], nil
}

// Stale reports whether mountpoint is a FUSE mount whose daemon is gone
// ("transport endpoint is not connected").
func Stale(mountpoint string) bool {
	var st unix.Stat_t
	return errors.Is(unix.Stat(mountpoint, &st), unix.ENOTCONN)
}

// Unmount detaches the FUSE mount at mountpoint with fusermount (the tool
// then exits on its own). A stale mount is detached lazily when a plain
// unmount fails.
func Unmount(fusermount, mountpoint string) error {
	fusermount = orDefault(fusermount, "fusermount3")
	var out []byte
	var err error
	// A process that just closed its last file there may still be on its
	// way out: a busy mount gets a few short retries before it is an error.
	for try := 0; try < 5; try++ {
		if out, err = exec.Command(fusermount, "-u", mountpoint).CombinedOutput(); err == nil {
			return nil
		}
		if !bytes.Contains(out, []byte("busy")) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if Stale(mountpoint) {
		if out2, err2 := exec.Command(fusermount, "-u", "-z", mountpoint).CombinedOutput(); err2 != nil {
			return fmt.Errorf("%s -u -z %s: %v: %s", fusermount, mountpoint, err2, bytes.TrimSpace(out2))
		}
		return nil
	}
	return fmt.Errorf("%s -u %s: %v: %s", fusermount, mountpoint, err, bytes.TrimSpace(out))
}

// passwd changes the password of the volume in private without touching
// its data: the tool rewrites a copy of the volume's config (configFile)
// beside the directory, with the old and new passwords on its stdin, and
// the copy is renamed over the original only once it is complete, so a
// crash leaves either the old config or the new one. run starts the tool
// on the copy's path with the given stdin and returns its exit.
func passwd(private, configFile string, old, new []byte, run func(copyPath string, stdin []byte) error) error {
	orig := filepath.Join(private, configFile)
	b, err := os.ReadFile(orig)
	if err != nil {
		return fmt.Errorf("passwd %s: %w", private, err)
	}
	tmp := filepath.Join(filepath.Dir(private), "."+filepath.Base(private)+".passwd-"+configFile)
	if err := atomicfile.Write(tmp, b, 0o600); err != nil {
		return fmt.Errorf("passwd %s: %w", private, err)
	}
	defer os.Remove(tmp)
	in := make([]byte, 0, len(old)+len(new)+2)
	in = append(append(append(append(in, old...), '\n'), new...), '\n')
	err = run(tmp, in)
	clear(in)
	if err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, orig)
	}
	if err == nil {
		err = syncDir(private)
	}
	if err != nil {
		return fmt.Errorf("passwd %s: %w", private, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// runWithStdin runs a short-lived tool with stdin fed from a pipe (never
// argv or the environment), returning its exit classified by classify.
func runWithStdin(ctx context.Context, tool string, args, env []string, stdin []byte, classify func(int, string) error) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	w, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("%s: start: %w", tool, err)
	}
	_, werr := w.Write(stdin)
	w.Close()
	err = cmd.Wait()
	if err != nil {
		return exitError(tool, args[len(args)-1], err, out.String(), classify)
	}
	if werr != nil {
		return fmt.Errorf("%s: stdin: %w", tool, werr)
	}
	return nil
}
