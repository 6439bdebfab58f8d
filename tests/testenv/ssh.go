package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// SSHKeys is an ssh dir as enrollment leaves it (an ed25519 host key and
// authorized_keys) plus client keys and a known_hosts file, for driving an
// SSH server with the real OpenSSH client in strict mode.
type SSHKeys struct {
	Dir        string // scratch dir holding everything below
	SSHDir     string // ssh_host_ed25519_key, authorized_keys
	ClientKey  string // private key listed in authorized_keys
	KnownHosts string // written by TrustHost
}

// NewSSHKeys generates the host key and one authorized client key with
// ssh-keygen.
func NewSSHKeys(t testing.TB) *SSHKeys {
	t.Helper()
	dir := t.TempDir()
	k := &SSHKeys{Dir: dir, SSHDir: filepath.Join(dir, "ssh"), KnownHosts: filepath.Join(dir, "known_hosts")}
	if err := os.Mkdir(k.SSHDir, 0o700); err != nil {
		t.Fatal(err)
	}
	keygen(t, filepath.Join(k.SSHDir, "ssh_host_ed25519_key"), "ed25519")
	k.ClientKey = k.NewClientKey(t, "operator")
	k.Authorize(t, "", k.ClientKey)
	return k
}

func keygen(t testing.TB, path, typ string) {
	t.Helper()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", typ, "-N", "", "-C", filepath.Base(path), "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %s: %v: %s", path, err, out)
	}
}

// NewClientKey makes another client key (not yet authorized).
func (k *SSHKeys) NewClientKey(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(k.Dir, "id_"+name)
	keygen(t, p, "ed25519")
	return p
}

// PublicKey is the authorized_keys form of a key file's public half.
func (k *SSHKeys) PublicKey(t testing.TB, key string) string {
	t.Helper()
	b, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Authorize appends key to authorized_keys, with options (e.g.
// `command="date"`) unless empty.
func (k *SSHKeys) Authorize(t testing.TB, options, key string) {
	t.Helper()
	line := k.PublicKey(t, key)
	if options != "" {
		line = options + " " + line
	}
	k.AppendAuthorizedKeys(t, line)
}

// AppendAuthorizedKeys appends a raw line to authorized_keys.
func (k *SSHKeys) AppendAuthorizedKeys(t testing.TB, line string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(k.SSHDir, "authorized_keys"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

// TrustHost writes known_hosts so the client accepts the host key at addr
// (host:port) and nothing else.
func (k *SSHKeys) TrustHost(t testing.TB, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.PublicKey(t, filepath.Join(k.SSHDir, "ssh_host_ed25519_key"))
	f := strings.Fields(pub)
	line := "[" + host + "]:" + port + " " + f[0] + " " + f[1] + "\n"
	if err := os.WriteFile(k.KnownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ClientOptions are the OpenSSH client options for a strict, batch,
// config-free connection with key.
func (k *SSHKeys) ClientOptions(key string) []string {
	return []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + k.KnownHosts, "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
		"-o", "ConnectTimeout=30", "-i", key}
}

// SSH is `ssh root@host -p port args...` with key (ClientKey if "").
func (k *SSHKeys) SSH(addr, key string, args ...string) *exec.Cmd {
	if key == "" {
		key = k.ClientKey
	}
	host, port, _ := net.SplitHostPort(addr)
	a := append(k.ClientOptions(key), "-p", port, "root@"+host)
	return exec.Command("ssh", append(a, args...)...)
}

// SCP is `scp -P port args...`; remote paths are written "root@HOST:path"
// with HOST as in addr.
func (k *SSHKeys) SCP(addr string, args ...string) *exec.Cmd {
	_, port, _ := net.SplitHostPort(addr)
	a := append(k.ClientOptions(k.ClientKey), "-P", port)
	return exec.Command("scp", append(a, args...)...)
}

// SFTP runs `sftp -b batchfile` against addr.
func (k *SSHKeys) SFTP(addr, batch string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	a := append(k.ClientOptions(k.ClientKey), "-P", port, "-b", batch, "root@"+host)
	return exec.Command("sftp", a...)
}
