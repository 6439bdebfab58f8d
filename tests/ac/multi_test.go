package ac_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/pgtest"
	"github.com/g8os/boot/tests/testenv"
)

// Three `g8-ac serve --grid-repo` on one PostgreSQL: exactly one runs the
// grid reconcile. Killed with SIGKILL, another takes over within seconds
// and keeps the fleet converging: an app added to the repository afterwards
// gets its install job queued for the node.
func TestGridLeaderTakeover(t *testing.T) {
	db := pgtest.Shared(t).NewDatabase(t)
	repo := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(repo, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const mac = "52:54:00:6a:00:01"
	write("nodes/n1.toml", "mac = \""+mac+"\"\n")
	app := func(name string) {
		write("apps/"+name+".toml", "flist = \"blake3:"+strings.Repeat("ab", 32)+"\"\ncommand = [\"/bin/"+name+"\"]\n")
		write("links/"+name+".toml", "app = \""+name+"\"\nnodes = [\"n1\"]\n")
	}
	app("web")
	first := testenv.StartController(t, nil, testenv.ControllerOptions{Database: db,
		Args: []string{"--grid-repo", repo, "--grid-interval", "300ms", "--grid-retry", "300ms"}})
	ctrls := []*testenv.Controller{first, first.Peer(t, nil), first.Peer(t, nil)}

	// The node is online: it heartbeats (to whichever controller answers).
	node := testenv.EnrollNode(t, first, nil, mac)
	cert, err := tls.LoadX509KeyPair(filepath.Join(node.ConfigRoot, "ssl", "node.pem"), filepath.Join(node.ConfigRoot, "ssl", "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := acapi.LoadPool(first.TrustAnchor)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			for _, c := range ctrls {
				cl, err := acapi.NewClient(c.URL, acapi.TLSConfig(pool, &cert), 2*time.Second)
				if err == nil {
					_, _ = cl.Heartbeat(ctx, &acapi.Heartbeat{NodeID: node.NodeID})
					cl.HTTP.CloseIdleConnections()
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	leaders := func(dead int) []int {
		var l []int
		for i, c := range ctrls {
			if i != dead && strings.Count(c.Process().Output(), `msg="grid: leading"`) > strings.Count(c.Process().Output(), `msg="grid: no longer leading"`) {
				l = append(l, i)
			}
		}
		return l
	}
	// excluding is a killed controller: its log says it led when it died.
	waitLeader := func(excluding int, within time.Duration) int {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			l := leaders(excluding)
			if len(l) > 1 {
				t.Fatalf("controllers %v lead at once", l)
			}
			if len(l) == 1 {
				return l[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("no controller leads the grid within %v (leaders %v)", within, l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	installQueued := func(app string) bool {
		for _, l := range strings.Split(first.CLI(t, "job", "list", node.NodeID), "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.Contains(l, acapi.JobAppInstall) &&
				strings.Contains(first.CLI(t, "job", "show", f[0]), "/bin/"+app) {
				return true
			}
		}
		return false
	}
	waitJob := func(app string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !installQueued(app) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s job for app %s within 20s:\n%s", acapi.JobAppInstall, app, first.CLI(t, "job", "list", node.NodeID))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	leader := waitLeader(-1, 20*time.Second)
	waitJob("web")
	time.Sleep(time.Second) // the others keep trying meanwhile, and never lead
	if l := leaders(-1); len(l) != 1 {
		t.Fatalf("leaders %v", l)
	}
	ctrls[leader].Kill(t)
	killed := time.Now()
	next := waitLeader(leader, 10*time.Second)
	t.Logf("controller %d took the grid over %v after controller %d was killed", next, time.Since(killed).Round(time.Millisecond), leader)
	app("db")
	waitJob("db")
}

// An existing SQLite controller moves to PostgreSQL with g8-ac db copy:
// db check says where the store is and that its schema is current, the
// data directory then uses the database (node list, serve), and a URL
// with a password is refused everywhere it could be given.
func TestDBCheckCopyMigrate(t *testing.T) {
	srv := pgtest.Shared(t)
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	// A node enrolled under the trust model: its identity key and
	// certificate serial live in the store and must survive the move.
	enrolled := testenv.EnrollNode(t, ac, nil, "52:54:00:6a:00:02")
	id := enrolled.NodeID
	out := ac.CLI(t, "db", "check")
	if !strings.Contains(out, "engine: sqlite") || !strings.Contains(out, "ok") {
		t.Fatalf("db check on SQLite:\n%s", out)
	}
	if out := ac.CLI(t, "db", "migrate"); !strings.Contains(out, "up to date") {
		t.Fatalf("db migrate: %s", out)
	}
	db := srv.NewDatabase(t)
	ac.Stop()
	// db copy names its directory with --from, not --data.
	copyCLI := func(args ...string) (string, string, int) {
		cmd := exec.Command(ac.Bin, append([]string{"db", "copy"}, args...)...)
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), code
	}
	if out, errOut, code := copyCLI("--from", ac.DataDir, "--to", strings.Replace(db, "postgres@", "postgres:secret@", 1)); code != 2 || !strings.Contains(errOut, "password") {
		t.Fatalf("a URL with a password: exit %d %s %s", code, out, errOut)
	}
	out, errOut, code := copyCLI("--from", ac.DataDir, "--to", db)
	if code != 0 || !strings.Contains(out, "nodes: 1 rows") || !strings.Contains(out, "now uses") {
		t.Fatalf("db copy: exit %d\n%s%s", code, out, errOut)
	}
	out = ac.CLI(t, "db", "check")
	if !strings.Contains(out, "engine: postgres") || !strings.Contains(out, "schema: version") {
		t.Fatalf("db check after the copy:\n%s", out)
	}
	if _, errOut, code := copyCLI("--from", ac.DataDir, "--to", db); code != 3 || !strings.Contains(errOut, "already uses") {
		t.Fatalf("a second copy: exit %d %s", code, errOut)
	}
	// The SQLite file is left as a backup; the store is the database now.
	ac.Restart(t)
	second := ac.ApproveMAC(t, "52:54:00:6a:00:03")
	list := ac.CLI(t, "node", "list")
	if !strings.Contains(list, id) || !strings.Contains(list, second) {
		t.Fatalf("node list after the move:\n%s", list)
	}
	// The node goes on as before: its certificate is its current one, its
	// identity key still unlocks it, and another key still does not.
	ctx := context.Background()
	if _, err := ac.Client(t, loadCert(t, enrolled)).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("the node's certificate after the move: %v", err)
	}
	unlock := &acapi.UnlockRequest{MACs: []string{enrolled.MAC}}
	if _, err := ac.Client(t, enrolled.Identity.Cert).Unlock(ctx, unlock); err != nil {
		t.Fatalf("the node's identity key after the move: %v", err)
	}
	if _, err := ac.Client(t, testenv.NewNodeIdentity(t).Cert).Unlock(ctx, unlock); !acapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("another identity key with the node's MAC after the move: %v, want 403", err)
	}
	// A second fleet cannot be initialized on that database.
	if out, err := exec.Command(ac.Bin, "init", "--data", filepath.Join(t.TempDir(), "x"), "--name", "127.0.0.1", "--database", db).CombinedOutput(); err == nil || !strings.Contains(string(out), "already belongs") {
		t.Fatalf("init on a database in use: %v %s", err, out)
	}
}

// The trust model with two controllers on one PostgreSQL: a node enrolled
// through one proves its identity key to the other; a certificate renewed
// through one and first used at the other becomes the node's only
// certificate at both (the serial change NOTIFYs every controller, which
// drops its cached copy of the node); and revoking the node through the
// first ends the job long-poll the node holds open at the other at once.
func TestTrustAcrossControllers(t *testing.T) {
	db := pgtest.Shared(t).NewDatabase(t)
	a := testenv.StartController(t, nil, testenv.ControllerOptions{Database: db})
	b := a.Peer(t, nil)
	node := testenv.EnrollNode(t, a, nil, "52:54:00:6a:01:01")
	ctx := context.Background()

	unlock := &acapi.UnlockRequest{MACs: []string{node.MAC}}
	if _, err := b.Client(t, node.Identity.Cert).Unlock(ctx, unlock); err != nil {
		t.Fatalf("the node's identity key at the other controller: %v", err)
	}
	if _, err := b.Client(t, testenv.NewNodeIdentity(t).Cert).Unlock(ctx, unlock); !acapi.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("another identity key with the node's MAC at the other controller: %v, want 403", err)
	}

	// Both controllers know the node's certificate (and cache the node).
	old := loadCert(t, node)
	for _, c := range []*testenv.Controller{a, b} {
		if _, err := c.Client(t, old).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
			t.Fatalf("the node's certificate at %s: %v", c.URL, err)
		}
	}
	fresh := renewCert(t, a, old)
	if _, err := b.Client(t, old).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("old certificate at the other controller before the new one was used: %v", err)
	}
	if _, err := b.Client(t, fresh).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("the renewed certificate at the other controller: %v", err)
	}
	// a cached the node with the old serial current; the NOTIFY reaches
	// it in well under a second on a busy machine.
	refusedWithin := func(c *testenv.Controller, cert *tls.Certificate, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			_, err := c.Client(t, cert).Heartbeat(ctx, &acapi.Heartbeat{})
			if acapi.IsStatus(err, http.StatusForbidden) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("old certificate at %s after the renewal was used elsewhere: %v, want 403 within %v", c.URL, err, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	refusedWithin(a, old, 2*time.Second)
	refusedWithin(b, old, 0)
	if _, err := a.Client(t, fresh).Heartbeat(ctx, &acapi.Heartbeat{}); err != nil {
		t.Fatalf("the renewed certificate at the first controller: %v", err)
	}

	// The node's job long-poll is open at b; the operator revokes the node
	// through a's data directory (the CLI writes the database).
	type result struct {
		jobs []acapi.Job
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		start := time.Now()
		jobs, err := b.Client(t, fresh).Jobs(pctx, 60*time.Second)
		done <- result{jobs, err, time.Since(start)}
	}()
	time.Sleep(500 * time.Millisecond) // the poll is open
	revoked := time.Now()
	a.CLI(t, "node", "revoke", node.NodeID)
	select {
	case r := <-done:
		if !acapi.IsStatus(r.err, http.StatusForbidden) || len(r.jobs) != 0 {
			t.Fatalf("open poll at the other controller after the revoke: %v, %d jobs; want 403", r.err, len(r.jobs))
		}
		t.Logf("the poll ended %v after the revoke was started", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the open poll at the other controller did not end within 10s of the revoke")
	}
	for _, c := range []*testenv.Controller{a, b} {
		if _, err := c.Client(t, fresh).Jobs(ctx, 0); !acapi.IsStatus(err, http.StatusForbidden) {
			t.Fatalf("a new poll of the revoked node at %s: %v", c.URL, err)
		}
	}
}
