package ac_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/tests/testenv"
)

// floodLAN is a controller alone in a namespace where every address of
// 127.16.0.0/16 and of the IPv6 prefix floodV6 is local, so one load
// generator (bench/acload) speaks from hundreds of sources at once, as
// many machines on a LAN (or one IPv6 host with its 2^64 addresses)
// would.
type floodLAN struct {
	ac     *testenv.Controller
	host   *testenv.Host
	acload string
	node   *testenv.Enrolled
}

const floodV6 = "2001:db8:16::/64"

func newFloodLAN(t *testing.T, acArgs ...string) *floodLAN {
	t.Helper()
	testenv.RequireRoot(t, "curl")
	h := testenv.NewTopology(t).Host("ac")
	// IPv6 binds an address of a local route only with nonlocal_bind
	// (IPv4's 127/8 needs nothing).
	h.MustRun("ip", "-6", "route", "add", "local", floodV6, "dev", "lo")
	h.MustRun("sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1")
	ac := testenv.StartController(t, h, testenv.ControllerOptions{Names: []string{"127.0.0.1", "::1"}, Listen: []string{"[::]:8443"}, Args: acArgs})
	return &floodLAN{ac: ac, host: h, acload: testenv.Tool(t, "./bench/acload"), node: testenv.EnrollNode(t, ac, h, "52:54:00:16:00:01")}
}

// flood runs acload flood in the namespace, to the controller's IPv6
// address with v6 (the sources' family), and returns its figures.
func (f *floodLAN) flood(t *testing.T, v6 bool, args ...string) map[string]float64 {
	t.Helper()
	url := f.ac.URL
	if v6 {
		url = "https://[::1]:8443"
	}
	out, err := f.host.Run(f.acload, append([]string{"flood", "--url", url, "--ca", f.ac.TrustAnchor}, args...)...)
	if err != nil {
		t.Fatalf("acload flood: %v\n%s", err, out)
	}
	fig := figures(out)
	if fig["status_err"] > 0 {
		t.Fatalf("acload flood: requests without an answer:\n%s", out)
	}
	return fig
}

// heartbeats starts acload heartbeats as the enrolled node; wait returns
// its figures.
func (f *floodLAN) heartbeats(t *testing.T, d time.Duration) (wait func() map[string]float64) {
	ssl := filepath.Join(f.node.ConfigRoot, "ssl")
	p := f.host.Start(f.acload, "heartbeats", "--url", f.ac.URL, "--ca", f.ac.TrustAnchor,
		"--cert", filepath.Join(ssl, "node.pem"), "--key", filepath.Join(ssl, "node.key"), "--duration", d.String())
	return func() map[string]float64 {
		if err := p.Err(); err != nil {
			t.Fatalf("acload heartbeats: %v\n%s", err, p.Output())
		}
		return figures(p.Output())
	}
}

// figures parses "name value" lines.
func figures(out string) map[string]float64 {
	m := map[string]float64{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), " "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				m[k] = f
			}
		}
	}
	return m
}

// pending counts the pending nodes with the admin CLI, and says how long
// `node list` took.
func pending(t *testing.T, ac *testenv.Controller) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	out := ac.CLI(t, "node", "list", "--json")
	took := time.Since(start)
	var nodes []struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("node list --json: %v", err)
	}
	n := 0
	for _, x := range nodes {
		if x.State == "pending" {
			n++
		}
	}
	return n, took
}

// throttledLines are the controller's journal lines for refused unlocks.
func throttledLines(ac *testenv.Controller) []string {
	var out []string
	for _, l := range strings.Split(ac.Process().Output(), "\n") {
		if strings.Contains(l, sd.ACUnlockThrottled.ID) {
			out = append(out, l)
		}
	}
	return out
}

// Issue 16.1: 300 sources (150 IPv4 addresses, 150 addresses of one IPv6
// /64) each claiming ten new machines made 3,000 pending nodes. Now the
// /64 is one source (its unlock burst of 10), and the IPv4 sources
// together make no more pending nodes than the new-node budget (100, then
// 2/s); the rest get 429 with a Retry-After, logged a few lines at most.
// Meanwhile an enrolled node's heartbeats all succeed, and an operator's
// approval lets a waiting node in.
func TestPendingNodeFlood(t *testing.T) {
	f := newFloodLAN(t)
	waiting := testenv.NewNodeIdentity(t)
	waitReq := &acapi.UnlockRequest{MACs: []string{"52:54:00:16:00:02"}, Hostname: "waiting"}
	if _, code, body := testenv.CurlUnlock(t, f.ac, f.host, waiting, waitReq); code != http.StatusAccepted {
		t.Fatalf("a new node before the flood: %d %s", code, body)
	}
	quiet := f.heartbeats(t, 5*time.Second)()

	hb := f.heartbeats(t, 10*time.Second)
	start := time.Now()
	v6 := f.flood(t, true, "--v4", "", "--v6", floodV6, "--sources", "150", "--requests", "2")
	if v6["status_202"] > 10+time.Since(start).Seconds()+1 || v6["status_429"] == 0 {
		t.Fatalf("150 addresses of one IPv6 /64: %v new nodes accepted, %v refused; want the /64's burst of 10 at most", v6["status_202"], v6["status_429"])
	}
	// Round after round of 150 sources × 10 new machines, until the
	// heartbeats' window is over.
	v4 := f.flood(t, false, "--v4", "127.16.0.0/16", "--sources", "150", "--requests", "10", "--duration", (10*time.Second - time.Since(start)).String())
	elapsed := time.Since(start)
	if v4["status_429"] == 0 {
		t.Fatalf("IPv4 flood: %v", v4)
	}
	// Approval and unlock of a real waiting node while flooded.
	id := f.ac.ApproveMAC(t, "52:54:00:16:00:02")
	if resp, code, body := testenv.CurlUnlock(t, f.ac, f.host, waiting, waitReq); code != http.StatusOK || resp.NodeID != id {
		t.Fatalf("the approved node's unlock during the flood: %d %s", code, body)
	}
	n, listTook := pending(t, f.ac)
	budget := 100 + 2*elapsed.Seconds() + 10 // + the /64's burst
	t.Logf("flood: %v from IPv6, %v from IPv4 in %v; %d pending nodes (budget %.0f); node list took %v", v6, v4, elapsed.Round(time.Millisecond), n, budget, listTook)
	if float64(n) > budget {
		t.Fatalf("%d pending nodes after the flood: more than the new-node budget allows (%.0f)", n, budget)
	}
	beat := hb()
	t.Logf("heartbeats quiet: %v; during the flood: %v", quiet, beat)
	if beat["failed"] != 0 || beat["heartbeats"] < 15 || beat["max_ms"] > 10000 {
		t.Fatalf("the enrolled node's heartbeats during the flood: %v", beat)
	}
	lines := throttledLines(f.ac)
	if len(lines) == 0 || len(lines) > 3*(int(elapsed/(10*time.Second))+2) {
		t.Fatalf("%d journal lines for refused unlocks; want a few (one per reason every 10 s):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"reason=source peer=2001:db8:16::/64", "reason=new-nodes"} {
		if !strings.Contains(strings.Join(lines, "\n"), want) {
			t.Fatalf("no refusal logged with %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}

// Past --max-pending no unknown node is recorded (429), and pending nodes
// nobody approved expire after --pending-expiry, making room; a node the
// operator approved meanwhile stays.
func TestPendingCapAndExpiry(t *testing.T) {
	f := newFloodLAN(t, "--max-pending", "30", "--new-node-burst", "1000", "--new-node-rate", "1000", "--pending-expiry", "4s")
	fl := f.flood(t, false, "--v4", "127.16.0.0/16", "--sources", "100", "--requests", "2")
	if n, _ := pending(t, f.ac); n != 30 || fl["status_202"] != 30 || fl["status_429"] != 170 {
		t.Fatalf("with --max-pending 30: %d pending, flood %v", n, fl)
	}
	if !strings.Contains(strings.Join(throttledLines(f.ac), "\n"), "reason=pending-full") {
		t.Fatalf("the cap's refusals were not logged:\n%s", f.ac.Process().Output())
	}
	kept := f.ac.ApproveMAC(t, "52:54:00:16:00:09")
	f.ac.Process().WaitOutput(t, sd.ACPendingExpired.ID, 30*time.Second)
	if n, _ := pending(t, f.ac); n != 0 {
		t.Fatalf("%d pending nodes after --pending-expiry", n)
	}
	if out := f.ac.CLI(t, "node", "show", kept); !strings.Contains(out, "approved") {
		t.Fatalf("the approved node:\n%s", out)
	}
	if fl := f.flood(t, false, "--v4", "127.17.0.0/16", "--sources", "5", "--requests", "1"); fl["status_202"] != 5 {
		t.Fatalf("after expiry new nodes are recorded again: %v", fl)
	}
}

// Issue 16.2: one node's certificate stored 100k event rows in 2.7 s. Now
// its requests have a budget (429 with a Retry-After past it, events
// counted per 256) and it holds at most --node-events events, the oldest
// dropped behind one record; another node is served meanwhile.
func TestNodeBudgetAndEventQuota(t *testing.T) {
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{Args: []string{"--node-events", "100", "--node-rate", "2", "--node-burst", "12"}})
	evil := testenv.EnrollNode(t, ac, nil, "52:54:00:16:01:01")
	good := testenv.EnrollNode(t, ac, nil, "52:54:00:16:01:02")
	evilCl, goodCl := ac.Client(t, loadCert(t, evil)), ac.Client(t, loadCert(t, good))
	ctx := context.Background()

	var mu sync.Mutex
	var stored, refused int
	var retry time.Duration
	var seq, acked uint64
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < 3*time.Second {
				mu.Lock()
				from := seq + 1
				seq += 1000
				mu.Unlock()
				evs := make([]acapi.Event, 1000)
				for i := range evs {
					evs[i] = acapi.Event{Seq: from + uint64(i), Time: time.Now(), Kind: "flood", Data: []byte(`{"x":"` + strings.Repeat("x", 200) + `"}`)}
				}
				r, err := evilCl.PostEvents(ctx, evs)
				var se *acapi.StatusError
				mu.Lock()
				switch {
				case err == nil:
					stored += len(evs)
					acked = max(acked, r.Acked)
				case errors.As(err, &se) && se.Code == http.StatusTooManyRequests:
					refused++
					retry = se.RetryAfter
				default:
					mu.Unlock()
					t.Errorf("events post: %v", err)
					return
				}
				mu.Unlock()
			}
		}()
	}
	// The other node heartbeats throughout.
	var goodErr error
	for time.Since(start) < 3*time.Second {
		if _, err := goodCl.Heartbeat(ctx, &acapi.Heartbeat{BootID: "b"}); err != nil && goodErr == nil {
			goodErr = err
		}
		time.Sleep(time.Second)
	}
	wg.Wait()
	t.Logf("3 s of 8 connections posting 1000-event batches: %d events accepted, %d posts refused (Retry-After %v)", stored, refused, retry)
	if goodErr != nil {
		t.Fatalf("the other node's heartbeat during the flood: %v", goodErr)
	}
	// A 12-token burst and 2/s at 4 tokens a batch: about 4 batches.
	if refused == 0 || retry < time.Second || stored > 6*1000 {
		t.Fatalf("%d events accepted, %d refused with Retry-After %v: the node's budget does not hold", stored, refused, retry)
	}
	var evs []acapi.Event
	dec := json.NewDecoder(strings.NewReader(ac.CLI(t, "events", evil.NodeID, "--json")))
	for dec.More() {
		var e acapi.Event
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("events --json: %v", err)
		}
		evs = append(evs, e)
	}
	var rec acapi.EventsDroppedData
	// Batches arrive out of order (their seqs below the node's mark are
	// duplicates to the store), so what was dropped is read off the
	// record; a quota below the batch keeps the last one's newest 99.
	if len(evs) != 100 || evs[0].Kind != acapi.EventEventsDropped || json.Unmarshal(evs[0].Data, &rec) != nil ||
		rec.By != acapi.DroppedByController || rec.Count < 901 || rec.Last+1 != evs[1].Seq || evs[99].Seq != acked {
		t.Fatalf("%d events stored, first %s %s, second %d, last %d (acked %d); want the quota of 100 led by the controller's record of the oldest dropped",
			len(evs), evs[0].Kind, evs[0].Data, evs[1].Seq, evs[len(evs)-1].Seq, acked)
	}
	if lines := strings.Count(ac.Process().Output(), sd.ACNodeThrottled.ID); lines == 0 || lines > 3 {
		t.Fatalf("%d journal lines for %d refusals of one node in 3 s; want 1 to 3", lines, refused)
	}
}
