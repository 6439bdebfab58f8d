package sshd_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/g8os/boot/tests/testenv"
)

// signCert runs `ssh-keygen -s ca` on key's public half with args (-I, -n,
// -V, -O, -h ...) and returns the certificate's path, which the OpenSSH
// client picks up beside the key (key-cert.pub).
func signCert(t *testing.T, ca, key string, args ...string) string {
	t.Helper()
	a := append([]string{"-q", "-s", ca}, args...)
	if out, err := exec.Command("ssh-keygen", append(a, key+".pub")...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s %s: %v: %s", ca, err, out)
	}
	return key + "-cert.pub"
}

// TestUserCertificates logs in with user certificates made by ssh-keygen -s
// against a cert-authority line, with the real OpenSSH client.
func TestUserCertificates(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	ca := keys.NewClientKey(t, "user-ca")
	opsCA := keys.NewClientKey(t, "ops-ca")
	keys.Authorize(t, "cert-authority", ca)
	keys.Authorize(t, `cert-authority,principals="ops,oncall"`, opsCA)
	d := startSSHD(t, keys)

	login := func(key string, cmd string) result {
		t.Helper()
		return run(t, keys.SSH(d.addr, key, cmd), "")
	}
	refused := func(name, key, reason string) {
		t.Helper()
		if r := login(key, "true"); r.code != 255 || !strings.Contains(r.stderr, "Permission denied (publickey)") {
			t.Errorf("%s: %+v", name, r)
		}
		d.waitLog(reason)
	}

	// The key itself is in no line: only its certificate lets it in.
	alice := keys.NewClientKey(t, "alice")
	refused("key without its certificate", alice, `reason="key not in authorized_keys"`)
	signCert(t, ca, alice, "-I", "alice@ops", "-n", "root", "-V", "-5m:+1h", "-z", "42")
	if r := login(alice, "echo cert-ok"); r.code != 0 || r.stdout != "cert-ok\n" {
		t.Fatalf("valid user certificate: %+v", r)
	}
	d.waitLog(`cert_id=alice@ops cert_serial=42`)

	// Another account's principal only.
	bob := keys.NewClientKey(t, "bob")
	signCert(t, ca, bob, "-I", "bob", "-n", "admin,backup", "-V", "-5m:+1h")
	refused("wrong principal", bob, `include none of [\"root\"]`)

	// Expired, and not yet valid.
	old := keys.NewClientKey(t, "old")
	signCert(t, ca, old, "-I", "old", "-n", "root", "-V", "20200101:20200102")
	refused("expired certificate", old, "cert has expired")
	early := keys.NewClientKey(t, "early")
	signCert(t, ca, early, "-I", "early", "-n", "root", "-V", "+1d:+2d")
	refused("certificate not yet valid", early, "cert is not yet valid")

	// A critical option this server does not enforce refuses the
	// certificate (verify-required: FIDO user verification).
	strict := keys.NewClientKey(t, "strict")
	signCert(t, ca, strict, "-I", "strict", "-n", "root", "-O", "verify-required")
	refused("unknown critical option", strict, `unsupported critical option \"verify-required\"`)

	// force-command and source-address are obeyed.
	forced := keys.NewClientKey(t, "forced")
	signCert(t, ca, forced, "-I", "forced", "-n", "root", "-O", `force-command=echo forced:$SSH_ORIGINAL_COMMAND`)
	if r := login(forced, "whoami"); r.code != 0 || r.stdout != "forced:whoami\n" {
		t.Errorf("force-command: %+v", r)
	}
	elsewhere := keys.NewClientKey(t, "elsewhere")
	signCert(t, ca, elsewhere, "-I", "elsewhere", "-n", "root", "-O", "source-address=10.0.0.0/8")
	refused("source-address", elsewhere, `source-address \"10.0.0.0/8\" does not match 127.0.0.1`)
	here := keys.NewClientKey(t, "here")
	signCert(t, ca, here, "-I", "here", "-n", "root", "-O", "source-address=10.0.0.0/8,127.0.0.0/8")
	if r := login(here, "echo here"); r.code != 0 {
		t.Errorf("matching source-address: %+v", r)
	}

	// principals= on the CA line replaces the user name; no-pty from a
	// certificate without permit-pty.
	oncall := keys.NewClientKey(t, "oncall")
	signCert(t, opsCA, oncall, "-I", "oncall", "-n", "oncall", "-O", "clear")
	if r := login(oncall, "echo via-principals"); r.code != 0 || r.stdout != "via-principals\n" {
		t.Errorf("principals=: %+v", r)
	}
	r := run(t, keys.SSH(d.addr, oncall, "-tt", "tty"), "")
	if !strings.Contains(r.stderr, "PTY allocation request failed") || strings.Contains(r.stdout, "/dev/pts") {
		t.Errorf("certificate without permit-pty got a terminal: %+v", r)
	}
	rootOnly := keys.NewClientKey(t, "rootonly")
	signCert(t, opsCA, rootOnly, "-I", "rootonly", "-n", "root")
	refused("principals= does not list the user", rootOnly, `include none of [\"ops\" \"oncall\"]`)
}

// TestHostCertificate: with the node's host key signed by a CA, the OpenSSH
// client accepts the node with nothing but that CA in known_hosts.
func TestHostCertificate(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	hostCA := keys.NewClientKey(t, "host-ca")
	hostKey := filepath.Join(keys.SSHDir, "ssh_host_ed25519_key")
	signCert(t, hostCA, hostKey, "-h", "-I", "node-1", "-n", "127.0.0.1,node-1", "-V", "-5m:+1h")
	d := startSSHD(t, keys)
	d.waitLog("host certificate loaded")

	host, port, _ := net.SplitHostPort(d.addr)
	trustOnly := func(caKey string) {
		t.Helper()
		line := "@cert-authority * " + keys.PublicKey(t, caKey) + "\n"
		if err := os.WriteFile(keys.KnownHosts, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	trustOnly(hostCA)
	cmd := keys.SSH(d.addr, "", "-v", "echo trusted")
	r := run(t, cmd, "")
	if r.code != 0 || r.stdout != "trusted\n" {
		t.Fatalf("host certificate with only the CA in known_hosts: %+v", r)
	}
	if !strings.Contains(r.stderr, `Server host certificate: ssh-ed25519-cert-v01@openssh.com`) || !strings.Contains(r.stderr, `ID "node-1"`) ||
		!strings.Contains(r.stderr, "Host '["+host+"]:"+port+"' is known and matches the ED25519-CERT host certificate") {
		t.Errorf("the client did not verify the host certificate:\n%s", r.stderr)
	}

	// Another CA in known_hosts: strict checking refuses the node.
	trustOnly(keys.NewClientKey(t, "other-ca"))
	if r := run(t, keys.SSH(d.addr, "", "true"), ""); r.code != 255 || !strings.Contains(r.stderr, "Host key verification failed") {
		t.Errorf("host certificate of an untrusted CA accepted: %+v", r)
	}
}
