// Package unlock_test runs the real g8-unlock binary against the real g8-ac
// across network namespaces, with real encfs and gocryptfs mounts.
package unlock_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/recovery"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/internal/unlock/backend"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var backends = []string{"encfs", "gocryptfs"}

// rig is a node namespace linked to a controller namespace running the
// real g8-ac, with the node's directories on this machine.
type rig struct {
	Backend  string
	AC       *testenv.Controller
	ACHost   *testenv.Host
	Node     *testenv.Host
	MAC      string
	StateDir string
	Private  string
	Mount    string
	// IdentityDir holds the node identity key g8-unlock makes at its
	// first start and proves on every request.
	IdentityDir string
}

func newRig(t *testing.T, be string, acArgs ...string) *rig {
	t.Helper()
	testenv.RequireRoot(t, "nsenter", "curl", "fusermount3", be)
	tp := testenv.NewTopology(t)
	r := &rig{Backend: be, ACHost: tp.Host("ac"), Node: tp.Host("node")}
	tp.Link(r.Node, "eth0", r.ACHost, "eth0")
	r.ACHost.Addr("eth0", "10.254.254.254/24")
	r.Node.Addr("eth0", "10.254.254.10/24")
	r.AC = testenv.StartController(t, r.ACHost, testenv.ControllerOptions{Args: acArgs})
	r.MAC = r.Node.MAC("eth0")
	dir := t.TempDir()
	r.StateDir, r.Private, r.Mount = filepath.Join(dir, "run"), filepath.Join(dir, "private"), filepath.Join(dir, "mnt")
	r.IdentityDir = filepath.Join(dir, "identity")
	r.writeNet(t)
	// Registered before any g8-unlock starts, so it runs after they are
	// stopped: no mount outlives the test.
	t.Cleanup(func() { _ = unmountIfMounted(r.Mount) })
	return r
}

func unmountIfMounted(mnt string) error {
	if info, _ := backend.MountAt(mnt); info != nil {
		return backend.Unmount("", mnt)
	}
	return nil
}

// writeNet plays g8-netup: the controller was found through eth0.
func (r *rig) writeNet(t *testing.T) {
	t.Helper()
	now := time.Now().UTC()
	if err := state.Write(r.StateDir, &state.Net{Controller: r.AC.URL, Interface: "eth0", MAC: r.MAC, Method: "static",
		Address: "10.254.254.10/24", StartedAt: now, ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
}

// unlockRun is one g8-unlock process.
type unlockRun struct {
	*testenv.Process
	Notify *testenv.Notify
}

// start runs g8-unlock in the node's network namespace but this machine's
// mount namespace (nsenter --net, not `ip netns exec`, which unshares the
// mounts), so the test sees the mount it makes.
func (r *rig) start(t *testing.T, extra ...string) *unlockRun {
	t.Helper()
	ns := testenv.NotifySocket(t)
	args := []string{"--net=/run/netns/" + r.Node.NS, "--", testenv.Bin(t, "g8-unlock"),
		"--state-dir", r.StateDir, "--private", r.Private, "--mount", r.Mount, "--backend", r.Backend,
		"--trust-anchor", r.AC.TrustAnchor, "--identity-dir", r.IdentityDir, "--gocryptfs-scryptn", "10", "--debug"}
	cmd := exec.Command("nsenter", append(args, extra...)...)
	cmd.Env = append(os.Environ(), ns.Env())
	return &unlockRun{Process: r.Node.StartCmd(cmd, "g8-unlock"), Notify: ns}
}

func (u *unlockRun) waitReady(t *testing.T) {
	t.Helper()
	u.waitStatus(t, "READY=1", 60*time.Second)
}

// waitStatus waits for a notification containing s, failing early when
// g8-unlock exits.
func (u *unlockRun) waitStatus(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, m := range u.Notify.Messages() {
			if strings.Contains(m, s) {
				return
			}
		}
		select {
		case <-u.Done():
			t.Fatalf("g8-unlock exited before notifying %q; statuses %q:\n%s", s, u.Notify.Statuses(), u.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no %q notification within %v; statuses %q", s, timeout, u.Notify.Statuses())
}

// exitCode waits for the process and returns its exit status.
func (u *unlockRun) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-u.Done():
	case <-time.After(timeout):
		t.Fatalf("g8-unlock still running after %v:\n%s", timeout, u.Output())
	}
	var ee *exec.ExitError
	if err := u.Err(); errors.As(err, &ee) {
		return ee.ExitCode()
	} else if err != nil {
		t.Fatalf("g8-unlock: %v", err)
	}
	return 0
}

// stop sends SIGTERM and expects a clean exit with the config unmounted.
func (r *rig) stop(t *testing.T, u *unlockRun) {
	t.Helper()
	if err := u.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := u.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d:\n%s", code, u.Output())
	}
	if info, _ := backend.MountAt(r.Mount); info != nil {
		t.Fatalf("still mounted after SIGTERM: %+v", info)
	}
	if _, err := os.Stat(filepath.Join(r.StateDir, "unlock.json")); !os.IsNotExist(err) {
		t.Fatalf("unlock.json left after stop: %v", err)
	}
}

// boot runs g8-unlock until READY and stops it again.
func (r *rig) boot(t *testing.T) {
	t.Helper()
	u := r.start(t)
	u.waitReady(t)
	r.stop(t, u)
}

func (r *rig) mounts(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == r.Mount {
			n++
		}
	}
	return n
}

func (r *rig) read(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.Mount, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (r *rig) state(t *testing.T) state.Unlock {
	t.Helper()
	var st state.Unlock
	if err := state.Read(r.StateDir, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// ask sends one unlock request from the node's namespace (verified TLS,
// curl) and returns the answer.
func (r *rig) ask(t *testing.T, req acapi.UnlockRequest) *acapi.UnlockResponse {
	t.Helper()
	id := testenv.NodeIdentityFrom(t, filepath.Join(r.IdentityDir, "node.key"))
	resp, code, body := testenv.CurlUnlock(t, r.AC, r.Node, id, &req)
	if code != 200 {
		t.Fatalf("unlock answer %d %q", code, body)
	}
	return resp
}

// metadata reads the node's key-recovery metadata beside the private dir.
func (r *rig) metadata(t *testing.T) *recovery.Metadata {
	t.Helper()
	b, err := os.ReadFile(r.Private + ".recovery.json")
	if err != nil {
		t.Fatal(err)
	}
	md, err := recovery.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

// nodeKey recovers the node's disk key the way the node does (its
// metadata, one blinded exchange from the node's namespace), so the test
// can look for it or mount by hand.
func (r *rig) nodeKey(t *testing.T) []byte {
	t.Helper()
	md := r.metadata(t)
	b, err := md.Pins[0].Blind()
	if err != nil {
		t.Fatal(err)
	}
	resp := r.ask(t, acapi.UnlockRequest{MACs: []string{r.MAC}, Recovery: []recovery.Exchange{b.Exchange}, KeyRewrapped: true})
	if len(resp.Recovery) != 1 {
		t.Fatalf("unlock answer: %d recovery replies", len(resp.Recovery))
	}
	share, err := b.Unblind(resp.Recovery[0])
	if err != nil {
		t.Fatal(err)
	}
	key, err := md.Combine(map[int][]byte{md.Pins[0].Index: share})
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func sshKeyFile(t *testing.T, comment string) (string, string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " " + comment
	f := filepath.Join(t.TempDir(), comment+".pub")
	if err := os.WriteFile(f, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f, line
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestFirstBootEnrollsSecondBootReuses(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			nodeID := r.AC.ApproveMAC(t, r.MAC)
			opFile, opKey := sshKeyFile(t, "operator")
			r.AC.AddSSHKey(t, opFile)
			r.AC.SetConfig(t, "g8os/fs.toml", []byte("# sandboxes\n"))

			u := r.start(t)
			u.waitReady(t)
			if n := r.mounts(t); n != 1 {
				t.Fatalf("%d mounts at %s, want 1", n, r.Mount)
			}
			info, _ := backend.MountAt(r.Mount)
			if info.FSType != "fuse."+be {
				t.Fatalf("mounted %s, want fuse.%s", info.FSType, be)
			}
			st := r.state(t)
			if st.NodeID != nodeID || !st.Enrolled || st.Backend != be || st.Mountpoint != r.Mount || st.CertExpiry.IsZero() || st.FUSEPID == 0 {
				t.Fatalf("unlock.json: %+v", st)
			}

			// The identity: a certificate for this node from the node CA,
			// whose key is the one next to it.
			cert := parseCert(t, r.read(t, "ssl/node.pem"))
			if cert.Subject.CommonName != nodeID {
				t.Errorf("certificate for %q, want node %s", cert.Subject.CommonName, nodeID)
			}
			if _, err := tlsPair(r.read(t, "ssl/node.pem"), r.read(t, "ssl/node.key")); err != nil {
				t.Errorf("node.pem/node.key: %v", err)
			}
			if !bytes.Contains(r.read(t, "ssl/ca.pem"), []byte("BEGIN CERTIFICATE")) {
				t.Error("ca.pem holds no certificate")
			}
			if m := mode(t, filepath.Join(r.Mount, "ssl/node.key")); m != 0o600 {
				t.Errorf("node.key mode %v", m)
			}
			hostKey := r.read(t, "ssh/ssh_host_ed25519_key")
			signer, err := ssh.ParsePrivateKey(hostKey)
			if err != nil || signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
				t.Fatalf("host key: %v", err)
			}
			if m := mode(t, filepath.Join(r.Mount, "ssh/ssh_host_ed25519_key")); m != 0o600 {
				t.Errorf("host key mode %v", m)
			}
			if pub, _, _, _, err := ssh.ParseAuthorizedKey(r.read(t, "ssh/ssh_host_ed25519_key.pub")); err != nil || !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) {
				t.Errorf(".pub does not match the host key: %v", err)
			}
			if !strings.Contains(string(r.read(t, "ssh/authorized_keys")), opKey) {
				t.Errorf("authorized_keys lacks the operator key:\n%s", r.read(t, "ssh/authorized_keys"))
			}
			if got := string(r.read(t, "g8os/fs.toml")); got != "# sandboxes\n" {
				t.Errorf("fs.toml = %q", got)
			}

			// The key travels on a pipe only: not in any process's argv or
			// environment while mounted, not in logs or the state file.
			key := r.nodeKey(t)
			forms := [][]byte{key, []byte(hex.EncodeToString(key)), []byte(base64.StdEncoding.EncodeToString(key))}
			assertKeyNowhere(t, forms, u.Output(), filepath.Join(r.StateDir, "unlock.json"))

			r.stop(t, u)
			if _, err := os.Stat(filepath.Join(r.Mount, "ssl/node.pem")); !os.IsNotExist(err) {
				t.Fatalf("config visible after unmount: %v", err)
			}

			// Second boot: same dir, same identity, authorized_keys refreshed.
			op2File, op2Key := sshKeyFile(t, "operator2")
			r.AC.AddSSHKey(t, op2File)
			u = r.start(t)
			u.waitReady(t)
			st = r.state(t)
			if st.NodeID != nodeID || st.Enrolled {
				t.Fatalf("second boot unlock.json: %+v", st)
			}
			if !bytes.Equal(r.read(t, "ssh/ssh_host_ed25519_key"), hostKey) {
				t.Error("host key changed on the second boot")
			}
			if !parseCert(t, r.read(t, "ssl/node.pem")).Equal(cert) {
				t.Error("certificate replaced on the second boot though far from expiry")
			}
			if ak := string(r.read(t, "ssh/authorized_keys")); !strings.Contains(ak, op2Key) || !strings.Contains(ak, opKey) {
				t.Errorf("authorized_keys not refreshed:\n%s", ak)
			}
			r.stop(t, u)
		})
	}
}

func assertKeyNowhere(t *testing.T, forms [][]byte, logs, stateFile string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	checked := 0
	for _, p := range procs {
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(filepath.Join(p, f))
			if err != nil {
				continue // gone, or a kernel thread
			}
			checked++
			for _, k := range forms {
				if bytes.Contains(b, k) {
					cmd, _ := os.ReadFile(filepath.Join(p, "cmdline"))
					t.Errorf("the key is in %s/%s (%q)", p, f, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d /proc files readable", checked)
	}
	st, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range forms {
		if bytes.Contains([]byte(logs), k) || bytes.Contains(st, k) {
			t.Error("the key is in the log or unlock.json")
		}
	}
}

func parseCert(t *testing.T, pemText []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(pemText)
	if b == nil {
		t.Fatalf("no PEM in %q", pemText)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPendingUntilApproved(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			u := r.start(t)
			u.waitStatus(t, "waiting for approval of node "+r.MAC+" at "+r.AC.URL, 30*time.Second)
			time.Sleep(1500 * time.Millisecond) // a second round: still pending, still unmounted
			if r.mounts(t) != 0 || u.Notify.Has("READY=1") {
				t.Fatal("mounted before approval")
			}
			r.AC.CLI(t, "node", "approve", r.MAC)
			u.waitReady(t)
			if !r.state(t).Enrolled {
				t.Fatal("not enrolled after approval")
			}
			r.stop(t, u)
		})
	}
}

func TestDeniedNeverMounts(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			u := r.start(t, "--denied-retry", "1s")
			u.waitStatus(t, "waiting for approval", 30*time.Second)
			r.AC.CLI(t, "node", "deny", r.MAC)
			u.waitStatus(t, "denied by "+r.AC.URL+" for node "+r.MAC, 30*time.Second)
			time.Sleep(2500 * time.Millisecond) // asks again (--denied-retry 1s) and stays denied
			select {
			case <-u.Done():
				t.Fatalf("gave up after a denial:\n%s", u.Output())
			default:
			}
			if r.mounts(t) != 0 || u.Notify.Has("READY=1") {
				t.Fatal("a denied node mounted its config")
			}
			if entries, _ := os.ReadDir(r.Private); len(entries) != 0 {
				t.Fatalf("denied node created its private dir: %v", entries)
			}
			if _, err := os.Stat(filepath.Join(r.StateDir, "unlock.json")); !os.IsNotExist(err) {
				t.Fatalf("unlock.json written for a denied node: %v", err)
			}
			if err := u.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := u.exitCode(t, 10*time.Second); code != 0 {
				t.Fatalf("SIGTERM while denied: exit %d", code)
			}
		})
	}
}

func TestWrongKeyLeavesPrivateDirUntouched(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			first := r.AC.ApproveMAC(t, r.MAC)
			u := r.start(t)
			u.waitReady(t)
			r.stop(t, u)

			// The encrypted dir in another node: a new MAC and its own
			// identity key are another node with another disk key. (The
			// whole disk, identity key included, would be the first node
			// asking under a foreign MAC: 409, see tests/ac.)
			other := "02:00:5e:10:20:30"
			r.Node.MustRun("ip", "link", "set", "eth0", "address", other)
			r.MAC = other
			r.IdentityDir = filepath.Join(t.TempDir(), "identity")
			r.writeNet(t)
			second := r.AC.ApproveMAC(t, other)
			before := testenv.HashTree(t, r.Private)

			u = r.start(t)
			if code := u.exitCode(t, 60*time.Second); code != 10 {
				t.Fatalf("exit %d, want 10 (wrong key):\n%s", code, u.Output())
			}
			out := u.Output()
			for _, want := range []string{"node " + second, other, r.Private, "does not open"} {
				if !strings.Contains(out, want) {
					t.Errorf("error does not name %q:\n%s", want, out)
				}
			}
			if after := testenv.HashTree(t, r.Private); after != before {
				t.Fatal("the private dir changed")
			}
			if r.mounts(t) != 0 {
				t.Fatal("mounted with the wrong key")
			}
			_ = first
		})
	}
}

func TestKillingFUSEChildFailsTheRun(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			r.AC.ApproveMAC(t, r.MAC)
			u := r.start(t)
			u.waitReady(t)
			pid := r.state(t).FUSEPID
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			if !strings.HasPrefix(string(comm), be) {
				t.Fatalf("unlock.json fuse_pid %d is %q, want %s", pid, comm, be)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if code := u.exitCode(t, 20*time.Second); code != 12 {
				t.Fatalf("exit %d after the FUSE child died, want 12:\n%s", code, u.Output())
			}
			if !strings.Contains(u.Output(), "FUSE process exited") {
				t.Errorf("no loud error:\n%s", u.Output())
			}
			if r.mounts(t) != 0 {
				t.Fatal("dead mount left behind")
			}
		})
	}
}

// TestRestartIsSafe: a dead mount, a healthy mount nobody owns, and a hard
// kill of g8-unlock itself all end in exactly one mount under the new run.
func TestRestartIsSafe(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			r.AC.ApproveMAC(t, r.MAC)
			u := r.start(t)
			u.waitReady(t)
			r.stop(t, u)
			key := r.nodeKey(t)
			password := hex.EncodeToString(key)

			// A dead mount: the tool mounted by hand, then killed.
			hand := r.handMount(t, password)
			r.killHandMount(t, hand)
			if !backend.Stale(r.Mount) {
				t.Fatal("no stale mount to start from")
			}
			u = r.start(t)
			u.waitReady(t)
			if n := r.mounts(t); n != 1 {
				t.Fatalf("%d mounts after cleaning a stale one", n)
			}
			if !strings.Contains(u.Output(), "dead FUSE mount") {
				t.Errorf("stale mount cleanup not logged:\n%s", u.Output())
			}

			// g8-unlock killed hard (a crash): its FUSE child keeps serving,
			// and the next start adopts it instead of mounting again.
			var before unix.Stat_t
			if err := unix.Stat(r.Mount, &before); err != nil {
				t.Fatal(err)
			}
			held, err := os.Open(filepath.Join(r.Mount, "ssl", "ca.pem"))
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			fusePID := r.state(t).FUSEPID
			if err := u.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			u.exitCode(t, 10*time.Second)
			if backend.Stale(r.Mount) {
				t.Fatal("the mount died with g8-unlock")
			}
			u = r.start(t)
			u.waitReady(t)
			var after unix.Stat_t
			if err := unix.Stat(r.Mount, &after); err != nil {
				t.Fatal(err)
			}
			if n := r.mounts(t); n != 1 || after.Dev != before.Dev || r.state(t).FUSEPID != fusePID {
				t.Fatalf("after a hard kill: %d mounts, device %d -> %d, FUSE pid %d -> %d", n, before.Dev, after.Dev, fusePID, r.state(t).FUSEPID)
			}
			if !strings.Contains(u.Output(), sd.UnlockAdopted.ID) {
				t.Errorf("adoption not logged:\n%s", u.Output())
			}
			for _, st := range u.Notify.Statuses() {
				if strings.Contains(st, "asking the controller") {
					t.Errorf("the adopting g8-unlock asked the controller for the key: %q", st)
				}
			}
			if _, err := held.ReadAt(make([]byte, 16), 0); err != nil {
				t.Errorf("a file opened before the kill: %v", err)
			}
			r.stop(t, u)

			// A healthy mount of the config that no g8-unlock owns is
			// remounted under the new run, not mounted over.
			hand = r.handMount(t, password)
			u = r.start(t)
			u.waitReady(t)
			hand.Wait()
			if n := r.mounts(t); n != 1 {
				t.Fatalf("%d mounts over a healthy one", n)
			}
			if pid := r.state(t).FUSEPID; pid == hand.Process.Pid {
				t.Fatal("state names the hand-started FUSE process")
			}
			r.stop(t, u)
		})
	}
}

// handMount mounts the way an operator on the node would, with the tool's
// own CLI, in the node's network namespace like g8-unlock.
// killHandMount kills a hand-made mount's daemon hard. A FUSE daemon killed
// while one of its own threads waits on its fresh mount (go-fuse does that
// at start-up) never finishes exiting; g8-unlock aborts the connection in
// that case, and so does the test, so that what remains is a dead mount.
func (r *rig) killHandMount(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	_ = cmd.Process.Kill()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(3 * time.Second):
	}
	if err := backend.AbortAt(r.Mount); err != nil {
		t.Fatalf("hand mount daemon hangs in its exit and its connection could not be aborted: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("hand mount daemon did not exit after its connection was aborted")
	}
}

func (r *rig) handMount(t *testing.T, password string) *exec.Cmd {
	t.Helper()
	args := []string{"--net=/run/netns/" + r.Node.NS, "--"}
	if r.Backend == "encfs" {
		args = append(args, "encfs", "-f", "--require-macs", "--stdinpass", r.Private, r.Mount)
	} else {
		args = append(args, "gocryptfs", "-q", "-nosyslog", "-fg", r.Private, r.Mount)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Stdin = strings.NewReader(password + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if info, _ := backend.MountAt(r.Mount); info != nil {
			return cmd
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("hand mount with %s did not appear: %s", r.Backend, out.String())
	return nil
}

func TestBadInput(t *testing.T) {
	testenv.RequireRoot(t, "encfs")
	bin := testenv.Bin(t, "g8-unlock")
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.MkdirAll(junk, 0o700)
	os.WriteFile(filepath.Join(junk, "notes.txt"), []byte("x"), 0o600)
	full := filepath.Join(dir, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "motd"), []byte("x"), 0o644)
	foreign := filepath.Join(dir, "foreign")
	os.MkdirAll(foreign, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "g8test", foreign).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", foreign).Run() })
	anchor := filepath.Join(dir, "ca.pem")
	os.WriteFile(anchor, []byte("not a certificate"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing tool", []string{"--encfs", "/nonexistent/encfs"}, 3, "/nonexistent/encfs"},
		{"unknown backend", []string{"--backend", "ecryptfs"}, 3, "ecryptfs"},
		{"bad trust anchor", []string{"--trust-anchor", anchor}, 3, anchor},
		{"relative private", []string{"--private", "private"}, 3, "--private"},
		{"mountpoint not empty", []string{"--mount", full}, 1, "mountpoint busy: not empty (holds motd)"},
		{"mountpoint holds another mount", []string{"--mount", foreign}, 1, "tmpfs from g8test is mounted there"},
		{"corrupt private dir", []string{"--private", junk, "--trust-anchor", testTrustAnchor(t)}, 11, junk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--state-dir", filepath.Join(dir, "run"), "--private", filepath.Join(dir, "p"),
				"--mount", filepath.Join(dir, "m"), "--identity-dir", filepath.Join(dir, "identity"), "--trust-anchor", testTrustAnchor(t)}, tc.args...)
			cmd := exec.Command(bin, args...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, want %d naming %q:\n%s", err, tc.code, tc.want, out)
			}
		})
	}
}

// testTrustAnchor is a valid self-signed certificate: the bad-input cases
// fail before any controller is asked.
func testTrustAnchor(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test anchor"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "anchor.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func tlsPair(certPEM, keyPEM []byte) (any, error) { return tls.X509KeyPair(certPEM, keyPEM) }

// TestLostCertificateIsReissued: a later boot whose config lacks the
// certificate (an enrollment cut short, a renewal due) asks the controller
// again with a fresh key and CSR, and keeps the host key.
func TestLostCertificateIsReissued(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			r := newRig(t, be)
			r.AC.ApproveMAC(t, r.MAC)
			u := r.start(t)
			u.waitReady(t)
			oldKey, hostKey := r.read(t, "ssl/node.key"), r.read(t, "ssh/ssh_host_ed25519_key")
			r.stop(t, u)

			hand := r.handMount(t, hex.EncodeToString(r.nodeKey(t)))
			if err := os.Remove(filepath.Join(r.Mount, "ssl/node.pem")); err != nil {
				t.Fatal(err)
			}
			if err := backend.Unmount("", r.Mount); err != nil {
				t.Fatal(err)
			}
			hand.Wait()

			u = r.start(t)
			u.waitReady(t)
			if _, err := tlsPair(r.read(t, "ssl/node.pem"), r.read(t, "ssl/node.key")); err != nil {
				t.Fatalf("reissued identity: %v", err)
			}
			if bytes.Equal(r.read(t, "ssl/node.key"), oldKey) {
				t.Error("the reissued certificate reuses the old key")
			}
			if !bytes.Equal(r.read(t, "ssh/ssh_host_ed25519_key"), hostKey) {
				t.Error("host key changed")
			}
			if st := r.state(t); st.CertExpiry.IsZero() || st.Enrolled {
				t.Errorf("unlock.json: %+v", st)
			}
			if !strings.Contains(u.Output(), "requesting a new certificate") {
				t.Errorf("no renewal in the log:\n%s", u.Output())
			}
			r.stop(t, u)
		})
	}
}

// TestSIGTERMWhileMounting: a stop that arrives while the tool is still
// deriving its key is a clean stop, and nothing stays mounted.
func TestSIGTERMWhileMounting(t *testing.T) {
	r := newRig(t, "encfs") // its key derivation leaves time to interrupt it
	r.AC.ApproveMAC(t, r.MAC)
	u := r.start(t)
	u.waitReady(t)
	r.stop(t, u)

	u = r.start(t)
	u.waitStatus(t, "STATUS=mounting", 30*time.Second)
	if err := u.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := u.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, u.Output())
	}
	if r.mounts(t) != 0 {
		t.Fatalf("mounted after a stop during the mount:\n%s", u.Output())
	}
	if !strings.Contains(u.Output(), "stopping") {
		t.Fatalf("no clean stop logged:\n%s", u.Output())
	}
}

// TestFollowsNetJSON: before g8-netup found a controller g8-unlock waits
// and says so; a controller written into net.json later is used.
func TestFollowsNetJSON(t *testing.T) {
	r := newRig(t, "gocryptfs")
	r.AC.ApproveMAC(t, r.MAC)
	if err := os.Remove(filepath.Join(r.StateDir, "net.json")); err != nil {
		t.Fatal(err)
	}
	u := r.start(t)
	u.waitStatus(t, "waiting for g8-netup to find a controller", 30*time.Second)
	if r.mounts(t) != 0 {
		t.Fatal("mounted without a controller")
	}
	r.writeNet(t)
	u.waitReady(t)
	if st := r.state(t); st.Controller != r.AC.URL || len(st.MACs) == 0 || st.MACs[0] != r.MAC {
		t.Fatalf("unlock.json: %+v", st)
	}

	// A second instance must not fight the first over the mount.
	second := r.start(t)
	if code := second.exitCode(t, 30*time.Second); code != 1 || !strings.Contains(second.Output(), "another g8-unlock") {
		t.Fatalf("second instance: exit %d:\n%s", code, second.Output())
	}
	if n := r.mounts(t); n != 1 {
		t.Fatalf("%d mounts with two instances", n)
	}
	r.stop(t, u)
}

// The node's identity key: made at the first start (0600 in a 0700 dir,
// outside the encrypted config), its fingerprint on the console while the
// node waits, the operator approving that fingerprint. A replaced machine
// (a new key) is refused until `g8-ac node rekey` and a fresh approval;
// the old disk then still opens.
func TestIdentityKeyApprovedAndRekeyed(t *testing.T) {
	r := newRig(t, "gocryptfs")
	u := r.start(t)
	u.waitStatus(t, "waiting for approval of node "+r.MAC, 30*time.Second)
	keyPath := filepath.Join(r.IdentityDir, "node.key")
	if mode(t, r.IdentityDir) != 0o700 || mode(t, keyPath) != 0o600 {
		t.Fatalf("identity dir %v, key %v; want 0700 and 0600", mode(t, r.IdentityDir), mode(t, keyPath))
	}
	fp := testenv.NodeIdentityFrom(t, keyPath).Fingerprint
	u.waitStatus(t, "--fingerprint "+fp, 10*time.Second)
	if list := r.AC.CLI(t, "node", "list"); !strings.Contains(list, fp) {
		t.Fatalf("node list does not show the node's fingerprint %s:\n%s", fp, list)
	}
	if _, stderr, code := r.AC.RunCLI("node", "approve", r.MAC, "--fingerprint", "SHA256:not-this-machine"); code != 3 {
		t.Fatalf("approve with another fingerprint: exit %d (%s)", code, stderr)
	}
	if out := r.AC.CLI(t, "node", "approve", r.MAC, "--fingerprint", fp); !strings.Contains(out, fp) {
		t.Fatalf("approve prints %q, want the fingerprint", out)
	}
	u.waitReady(t)
	r.stop(t, u)

	// The machine is replaced: same disk and MAC, another identity key.
	if err := os.RemoveAll(r.IdentityDir); err != nil {
		t.Fatal(err)
	}
	u = r.start(t, "--denied-retry", "1s")
	u.waitStatus(t, "is not the one this node enrolled with", 30*time.Second)
	time.Sleep(1500 * time.Millisecond)
	if r.mounts(t) != 0 || u.Notify.Has("READY=1") {
		t.Fatal("a machine with another identity key mounted the config")
	}
	newFP := testenv.NodeIdentityFrom(t, keyPath).Fingerprint
	if newFP == fp {
		t.Fatal("the new key has the old fingerprint")
	}
	r.AC.CLI(t, "node", "rekey", r.MAC)
	u.waitStatus(t, "--fingerprint "+newFP, 30*time.Second)
	r.AC.CLI(t, "node", "approve", r.MAC, "--fingerprint", newFP)
	u.waitReady(t)
	r.stop(t, u)
}

// Two controllers of one fleet, the first listed dead (killed, its address
// still routed): g8-unlock skips it at once for the next one in net.json's
// list, unlocks, and says in unlock.json which one answered.
func TestFailsOverToTheNextController(t *testing.T) {
	r := newRig(t, "gocryptfs")
	id := r.AC.ApproveMAC(t, r.MAC)
	r.ACHost.Addr("eth0", "10.254.254.253/24")
	// The fleet's certificate names every controller address nodes use.
	r.AC.CLI(t, "server-cert", "--name", "10.254.254.254,10.254.254.253")
	second := r.AC.Peer(t, r.ACHost, "10.254.254.253:8444") // the first listens on 0.0.0.0:8443
	r.AC.Kill(t)
	now := time.Now().UTC()
	if err := state.Write(r.StateDir, &state.Net{Controller: r.AC.URL, Controllers: []string{r.AC.URL, second.URL},
		Interface: "eth0", MAC: r.MAC, Method: "static", Address: "10.254.254.10/24", StartedAt: now, ReadyAt: now}); err != nil {
		t.Fatal(err)
	}
	u := r.start(t)
	u.waitReady(t)
	if st := r.state(t); st.Controller != second.URL || st.NodeID != id {
		t.Fatalf("unlock.json: controller %s node %s, want %s %s", st.Controller, st.NodeID, second.URL, id)
	}
	if !strings.Contains(u.Output(), "trying the next one listed") || !strings.Contains(u.Output(), r.AC.URL) {
		t.Errorf("the skipped controller was not logged:\n%s", u.Output())
	}
	r.stop(t, u)
}
