package ac

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
)

var ctx = context.Background()

func TestHealthVerifiedAgainstTrustAnchor(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	h, err := ac.client(nil).Health(ctx)
	if err != nil {
		t.Fatalf("health with the right anchor: %v", err)
	}
	if h.Status != "ok" || h.Name != "localhost" {
		t.Fatalf("health = %+v", h)
	}

	// Another controller's anchor must not verify this one.
	other := filepath.Join(t.TempDir(), "other")
	if err := Init(other, []string{"localhost", "127.0.0.1"}, ""); err != nil {
		t.Fatal(err)
	}
	pool, err := acapi.LoadPool(filepath.Join(other, "server-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.clientWith(acapi.TLSConfig(pool, nil)).Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("health with a wrong anchor: want an unknown-authority error, got %v", err)
	}
}

func TestUnlockApprovedNode(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	node := ac.approve("52:54:00:00:00:01")
	st := ac.store()
	if _, err := st.AddSSHKeys(ctx, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxZRi1ow7xTQ2cz7gdeG2w+JhmcyJ/vZqTXKpYGPZYV op@desk\n"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.SetConfigFile(ctx, "g8os/fs.toml", []byte("[[sandbox]]\nname = \"tools\"\n"), time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := ac.as("52:54:00:00:00:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:01"}, Hostname: "node1"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.NodeID != node.ID || len(resp.Key) != 0 || resp.RecoveryKey == nil || len(resp.Recovery) != 0 {
		t.Fatalf("unlock: node %s key %x recovery key %v, want %s, no key, a recovery key", resp.NodeID, resp.Key, resp.RecoveryKey, node.ID)
	}
	if resp.Cert != "" {
		t.Fatalf("a certificate without a CSR: %q", resp.Cert)
	}
	if !strings.Contains(resp.AuthorizedKeys, "op@desk") {
		t.Fatalf("authorized_keys = %q", resp.AuthorizedKeys)
	}
	if resp.Files["g8os/fs.toml"] != "[[sandbox]]\nname = \"tools\"\n" || len(resp.Files) != 1 {
		t.Fatalf("files = %v", resp.Files)
	}
	anchor, _ := os.ReadFile(ac.anchor)
	if !strings.HasPrefix(resp.CA, string(anchor)) {
		t.Fatalf("ca does not start with the server CA (the node verifies the AC with it)")
	}
	// Same answer on the next boot.
	again, err := ac.as("52:54:00:00:00:01").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:01"}})
	if err != nil || again.NodeID != resp.NodeID || again.RecoveryKey == nil || !bytes.Equal(again.RecoveryKey.Pub, resp.RecoveryKey.Pub) {
		t.Fatalf("second unlock: %v %+v", err, again)
	}
	n, _ := st.Node(ctx, node.ID)
	if n.Hostname != "node1" || n.LastUnlock.IsZero() {
		t.Fatalf("stored node after unlock: %+v", n)
	}
}

func TestUnlockUnknownThenApproved(t *testing.T) {
	ac := newTestAC(t, ServeOptions{RetryAfter: 3 * time.Second})
	req := &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:02", "52:54:00:00:01:02"}, Hostname: "fresh"}
	_, err := ac.as("52:54:00:00:00:02").Unlock(ctx, req)
	se, ok := statusOf(err)
	if !ok || se.Code != http.StatusAccepted || se.Body.State != store.StatePending || se.RetryAfter != 3*time.Second || se.Body.NodeID == "" {
		t.Fatalf("unknown node: want 202 pending Retry-After 3s, got %v %+v", err, se)
	}
	// Asking again does not make a second node.
	_, err = ac.as("52:54:00:00:00:02").Unlock(ctx, req)
	if se2, _ := statusOf(err); se2 == nil || se2.Body.NodeID != se.Body.NodeID {
		t.Fatalf("second ask: %v", err)
	}
	nodes, _ := ac.store().Nodes(ctx)
	if len(nodes) != 1 || len(nodes[0].MACs) != 2 || nodes[0].State != store.StatePending {
		t.Fatalf("store after two asks: %+v", nodes)
	}
	// The operator approves by the second MAC; the node is matched by either.
	ac.setState("52:54:00:00:01:02", store.StateApproved)
	resp, err := ac.as("52:54:00:00:00:02").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:02"}})
	if err != nil {
		t.Fatalf("after approval: %v", err)
	}
	if resp.NodeID != se.Body.NodeID || resp.RecoveryKey == nil {
		t.Fatalf("after approval: %+v", resp)
	}
}

func TestUnlockDeniedAndRevoked(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	// Denied while pending.
	_, err := ac.as("52:54:00:00:00:03").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:03"}})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusAccepted {
		t.Fatalf("first ask: %v", err)
	}
	ac.setState("52:54:00:00:00:03", store.StateDenied)
	_, err = ac.as("52:54:00:00:00:03").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:03"}})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusForbidden || se.Body.State != store.StateDenied {
		t.Fatalf("denied node: want 403 denied, got %v", err)
	}

	// Revoked after it was approved; approving again restores the same key.
	n := ac.approve("52:54:00:00:00:04")
	first, err := ac.as("52:54:00:00:00:04").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:04"}})
	if err != nil {
		t.Fatal(err)
	}
	ac.setState(n.ID, store.StateRevoked)
	_, err = ac.as("52:54:00:00:00:04").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:04"}})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusForbidden || se.Body.State != store.StateRevoked || se.Body.NodeID != n.ID {
		t.Fatalf("revoked node: want 403 revoked, got %v", err)
	}
	ac.setState(n.ID, store.StateApproved)
	again, err := ac.as("52:54:00:00:00:04").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:04"}})
	if err != nil || !bytes.Equal(again.RecoveryKey.Pub, first.RecoveryKey.Pub) {
		t.Fatalf("re-approved node: %v, recovery key stable: %v", err, again != nil && bytes.Equal(again.RecoveryKey.Pub, first.RecoveryKey.Pub))
	}
}

func TestUnlockMACsOfTwoNodesConflict(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	ac.approve("52:54:00:00:00:05")
	ac.approve("52:54:00:00:00:06")
	_, err := ac.as("52:54:00:00:00:05").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:05", "52:54:00:00:00:06"}})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusConflict {
		t.Fatalf("want 409, got %v", err)
	}
}

func TestCSRSigningAndMTLS(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:00:07")

	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != resp.NodeID {
		t.Fatalf("certificate CN %q, want the node id %q (not what the CSR asked)", leaf.Subject.CommonName, resp.NodeID)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("certificate EKU %v, want client auth only", leaf.ExtKeyUsage)
	}
	// The ca field lets the node verify both the AC and its own certificate.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(resp.CA)) {
		t.Fatal("ca field holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not chain to the ca field: %v", err)
	}
	// A node certificate can never pass as a server certificate.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
		t.Fatal("node certificate verifies for server auth")
	}

	// mTLS with the issued certificate, verifying the AC with the ca field.
	mtls := ac.clientWith(acapi.TLSConfig(pool, cert))
	hb := &acapi.Heartbeat{NodeID: resp.NodeID, BootID: "b1", Hostname: "node7", Uptime: acapi.Duration(90 * time.Second),
		Units: map[string]string{"g8-sshd.service": "active"}, Load1: 0.5, MemUsed: 1, MemTotal: 4}
	reply, err := mtls.Heartbeat(ctx, hb)
	if err != nil {
		t.Fatalf("heartbeat with the issued cert: %v", err)
	}
	if reply.NodeID != resp.NodeID || time.Since(reply.ServerTime) > time.Minute {
		t.Fatalf("heartbeat reply %+v", reply)
	}
	n, _ := ac.store().Node(ctx, resp.NodeID)
	if n.LastSeen.IsZero() || n.LastAddr != "127.0.0.1" || n.Status == nil || n.Status.Units["g8-sshd.service"] != "active" || n.BootID != "b1" {
		t.Fatalf("heartbeat not recorded: %+v", n)
	}

	// No certificate: 401.
	_, err = ac.client(nil).Heartbeat(ctx, hb)
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusUnauthorized {
		t.Fatalf("heartbeat without cert: want 401, got %v", err)
	}
	// A heartbeat naming another node: 400.
	_, err = mtls.Heartbeat(ctx, &acapi.Heartbeat{NodeID: "n-someoneelse"})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusBadRequest {
		t.Fatalf("heartbeat for another node: want 400, got %v", err)
	}
}

func TestForeignCertificateRefused(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, _ := ac.enroll("52:54:00:00:00:08")
	// Same CN as a real node, but from a CA the controller does not trust.
	// Go's client does not even offer it (the server names its CA), so the
	// request arrives without a certificate.
	foreign := foreignCert(t, resp.NodeID)
	_, err := ac.client(foreign).Heartbeat(ctx, &acapi.Heartbeat{})
	if !acapi.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("certificate from another CA: want 401, got %v", err)
	}
	// A client that insists on sending it is refused by the node CA check.
	pool, _ := acapi.LoadPool(ac.anchor)
	conf := acapi.TLSConfig(pool, nil)
	conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return foreign, nil }
	_, err = ac.clientWith(conf).Heartbeat(ctx, &acapi.Heartbeat{})
	if !acapi.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("certificate from another CA sent anyway: want 401, got %v", err)
	}
	n, _ := ac.store().Node(ctx, resp.NodeID)
	if !n.LastSeen.IsZero() {
		t.Fatal("a foreign certificate's heartbeat was recorded")
	}
}

func TestRevokedNodeCertificateRefused(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:00:09")
	mtls := ac.client(cert)
	if _, err := mtls.Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	for _, state := range []string{store.StateRevoked, store.StateDenied} {
		ac.setState(resp.NodeID, state)
		// The certificate still chains to the node CA; the node's state
		// decides, within the server's store poll interval (50 ms).
		within(t, time.Second, func() error {
			_, err := ac.client(cert).Heartbeat(ctx, &acapi.Heartbeat{})
			if se, _ := statusOf(err); se == nil || se.Code != http.StatusForbidden || se.Body.State != state {
				return fmt.Errorf("%s node's certificate: want 403 %s, got %v", state, state, err)
			}
			return nil
		})
		if _, err := ac.client(cert).Jobs(ctx, 0); !acapi.IsStatus(err, http.StatusForbidden) {
			t.Fatalf("%s node polling jobs: want 403, got %v", state, err)
		}
	}
}

func TestMalformedAndOversizedBodies(t *testing.T) {
	ac := newTestAC(t, ServeOptions{UnlockBurst: 100, UnlockRate: 100})
	n := ac.approve("52:54:00:00:00:0a")
	_, cert := ac.enroll("52:54:00:00:00:0b")
	before, _ := ac.store().Nodes(ctx)

	pool, _ := acapi.LoadPool(ac.anchor)
	hc := ac.clientWith(acapi.TLSConfig(pool, cert)).HTTP
	big := bytes.Repeat([]byte("a"), acapi.MaxBody+10)
	cases := []struct {
		name, path string
		body       []byte
		want       int
	}{
		{"unlock garbage", acapi.PathUnlock, []byte("{not json"), 400},
		{"unlock trailing", acapi.PathUnlock, []byte(`{"macs":["52:54:00:00:00:0a"]} {}`), 400},
		{"unlock no macs", acapi.PathUnlock, []byte(`{"macs":[]}`), 400},
		{"unlock bad mac", acapi.PathUnlock, []byte(`{"macs":["52:54:00:00:00"]}`), 400},
		{"unlock wrong type", acapi.PathUnlock, []byte(`{"macs":"52:54:00:00:00:0a"}`), 400},
		{"unlock bad csr", acapi.PathUnlock, []byte(`{"macs":["52:54:00:00:00:0a"],"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}`), 400},
		{"unlock oversized", acapi.PathUnlock, append([]byte(`{"macs":["52:54:00:00:00:0a"],"hostname":"`), big...), 413},
		{"heartbeat garbage", acapi.PathHeartbeat, []byte("[1,2"), 400},
		{"heartbeat oversized", acapi.PathHeartbeat, big, 413},
		{"events not a list", acapi.PathEvents, []byte(`{"seq":1}`), 400},
		{"events seq 0", acapi.PathEvents, []byte(`[{"seq":0,"kind":"x"}]`), 400},
		{"result bad state", acapi.PathJobs + "/j-1/result", []byte(`{"state":"great"}`), 400},
	}
	node := ac.as("52:54:00:00:00:0a").HTTP // unlock requests with 0a's identity key
	for _, c := range cases {
		post := hc.Post
		if c.path == acapi.PathUnlock {
			post = node.Post
		}
		resp, err := post(ac.url+c.path, "application/json", bytes.NewReader(c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d (%s)", c.name, resp.StatusCode, c.want, body)
		}
		if !bytes.Contains(body, []byte(`"error":`)) {
			t.Errorf("%s: body is not a JSON error: %s", c.name, body)
		}
	}
	after, _ := ac.store().Nodes(ctx)
	if len(after) != len(before) {
		t.Fatalf("bad requests changed the node list: %d -> %d nodes", len(before), len(after))
	}
	resp, err := ac.as("52:54:00:00:00:0a").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:0a"}})
	if err != nil || !bytes.Equal(resp.Key, n.Key) {
		t.Fatalf("node unlocks differently after bad requests: %v", err)
	}
	if evs, _ := ac.store().Events(ctx, "52:54:00:00:00:0b"); len(evs) != 0 {
		t.Fatalf("bad events were stored: %v", evs)
	}
}

func TestUnlockBurstIsRateLimited(t *testing.T) {
	ac := newTestAC(t, ServeOptions{UnlockRate: 0.01, UnlockBurst: 3})
	ac.approve("52:54:00:00:00:0c")
	cl := ac.as("52:54:00:00:00:0c")
	var limited *acapi.StatusError
	for i := 0; i < 10 && limited == nil; i++ {
		_, err := cl.Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:0c"}})
		if se, ok := statusOf(err); ok && se.Code == http.StatusTooManyRequests {
			limited = se
			if i != 3 {
				t.Fatalf("limited after %d requests, want after the burst of 3", i)
			}
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if limited == nil || limited.RetryAfter < time.Second {
		t.Fatalf("a burst was not limited with a Retry-After: %+v", limited)
	}
	// Health is not rate limited: netup probes it.
	if _, err := cl.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownEndpointsAnswerJSON(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	hc := ac.client(nil).HTTP
	for path, want := range map[string]int{"/v1/nope": 404, acapi.PathUnlock: 405} {
		resp, err := hc.Get(ac.url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || !bytes.Contains(body, []byte(`"error":`)) {
			t.Errorf("GET %s: %d %s, want %d with a JSON error", path, resp.StatusCode, body, want)
		}
	}
}

func TestRestartKeepsState(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:00:0d")
	if _, err := ac.client(cert).PostEvents(ctx, []acapi.Event{{Seq: 1, Kind: "phase.ready", Time: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	job, err := ac.store().CreateJob(ctx, resp.NodeID, "ping", nil, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.as("52:54:00:00:00:0e").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:0e"}})
	pendingID := ""
	if se, _ := statusOf(err); se != nil {
		pendingID = se.Body.NodeID
	}

	ac.restart()

	again, err := ac.as("52:54:00:00:00:0d").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:0d"}})
	if err != nil || again.NodeID != resp.NodeID || !bytes.Equal(again.Key, resp.Key) {
		t.Fatalf("after restart: %v; same node %v; same key %v", err, again != nil && again.NodeID == resp.NodeID, again != nil && bytes.Equal(again.Key, resp.Key))
	}
	// The certificate issued before the restart still works (same node CA).
	ack, err := ac.client(cert).PostEvents(ctx, []acapi.Event{{Seq: 1, Kind: "phase.ready"}, {Seq: 2, Kind: "net.changed"}})
	if err != nil || ack.Acked != 2 {
		t.Fatalf("events after restart: %v %+v", err, ack)
	}
	jobs, err := ac.client(cert).Jobs(ctx, 0)
	if err != nil || len(jobs) != 1 || jobs[0].ID != job.ID {
		t.Fatalf("queued job after restart: %v %+v", err, jobs)
	}
	_, err = ac.as("52:54:00:00:00:0e").Unlock(ctx, &acapi.UnlockRequest{MACs: []string{"52:54:00:00:00:0e"}})
	if se, _ := statusOf(err); se == nil || se.Body.State != store.StatePending || se.Body.NodeID != pendingID {
		t.Fatalf("pending node after restart: %v", err)
	}
}

func TestTrustAnchorIsPEM(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	b, _ := os.ReadFile(ac.anchor)
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("trust anchor is not exactly one PEM certificate")
	}
	c, _ := x509.ParseCertificate(block.Bytes)
	if !c.IsCA {
		t.Fatal("trust anchor is not a CA")
	}
}

// A certificate the node CA signed for a node id the store does not know
// (e.g. from a restored backup) is refused by the state check, not trusted
// for chaining alone.
func TestCertificateForUnknownNodeRefused(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	ca, err := pki.Load(ac.dir, pki.NodeCACert, pki.NodeCAKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csr := newCSR(t, "x")
	certPEM, _, err := ca.SignCSR([]byte(csr), "n-0000000000", pki.DefaultNodeValidity)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.client(&cert).Heartbeat(ctx, &acapi.Heartbeat{})
	if se, _ := statusOf(err); se == nil || se.Code != http.StatusForbidden || se.Body.NodeID != "n-0000000000" {
		t.Fatalf("certificate of an unknown node: want 403, got %v", err)
	}
}
