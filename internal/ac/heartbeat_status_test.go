package ac

import (
	"bytes"
	"crypto/x509"
	"errors"
	"strings"
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

// A node cannot reach the operator's terminal: a heartbeat carrying an
// escape sequence (OSC 52 sets the clipboard; 8-bit CSI) is refused with a
// 400 naming the field and nothing is stored; text already stored (from
// before the rule) is printed quoted by node list and grid status.
func TestTerminalEscapesFromANode(t *testing.T) {
	const osc52 = "\x1b]52;c;cm0gLXJmIH4K\x07"
	ac := newTestAC(t, ServeOptions{})
	resp, cert := ac.enroll("52:54:00:00:00:32")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(resp.CA))
	mtls := ac.clientWith(acapi.TLSConfig(pool, cert))
	for _, c := range []struct {
		hb    acapi.Heartbeat
		field string
	}{
		{acapi.Heartbeat{Units: map[string]string{"g8-sshd.service" + osc52: "active"}}, `field units key "g8-sshd.service\\x1b]52;c;cm0gLXJmIH4K\\a"`},
		{acapi.Heartbeat{Phases: map[string]string{"net": "eth0 dhcp\u009b2J"}}, `field phases["net"]: control or non-printable character U+009B`},
		{acapi.Heartbeat{Apps: []acapi.AppStatus{{Name: "web", State: "failed", Error: "exit 1" + osc52}}}, "field apps[0].error"},
		{acapi.Heartbeat{Addresses: []string{"10.0.0.5/24\x1b[8m"}}, "field addresses[0]"},
		{acapi.Heartbeat{Hostname: "node\x07"}, "field hostname"},
	} {
		hb := c.hb
		hb.NodeID = resp.NodeID
		_, err := mtls.Heartbeat(ctx, &hb)
		var se *acapi.StatusError
		if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(se.Body.Error, c.field) || strings.ContainsAny(se.Body.Error, "\x1b\x07\u009b") {
			t.Errorf("heartbeat %+v: %v; want 400 naming %q", c.hb, err, c.field)
		}
	}
	if n, err := ac.store().Node(ctx, resp.NodeID); err != nil || n.Status != nil {
		t.Fatalf("a refused heartbeat was stored: %+v %v", n, err)
	}

	hostile := &acapi.Heartbeat{NodeID: resp.NodeID, Units: map[string]string{"g8-x" + osc52 + ".service": "failed\u009b2J"}}
	if err := ac.store().RecordHeartbeat(ctx, resp.NodeID, "10.0.0.5", hostile, time.Now()); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Command(&out, &errb).Execute([]string{"node", "list", "--data", ac.dir}, &out, &errb); code != 0 {
		t.Fatalf("node list: exit %d: %s", code, errb.String())
	}
	if strings.ContainsAny(out.String(), "\x1b\x07\u009b") || !strings.Contains(out.String(), `\x1b]52;c;cm0gLXJmIH4K\a`) {
		t.Errorf("node list prints a node's escape sequences raw (or hides them):\n%q", out.String())
	}
}
