package ac_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/tests/testenv"
)

// enroll unlocks an approved node with a CSR and returns an mTLS client,
// the way g8-unlock and g8-acsession do.
func enroll(t *testing.T, ac *testenv.Controller, mac string) (string, *acapi.Client) {
	t.Helper()
	id := ac.ApproveMAC(t, mac)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	resp, err := ac.Client(t, testenv.NewNodeIdentity(t).Cert).Unlock(context.Background(), &acapi.UnlockRequest{MACs: []string{mac}, CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	cert, err := tls.X509KeyPair([]byte(resp.Cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.NodeID != id {
		t.Fatalf("unlock named %s, node add %s", resp.NodeID, id)
	}
	return id, ac.Client(t, &cert)
}

// fakeSession answers jobs like a node session would: exec jobs of
// ["echo", ...] succeed, ["false"] fails.
func fakeSession(t *testing.T, node *acapi.Client, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		jobs, err := node.Jobs(ctx, time.Second)
		cancel()
		if err != nil {
			continue
		}
		for _, j := range jobs {
			var a acapi.ExecArgs
			_ = json.Unmarshal(j.Args, &a)
			r := &acapi.JobResult{ID: j.ID, State: acapi.JobOK, StartedAt: time.Now(), FinishedAt: time.Now()}
			switch {
			case j.Kind == "ping":
				r.Output = json.RawMessage(`{"pong":true}`)
			case j.Kind == "exec" && len(a.Argv) > 0 && a.Argv[0] == "cat":
				r.Stdout = []byte(string(a.Stdin) + strings.Join(a.Env, ",") + " in " + a.Dir)
			case j.Kind == "exec" && len(a.Argv) > 0 && a.Argv[0] == "echo":
				r.Stdout = []byte(strings.Join(a.Argv[1:], " ") + "\n")
			case j.Kind == "exec":
				r.State, r.ExitCode, r.Stderr = acapi.JobFailed, 1, []byte("it failed\n")
			default:
				r.State, r.Error = acapi.JobRejected, "unknown kind "+j.Kind
			}
			if err := node.PostResult(context.Background(), r); err != nil {
				t.Errorf("posting result: %v", err)
			}
		}
	}
}

func TestJobsThroughCLI(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	id, node := enroll(t, ac, "52:54:00:aa:bb:02")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { fakeSession(t, node, stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done })

	out := ac.CLI(t, "job", "run", "--wait", id, "ping")
	var v struct {
		State  string
		Result acapi.JobResult
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.State != "ok" || strings.Join(strings.Fields(string(v.Result.Output)), "") != `{"pong":true}` {
		t.Fatalf("job run --wait ping: %v\n%s", err, out)
	}
	out = ac.CLI(t, "job", "exec", "--timeout", "10s", "52:54:00:aa:bb:02", "--", "echo", "hello", "--data", "x")
	if out != "hello --data x\n" {
		t.Fatalf("job exec stdout %q", out)
	}
	in := filepath.Join(t.TempDir(), "in")
	os.WriteFile(in, []byte("input "), 0o600)
	out = ac.CLI(t, "job", "exec", "--env", "A=1", "--env", "B=2", "--stdin", in, "--dir", "/tmp", id, "--", "cat")
	if out != "input A=1,B=2 in /tmp" {
		t.Fatalf("job exec with env, stdin and dir: %q", out)
	}
	stdout, stderr, code := ac.RunCLI("job", "exec", id, "--", "false")
	if code != 11 || stderr == "" || stdout != "" {
		t.Fatalf("failing job exec: exit %d stdout %q stderr %q, want exit 11", code, stdout, stderr)
	}
	if _, _, code := ac.RunCLI("job", "run", "--wait", id, "frobnicate", `{"x":1}`); code != 11 {
		t.Fatalf("rejected job: exit %d, want 11", code)
	}
	jobID := strings.TrimSpace(ac.CLI(t, "job", "run", id, "ping", "{}"))
	if !strings.HasPrefix(jobID, "j-") {
		t.Fatalf("job run printed %q, want a job id", jobID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(ac.CLI(t, "job", "show", jobID), `"state": "ok"`) {
		if time.Now().After(deadline) {
			t.Fatalf("job %s never finished:\n%s", jobID, ac.CLI(t, "job", "show", jobID))
		}
		time.Sleep(100 * time.Millisecond)
	}
	list := ac.CLI(t, "job", "list", id)
	if strings.Count(list, "\n") != 7 || !strings.Contains(list, jobID) || !strings.Contains(list, "rejected") {
		t.Fatalf("job list:\n%s", list)
	}
	if _, _, code := ac.RunCLI("job", "run", "n-nosuchnode", "ping"); code != 10 {
		t.Fatalf("job for an unknown node: exit %d, want 10", code)
	}
	if _, _, code := ac.RunCLI("job", "run", "--timeout", "48h", id, "ping"); code != 2 {
		t.Fatalf("job with a timeout over 24h: exit %d, want 2", code)
	}
	if _, _, code := ac.RunCLI("job", "run", id, "ping", "{broken"); code != 2 {
		t.Fatalf("job with bad JSON args: exit %d, want 2", code)
	}
}

func TestHeartbeatAndEventsThroughCLI(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	id, node := enroll(t, ac, "52:54:00:aa:bb:03")
	ctx := context.Background()
	_, err := node.Heartbeat(ctx, &acapi.Heartbeat{NodeID: id, BootID: "boot-1", Hostname: "rack1-n3", Uptime: acapi.Duration(time.Hour),
		Units: map[string]string{"g8-sshd.service": "active", "g8-fs.service": "failed"}, Load1: 0.25, MemUsed: 1 << 30, MemTotal: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	list := ac.CLI(t, "node", "list")
	for _, want := range []string{id, "approved", "rack1-n3", "127.0.0.1", "up 1h0m0s", "load 0.25", "mem 25%", "units 1/2 active (g8-fs.service=failed)"} {
		if !strings.Contains(list, want) {
			t.Errorf("node list lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "never") {
		t.Errorf("node list says never seen after a heartbeat:\n%s", list)
	}
	var view map[string]any
	if err := json.Unmarshal([]byte(ac.CLI(t, "node", "show", id)), &view); err != nil || view["boot_id"] != "boot-1" {
		t.Fatalf("node show: %v %v", err, view)
	}
	if _, ok := view["key"]; ok {
		t.Fatal("node show prints the unlock key")
	}

	if _, err := node.PostEvents(ctx, []acapi.Event{{Seq: 1, Kind: "phase.ready", Data: json.RawMessage(`{"phase":"net"}`)}, {Seq: 2, Kind: "net.changed"}}); err != nil {
		t.Fatal(err)
	}
	if r, err := node.PostEvents(ctx, []acapi.Event{{Seq: 2, Kind: "net.changed"}, {Seq: 3, Kind: "phase.ready"}}); err != nil || r.Acked != 3 {
		t.Fatalf("%v %+v", err, r)
	}
	evs := ac.CLI(t, "events", id)
	lines := strings.Split(strings.TrimSpace(evs), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "1\t") || !strings.Contains(lines[0], `{"phase":"net"}`) || !strings.HasPrefix(lines[2], "3\t") {
		t.Fatalf("events:\n%s", evs)
	}
}

func TestAdminCLIErrors(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"node", "approve", "n-nosuch"}, 10},
		{[]string{"node", "approve"}, 2},
		{[]string{"node", "add", "--mac", "zz:zz"}, 2},
		{[]string{"config", "set", "../etc/passwd", "/dev/null"}, 2},
		{[]string{"config", "set", "g8os/fs.toml", "/nonexistent"}, 3},
		{[]string{"ssh-key", "add", "/etc/hostname"}, 3},
		{[]string{"config", "set", "g8os/bin", ac.Bin}, 3},
		{[]string{"node", "frobnicate"}, 2},
	} {
		if _, stderr, code := ac.RunCLI(c.args...); code != c.code || stderr == "" {
			t.Errorf("g8-ac %s: exit %d (stderr %q), want %d with a message", strings.Join(c.args, " "), code, stderr, c.code)
		}
	}
	// --help after the arguments must not run the command: it shows the
	// help and exits 0, as anywhere on a GNU-style command line.
	id := ac.ApproveMAC(t, "52:54:00:aa:bb:05")
	if stdout, _, code := ac.RunCLI("node", "revoke", id, "--help"); code != 0 || !strings.Contains(stdout, "Usage: g8-ac node revoke") {
		t.Errorf("node revoke ID --help: exit %d, output %q; want the help and exit 0", code, stdout)
	}
	if !strings.Contains(ac.CLI(t, "node", "show", id), `"state": "approved"`) {
		t.Error("node revoke ID --help revoked the node")
	}
	// --help and --version work everywhere.
	for _, args := range [][]string{{"--help"}, {"node", "list", "--help"}, {"job", "exec", "--help"}, {"--version"}} {
		out, err := exec.Command(ac.Bin, args...).CombinedOutput()
		if err != nil || len(out) == 0 {
			t.Errorf("g8-ac %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	out, _ := exec.Command(ac.Bin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "Exit codes:") || !strings.Contains(string(out), "ssh-key") {
		t.Errorf("g8-ac --help:\n%s", out)
	}
	// Data directory that was never initialized.
	if _, _, code := (&testenv.Controller{Bin: ac.Bin, DataDir: t.TempDir()}).RunCLI("node", "list"); code != 3 {
		t.Errorf("node list on an empty dir: exit %d, want 3", code)
	}
}

// TestConfigSetRefusesNodeOwnedPaths: a file the node writes itself, a
// directory of them, or a path clashing with another managed file is
// refused at `config set` with a message saying why, and never reaches an
// unlock answer.
func TestConfigSetRefusesNodeOwnedPaths(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, []byte("x\n"), 0o600)
	ac.CLI(t, "config", "set", "g8os/fs.toml", f)
	for _, c := range []struct {
		path, want string
		code       int
	}{
		{"ssl/node.key", "written by the node itself", 2},
		{".g8os-unlocked", "written by the node itself", 2},
		{"ssh/authorized_keys", "written by the node itself", 2},
		{"ssh", "a directory of the node's own files", 2},
		{"ssl", "a directory of the node's own files", 2},
		{"ssl/node.pem/x", "below ssl/node.pem", 2},
		{"g8os", `conflict with the managed file "g8os/fs.toml"`, 3},
		{"g8os/fs.toml/x", `conflict with the managed file "g8os/fs.toml"`, 3},
	} {
		if _, stderr, code := ac.RunCLI("config", "set", c.path, f); code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("config set %s: exit %d, stderr %q; want %d and %q", c.path, code, stderr, c.code, c.want)
		}
	}
	if out := ac.CLI(t, "config", "list"); strings.TrimSpace(out) != "g8os/fs.toml\t2 bytes" {
		t.Errorf("config list:\n%s", out)
	}
}

func TestConfigAndSSHKeysReachUnlock(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	dir := t.TempDir()
	pub := filepath.Join(dir, "id.pub")
	os.WriteFile(pub, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxZRi1ow7xTQ2cz7gdeG2w+JhmcyJ/vZqTXKpYGPZYV op@desk\n"), 0o644)
	ac.AddSSHKey(t, pub)
	ac.SetConfig(t, "g8os/fs.toml", []byte("x = 1\n"))
	ac.ApproveMAC(t, "52:54:00:aa:bb:04")
	resp, err := ac.Client(t, testenv.NewNodeIdentity(t).Cert).Unlock(context.Background(), &acapi.UnlockRequest{MACs: []string{"52:54:00:aa:bb:04"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.AuthorizedKeys, "op@desk") || resp.Files["g8os/fs.toml"] != "x = 1\n" {
		t.Fatalf("unlock answer: keys %q files %v", resp.AuthorizedKeys, resp.Files)
	}
}

// g8-ac serve under a (fake) systemd: READY=1 on NOTIFY_SOCKET once
// serving, STOPPING=1 and exit 0 on SIGTERM.
func TestServeNotifiesSystemdAndStopsOnSIGTERM(t *testing.T) {
	bin := testenv.Bin(t, "g8-ac")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(bin, "init", "--data", data, "--name", "127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("init: %v %s", err, out)
	}
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(bin, "serve", "--data", data, "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v\n%s", err, out.String())
		}
		return string(buf[:n])
	}
	if msg := read(); !strings.Contains(msg, "READY=1") || strings.Count(msg, "127.0.0.1:") != 2 {
		t.Fatalf("first notification %q, want READY=1 with both addresses in STATUS", msg)
	}
	if msg := read(); !strings.Contains(msg, "STATUS=serving on 127.0.0.1:") || !strings.Contains(msg, "nodes: 0 approved, 0 pending") {
		t.Fatalf("status after READY: %q, want the listeners and node counts", msg)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for msg := read(); !strings.Contains(msg, "STOPPING=1"); msg = read() {
		if !strings.HasPrefix(msg, "STATUS=") {
			t.Fatalf("after SIGTERM: %q", msg)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
	}
}

// A controller reached by a new name gets a new server certificate from the
// same CA: node images keep their trust anchor.
func TestServerCertReissueKeepsTrustAnchor(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{Names: []string{"127.0.0.1"}})
	byName := func() error {
		pool, err := acapi.LoadPool(ac.TrustAnchor)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := acapi.NewClient(strings.Replace(ac.URL, "127.0.0.1", "localhost", 1), acapi.TLSConfig(pool, nil), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.HTTP.CloseIdleConnections()
		_, err = cl.Health(context.Background())
		return err
	}
	if err := byName(); err == nil || !strings.Contains(err.Error(), "localhost") {
		t.Fatalf("a name the certificate is not for: want a verification error, got %v", err)
	}
	anchor := ac.CLI(t, "ca")
	ac.CLI(t, "server-cert", "--name", "localhost,127.0.0.1")
	// SIGHUP switches certificates without a restart.
	if err := ac.Process().Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ac.Process().WaitOutput(t, "server certificate reloaded", 10*time.Second)
	if err := byName(); err != nil {
		t.Fatalf("after server-cert and SIGHUP: %v", err)
	}
	ac.Restart(t)
	if err := byName(); err != nil {
		t.Fatalf("after server-cert and a restart: %v", err)
	}
	if ac.CLI(t, "ca") != anchor {
		t.Fatal("server-cert changed the trust anchor")
	}
}
