// Package testenv builds the real environments the integration and
// end-to-end tests run in: network namespaces joined by veth links (and
// bridges for shared segments), the project's binaries, and background
// processes that are always cleaned up, also when a test fails.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireRoot skips t with a clear message unless running as root with the
// tools the netns tests need. CI runs as root, so there these tests run.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, FUSE, mounts); CI runs it as root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run `make deps`", tool)
		}
	}
}

// Topology is a set of network namespaces owned by one test. Names carry a
// random tag so parallel runs never collide.
type Topology struct {
	t     testing.TB
	tag   string
	mu    sync.Mutex
	hosts []*Host
	links int
}

// NewTopology starts an empty topology, deleted when the test ends.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tp := &Topology{t: t, tag: "g8t" + hex.EncodeToString(b)}
	t.Cleanup(tp.destroy)
	return tp
}

// Tag is the topology's unique name prefix.
func (tp *Topology) Tag() string { return tp.tag }

func (tp *Topology) destroy() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for i := len(tp.hosts) - 1; i >= 0; i-- {
		h := tp.hosts[i]
		h.stopAll()
		// Deleting the namespace deletes the veth ends inside it, and with
		// them their peers.
		if out, err := exec.Command("ip", "netns", "delete", h.NS).CombinedOutput(); err != nil {
			tp.t.Logf("cleanup: ip netns delete %s: %v: %s", h.NS, err, out)
		}
	}
	tp.hosts = nil
}

// Host is one network namespace.
type Host struct {
	tp    *Topology
	Name  string // short name given by the test
	NS    string // namespace name (/run/netns/NS)
	mu    sync.Mutex
	procs []*Process
}

// Host creates a namespace with loopback up.
func (tp *Topology) Host(name string) *Host {
	tp.t.Helper()
	h := &Host{tp: tp, Name: name, NS: tp.tag + "-" + name}
	tp.must("ip", "netns", "add", h.NS)
	tp.mu.Lock()
	tp.hosts = append(tp.hosts, h)
	tp.mu.Unlock()
	h.MustRun("ip", "link", "set", "lo", "up")
	return h
}

// Link joins a's interface aIf and b's interface bIf with a veth pair, both
// ends up, no addresses.
func (tp *Topology) Link(a *Host, aIf string, b *Host, bIf string) {
	tp.t.Helper()
	tp.mu.Lock()
	tp.links++
	n := tp.links
	tp.mu.Unlock()
	// Temporary names in the root namespace are unique and short (IFNAMSIZ).
	ta, tb := fmt.Sprintf("%sa%d", tp.tag, n), fmt.Sprintf("%sb%d", tp.tag, n)
	tp.must("ip", "link", "add", ta, "type", "veth", "peer", "name", tb)
	tp.must("ip", "link", "set", ta, "netns", a.NS)
	tp.must("ip", "link", "set", tb, "netns", b.NS)
	a.MustRun("ip", "link", "set", ta, "name", aIf)
	b.MustRun("ip", "link", "set", tb, "name", bIf)
	a.MustRun("ip", "link", "set", aIf, "up")
	b.MustRun("ip", "link", "set", bIf, "up")
}

// Bridge makes a bridge named br in h and enslaves the given interfaces of
// h, so several hosts linked to h share one L2 segment.
func (h *Host) Bridge(br string, ifaces ...string) {
	h.tp.t.Helper()
	h.MustRun("ip", "link", "add", br, "type", "bridge")
	h.MustRun("ip", "link", "set", br, "up")
	for _, i := range ifaces {
		h.MustRun("ip", "link", "set", i, "master", br)
	}
}

// Addr adds cidr to ifname.
func (h *Host) Addr(ifname, cidr string) { h.MustRun("ip", "addr", "add", cidr, "dev", ifname) }

// MAC returns an interface's hardware address.
func (h *Host) MAC(ifname string) string {
	out := h.MustOutput("cat", "/sys/class/net/"+ifname+"/address")
	return strings.TrimSpace(out)
}

// Command returns cmd to run inside the namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (h *Host) Run(name string, args ...string) (string, error) {
	out, err := h.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), h.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (h *Host) MustRun(name string, args ...string) {
	h.tp.t.Helper()
	if _, err := h.Run(name, args...); err != nil {
		h.tp.t.Fatal(err)
	}
}

// MustOutput is Run that fails the test on error and returns stdout+stderr.
func (h *Host) MustOutput(name string, args ...string) string {
	h.tp.t.Helper()
	out, err := h.Run(name, args...)
	if err != nil {
		h.tp.t.Fatal(err)
	}
	return out
}

func (tp *Topology) must(name string, args ...string) {
	tp.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tp.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Process is a background command; its output is kept and logged when the
// test fails.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	out  *outputFile
	done chan struct{}
	err  error
}

// Start runs a command in the namespace in the background. It is stopped
// (SIGTERM to its process group, then SIGKILL after 5 s) when the test ends.
func (h *Host) Start(name string, args ...string) *Process {
	h.tp.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	return h.start(cmd, name)
}

// StartCmd starts a prepared command; cmd.Path must already run inside the
// namespace (see Command).
func (h *Host) StartCmd(cmd *exec.Cmd, label string) *Process { return h.start(cmd, label) }

func (h *Host) start(cmd *exec.Cmd, label string) *Process {
	t := h.tp.t
	t.Helper()
	p := &Process{Name: h.Name + "/" + label, Cmd: cmd, out: newOutputFile(t), done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out.f
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out.f
	}
	// Own process group, so Stop reaches children that outlive the command
	// and hold its output pipe open.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.Name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", p.Name, p.Output())
		}
	})
	return p
}

func (h *Host) stopAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.procs {
		p.Stop()
	}
}

// Output is everything the process wrote so far.
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (valid after Done).
func (p *Process) Err() error { <-p.done; return p.err }

// Signal sends sig to the process (ip netns exec execs the command, so the
// pid is the command's own).
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Stop terminates the process and waits for it.
func (p *Process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	pgid := -p.Cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-p.done
	}
}

// WaitOutput waits until the process's output contains s.
func (p *Process) WaitOutput(t testing.TB, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), s) {
			return
		}
		select {
		case <-p.done:
			if strings.Contains(p.Output(), s) {
				return
			}
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.Name, p.err, s, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %q within %v:\n%s", p.Name, s, timeout, p.Output())
}

// outputFile is where a background process writes: a file it writes
// itself, not a pipe a goroutine copies from, so that whatever it wrote
// before telling the test something else (READY=1 on the notify socket, an
// answer over the network) is there when the test reads it. Through a
// pipe, a log line written before READY=1 could still be unread when a
// loaded machine ran the test first.
type outputFile struct{ f *os.File }

func newOutputFile(t testing.TB) *outputFile {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "output-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &outputFile{f: f}
}

func (o *outputFile) String() string {
	b, _ := os.ReadFile(o.f.Name())
	return string(b)
}

// SyncBuffer collects a process's output while a test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
