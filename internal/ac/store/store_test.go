package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store/postgres"
	"github.com/g8os/boot/internal/ac/store/sqlite"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/pgtest"
)

var ctx = context.Background()

func TestMain(m *testing.M) { pgtest.Main(m) }

// forEachEngine runs test once per engine, the store's one test suite:
// on SQLite files and on databases of a real PostgreSQL server (shared by
// the package's tests; skipped with the reason when not root). newDB makes
// a fresh empty database and returns what Open takes.
func forEachEngine(t *testing.T, test func(t *testing.T, newDB func() string)) {
	t.Run("sqlite", func(t *testing.T) {
		test(t, func() string { return filepath.Join(t.TempDir(), "ac.db") })
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Shared(t)
		test(t, func() string { return srv.NewDatabase(t) })
	})
}

// Each schema version exists for both engines: a migration added to one
// only would leave the other's databases a version behind or ahead.
func TestEnginesHaveTheSameSchemaVersions(t *testing.T) {
	if l, p := len(sqlite.Engine{}.Migrations()), len(postgres.Engine{}.Migrations()); l != p {
		t.Fatalf("SQLite has %d schema versions, PostgreSQL %d", l, p)
	}
}

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The admin CLI and the server are two processes on one database (two
// controllers on PostgreSQL): both write at once without "database is
// locked" and see each other's writes.
func TestTwoHandlesWriteConcurrently(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		path := newDB()
		a, b := open(t, path), open(t, path)
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for i := 0; i < 40; i++ {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				mac := fmt.Sprintf("52:54:00:00:10:%02x", i)
				if _, err := s.AddNode(ctx, []string{mac}, i%3 == 0, time.Now()); err != nil {
					errs <- err
				}
				if _, _, err := s.SeenAtUnlock(ctx, []string{mac}, nil, "h", "10.0.0.1", time.Now(), nil); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		na, _ := a.Nodes(ctx)
		nb, _ := b.Nodes(ctx)
		if len(na) != 40 || len(nb) != 40 {
			t.Fatalf("nodes seen: %d and %d, want 40", len(na), len(nb))
		}
	})
}

func TestNodeIDsStableAndMatchedByAnyMAC(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n1, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:01"}, nil, "", "", time.Now(), nil)
		if err != nil || !created || n1.State != StatePending || len(n1.Key) != 0 {
			t.Fatalf("first sighting: %v %v %+v", err, created, n1)
		}
		// A sighting names the node but binds nothing new (RecordUnlock only
		// reports the extra MAC, after the identity proof).
		n2, created, err := s.SeenAtUnlock(ctx, []string{"52:54:00:00:00:02", "52:54:00:00:00:01"}, nil, "", "", time.Now(), nil)
		if err != nil || created || n2.ID != n1.ID || len(n2.MACs) != 1 {
			t.Fatalf("second sighting with a new NIC: %v %v %+v", err, created, n2)
		}
		if _, err := s.Node(ctx, "52-54-00-00-00-02"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the new NIC's MAC was bound by a sighting: %v", err)
		}
		ap, _ := s.SetState(ctx, n1.ID, StateApproved, time.Now())
		rv, _ := s.SetState(ctx, n1.ID, StateRevoked, time.Now())
		ap2, _ := s.SetState(ctx, n1.ID, StateApproved, time.Now())
		if ap.State != StateApproved || rv.State != StateRevoked || ap2.State != StateApproved {
			t.Fatalf("states: %s %s %s", ap.State, rv.State, ap2.State)
		}
		// The controller holds no disk key: approval makes none (key recovery).
		if len(ap.Key) != 0 || len(ap2.Key) != 0 {
			t.Fatal("approval made an unlock key")
		}
		if _, err := s.SetState(ctx, "n-nosuch", StateApproved, time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown node: %v", err)
		}
		if _, err := s.SetState(ctx, n1.ID, "blessed", time.Now()); err == nil {
			t.Fatal("unknown state accepted")
		}
	})
}

func TestSSHKeysValidatedBeforeAnyIsAdded(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		good := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxZRi1ow7xTQ2cz7gdeG2w+JhmcyJ/vZqTXKpYGPZYV op@desk"
		if _, err := s.AddSSHKeys(ctx, []byte(good+"\nnot a key\n"), time.Now()); err == nil {
			t.Fatal("a file with a bad line was accepted")
		}
		if k, _ := s.AuthorizedKeys(ctx); k != "" {
			t.Fatalf("half-applied: %q", k)
		}
		n, err := s.AddSSHKeys(ctx, []byte("# ops\n\n"+good+"\n"), time.Now())
		if err != nil || n != 1 {
			t.Fatalf("%v %d", err, n)
		}
		if n, _ := s.AddSSHKeys(ctx, []byte(good), time.Now()); n != 0 {
			t.Fatal("the same key was added twice")
		}
		if k, _ := s.AuthorizedKeys(ctx); k != good+"\n" {
			t.Fatalf("authorized keys %q", k)
		}
	})
}

// SetConfigFile applies acapi.CheckConfigPath and refuses a path that is
// another managed file's directory, or lies below another managed file.
func TestSetConfigFilePaths(t *testing.T) {
	forEachEngine(t, testSetConfigFilePaths)
}

func testSetConfigFilePaths(t *testing.T, newDB func() string) {
	s := open(t, newDB())
	for _, c := range []struct {
		path string
		err  error // nil: accepted; ErrConflict; else any error
	}{
		{"g8os/fs.toml", nil},
		{"g8os/fs.toml", nil}, // replaced
		{"ssh/authorized_keys", errors.New("")},
		{"ssl/node.key", errors.New("")},
		{"ssh", errors.New("")},
		{"/etc/passwd", errors.New("")},
		{"a/../../x", errors.New("")},
		{"g8os", ErrConflict},
		{"g8os/fs.toml/x", ErrConflict},
		{"g8os/fs", nil},
	} {
		err := s.SetConfigFile(ctx, c.path, []byte("x"), time.Now())
		if (err == nil) != (c.err == nil) || c.err == ErrConflict && !errors.Is(err, ErrConflict) {
			t.Errorf("SetConfigFile(%q) = %v, want %v", c.path, err, c.err)
		}
	}
	files, _ := s.ConfigFiles(ctx)
	if len(files) != 2 || files["g8os/fs.toml"] != "x" || files["g8os/fs"] != "x" {
		t.Errorf("stored %v", files)
	}
}

func TestClaimJobsOnceInOrder(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		t0 := time.Now()
		var ids []string
		for i := 0; i < 5; i++ {
			j, err := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, t0.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, j.ID)
		}
		var wg sync.WaitGroup
		got := make(chan []acapi.Job, 4)
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				js, err := s.ClaimJobs(ctx, n.ID, time.Now())
				if err != nil {
					t.Error(err)
				}
				got <- js
			}()
		}
		wg.Wait()
		close(got)
		total := 0
		for js := range got {
			if len(js) == 0 {
				continue
			}
			total += len(js)
			if len(js) != 5 {
				t.Fatalf("jobs split across polls: %d", len(js))
			}
			for i, j := range js {
				if j.ID != ids[i] {
					t.Fatalf("order: %v, want %v", js, ids)
				}
			}
		}
		if total != 5 {
			t.Fatalf("delivered %d jobs, want each of 5 once", total)
		}
		// A new session of the node gets the running ones again, in order,
		// until the node posts a result.
		if err := s.FinishJob(ctx, n.ID, &acapi.JobResult{ID: ids[1], State: acapi.JobOK}, time.Now()); err != nil {
			t.Fatal(err)
		}
		running, err := s.RunningJobs(ctx, n.ID)
		if err != nil || len(running) != 4 || running[0].ID != ids[0] || running[1].ID != ids[2] || running[3].ID != ids[4] {
			t.Fatalf("running jobs %v (%v), want %v without %s", running, err, ids, ids[1])
		}
	})
}

func TestForgetMACResolvesConflict(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		a, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}, true, time.Now())
		b, _ := s.AddNode(ctx, []string{"52:54:00:00:00:03"}, true, time.Now())
		macs := []string{"52:54:00:00:00:02", "52:54:00:00:00:03"}
		if _, _, err := s.SeenAtUnlock(ctx, macs, nil, "", "", time.Now(), nil); !errors.Is(err, ErrConflict) {
			t.Fatalf("MACs of two nodes: %v", err)
		}
		if _, err := s.ForgetMAC(ctx, "52:54:00:00:00:03"); err == nil {
			t.Fatal("forgot a node's only MAC")
		}
		n, err := s.ForgetMAC(ctx, "52:54:00:00:00:02")
		if err != nil || n.ID != a.ID || len(n.MACs) != 1 {
			t.Fatalf("forget: %v %+v", err, n)
		}
		got, _, err := s.SeenAtUnlock(ctx, macs, nil, "", "", time.Now(), nil)
		if err != nil || got.ID != b.ID {
			t.Fatalf("after forget: %v %+v", err, got)
		}
	})
}

func TestCancelOnlyQueuedJobs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		a, _ := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, time.Now())
		j, err := s.CancelJob(ctx, a.ID, time.Now())
		if err != nil || j.State != acapi.JobRejected || j.ResultBy != "controller" {
			t.Fatalf("cancel queued: %v %+v", err, j)
		}
		if js, _ := s.ClaimJobs(ctx, n.ID, time.Now()); len(js) != 0 {
			t.Fatal("a cancelled job was delivered")
		}
		b, _ := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, time.Now())
		s.ClaimJobs(ctx, n.ID, time.Now())
		if _, err := s.CancelJob(ctx, b.ID, time.Now()); !errors.Is(err, ErrConflict) {
			t.Fatalf("cancel running: %v", err)
		}
		if _, err := s.CancelJob(ctx, "j-nosuch", time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("cancel unknown: %v", err)
		}
	})
}

func TestPruneKeepsPendingWorkAndEventSeq(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
		old := time.Now().Add(-48 * time.Hour)
		done, _ := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, old)
		s.ClaimJobs(ctx, n.ID, old)
		s.FinishJob(ctx, n.ID, &acapi.JobResult{ID: done.ID, State: acapi.JobOK}, old)
		queued, _ := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, old)
		s.AddEvents(ctx, n.ID, []acapi.Event{{Seq: 1, Kind: "a"}, {Seq: 2, Kind: "b"}}, 0, old)
		j, e, err := s.Prune(ctx, time.Now().Add(-24*time.Hour))
		if err != nil || j != 1 || e != 2 {
			t.Fatalf("prune: %v, %d jobs %d events", err, j, e)
		}
		if _, err := s.Job(ctx, queued.ID); err != nil {
			t.Fatal("a queued job was pruned")
		}
		if acked, _ := s.AddEvents(ctx, n.ID, []acapi.Event{{Seq: 2, Kind: "dup"}, {Seq: 3, Kind: "c"}}, 0, time.Now()); acked != 3 {
			t.Fatalf("after prune acked %d", acked)
		}
		if evs, _ := s.Events(ctx, n.ID); len(evs) != 1 || evs[0].Seq != 3 {
			t.Fatalf("events after prune: %+v", evs)
		}
	})
}

// Concurrent heartbeats and event posts share commits; one caller's
// failure (an unknown node) leaves the others' writes in place, and each
// caller gets its own answer.
func TestGroupCommitKeepsEachWriteAndError(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		var ids []string
		for i := 0; i < 30; i++ {
			n, err := s.AddNode(ctx, []string{fmt.Sprintf("52:54:00:00:02:%02x", i)}, true, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, n.ID)
		}
		var wg sync.WaitGroup
		errs := make([]error, len(ids))
		acks := make([]uint64, len(ids))
		for i, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%10 == 3 {
					id = "n-nosuchnode"
				}
				if errs[i] = s.RecordHeartbeat(ctx, id, "10.0.0.1", &acapi.Heartbeat{BootID: fmt.Sprint("b", i)}, time.Now()); errs[i] != nil {
					return
				}
				acks[i], errs[i] = s.AddEvents(ctx, id, []acapi.Event{{Seq: uint64(i + 1), Time: time.Now(), Kind: "k"}}, 0, time.Now())
			}()
		}
		wg.Wait()
		for i, id := range ids {
			n, err := s.Node(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if i%10 == 3 {
				if !errors.Is(errs[i], ErrNotFound) {
					t.Errorf("heartbeat of an unknown node: %v, want not found", errs[i])
				}
				continue
			}
			if errs[i] != nil || acks[i] != uint64(i+1) {
				t.Errorf("node %d: err %v, acked %d", i, errs[i], acks[i])
			}
			if n.BootID != fmt.Sprint("b", i) || n.EventsAck != uint64(i+1) {
				t.Errorf("node %d not stored: boot %q, events acked %d", i, n.BootID, n.EventsAck)
			}
		}
	})
}

// The change counters move for what the server caches (node states) and
// waits for (queued jobs), whichever handle writes, and not for heartbeats.
func TestChangeCounters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		path := newDB()
		srv, cli := open(t, path), open(t, path)
		w, err := srv.NewChangeWatch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		n, err := cli.AddNode(ctx, []string{"52:54:00:00:03:01"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		nodes0, jobs0, err := w.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		step := func(what string, f func() error, dNodes, dJobs int64) {
			t.Helper()
			if err := f(); err != nil {
				t.Fatal(err)
			}
			// A change the counters show must be seen by the watch (SQLite
			// sees every commit, PostgreSQL only the triggers' NOTIFY).
			if changed, err := w.Wait(ctx, 2*time.Second); err != nil || !changed && (dNodes != 0 || dJobs != 0) {
				t.Fatalf("%s: watch saw a change: %v (%v)", what, changed, err)
			}
			nodes, jobs, err := w.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if nodes-nodes0 != dNodes || jobs-jobs0 != dJobs {
				t.Fatalf("%s: counters moved by %d, %d; want %d, %d", what, nodes-nodes0, jobs-jobs0, dNodes, dJobs)
			}
			nodes0, jobs0 = nodes, jobs
		}
		step("heartbeat", func() error {
			return srv.RecordHeartbeat(ctx, n.ID, "10.0.0.1", &acapi.Heartbeat{}, time.Now())
		}, 0, 0)
		step("revoke", func() error { _, err := cli.SetState(ctx, n.ID, StateRevoked, time.Now()); return err }, 1, 0)
		step("approve", func() error { _, err := cli.SetState(ctx, n.ID, StateApproved, time.Now()); return err }, 1, 0)
		step("renewal", func() error { return srv.CertIssued(ctx, n.ID, "0a", time.Now().Add(time.Hour)) }, 1, 0)
		step("job", func() error {
			_, err := cli.CreateJob(ctx, n.ID, acapi.KindPing, nil, time.Second, time.Now())
			return err
		}, 0, 1)
		step("claim", func() error { _, err := srv.ClaimJobs(ctx, n.ID, time.Now()); return err }, 0, 0)
	})
}

// A SQLite store copied into an empty PostgreSQL one reads back the same
// through the store, and a second copy is refused.
func TestCopyFromSQLite(t *testing.T) {
	srv := pgtest.Shared(t)
	from := open(t, filepath.Join(t.TempDir(), "ac.db"))
	now := time.Now().Truncate(time.Microsecond)
	if err := from.SetMeta(ctx, "name", "ac1"); err != nil {
		t.Fatal(err)
	}
	a, _ := from.AddNode(ctx, []string{"52:54:00:00:05:02", "52:54:00:00:05:01"}, true, now)
	b, _ := from.AddNode(ctx, []string{"52:54:00:00:05:03"}, false, now.Add(time.Second))
	if err := from.RecordHeartbeat(ctx, a.ID, "10.0.0.9", &acapi.Heartbeat{BootID: "boot-1", Hostname: "h1"}, now); err != nil {
		t.Fatal(err)
	}
	j, _ := from.CreateJob(ctx, a.ID, "exec", []byte(`{"argv":["true"]}`), time.Minute, now)
	from.ClaimJobs(ctx, a.ID, now)
	from.FinishJob(ctx, a.ID, &acapi.JobResult{ID: j.ID, State: acapi.JobOK, Stdout: []byte("hi")}, now)
	from.CreateJob(ctx, a.ID, "ping", nil, time.Minute, now)
	// The trust model's columns and table (migration 5): a's identity key
	// and certificate serials, b's key and a MAC it reported.
	if _, err := from.BindIdentity(ctx, a.ID, identity(t), now); err != nil {
		t.Fatal(err)
	}
	from.CertIssued(ctx, a.ID, "0a", now.Add(time.Hour))
	from.PromoteCert(ctx, a.ID, "0a")
	from.CertIssued(ctx, a.ID, "0b", now.Add(2*time.Hour))
	bKey := identity(t)
	if _, err := from.BindIdentity(ctx, b.ID, bKey, now); err != nil {
		t.Fatal(err)
	}
	if _, err := from.RecordUnlock(ctx, b.ID, []string{"52:54:00:00:05:04"}, "h2", "10.0.0.8", now); err != nil {
		t.Fatal(err)
	}
	from.AddEvents(ctx, a.ID, []acapi.Event{{Seq: 1, Time: now, Kind: "a", Data: []byte(`{"x":1}`)}, {Seq: 2, Time: now, Kind: "b"}}, 0, now)
	from.AddSSHKeys(ctx, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxZRi1ow7xTQ2cz7gdeG2w+JhmcyJ/vZqTXKpYGPZYV op@desk\n"), now)
	from.SetConfigFile(ctx, "g8os/fs.toml", []byte("[x]\n"), now)

	to := open(t, srv.NewDatabase(t))
	counts, err := CopyFromSQLite(ctx, from, to)
	if err != nil {
		t.Fatal(err)
	}
	if counts["nodes"] != 2 || counts["macs"] != 3 || counts["jobs"] != 2 || counts["events"] != 2 || counts["reported_macs"] != 1 {
		t.Fatalf("copied %v", counts)
	}
	same := func(what string, f func(s *Store) (any, error)) {
		t.Helper()
		x, err1 := f(from)
		y, err2 := f(to)
		if err1 != nil || err2 != nil || fmt.Sprintf("%+v", x) != fmt.Sprintf("%+v", y) {
			t.Errorf("%s differs after the copy:\nsqlite   %+v (%v)\npostgres %+v (%v)", what, x, err1, y, err2)
		}
	}
	same("nodes", func(s *Store) (any, error) {
		ns, err := s.Nodes(ctx)
		var out []string
		for _, n := range ns {
			out = append(out, fmt.Sprintf("%s %s %v %x %s %s %d %+v %x %s %q %q %d %+v", n.ID, n.State, n.MACs, n.Key, n.Hostname, n.LastAddr, n.LastSeen.UnixNano(), n.Status,
				n.Identity, n.Fingerprint, n.CertSerial, n.CertPending, n.CertExpiry.UnixNano(), n.Reported))
		}
		return out, err
	})
	same("jobs", func(s *Store) (any, error) {
		js, err := s.Jobs(ctx, "")
		var out []string
		for _, j := range js {
			out = append(out, fmt.Sprintf("%s %s %s %s %+v %d", j.ID, j.Kind, j.Args, j.State, j.Result, j.CreatedAt.UnixNano()))
		}
		return out, err
	})
	same("events", func(s *Store) (any, error) { return s.Events(ctx, a.ID) })
	same("ssh keys", func(s *Store) (any, error) { return s.AuthorizedKeys(ctx) })
	same("config", func(s *Store) (any, error) { return s.ConfigFiles(ctx) })
	same("meta", func(s *Store) (any, error) { return s.Meta(ctx, "name") })
	// The copy goes on working: the queued job is claimed there, a's
	// pending certificate is still pending and b's key still names b.
	if js, err := to.ClaimJobs(ctx, a.ID, now); err != nil || len(js) != 1 {
		t.Fatalf("claim after the copy: %v %v", js, err)
	}
	if ok, err := to.PromoteCert(ctx, a.ID, "0b"); !ok || err != nil {
		t.Fatalf("promote after the copy: %v %v", ok, err)
	}
	if n, _, err := to.SeenAtUnlock(ctx, []string{"52:54:00:00:05:09"}, bKey, "", "", now, nil); err != nil || n.ID != b.ID {
		t.Fatalf("b's key after the copy: %v %+v", err, n)
	}
	if _, err := CopyFromSQLite(ctx, from, to); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Fatalf("second copy: %v", err)
	}
}

// A running job past its timeout plus grace ends timeout, by the
// controller, with a result naming it; a late result from the node wins.
func TestExpireJobs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		n, _ := s.AddNode(ctx, []string{"52:54:00:00:06:01"}, true, time.Now())
		t0 := time.Now().Add(-time.Hour)
		j, _ := s.CreateJob(ctx, n.ID, "ping", nil, time.Second, t0)
		s.ClaimJobs(ctx, n.ID, t0)
		ids, err := s.ExpireJobs(ctx, time.Now(), time.Second)
		if err != nil || len(ids) != 1 || ids[0] != j.ID {
			t.Fatalf("expired %v (%v)", ids, err)
		}
		got, _ := s.Job(ctx, j.ID)
		if got.State != acapi.JobTimeout || got.ResultBy != "controller" || got.Result == nil || got.Result.ID != j.ID || got.Result.State != acapi.JobTimeout {
			t.Fatalf("expired job: %+v result %+v", got, got.Result)
		}
		if err := s.FinishJob(ctx, n.ID, &acapi.JobResult{ID: j.ID, State: acapi.JobOK}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Job(ctx, j.ID); got.State != acapi.JobOK || got.ResultBy != "node" {
			t.Fatalf("late result: %+v", got)
		}
	})
}

// Recovery key generations (wrapped; the key-encryption key is a file of
// the data directory) and which one each node last used, on both engines:
// every controller of a fleet answers with the same keys.
func TestRecoveryKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		dsn := newDB()
		a, b := open(t, dsn), open(t, dsn)
		now := time.Now()
		if err := a.AddRecoveryKey(ctx, "k1", []byte{1, 2, 3}, now); err != nil {
			t.Fatal(err)
		}
		if err := a.AddRecoveryKey(ctx, "k2", []byte{4, 5}, now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		n, _ := a.AddNode(ctx, []string{"52:54:00:00:07:01"}, true, now)
		if err := b.NoteRecovery(ctx, n.ID, "k1"); err != nil {
			t.Fatal(err)
		}
		keys, err := b.RecoveryKeys(ctx)
		if err != nil || len(keys) != 2 || keys[0].KID != "k2" || keys[1].KID != "k1" || keys[1].Nodes != 1 || string(keys[1].Wrapped) != "\x01\x02\x03" {
			t.Fatalf("keys seen by the other controller: %+v (%v)", keys, err)
		}
		if err := a.RemoveRecoveryKey(ctx, "k1", false); !errors.Is(err, ErrConflict) {
			t.Fatalf("removing a key a node still uses: %v", err)
		}
		if err := a.RemoveRecoveryKey(ctx, "k1", true); err != nil {
			t.Fatal(err)
		}
		if err := a.RemoveRecoveryKey(ctx, "k2", false); !errors.Is(err, ErrConflict) {
			t.Fatalf("removing the only key: %v", err)
		}
	})
}

// Issue 16.9: a poll answer never exceeds the node's body limit. Jobs with
// big args go out oldest first, as many per answer as fit; a ping queued
// behind them still goes; args no answer could carry are refused when
// queued, with the limit in the error.
func TestClaimJobsWithinTheBodyLimit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "ac.db"))
	n, _ := s.AddNode(ctx, []string{"52:54:00:00:00:01"}, true, time.Now())
	execArgs := func(stdin int) json.RawMessage {
		b, _ := json.Marshal(acapi.ExecArgs{Argv: []string{"/bin/cat"}, Stdin: bytes.Repeat([]byte("x"), stdin)})
		return b
	}
	t0 := time.Now()
	var ids []string
	for i, a := range []json.RawMessage{execArgs(600_000), execArgs(700_000), nil} {
		kind := acapi.KindExec
		if a == nil {
			kind = "ping"
		}
		j, err := s.CreateJob(ctx, n.ID, kind, a, time.Minute, t0.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	var polls [][]string
	for i := 0; i < 4; i++ {
		js, err := s.ClaimJobs(ctx, n.ID, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := json.Marshal(js); len(b) > acapi.MaxBody {
			t.Fatalf("poll %d: answer of %d bytes, over MaxBody %d", i, len(b), acapi.MaxBody)
		}
		var got []string
		for _, j := range js {
			got = append(got, j.ID)
		}
		if len(got) > 0 {
			polls = append(polls, got)
		}
	}
	if want := [][]string{{ids[0]}, {ids[1], ids[2]}}; !reflect.DeepEqual(polls, want) {
		t.Fatalf("polls handed %v, want %v (oldest first, within the budget, every job once)", polls, want)
	}

	_, err := s.CreateJob(ctx, n.ID, acapi.KindExec, execArgs(800_000), time.Minute, t0)
	if err == nil || !strings.Contains(err.Error(), "over the") || !strings.Contains(err.Error(), "stdin") {
		t.Fatalf("an 800 KB stdin exec: %v, want refused naming the limit and stdin", err)
	}
	if _, err := s.CreateJobs(ctx, []NewJob{{NodeID: n.ID, Kind: acapi.KindExec, Args: execArgs(800_000), Timeout: time.Minute}}, t0); err == nil {
		t.Fatal("a batch with an oversized job was queued")
	}
}

// A database migrated by a newer g8-ac is refused, not written to with an
// older idea of its tables; one at this build's version opens without a
// migration.
func TestOpenRefusesANewerSchema(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		dsn := newDB()
		s := open(t, dsn)
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		latest := len(s.eng.Migrations())
		if err := s.eng.SetVersion(ctx, tx, latest+1); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if o, err := Open(dsn); err == nil || !strings.Contains(err.Error(), "newer than this g8-ac") {
			if o != nil {
				o.Close()
			}
			t.Fatalf("Open of a schema at version %d = %v, want refused as newer", latest+1, err)
		}
		tx, _ = s.db.BeginTx(ctx, nil)
		if err := s.eng.SetVersion(ctx, tx, latest); err != nil {
			t.Fatal(err)
		}
		tx.Commit()
		o := open(t, dsn)
		if have, want, err := o.Schema(ctx); err != nil || have != want {
			t.Errorf("reopened at version %d, want %d (%v)", have, want, err)
		}
	})
}
