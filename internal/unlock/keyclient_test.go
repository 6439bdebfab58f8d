package unlock

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

func TestDecide(t *testing.T) {
	w := Waits{Pending: 5 * time.Second, Denied: time.Minute, Max: 5 * time.Minute,
		Errors: backoff.Policy{Initial: time.Second, Max: 8 * time.Second, Factor: 2}}
	status := func(code int, retry time.Duration, msg string) error {
		return &acapi.StatusError{Peer: "https://ac", Code: code, RetryAfter: retry, Body: acapi.Error{Error: msg}}
	}
	for _, tc := range []struct {
		name   string
		err    error
		wait   time.Duration
		msg    sd.MessageID
		status string
	}{
		{"pending with Retry-After", status(202, 2*time.Second, "pending"), 2 * time.Second, sd.UnlockPending,
			"waiting for approval of node 02:00:00:00:00:01 at https://ac (g8-ac node approve --fingerprint SHA256:abc)"},
		{"pending without Retry-After", status(202, 0, ""), 5 * time.Second, sd.UnlockPending, "asking again in 5s"},
		{"pending Retry-After capped", status(202, time.Hour, ""), 5 * time.Minute, sd.UnlockPending, "asking again in 5m0s"},
		{"denied waits slowly", status(403, 0, "node n-1 is denied"), time.Minute, sd.UnlockDenied,
			"denied by https://ac for node 02:00:00:00:00:01 (node n-1 is denied)"},
		{"denied honours a longer Retry-After", status(403, 2*time.Minute, ""), 2 * time.Minute, sd.UnlockDenied, "asking again in 2m0s"},
		{"rate limited", status(429, 3*time.Second, ""), 3 * time.Second, sd.UnlockControllerError, "rate limited by https://ac"},
		{"server error backs off", status(500, 0, "boom"), time.Second, sd.UnlockControllerError, "no unlock key from https://ac yet"},
		{"network error backs off", fmt.Errorf("controller https://ac: dial tcp: connection refused"), time.Second, sd.UnlockControllerError, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Decide(tc.err, backoff.New(w.Errors), w, "02:00:00:00:00:01", "SHA256:abc", "https://ac")
			if v.Wait != tc.wait || v.Msg.ID != tc.msg.ID || !strings.Contains(v.Status, tc.status) {
				t.Fatalf("Decide = %+v; want wait %v, %s, status containing %q", v, tc.wait, tc.msg.Name, tc.status)
			}
		})
	}
}

func TestDecideErrorsBackOffAndPendingResets(t *testing.T) {
	w := Waits{Pending: 5 * time.Second, Denied: time.Minute, Max: time.Minute,
		Errors: backoff.Policy{Initial: time.Second, Max: 4 * time.Second, Factor: 2}}
	b := backoff.New(w.Errors)
	netErr := errors.New("connection refused")
	var got []time.Duration
	for range 4 {
		got = append(got, Decide(netErr, b, w, "m", "SHA256:abc", "c").Wait)
	}
	if fmt.Sprint(got) != "[1s 2s 4s 4s]" {
		t.Fatalf("error waits %v, want [1s 2s 4s 4s]", got)
	}
	Decide(&acapi.StatusError{Code: 202}, b, w, "m", "SHA256:abc", "c")
	if d := Decide(netErr, b, w, "m", "SHA256:abc", "c").Wait; d != time.Second {
		t.Fatalf("after a pending answer the error backoff restarts at 1s, got %v", d)
	}
}

// garbageController answers like a broken or hostile controller would.
func garbageController(t *testing.T, h http.HandlerFunc) (*x509.CertPool, string) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return pool, srv.URL
}

// TestFetchKeepsAskingThroughGarbage: unusable answers are reported with
// the peer and the reason, and the client keeps asking until a good one.
func TestFetchKeepsAskingThroughGarbage(t *testing.T) {
	answers := []func(w http.ResponseWriter){
		func(w http.ResponseWriter) { w.Write([]byte("<html>not json</html>")) },
		func(w http.ResponseWriter) { w.Write([]byte(strings.Repeat("x", acapi.MaxBody+10))) },
		func(w http.ResponseWriter) { w.Write([]byte(`{"node_id":"n-1","key":"c2hvcnQ="}`)) }, // 5-byte key
		func(w http.ResponseWriter) {
			w.Write([]byte(`{"node_id":"n-1","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","authorized_keys":"not a key"}`))
		},
		func(w http.ResponseWriter) {
			w.Write([]byte(`{"node_id":"n-1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","authorized_keys":""}`))
		},
	}
	n := 0
	pool, url := garbageController(t, func(w http.ResponseWriter, r *http.Request) {
		answers[min(n, len(answers)-1)](w)
		n++
	})
	dir := t.TempDir()
	if err := state.Write(dir, &state.Net{Controller: url, Interface: "eth0", MAC: "02:00:00:00:00:01"}); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	kc := &KeyClient{StateDir: dir, Roots: pool, NodeKey: testNodeKey(t), Timeout: 5 * time.Second,
		Waits: Waits{Pending: time.Millisecond, Denied: time.Millisecond, Max: time.Millisecond,
			Errors: backoff.Policy{Initial: time.Millisecond, Max: time.Millisecond, Factor: 1}},
		Links: func() ([]Link, error) { return nil, nil },
		Log:   sd.NewTextLogger(&logs, "unlock", 0), Notify: &sd.Notifier{}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ans, err := kc.Fetch(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ans.NodeID != "n-1" || len(ans.Key) != 32 || ans.Key[31] != 31 || ans.MACs[0] != "02:00:00:00:00:01" {
		t.Fatalf("answer %+v", ans)
	}
	for _, want := range []string{"malformed answer", "larger than", "field key: 5 bytes, want 32", "field authorized_keys: line 1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if !strings.Contains(logs.String(), url) {
		t.Errorf("log does not name the controller %s", url)
	}
}

func TestFetchWaitsForNetJSON(t *testing.T) {
	dir := t.TempDir()
	var logs strings.Builder
	nt := &sd.Notifier{}
	kc := &KeyClient{StateDir: dir, Roots: x509.NewCertPool(), NodeKey: testNodeKey(t), Timeout: time.Second,
		Waits: Waits{Errors: backoff.Policy{Initial: 10 * time.Millisecond, Max: 10 * time.Millisecond, Factor: 1}},
		Links: SystemLinks, Log: sd.NewTextLogger(&logs, "unlock", 0), Notify: nt}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := kc.Fetch(ctx, "", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch = %v, want it to wait until the context ends", err)
	}
	if !strings.Contains(nt.LastStatus, "waiting for g8-netup") || !strings.Contains(nt.LastStatus, "net.json") {
		t.Fatalf("status %q", nt.LastStatus)
	}
}
