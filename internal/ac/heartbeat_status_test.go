package ac

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Each heartbeat replaces the node's status: the controller shows the
// latest uptime and unit states, not those of the session's first beat.
func TestEveryHeartbeatReplacesTheStatus(t *testing.T) {
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:00:31")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(resp.CA))
	mtls := ac.clientWith(acapi.TLSConfig(pool, cert))
	beats := []*acapi.Heartbeat{
		{NodeID: resp.NodeID, BootID: "b1", Uptime: acapi.Duration(time.Minute), Units: map[string]string{"g8-sshd.service": "activating"}},
		{NodeID: resp.NodeID, BootID: "b1", Uptime: acapi.Duration(65 * time.Minute), Units: map[string]string{"g8-sshd.service": "active"}},
		{NodeID: resp.NodeID, BootID: "b1", Uptime: acapi.Duration(66 * time.Minute), Units: map[string]string{"g8-sshd.service": "failed"}},
	}
	for i, hb := range beats {
		if _, err := mtls.Heartbeat(ctx, hb); err != nil {
			t.Fatal(err)
		}
		n, err := ac.store().Node(ctx, resp.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		if n.Status == nil || n.Status.Uptime != hb.Uptime || n.Status.Units["g8-sshd.service"] != hb.Units["g8-sshd.service"] {
			t.Fatalf("after heartbeat %d: stored status %+v, want %+v", i+1, n.Status, hb)
		}
	}
}
