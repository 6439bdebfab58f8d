package ac_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/tests/testenv"
)

// lan is the issue-12 setting: the controller, an enrolled node and an
// attacker on one Ethernet segment (a bridge in the controller's
// namespace). The attacker sees the node's MAC (ARP) and nothing else.
type lan struct {
	ac       *testenv.Controller
	node     *testenv.Host
	attacker *testenv.Host
	victim   *testenv.Enrolled
}

func newLAN(t *testing.T, acArgs ...string) *lan {
	t.Helper()
	testenv.RequireRoot(t, "curl")
	tp := testenv.NewTopology(t)
	acHost, node, attacker := tp.Host("ac"), tp.Host("node"), tp.Host("evil")
	tp.Link(acHost, "eth0", node, "eth0")
	tp.Link(acHost, "eth1", attacker, "eth0")
	acHost.Bridge("br0", "eth0", "eth1")
	acHost.Addr("br0", "10.254.254.254/24")
	node.Addr("eth0", "10.254.254.10/24")
	attacker.Addr("eth0", "10.254.254.66/24")
	ac := testenv.StartController(t, acHost, testenv.ControllerOptions{Args: acArgs})
	victim := testenv.EnrollNode(t, ac, node, node.MAC("eth0"))
	return &lan{ac: ac, node: node, attacker: attacker, victim: victim}
}

// onLoopback is a controller on this machine's loopback and a node
// enrolled from this process, for the tests that drive the API with Go's
// client (the node's requests, not an attacker's from elsewhere).
func onLoopback(t *testing.T, acArgs ...string) *lan {
	t.Helper()
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{Args: acArgs})
	return &lan{ac: ac, victim: testenv.EnrollNode(t, ac, nil, "52:54:00:12:00:01")}
}

func attackerCSR(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "evil"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// noSecrets fails when an answer body carries anything of the node's.
func noSecrets(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range []string{`"key"`, `"cert"`, `"authorized_keys"`, `"files"`, "BEGIN CERTIFICATE"} {
		if strings.Contains(body, s) {
			t.Fatalf("%s: the answer carries %s: %s", what, s, body)
		}
	}
}

// The attack of issue 12: `curl -d '{"macs":["<approved MAC>"],"csr":...}'`
// from another host on the LAN got the node's unlock key and a node
// certificate. Now the MAC alone, or the MAC with the attacker's own
// identity key, gets nothing, and the controller logs the source.
func TestSpoofedMACGetsNothing(t *testing.T) {
	l := newLAN(t)
	l.ac.SetConfig(t, "g8os/fs.toml", []byte("# managed\n"))
	req := &acapi.UnlockRequest{MACs: []string{l.victim.MAC}, Hostname: "evil", CSR: attackerCSR(t)}

	_, code, body := testenv.CurlUnlock(t, l.ac, l.attacker, nil, req)
	if code != http.StatusUnauthorized {
		t.Fatalf("MAC only: status %d, want 401: %s", code, body)
	}
	noSecrets(t, "MAC only", body)
	_, code, body = testenv.CurlUnlock(t, l.ac, l.attacker, testenv.NewNodeIdentity(t), req)
	if code != http.StatusForbidden {
		t.Fatalf("MAC + the attacker's identity key: status %d, want 403: %s", code, body)
	}
	noSecrets(t, "MAC + own key", body)

	// The controller's log reaches the fixture through a pipe: wait for it.
	var out string
	refusals := 0
	for deadline := time.Now().Add(10 * time.Second); refusals < 2 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, refusals = l.ac.Process().Output(), 0
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, sd.ACIdentityRefused.ID) && strings.Contains(line, "peer=10.254.254.66") && strings.Contains(line, l.victim.MAC) {
				refusals++
			}
		}
	}
	if refusals != 2 {
		t.Fatalf("want 2 refusals logged with the attacker's address and the MAC, got %d:\n%s", refusals, out)
	}

	// No job either: the job endpoints need a node certificate, which
	// the attacker cannot get.
	l.ac.CLI(t, "job", "run", l.victim.NodeID, "ping")
	hc := func(args ...string) string {
		out, _ := l.attacker.Run("curl", append([]string{"-sS", "--max-time", "10", "--cacert", l.ac.TrustAnchor, "-w", " %{http_code}"}, args...)...)
		return out
	}
	if out := hc(l.ac.URL + acapi.PathJobs); !strings.HasSuffix(out, " 401") {
		t.Fatalf("jobs without a certificate: %s", out)
	}
	// The real node still unlocks, with its own key.
	resp, code, body := testenv.CurlUnlock(t, l.ac, l.node, l.victim.Identity, &acapi.UnlockRequest{MACs: []string{l.victim.MAC}})
	if code != 200 || resp.NodeID != l.victim.NodeID || resp.RecoveryKey == nil || resp.Files["g8os/fs.toml"] == "" {
		t.Fatalf("the node itself: %d %s", code, body)
	}
	var show struct {
		Fingerprint string `json:"fingerprint"`
		LastAddr    string `json:"last_addr"`
	}
	if err := json.Unmarshal([]byte(l.ac.CLI(t, "node", "show", l.victim.NodeID)), &show); err != nil {
		t.Fatal(err)
	}
	if show.Fingerprint != l.victim.Identity.Fingerprint || show.LastAddr != "10.254.254.10" {
		t.Fatalf("node show: %+v, want fingerprint %s and the node's own address", show, l.victim.Identity.Fingerprint)
	}
}

// One known MAC plus unknown ones attached the unknown ones to the known
// node (1,263 MACs after 20 requests), so a new machine with such a NIC
// later booted as the victim. Now nothing is bound, with or without a key.
func TestMixedMACsRebindNothing(t *testing.T) {
	l := newLAN(t)
	var macs []string
	macs = append(macs, l.victim.MAC)
	for i := 0; i < 60; i++ {
		macs = append(macs, fmt.Sprintf("02:66:00:00:%02x:%02x", i/256, i%256))
	}
	for _, id := range []*testenv.NodeIdentity{nil, testenv.NewNodeIdentity(t)} {
		_, code, body := testenv.CurlUnlock(t, l.ac, l.attacker, id, &acapi.UnlockRequest{MACs: macs})
		if code == 200 {
			t.Fatalf("mixed MACs unlocked: %s", body)
		}
		noSecrets(t, "mixed MACs", body)
	}
	var show struct {
		MACs     []string          `json:"macs"`
		Reported []json.RawMessage `json:"reported_macs"`
	}
	if err := json.Unmarshal([]byte(l.ac.CLI(t, "node", "show", l.victim.NodeID)), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.MACs) != 1 || show.MACs[0] != l.victim.MAC || len(show.Reported) != 0 {
		t.Fatalf("the victim's MACs changed: %+v", show)
	}
	// A new machine with one of those NICs is a new, pending node.
	newcomer := testenv.NewNodeIdentity(t)
	_, code, body := testenv.CurlUnlock(t, l.ac, l.attacker, newcomer, &acapi.UnlockRequest{MACs: macs[5:6]})
	if code != http.StatusAccepted || strings.Contains(body, l.victim.NodeID) {
		t.Fatalf("a machine with an attacker-sent MAC: %d %s", code, body)
	}
	// The node itself reporting a new NIC records it for the operator,
	// capped, and binds nothing until node approve-mac.
	extra := append([]string{l.victim.MAC}, macs[10:50]...)
	if _, code, body := testenv.CurlUnlock(t, l.ac, l.node, l.victim.Identity, &acapi.UnlockRequest{MACs: extra}); code != 200 {
		t.Fatalf("the node with a new NIC: %d %s", code, body)
	}
	if err := json.Unmarshal([]byte(l.ac.CLI(t, "node", "show", l.victim.NodeID)), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.MACs) != 1 || len(show.Reported) != 16 {
		t.Fatalf("after the node reported 40 MACs: %d bound, %d reported (want 1, 16)", len(show.MACs), len(show.Reported))
	}
	l.ac.CLI(t, "node", "approve-mac", l.victim.NodeID, macs[10])
	if err := json.Unmarshal([]byte(l.ac.CLI(t, "node", "show", l.victim.NodeID)), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.MACs) != 2 || len(show.Reported) != 15 {
		t.Fatalf("after approve-mac: %+v", show)
	}
	// node add with a bound MAC fails loudly, naming the node.
	if _, stderr, code := l.ac.RunCLI("node", "add", "--mac", l.victim.MAC); code != 3 || !strings.Contains(stderr, l.victim.NodeID) {
		t.Fatalf("node add with a bound MAC: exit %d: %s", code, stderr)
	}
}

// node revoke did not end an open job long-poll: a job queued after the
// revoke was still handed to it. Now the poll ends at once with 403 and
// no job is queued or handed out for the node.
func TestRevokedNodePollEnds(t *testing.T) {
	l := onLoopback(t)
	cert := loadCert(t, l.victim)
	cl := l.ac.Client(t, cert)
	type result struct {
		jobs []acapi.Job
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		jobs, err := cl.Jobs(ctx, 60*time.Second)
		done <- result{jobs, err, time.Since(start)}
	}()
	time.Sleep(500 * time.Millisecond) // the poll is open
	queued := strings.Fields(l.ac.CLI(t, "job", "run", "--timeout", "1h", l.victim.NodeID, "ping"))
	// That job is handed to the open poll at once (before the revoke).
	r := <-done
	if r.err != nil || len(r.jobs) != 1 {
		t.Fatalf("poll before the revoke: %v %+v", r.err, r.jobs)
	}
	_ = queued
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		start := time.Now()
		jobs, err := cl.Jobs(ctx, 60*time.Second)
		done <- result{jobs, err, time.Since(start)}
	}()
	time.Sleep(500 * time.Millisecond)
	l.ac.CLI(t, "node", "revoke", l.victim.NodeID)
	if _, stderr, code := l.ac.RunCLI("job", "run", l.victim.NodeID, "ping"); code == 0 {
		t.Fatalf("a job was queued for a revoked node: %s", stderr)
	}
	select {
	case r := <-done:
		if !acapi.IsStatus(r.err, http.StatusForbidden) || len(r.jobs) != 0 || r.took > 10*time.Second {
			t.Fatalf("open poll after the revoke: %v, %d jobs, after %v; want 403 at once", r.err, len(r.jobs), r.took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the open poll of a revoked node did not end")
	}
	if _, err := cl.Jobs(context.Background(), 0); !acapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("a new poll of the revoked node: %v", err)
	}
}

// A renewed certificate replaces the old serial: after the new one is
// used, the old one is refused. An expired certificate is refused even
// though it chains to the node CA.
func TestRenewedAndExpiredCertificatesRefused(t *testing.T) {
	l := onLoopback(t, "--node-cert-lifetime", "72h")
	old := loadCert(t, l.victim)
	if old.Leaf.NotAfter.Sub(old.Leaf.NotBefore) > 74*time.Hour {
		t.Fatalf("node certificate valid %v, want the 72h asked for", old.Leaf.NotAfter.Sub(old.Leaf.NotBefore))
	}
	ctx := context.Background()
	fresh := renewCert(t, l.ac, old)
	// Until the new one is used the old one still works (an answer lost
	// on the way locks nothing out) ...
	if _, err := l.ac.Client(t, old).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("old certificate before the new one was used: %v", err)
	}
	if _, err := l.ac.Client(t, fresh).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("renewed certificate: %v", err)
	}
	// ... and from then on it is refused.
	if _, err := l.ac.Client(t, old).Heartbeat(ctx, &acapi.Heartbeat{}); !acapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("old certificate after the renewal: %v, want 403", err)
	}
	l.ac.Process().WaitOutput(t, sd.ACCertRefused.ID, 10*time.Second) // the refusal is logged

	// An expired certificate of this very node, signed by the node CA.
	expired, _, _ := l.ac.NodeCertificate(t, l.victim.NodeID, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if _, err := l.ac.Client(t, expired).Heartbeat(ctx, &acapi.Heartbeat{}); !acapi.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("expired certificate: %v, want 401", err)
	}
	if _, err := l.ac.Client(t, expired).Jobs(ctx, 0); !acapi.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("expired certificate polling jobs: %v, want 401", err)
	}
}

// renewCert renews cert through c (POST /v1/node/cert) for a fresh key,
// as the node's session does.
func renewCert(t *testing.T, c *testenv.Controller, cert *tls.Certificate) *tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	resp, err := c.Client(t, cert).RenewCert(context.Background(), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	fresh, err := tls.X509KeyPair([]byte(resp.Cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return &fresh
}

func loadCert(t *testing.T, e *testenv.Enrolled) *tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(e.ConfigRoot, "ssl", "node.pem"), filepath.Join(e.ConfigRoot, "ssl", "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &c
}
