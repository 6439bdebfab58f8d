package acsession_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

// A session whose certificate is past half its lifetime renews it over
// its mTLS channel, writes the new key and certificate into the config,
// reconnects with them, and the controller refuses the old one from then
// on.
func TestSessionRenewsItsCertificate(t *testing.T) {
	acx := testenv.StartController(t, nil, testenv.ControllerOptions{})
	n := newNode(t, acx, nil, "52:54:00:5e:00:31")

	// A certificate of this node, signed by the node CA, 50 of its 98
	// hours gone, recorded as the one the controller issued last.
	old, certPEM, keyPEM := acx.NodeCertificate(t, n.NodeID, time.Now().Add(-50*time.Hour), time.Now().Add(48*time.Hour))
	ssl := filepath.Join(n.ConfigRoot, "ssl")
	os.WriteFile(filepath.Join(ssl, "node.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(ssl, "node.key"), keyPEM, 0o600)
	st, err := ac.OpenStore(acx.DataDir, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CertIssued(context.Background(), n.NodeID, old.Leaf.SerialNumber.Text(16), old.Leaf.NotAfter); err != nil {
		t.Fatal(err)
	}
	st.Close()

	n.start(t)
	n.waitState(t, "connected", 20*time.Second, connected)
	deadline := time.Now().Add(30 * time.Second)
	var fresh *tls.Certificate
	for fresh == nil && time.Now().Before(deadline) {
		c, err := tls.LoadX509KeyPair(filepath.Join(ssl, "node.pem"), filepath.Join(ssl, "node.key"))
		if err == nil && c.Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) != 0 {
			fresh = &c
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fresh == nil {
		t.Fatalf("the certificate was not renewed:\n%s", n.Proc.Output())
	}
	if life := fresh.Leaf.NotAfter.Sub(fresh.Leaf.NotBefore); life < 7*24*time.Hour || fresh.Leaf.Subject.CommonName != n.NodeID {
		t.Fatalf("renewed certificate: CN %s, valid %v", fresh.Leaf.Subject.CommonName, life)
	}
	if fi, err := os.Stat(filepath.Join(ssl, "node.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node.key after renewal: %v %v", fi.Mode(), err)
	}
	// The session reconnects with the new one, which makes it current.
	n.waitState(t, "reconnected", 20*time.Second, func(s state.ACSession) bool {
		return s.Connected && s.CertNotAfter.Equal(fresh.Leaf.NotAfter)
	})
	if !strings.Contains(n.Proc.Output(), "node certificate renewed") {
		t.Fatalf("the renewal was not logged:\n%s", n.Proc.Output())
	}
	var show struct {
		CertSerial string `json:"cert_serial"`
	}
	json.Unmarshal([]byte(acx.CLI(t, "node", "show", n.NodeID)), &show)
	if show.CertSerial != fresh.Leaf.SerialNumber.Text(16) {
		t.Fatalf("controller's current serial %q, want the renewed %s", show.CertSerial, fresh.Leaf.SerialNumber.Text(16))
	}
	if _, err := acx.Client(t, old).Heartbeat(context.Background(), &acapi.Heartbeat{}); !acapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("the old certificate after the renewal: %v, want 403", err)
	}
}
