package sshd_test

// These tests run the real g8-sshd binary on a loopback port and talk to it
// with the real OpenSSH client (ssh, scp, sftp) in strict host key mode.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/cpu"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// waitFor polls until cond holds or fails the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type daemon struct {
	t     *testing.T
	cmd   *exec.Cmd
	log   *testenv.SyncBuffer
	addr  string
	state string
	done  chan struct{}
	err   error
}

func requireClients(t *testing.T) {
	testenv.RequireRoot(t, "ssh", "scp", "sftp", "ssh-keygen", "sshpass")
}

// startSSHD runs g8-sshd on a free loopback port with keys' ssh dir and
// waits until its state file names the bound address.
func startSSHD(t *testing.T, keys *testenv.SSHKeys, extra ...string) *daemon {
	t.Helper()
	return startSSHDIn(t, nil, keys, append([]string{"--listen", "127.0.0.1:0"}, extra...)...)
}

// startSSHDIn runs g8-sshd inside host's namespace (nil: this one); extra
// must carry --listen.
func startSSHDIn(t *testing.T, host *testenv.Host, keys *testenv.SSHKeys, extra ...string) *daemon {
	t.Helper()
	bin := testenv.Bin(t, "g8-sshd")
	d := &daemon{t: t, log: &testenv.SyncBuffer{}, state: t.TempDir(), done: make(chan struct{})}
	args := append([]string{"--ssh-dir", keys.SSHDir, "--state-dir", d.state,
		"--shell", "/bin/sh", "--reload-interval", "200ms"}, extra...)
	if host != nil {
		// ip netns exec execs the daemon: the pid stays the daemon's.
		args = append([]string{"netns", "exec", host.NS, bin}, args...)
		bin = "ip"
	}
	d.cmd = exec.Command(bin, args...)
	// A pipe of our own rather than exec's: the connection processes
	// inherit it and outlive the listener, and Wait must not wait for them.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = pw, pw
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() { _, _ = io.Copy(d.log, pr); pr.Close() }()
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("g8-sshd log:\n%s", d.log.String())
		}
	})
	var st state.SSHD
	waitFor(t, 10*time.Second, "sshd.json", func() bool {
		select {
		case <-d.done:
			t.Fatalf("g8-sshd exited: %v\n%s", d.err, d.log.String())
		default:
		}
		return state.Read(d.state, &st) == nil && len(st.Listen) > 0
	})
	d.addr = st.Listen[0]
	keys.TrustHost(t, d.addr)
	return d
}

func (d *daemon) waitLog(substr string) {
	d.t.Helper()
	waitFor(d.t, 10*time.Second, "log line "+substr, func() bool { return strings.Contains(d.log.String(), substr) })
}

func (d *daemon) exited(timeout time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return result{out.String(), errb.String(), code}
}

func fingerprint(t *testing.T, keys *testenv.SSHKeys, key string) string {
	t.Helper()
	pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(keys.PublicKey(t, key)))
	if err != nil {
		t.Fatal(err)
	}
	return gossh.FingerprintSHA256(pk)
}

func TestLoginExecAndRejections(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)

	r := run(t, keys.SSH(d.addr, "", `echo to-stdout; echo to-stderr >&2; exit 3`), "")
	if r.code != 3 || r.stdout != "to-stdout\n" || r.stderr != "to-stderr\n" {
		t.Errorf("exit/stdout/stderr: %+v", r)
	}
	d.waitLog("fingerprint=" + fingerprint(t, keys, keys.ClientKey))
	if !strings.Contains(d.log.String(), `msg="login accepted"`) || !strings.Contains(d.log.String(), "remote=127.0.0.1:") {
		t.Errorf("login not logged with its source")
	}

	// stdin is passed through and its EOF reaches the command.
	r = run(t, keys.SSH(d.addr, "", "wc -l; cat; echo after-eof"), "a\nb\nc\n")
	if r.code != 0 || strings.TrimSpace(strings.Split(r.stdout, "\n")[0]) != "3" || !strings.HasSuffix(r.stdout, "after-eof\n") {
		t.Errorf("stdin: %+v", r)
	}

	// The login environment is OpenSSH's; LANG is accepted, others are not.
	cmd := keys.SSH(d.addr, "", "-o", "SetEnv=LANG=C.UTF-8 SNEAKY=1", `echo "$USER|$HOME|$SHELL|$LANG|${SNEAKY-unset}|$SSH_CONNECTION"; pwd`)
	r = run(t, cmd, "")
	home := "/root"
	if fi, err := os.Stat(home); err != nil || !fi.IsDir() {
		home = "/"
	}
	if !strings.HasPrefix(r.stdout, "root|/root|/bin/sh|C.UTF-8|unset|127.0.0.1 ") || !strings.HasSuffix(r.stdout, home+"\n") {
		t.Errorf("environment: %+v", r)
	}

	// Killed by a signal: the client learns it (exit-signal), like with OpenSSH.
	r = run(t, keys.SSH(d.addr, "", "kill -KILL $$"), "")
	if r.code != 255 {
		t.Errorf("killed command: exit %d, want 255 (%q)", r.code, r.stderr)
	}
	d.waitLog("signal=KILL")

	// A key that is not listed is refused, and the refusal is logged with
	// the offered key's fingerprint.
	stranger := keys.NewClientKey(t, "stranger")
	r = run(t, keys.SSH(d.addr, stranger, "true"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "Permission denied (publickey)") {
		t.Errorf("unlisted key: %+v", r)
	}
	d.waitLog("fingerprint=" + fingerprint(t, keys, stranger) + " reason=\"key not in authorized_keys\"")

	// Passwords are never asked for nor accepted.
	host, port, _ := net.SplitHostPort(d.addr)
	pw := exec.Command("sshpass", "-p", "hunter2", "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+keys.KnownHosts, "-o", "PubkeyAuthentication=no",
		"-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "NumberOfPasswordPrompts=1",
		"-p", port, "root@"+host, "true")
	r = run(t, pw, "")
	if r.code == 0 || !strings.Contains(r.stderr, "Permission denied (publickey)") {
		t.Errorf("password login: %+v", r)
	}

	// Only root may log in by default, even with a listed key.
	hostU := exec.Command("ssh", append(keys.ClientOptions(keys.ClientKey), "-p", port, "nobody@"+host, "true")...)
	if r = run(t, hostU, ""); r.code != 255 {
		t.Errorf("user nobody: %+v", r)
	}
	d.waitLog(`user \"nobody\" may not log in`)
}

// sshInPTY runs the ssh client inside a terminal the test controls, so
// resizing it sends the client SIGWINCH as a real terminal would.
type ptyClient struct {
	cmd  *exec.Cmd
	ptmx *os.File
	out  *testenv.SyncBuffer
}

func startInPTY(t *testing.T, cmd *exec.Cmd, rows, cols uint16) *ptyClient {
	t.Helper()
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: rows, Cols: cols})
	if err != nil {
		t.Fatal(err)
	}
	c := &ptyClient{cmd: cmd, ptmx: ptmx, out: &testenv.SyncBuffer{}}
	go func() { _, _ = io.Copy(c.out, ptmx) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		ptmx.Close()
	})
	return c
}

func (c *ptyClient) wait(t *testing.T, substr string) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("%q in terminal output %q", substr, c.out.String()), func() bool {
		return strings.Contains(c.out.String(), substr)
	})
}

func (c *ptyClient) exitCode(t *testing.T) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(15 * time.Second):
		t.Fatalf("ssh did not exit; terminal: %q", c.out.String())
		return -1
	}
}

func TestPTYCommandAndResize(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)

	script := `tty; stty size; echo READY; while :; do s=$(stty size); [ "$s" = "40 120" ] && break; sleep 0.05; done; ` +
		`echo "resized:$s"; read line; echo "got:$line"; exit 7`
	c := startInPTY(t, keys.SSH(d.addr, "", "-tt", script), 30, 100)
	c.wait(t, "READY")
	if out := c.out.String(); !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "30 100") {
		t.Fatalf("remote terminal: %q", out)
	}
	if err := pty.Setsize(c.ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "resized:40 120")
	if _, err := c.ptmx.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "got:hello")
	if code := c.exitCode(t); code != 7 {
		t.Errorf("exit %d, want 7", code)
	}
}

func TestPTYShell(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	c := startInPTY(t, keys.SSH(d.addr, "", "-tt"), 24, 80)
	// The login shell reads commands from the terminal.
	if _, err := c.ptmx.Write([]byte("echo \"sum=$((6*7)) term=$TERM tty=$SSH_TTY\"; exit 5\r")); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "sum=42 term=")
	if !strings.Contains(c.out.String(), "tty=/dev/pts/") {
		t.Errorf("SSH_TTY missing: %q", c.out.String())
	}
	if code := c.exitCode(t); code != 5 {
		t.Errorf("exit %d, want 5", code)
	}
	d.waitLog("kind=shell pty=true")
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func TestSCPAndSFTP(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	host, _, _ := net.SplitHostPort(d.addr)
	dir := t.TempDir()
	src := filepath.Join(dir, "payload")
	data := make([]byte, 3<<20+12345)
	_, _ = rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha(t, src)
	remote := filepath.Join(dir, "remote")
	if err := os.Mkdir(remote, 0o755); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		cmd  *exec.Cmd
		file string
	}{
		{"scp up (SFTP protocol)", keys.SCP(d.addr, src, "root@"+host+":"+remote+"/up"), remote + "/up"},
		{"scp down (SFTP protocol)", keys.SCP(d.addr, "root@"+host+":"+remote+"/up", dir+"/down"), dir + "/down"},
		{"scp -O up (legacy, runs scp -t remotely)", keys.SCP(d.addr, "-O", src, "root@"+host+":"+remote+"/up-legacy"), remote + "/up-legacy"},
		{"scp -O down (legacy)", keys.SCP(d.addr, "-O", "root@"+host+":"+remote+"/up-legacy", dir+"/down-legacy"), dir + "/down-legacy"},
	}
	for _, s := range steps {
		if r := run(t, s.cmd, ""); r.code != 0 {
			t.Fatalf("%s: %+v", s.name, r)
		}
		if got := sha(t, s.file); got != want {
			t.Errorf("%s: sha256 %s, want %s", s.name, got, want)
		}
	}

	batch := filepath.Join(dir, "batch")
	script := fmt.Sprintf("mkdir %[1]s/sftp\ncd %[1]s/sftp\nput %[2]s put\nrename put moved\nget moved %[3]s/got\nls -l\nrm moved\nrmdir %[1]s/sftp\n", remote, src, dir)
	if err := os.WriteFile(batch, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	// -vvv shows the transfer sizes OpenSSH's client settled on: g8-sshd's
	// limits@openssh.com answer must have raised them from 32 KiB.
	sftpCmd := keys.SFTP(d.addr, batch)
	sftpCmd.Args = append(sftpCmd.Args[:1], append([]string{"-vvv"}, sftpCmd.Args[1:]...)...)
	r := run(t, sftpCmd, "")
	if r.code != 0 {
		t.Fatalf("sftp -b: %+v", r)
	}
	if want := "using 261120 / 261120"; !strings.Contains(r.stderr, want) {
		t.Errorf("sftp did not take the server's limits (want %q in its debug output):\n%s", want, r.stderr)
	}
	if got := sha(t, dir+"/got"); got != want {
		t.Errorf("sftp get: sha256 %s, want %s", got, want)
	}
	if _, err := os.Stat(remote + "/sftp"); !os.IsNotExist(err) {
		t.Errorf("sftp rmdir did not happen: %v", err)
	}
	d.waitLog("kind=sftp")
}

// TestCipherSet: what the OpenSSH client negotiates with its own defaults.
// On hardware with AES instructions g8-sshd does not offer the pure-Go
// chacha20-poly1305, so the client takes aes128-ctr with
// hmac-sha2-256-etm (assembly in Go) and a client asking for chacha20
// alone is refused; without them chacha20-poly1305 is what it gets.
// aes128-gcm works everywhere.
func TestCipherSet(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	host, port, _ := net.SplitHostPort(d.addr)
	negotiated := func(extra ...string) (string, result) {
		t.Helper()
		args := append(keys.ClientOptions(keys.ClientKey), "-v", "-p", port)
		r := run(t, exec.Command("ssh", append(append(args, extra...), "root@"+host, "true")...), "")
		for _, l := range strings.Split(r.stderr, "\n") {
			if _, after, ok := strings.Cut(l, "kex: server->client cipher: "); ok {
				return strings.TrimSpace(after), r
			}
		}
		return "", r
	}
	aes := (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL)
	want := "chacha20-poly1305@openssh.com MAC: <implicit> compression: none"
	if aes {
		want = "aes128-ctr MAC: hmac-sha2-256-etm@openssh.com compression: none"
	}
	if got, r := negotiated(); got != want || r.code != 0 {
		t.Errorf("client defaults: negotiated %q (exit %d), want %q", got, r.code, want)
	}
	if got, r := negotiated("-c", "aes128-gcm@openssh.com"); !strings.HasPrefix(got, "aes128-gcm@openssh.com ") || r.code != 0 {
		t.Errorf("-c aes128-gcm: negotiated %q (exit %d)", got, r.code)
	}
	_, r := negotiated("-c", "chacha20-poly1305@openssh.com")
	if refused := strings.Contains(r.stderr, "no matching cipher found"); refused != aes {
		t.Errorf("-c chacha20-poly1305 with AES instructions %v: refused %v (exit %d)", aes, refused, r.code)
	}
}

func TestKeyOptions(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	forced := keys.NewClientKey(t, "forced")
	keys.Authorize(t, `command="echo forced:$SSH_ORIGINAL_COMMAND; exit 4"`, forced)
	restricted := keys.NewClientKey(t, "restricted")
	keys.Authorize(t, "restrict", restricted)
	elsewhere := keys.NewClientKey(t, "elsewhere")
	keys.Authorize(t, `from="10.0.0.0/8,!127.0.0.1"`, elsewhere)
	keys.AppendAuthorizedKeys(t, "this line is garbage")
	d := startSSHD(t, keys)

	r := run(t, keys.SSH(d.addr, forced, "echo", "hi"), "")
	if r.stdout != "forced:echo hi\n" || r.code != 4 {
		t.Errorf("command= not forced: %+v", r)
	}
	// Forced over the SFTP subsystem too.
	r = run(t, keys.SSH(d.addr, forced, "-s", "sftp"), "")
	if !strings.HasPrefix(r.stdout, "forced:") {
		t.Errorf("command= not forced on a subsystem: %+v", r)
	}

	// no-pty (via restrict): the PTY request is refused, and the OpenSSH
	// client gives up on a session whose forced TTY it did not get.
	c := startInPTY(t, keys.SSH(d.addr, restricted, "-tt", "sleep 1; tty"), 24, 80)
	c.wait(t, "PTY allocation request failed")
	if code := c.exitCode(t); code != 255 {
		t.Errorf("ssh -tt with a no-pty key: exit %d", code)
	}
	d.waitLog("PTY refused by key option")
	if r := run(t, keys.SSH(d.addr, restricted, "tty"), ""); r.stdout != "not a tty\n" {
		t.Errorf("restricted key without -t: %+v", r)
	}

	r = run(t, keys.SSH(d.addr, restricted, "-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:9"), "")
	if r.code == 0 {
		t.Errorf("port forwarding with restrict: %+v", r)
	}

	r = run(t, keys.SSH(d.addr, elsewhere, "true"), "")
	if r.code != 255 {
		t.Errorf("from= mismatch admitted: %+v", r)
	}
	d.waitLog("from= does not match 127.0.0.1")
	d.waitLog(`authorized_keys line skipped`)
	if !strings.Contains(d.log.String(), "line=5") {
		t.Errorf("malformed line not reported by number")
	}
	// The good key still works despite the bad line.
	if r = run(t, keys.SSH(d.addr, "", "true"), ""); r.code != 0 {
		t.Errorf("good key: %+v", r)
	}
}

func TestReloadKeepsSessions(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys, "--reload-interval", "0")

	// A session that stays open across the reload.
	long := keys.SSH(d.addr, "", `read x; echo "still here: $x"`)
	stdin, err := long.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out testenv.SyncBuffer
	long.Stdout = &out
	if err := long.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitLog("session started")

	newKey := keys.NewClientKey(t, "new")
	if r := run(t, keys.SSH(d.addr, newKey, "true"), ""); r.code != 255 {
		t.Fatalf("new key before reload: %+v", r)
	}
	keys.Authorize(t, "", newKey)
	// --reload-interval 0: only SIGHUP reloads.
	time.Sleep(300 * time.Millisecond)
	if r := run(t, keys.SSH(d.addr, newKey, "true"), ""); r.code != 255 {
		t.Fatalf("new key before SIGHUP: %+v", r)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitLog("reason=SIGHUP")
	if r := run(t, keys.SSH(d.addr, newKey, "echo new-key-in"), ""); r.stdout != "new-key-in\n" {
		t.Errorf("new key after SIGHUP: %+v", r)
	}

	fmt.Fprintln(stdin, "yes")
	stdin.Close()
	if err := long.Wait(); err != nil || out.String() != "still here: yes\n" {
		t.Errorf("session across reload: %v %q", err, out.String())
	}
}

func TestReloadOnFileChange(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	newKey := keys.NewClientKey(t, "new")
	keys.Authorize(t, "", newKey)
	d.waitLog(`reason="file changed"`)
	if r := run(t, keys.SSH(d.addr, newKey, "echo ok"), ""); r.stdout != "ok\n" {
		t.Errorf("new key after file change: %+v", r)
	}
	// An unreadable file (here: a directory in its place) keeps the keys
	// in force: a hiccup of the mount must not lock operators out.
	ak := filepath.Join(keys.SSHDir, "authorized_keys")
	if err := os.Rename(ak, ak+".saved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(ak, 0o700); err != nil {
		t.Fatal(err)
	}
	d.waitLog("authorized_keys unreadable; keeping the keys loaded before")
	if r := run(t, keys.SSH(d.addr, newKey, "echo still"), ""); r.stdout != "still\n" {
		t.Errorf("login with the previous keys: %+v", r)
	}
	if err := os.Remove(ak); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(ak+".saved", ak); err != nil {
		t.Fatal(err)
	}

	// Removing the file locks everybody out: deleting it is deliberate.
	if err := os.Remove(filepath.Join(keys.SSHDir, "authorized_keys")); err != nil {
		t.Fatal(err)
	}
	d.waitLog("no authorized_keys")
	if r := run(t, keys.SSH(d.addr, "", "true"), ""); r.code != 255 {
		t.Errorf("login without authorized_keys: %+v", r)
	}
}

func TestHundredConcurrentSessions(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	// 100 logins at once from one address is what the pre-auth limits are
	// there to refuse (TestOperatorLogsInDuringAFlood); an automation host
	// that means it lifts them.
	d := startSSHD(t, keys, "--max-startups", "0", "--per-source-max-startups", "0")
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := fds()
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := keys.SSH(d.addr, "", fmt.Sprintf("sleep 1; echo session-%d", i))
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil || out.String() != fmt.Sprintf("session-%d\n", i) {
				errs <- fmt.Sprintf("session %d: %v %q %q", i, err, out.String(), stderr.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// Every pipe, socket and terminal of those sessions is closed again.
	waitFor(t, 10*time.Second, fmt.Sprintf("open fds back to %d", before), func() bool { return fds() <= before })
}

func TestIdleTimeout(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys, "--idle-timeout", "2s", "--keepalive-interval", "500ms")

	// Busy sessions are not idle, keepalives or not.
	if r := run(t, keys.SSH(d.addr, "", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.5; done"), ""); r.code != 0 {
		t.Errorf("busy session dropped: %+v", r)
	}
	start := time.Now()
	r := run(t, keys.SSH(d.addr, "", "sleep 30"), "")
	if took := time.Since(start); r.code != 255 || took > 10*time.Second {
		t.Errorf("idle session: exit %d after %v", r.code, took)
	}
	d.waitLog("connection closed: idle timeout")
}

func TestHostileClients(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys, "--login-grace-time", "2s", "--max-startups", "3", "--max-auth-tries", "2")

	closedWithin := func(c net.Conn, limit time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(limit))
		_, err := io.Copy(io.Discard, c)
		// EOF or a reset (the server closed with our garbage unread); a
		// timeout means it is still open.
		return !errors.Is(err, os.ErrDeadlineExceeded)
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// Garbage instead of a version string.
	c := dial()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: node\r\n\r\n%s", strings.Repeat("x", 600))
	if !closedWithin(c, 15*time.Second) {
		t.Error("garbage: connection not closed")
	}

	// A handshake cut off in the middle of the first packet.
	c = dial()
	br := bufio.NewReader(c)
	if banner, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(banner, "SSH-2.0-g8-sshd") {
		t.Fatalf("banner %q: %v", banner, err)
	}
	fmt.Fprintf(c, "SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x03\xe8\x0a\x14abc")
	c.Close()

	// A client that never authenticates is dropped after the grace time.
	c = dial()
	fmt.Fprintf(c, "SSH-2.0-Lazy\r\n")
	if !closedWithin(c, 15*time.Second) {
		t.Error("never-authenticating client not dropped")
	}
	d.waitLog("not authenticated within the login grace time")

	// At most 3 unauthenticated connections at a time. The server frees
	// the slots of the connections above when their handlers have wound
	// down, which on a loaded machine can be after we saw them closed: a
	// held connection refused for that is dialled again (a lower limit
	// would still refuse it until the deadline).
	const refusedLine = "too many unauthenticated connections"
	var held []net.Conn
	for range 3 {
		var h net.Conn
		waitFor(t, 15*time.Second, "a banner on a connection within --max-startups", func() bool {
			h = dial()
			// The banner comes after the server counted the connection.
			_ = h.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := bufio.NewReader(h).ReadString('\n'); err != nil {
				h.Close()
				return false
			}
			_ = h.SetReadDeadline(time.Time{})
			return true
		})
		held = append(held, h)
	}
	refusedBefore := strings.Count(d.log.String(), refusedLine)
	extra := dial()
	_ = extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _ := io.Copy(io.Discard, extra)
	if n != 0 {
		t.Errorf("connection over --max-startups got %d bytes", n)
	}
	waitFor(t, 10*time.Second, "the refusal of the connection over --max-startups logged", func() bool {
		return strings.Count(d.log.String(), refusedLine) > refusedBefore
	})
	for _, h := range held {
		h.Close()
	}

	// Authentication attempts are limited per connection. x/crypto lets
	// the first --max-auth-tries refused key offers go free (clients probe
	// their keys), so four wrong keys use up two tries before the right
	// one is offered.
	var args []string
	for i := range 4 {
		args = append(args, "-i", keys.NewClientKey(t, fmt.Sprintf("bad%d", i)))
	}
	host, port, _ := net.SplitHostPort(d.addr)
	opts := keys.ClientOptions(keys.ClientKey)
	opts = opts[:len(opts)-2] // the right key goes last
	many := exec.Command("ssh", append(append(append(opts, args...), "-i", keys.ClientKey), "-p", port, "root@"+host, "true")...)
	if r := run(t, many, ""); r.code != 255 {
		t.Errorf("more keys than --max-auth-tries: %+v", r)
	}

	// After all that, a normal login still works.
	waitFor(t, 30*time.Second, "a normal login", func() bool {
		return run(t, keys.SSH(d.addr, "", "echo fine"), "").stdout == "fine\n"
	})
}

func TestSignalsAndExitSignal(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	// The OpenSSH client cannot send "signal" requests, so this one uses
	// x/crypto's client.
	pem, err := os.ReadFile(keys.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	hostPub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(keys.PublicKey(t, filepath.Join(keys.SSHDir, "ssh_host_ed25519_key"))))
	if err != nil {
		t.Fatal(err)
	}
	client, err := gossh.Dial("tcp", d.addr, &gossh.ClientConfig{User: "root",
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}, HostKeyCallback: gossh.FixedHostKey(hostPub)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out testenv.SyncBuffer
	sess.Stdout = &out
	if err := sess.Start(`trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "ready", func() bool { return strings.Contains(out.String(), "ready") })
	if err := sess.Signal(gossh.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var ee *gossh.ExitError
	if err := sess.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 9 || !strings.Contains(out.String(), "got-term") {
		t.Errorf("after SIGTERM: %v, output %q", err, out.String())
	}

	sess, err = client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Run("kill -TERM $$"); !errors.As(err, &ee) || ee.Signal() != "TERM" {
		t.Errorf("exit-signal: %v", err)
	}
}

func TestGracefulShutdown(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	// always: this test is the stop of the unit (auto would keep the
	// sessions, as TestSessionsOutliveTheListener shows).
	d := startSSHD(t, keys, "--shutdown-grace", "20s", "--stop-sessions", "always")

	long := keys.SSH(d.addr, "", `read x; echo "finished: $x"`)
	stdin, err := long.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out testenv.SyncBuffer
	long.Stdout = &out
	if err := long.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitLog("session started")
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitLog("stopping")
	if r := run(t, keys.SSH(d.addr, "", "true"), ""); r.code != 255 {
		t.Errorf("new connection accepted while stopping: %+v", r)
	}
	if d.exited(500 * time.Millisecond) {
		t.Fatal("exited while a session was open")
	}
	fmt.Fprintln(stdin, "cleanly")
	stdin.Close()
	if err := long.Wait(); err != nil || out.String() != "finished: cleanly\n" {
		t.Errorf("session during shutdown: %v %q", err, out.String())
	}
	if !d.exited(10 * time.Second) {
		t.Fatal("did not exit after the last session")
	}
	if d.err != nil {
		t.Errorf("exit: %v", d.err)
	}

	// A session that does not end is cut at the grace.
	d = startSSHD(t, keys, "--shutdown-grace", "1s", "--stop-sessions", "always")
	stuck := keys.SSH(d.addr, "", "sleep 60")
	if err := stuck.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitLog("session started")
	start := time.Now()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if !d.exited(10 * time.Second) {
		t.Fatal("did not exit after the grace")
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("exited after %v, before the grace", took)
	}
	_ = stuck.Wait()
}

func TestBadSSHDir(t *testing.T) {
	requireClients(t)
	bin := testenv.Bin(t, "g8-sshd")
	dir := t.TempDir()
	dangling := filepath.Join(dir, "dangling")
	if err := os.Mkdir(dangling, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent/key", filepath.Join(dangling, "ssh_host_ed25519_key")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, sshDir, want string
	}{
		{"missing", filepath.Join(dir, "nope"), filepath.Join(dir, "nope") + ": no such file or directory"},
		{"empty", dir, "no usable host key in " + dir},
		{"not a dir", "/etc/hostname", "not a directory"},
		{"unreadable key", dangling, "ssh_host_ed25519_key: no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "--ssh-dir", tc.sshDir, "--listen", "127.0.0.1:0", "--state-dir", t.TempDir())
			r := run(t, cmd, "")
			if r.code != 10 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 10 and %q", r.code, r.stderr, tc.want)
			}
		})
	}

	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys)
	cmd := exec.Command(bin, "--ssh-dir", keys.SSHDir, "--listen", d.addr, "--state-dir", t.TempDir())
	if r := run(t, cmd, ""); r.code != 11 || !strings.Contains(r.stderr, d.addr) {
		t.Errorf("address in use: %+v", r)
	}
}

// echoServer accepts TCP connections on loopback and echoes them.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func TestForwarding(t *testing.T) {
	requireClients(t)
	echo := echoServer(t)
	other := echoServer(t)
	keys := testenv.NewSSHKeys(t)
	limited := keys.NewClientKey(t, "limited")
	keys.Authorize(t, `permitopen="`+echo+`"`, limited)

	// Off by default: ssh -W opens a direct-tcpip channel, which is refused.
	d := startSSHD(t, keys)
	if r := run(t, keys.SSH(d.addr, "", "-W", echo), "ping\n"); r.code == 0 || r.stdout != "" {
		t.Errorf("forwarding while disabled: %+v", r)
	}
	d.waitLog("port forwarding refused")

	d = startSSHD(t, keys, "--allow-tcp-forwarding", "--allow-agent-forwarding")
	if r := run(t, keys.SSH(d.addr, "", "-W", echo), "ping\n"); r.stdout != "ping\n" {
		t.Errorf("forwarding enabled: %+v", r)
	}
	if r := run(t, keys.SSH(d.addr, limited, "-W", echo), "permitted\n"); r.stdout != "permitted\n" {
		t.Errorf("permitopen target: %+v", r)
	}
	if r := run(t, keys.SSH(d.addr, limited, "-W", other), "ping\n"); r.stdout != "" || r.code == 0 {
		t.Errorf("target outside permitopen: %+v", r)
	}

	// Remote forwarding: the node listens and relays back to the client.
	// (The OpenSSH client reports an allocated port only at LogLevel INFO,
	// so pick a free one here.)
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raddr := pl.Addr().String()
	pl.Close()
	rf := keys.SSH(d.addr, "", "-N", "-o", "ExitOnForwardFailure=yes", "-R", raddr+":"+echo)
	if err := rf.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rf.Process.Kill(); _ = rf.Wait() })
	var rc net.Conn
	waitFor(t, 10*time.Second, "the remote forward's listener", func() bool {
		rc, err = net.Dial("tcp", raddr)
		return err == nil
	})
	_ = rc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(rc, "back\n")
	if got, err := bufio.NewReader(rc).ReadString('\n'); got != "back\n" {
		t.Errorf("remote forward echo: %q %v", got, err)
	}
	rc.Close()

	// Agent forwarding: the remote ssh-add sees the local agent's key.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	waitFor(t, 5*time.Second, "ssh-agent socket", func() bool { _, err := os.Stat(sock); return err == nil })
	add := exec.Command("ssh-add", keys.ClientKey)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	cmd := keys.SSH(d.addr, "", "-A", "ssh-add -l")
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if r := run(t, cmd, ""); !strings.Contains(r.stdout, fingerprint(t, keys, keys.ClientKey)) {
		t.Errorf("agent forwarding: %+v", r)
	}
}

// TestOtherUser logs in as nobody (allowed with --users): commands and
// SFTP run with nobody's uid, not the daemon's.
func TestOtherUser(t *testing.T) {
	requireClients(t)
	if _, err := exec.Command("id", "nobody").Output(); err != nil {
		t.Skip("no user nobody on this machine")
	}
	// nobody must be able to execute the daemon for `g8-sshd sftp-server`.
	dir, err := os.MkdirTemp("", "g8-sshd-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(testenv.Bin(t, "g8-sshd"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "g8-sshd")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	keys := testenv.NewSSHKeys(t)
	stateDir := t.TempDir()
	d := &daemon{t: t, log: &testenv.SyncBuffer{}, state: stateDir, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "--ssh-dir", keys.SSHDir, "--listen", "127.0.0.1:0", "--state-dir", stateDir,
		"--shell", "/bin/sh", "--users", "root,nobody")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { _ = d.cmd.Process.Kill(); <-d.done })
	var st state.SSHD
	waitFor(t, 10*time.Second, "sshd.json", func() bool { return state.Read(stateDir, &st) == nil && len(st.Listen) > 0 })
	d.addr = st.Listen[0]
	keys.TrustHost(t, d.addr)
	host, port, _ := net.SplitHostPort(d.addr)
	asNobody := func(args ...string) *exec.Cmd {
		return exec.Command("ssh", append(append(keys.ClientOptions(keys.ClientKey), "-p", port, "nobody@"+host), args...)...)
	}
	if r := run(t, asNobody("id -un; echo $USER $HOME"), ""); !strings.HasPrefix(r.stdout, "nobody\nnobody ") {
		t.Errorf("exec as nobody: %+v", r)
	}
	batch := filepath.Join(t.TempDir(), "batch")
	local := filepath.Join(t.TempDir(), "hostname")
	if err := os.WriteFile(batch, []byte("get /etc/hostname "+local+"\n-put /etc/hostname /root/g8-sshd-test-must-fail\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sftpCmd := exec.Command("sftp", append(keys.ClientOptions(keys.ClientKey), "-P", port, "-b", batch, "nobody@"+host)...)
	r := run(t, sftpCmd, "")
	if r.code != 0 || sha(t, local) != sha(t, "/etc/hostname") {
		t.Errorf("sftp as nobody: %+v", r)
	}
	if _, err := os.Stat("/root/g8-sshd-test-must-fail"); err == nil {
		os.Remove("/root/g8-sshd-test-must-fail")
		t.Error("sftp as nobody wrote into /root")
	}
}

func TestKeepaliveDropsAFrozenClient(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d := startSSHD(t, keys, "--keepalive-interval", "300ms", "--keepalive-count", "2")
	cmd := keys.SSH(d.addr, "", "sleep 60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitLog("session started")
	// A stopped client keeps its TCP connection but answers nothing.
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	d.waitLog("client stopped answering keepalives")
	_ = cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Wait(); err == nil {
		t.Error("client of a dropped connection exited 0")
	}
}

func TestHostKeysAndReadiness(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	ecdsa := filepath.Join(keys.SSHDir, "ssh_host_ecdsa_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", ecdsa).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	// READY=1 arrives on NOTIFY_SOCKET only once the listener is bound.
	sock := filepath.Join(t.TempDir(), "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	d := startSSHD(t, keys)
	_ = nl.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ready string
	for !strings.Contains(ready, "READY=1") {
		buf := make([]byte, 4096)
		n, err := nl.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1: %v", err)
		}
		ready = string(buf[:n])
	}
	if c, err := net.Dial("tcp", d.addr); err != nil {
		t.Errorf("READY=1 sent but %s refuses: %v", d.addr, err)
	} else {
		c.Close()
	}
	if !strings.Contains(ready, "STATUS=listening on "+d.addr) {
		t.Errorf("status line: %q", ready)
	}

	var st state.SSHD
	if err := state.Read(d.state, &st); err != nil || len(st.HostKeys) != 2 || st.AuthorizedKeys != 1 {
		t.Errorf("state: %+v %v", st, err)
	}
	// The ecdsa key is served to a client that only accepts ecdsa.
	host, port, _ := net.SplitHostPort(d.addr)
	pub, err := os.ReadFile(ecdsa + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(pub))
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, []byte("["+host+"]:"+port+" "+f[0]+" "+f[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := append(keys.ClientOptions(keys.ClientKey), "-o", "UserKnownHostsFile="+kh, "-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256")
	// The first UserKnownHostsFile wins in OpenSSH; put ours first.
	opts = append([]string{"-o", "UserKnownHostsFile=" + kh}, opts...)
	if r := run(t, exec.Command("ssh", append(opts, "-p", port, "root@"+host, "echo ecdsa")...), ""); r.stdout != "ecdsa\n" {
		t.Errorf("ecdsa host key: %+v", r)
	}
}
