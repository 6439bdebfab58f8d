// Package ac_test drives the real g8-ac binary through the testenv fixture:
// the admin CLI and the server as separate processes sharing one store.
package ac_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestCLIApprovalReachesRunningServer(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	node := testenv.NewNodeIdentity(t)
	cl := ac.Client(t, node.Cert)
	ctx := context.Background()
	req := &acapi.UnlockRequest{MACs: []string{"52:54:00:aa:bb:01"}, Hostname: "n1"}

	_, err := cl.Unlock(ctx, req)
	var se *acapi.StatusError
	if !asStatus(err, &se) || se.Code != http.StatusAccepted || se.Body.State != "pending" || se.Body.NodeID == "" || se.RetryAfter != time.Second {
		t.Fatalf("unknown MAC: want 202 pending with Retry-After 1s, got %v (%+v)", err, se)
	}
	list := ac.CLI(t, "node", "list")
	if !strings.Contains(list, se.Body.NodeID) || !strings.Contains(list, "pending") || !strings.Contains(list, "52:54:00:aa:bb:01") {
		t.Fatalf("node list does not show the pending node:\n%s", list)
	}
	id := ac.ApproveMAC(t, "52:54:00:AA:BB:01")
	if id != se.Body.NodeID {
		t.Fatalf("approve by MAC named node %s, want %s", id, se.Body.NodeID)
	}
	resp, err := cl.Unlock(ctx, req)
	if err != nil {
		t.Fatalf("approved node: %v", err)
	}
	// No stored key: the node's disk key comes from key recovery.
	if resp.NodeID != id || len(resp.Key) != 0 || resp.RecoveryKey == nil {
		t.Fatalf("unlock answer: node %s key %d bytes, recovery key %v", resp.NodeID, len(resp.Key), resp.RecoveryKey)
	}

	ac.Restart(t)
	again, err := ac.Client(t, node.Cert).Unlock(ctx, req)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if again.NodeID != id || again.RecoveryKey == nil || string(again.RecoveryKey.Pub) != string(resp.RecoveryKey.Pub) {
		t.Fatalf("after restart the node got id %s and a different recovery key", again.NodeID)
	}
}

func asStatus(err error, se **acapi.StatusError) bool {
	s, ok := err.(*acapi.StatusError)
	*se = s
	return ok
}
