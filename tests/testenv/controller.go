package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// ControllerOptions configure StartController. Every field is optional.
type ControllerOptions struct {
	// Names go to `g8-ac init --name`: the host names and IP addresses the
	// server certificate is valid for. The first one is used in URL when a
	// listen address is unspecified (0.0.0.0). Default: 127.0.0.1 and
	// localhost without a host, 10.254.254.254 (the fallback AC address)
	// with one.
	Names []string
	// Listen goes to `g8-ac serve --listen`, one per entry. Default:
	// 127.0.0.1:0 (a free port) without a host, 0.0.0.0:8443 with one.
	Listen []string
	// Args are extra `g8-ac serve` flags, e.g. {"--retry-after", "1s"}.
	// The fixture passes --retry-after 1s unless Args sets it.
	Args []string
	// Database, when set, is a postgres:// URL given to `g8-ac init
	// --database`: the store is that database (pgtest.Server.NewDatabase)
	// instead of DIR/ac.db, for every command and every Peer.
	Database string
}

// Controller is a real g8-ac, initialized in a fresh data directory and
// serving; it is stopped when the test ends.
//
//	ac := testenv.StartController(t, acHost, testenv.ControllerOptions{})
//	id := ac.ApproveMAC(t, node.MAC("eth0"))
//	// copy ac.TrustAnchor to the node's /etc/g8os/ac-ca.pem, use ac.URL ...
//	out := ac.CLI(t, "node", "list")
//
// With host == nil it runs on this machine's loopback (no namespace, no
// root needed), for unit-level integration tests; with a host it runs
// inside that host's network namespace via host.Start.
type Controller struct {
	URL         string   // https URL of the first listener, e.g. https://10.254.254.254:8443
	URLs        []string // one per listener
	DataDir     string   // g8-ac --data
	TrustAnchor string   // file holding the server CA PEM (a node's /etc/g8os/ac-ca.pem)
	AdminToken  string   // file holding the admin bearer token (mode 0600)
	Bin         string   // the g8-ac binary
	Names       []string

	host   *Host
	listen []string // resolved host:port, so Restart keeps the ports
	args   []string
	proc   *Process
}

var listenLine = regexp.MustCompile(`msg=listening .*addr=(\S+)`)

// StartController runs `g8-ac init` and `g8-ac serve` and waits until the
// controller serves. host may be nil (loopback, see Controller).
func StartController(t testing.TB, host *Host, opts ControllerOptions) *Controller {
	t.Helper()
	c := &Controller{Bin: Bin(t, "g8-ac"), host: host, Names: opts.Names, listen: opts.Listen}
	if len(c.Names) == 0 {
		if host == nil {
			c.Names = []string{"127.0.0.1", "localhost"}
		} else {
			c.Names = []string{"10.254.254.254"}
		}
	}
	if len(c.listen) == 0 {
		if host == nil {
			c.listen = []string{"127.0.0.1:0"}
		} else {
			c.listen = []string{"0.0.0.0:8443"}
		}
	}
	c.args = opts.Args
	if !containsFlag(c.args, "--retry-after") {
		c.args = append(c.args, "--retry-after", "1s")
	}
	c.DataDir = filepath.Join(t.TempDir(), "ac")
	c.AdminToken = filepath.Join(c.DataDir, "admin.token")
	initArgs := []string{"init", "--name", strings.Join(c.Names, ",")}
	if opts.Database != "" {
		initArgs = append(initArgs, "--database", opts.Database)
	}
	c.CLI(t, initArgs...)
	ca := c.CLI(t, "ca")
	c.TrustAnchor = filepath.Join(filepath.Dir(c.DataDir), "ac-ca.pem")
	if err := os.WriteFile(c.TrustAnchor, []byte(ca), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	return c
}

func containsFlag(args []string, f string) bool {
	for _, a := range args {
		if a == f || strings.HasPrefix(a, f+"=") {
			return true
		}
	}
	return false
}

func (c *Controller) start(t testing.TB) {
	t.Helper()
	args := []string{"serve", "--data", c.DataDir}
	for _, l := range c.listen {
		args = append(args, "--listen", l)
	}
	args = append(args, c.args...)
	if c.host != nil {
		c.proc = c.host.Start(c.Bin, args...)
	} else {
		c.proc = startLocal(t, exec.Command(c.Bin, args...), "g8-ac")
	}
	c.proc.WaitOutput(t, "msg=serving", 20*time.Second)
	var bound []string
	for _, m := range listenLine.FindAllStringSubmatch(c.proc.Output(), -1) {
		bound = append(bound, m[1])
	}
	if len(bound) != len(c.listen) {
		t.Fatalf("g8-ac reported %d listeners for %d --listen:\n%s", len(bound), len(c.listen), c.proc.Output())
	}
	c.listen = bound
	c.URLs = nil
	for _, a := range bound {
		h, p, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(h); ip == nil || ip.IsUnspecified() {
			h = c.Names[0]
		}
		c.URLs = append(c.URLs, "https://"+net.JoinHostPort(h, p))
	}
	c.URL = c.URLs[0]
	if c.host == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Client(t, nil).Health(ctx); err != nil {
			t.Fatalf("g8-ac serves but health fails: %v\n%s", err, c.proc.Output())
		}
	}
}

// Process is the running `g8-ac serve` (its Output is the server log).
func (c *Controller) Process() *Process { return c.proc }

// Stop stops the server with SIGTERM (SIGKILL after 5 s).
func (c *Controller) Stop() { c.proc.Stop() }

// Restart stops the server and starts it again on the same data directory
// and the same addresses (also when the first start picked a free port).
func (c *Controller) Restart(t testing.TB) {
	t.Helper()
	c.Stop()
	c.start(t)
}

// Kill ends the server with SIGKILL, as a crash or a power cut would: no
// STOPPING, no answer to open long-polls, connections reset.
func (c *Controller) Kill(t testing.TB) {
	t.Helper()
	if err := c.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill g8-ac %s: %v", c.URL, err)
	}
	<-c.proc.Done()
}

// Peer starts another `g8-ac serve` on c's store and certificates (the same
// data directory), on host (nil: loopback) listening on listen: one more
// controller of the same fleet, all of them active. Names of c's server
// certificate must cover the peer's addresses.
func (c *Controller) Peer(t testing.TB, host *Host, listen ...string) *Controller {
	t.Helper()
	p := &Controller{Bin: c.Bin, host: host, Names: c.Names, listen: listen, args: c.args,
		DataDir: c.DataDir, TrustAnchor: c.TrustAnchor, AdminToken: c.AdminToken}
	if len(p.listen) == 0 {
		p.listen = []string{"127.0.0.1:0"}
	}
	p.start(t)
	return p
}

// cliArgs puts --data right after the command words, so it never lands in
// a positional tail such as `job exec NODE -- argv...`.
func (c *Controller) cliArgs(args []string) []string {
	n := 1
	if len(args) > 1 {
		switch args[0] {
		case "node", "ssh-key", "config", "job":
			n = 2
		}
	}
	if len(args) < n {
		n = len(args)
	}
	out := append([]string{}, args[:n]...)
	out = append(out, "--data", c.DataDir)
	return append(out, args[n:]...)
}

// RunCLI runs `g8-ac ARGS --data DIR` and returns stdout, stderr and the
// exit code, for tests that expect failures.
func (c *Controller) RunCLI(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(c.Bin, c.cliArgs(args)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// CLI runs `g8-ac ARGS --data DIR`, fails the test unless it exits 0, and
// returns its stdout.
func (c *Controller) CLI(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := c.RunCLI(args...)
	if code != 0 {
		t.Fatalf("g8-ac %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// ApproveMAC registers and approves the node with this MAC (a node that
// already asked is approved) and returns its node id.
func (c *Controller) ApproveMAC(t testing.TB, mac string) string {
	t.Helper()
	out, errOut, code := c.RunCLI("node", "approve", mac)
	if code == 10 { // not known yet: register it approved
		out = c.CLI(t, "node", "add", "--mac", mac, "--approve")
	} else if code != 0 {
		t.Fatalf("g8-ac node approve %s: exit %d\nstdout: %s\nstderr: %s", mac, code, out, errOut)
	}
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("g8-ac node add printed no node id")
	}
	return f[0]
}

// AddSSHKey authorizes the public keys in pubkeyFile on every node.
func (c *Controller) AddSSHKey(t testing.TB, pubkeyFile string) {
	t.Helper()
	c.CLI(t, "ssh-key", "add", pubkeyFile)
}

// SetConfig makes content a controller-managed file at relpath (relative to
// the node's /mnt/etc, e.g. "g8os/fs.toml").
func (c *Controller) SetConfig(t testing.TB, relpath string, content []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(f, content, 0o600); err != nil {
		t.Fatal(err)
	}
	c.CLI(t, "config", "set", relpath, f)
}

// Token returns the admin bearer token (for PUT /v1/store/...).
func (c *Controller) Token(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(c.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Client is an API client for the first listener, verifying the controller
// with the trust anchor; cert (may be nil) is a node's mTLS identity. Only
// usable from this process when the controller runs on loopback.
func (c *Controller) Client(t testing.TB, cert *tls.Certificate) *acapi.Client {
	t.Helper()
	pool, err := acapi.LoadPool(c.TrustAnchor)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := acapi.NewClient(c.URL, acapi.TLSConfig(pool, cert), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.HTTP.CloseIdleConnections)
	return cl
}

// startLocal is Host.start without a namespace.
func startLocal(t testing.TB, cmd *exec.Cmd, label string) *Process {
	t.Helper()
	p := &Process{Name: label, Cmd: cmd, out: newOutputFile(t), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out.f, p.out.f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", label, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", p.Name, p.Output())
		}
	})
	return p
}

// String is for test logs.
func (c *Controller) String() string { return fmt.Sprintf("g8-ac %s (data %s)", c.URL, c.DataDir) }
