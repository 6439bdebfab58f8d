package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/acapi"
)

// A fleet coming up keeps every pooled connection busy with node lookups;
// the group commits (heartbeats, results, events, promotions) must not
// queue behind them for a connection: taking one from the pool per
// commit, single commits waited 10-20 s while 10,000 nodes connected.
func TestGroupCommitsDoNotWaitForThePool(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		n, err := s.AddNode(ctx, []string{"52:54:00:00:07:01"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RecordHeartbeat(ctx, n.ID, "10.0.0.1", &acapi.Heartbeat{BootID: "b0"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		// Every connection the pool still gives out, held by "readers".
		held := 0
		for {
			cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			c, err := s.db.Conn(cctx)
			cancel()
			if err != nil {
				break
			}
			defer c.Close()
			held++
		}
		if held == 0 {
			t.Fatal("the pool gave no connection at all")
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := s.RecordHeartbeat(wctx, n.ID, "10.0.0.1", &acapi.Heartbeat{BootID: "b1"}, time.Now()); err != nil {
			t.Fatalf("heartbeat with the pool's %d connections held by others: %v", held, err)
		}
		if _, err := s.AddEvents(wctx, n.ID, []acapi.Event{{Seq: 1, Time: time.Now(), Kind: "test"}}, 0, time.Now()); err != nil {
			t.Fatalf("events with the pool's %d connections held by others: %v", held, err)
		}
	})
}

// A session's first events post of a connection carries no events: it
// only asks where the node's events stand, which is a read, not a place in
// a commit.
func TestEmptyEventsPostCommitsNothing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		n, err := s.AddNode(ctx, []string{"52:54:00:00:07:02"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AddEvents(ctx, n.ID, []acapi.Event{{Seq: 7, Time: time.Now(), Kind: "test"}}, 0, time.Now()); err != nil {
			t.Fatal(err)
		}
		before := s.GroupCommits()
		acked, err := s.AddEvents(ctx, n.ID, nil, 0, time.Now())
		if err != nil || acked != 7 {
			t.Fatalf("empty post: acked %d (%v), want 7", acked, err)
		}
		if c := s.GroupCommits() - before; c != 0 {
			t.Fatalf("an empty events post made %d commits", c)
		}
		if _, err := s.AddEvents(ctx, "n-nosuchnode", nil, 0, time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("empty post of an unknown node: %v, want not found", err)
		}
	})
}

// NodeAuth reads what a request's authentication needs, and says when the
// node is gone.
func TestNodeAuth(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		s := open(t, newDB())
		ctx := context.Background()
		n, err := s.AddNode(ctx, []string{"52:54:00:00:07:03"}, true, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CertIssued(ctx, n.ID, "a1", time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, err := s.NodeAuth(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		full, err := s.Node(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != full.ID || got.State != full.State || got.CertSerial != full.CertSerial || got.CertPending != full.CertPending || got.CertPending != "a1" {
			t.Fatalf("NodeAuth %+v, Node %+v", got, full)
		}
		if _, err := s.NodeAuth(ctx, "n-nosuchnode"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown node: %v, want not found", err)
		}
	})
}

// Heartbeats and certificate promotions are committed without a sync to
// disk (a crash may take back the last of them: the node beats again, the
// certificate is promoted again at its next use), every other write with
// one. Seen here with syncs made to fail (seccomp, in a child process):
// the heartbeat and the promotion are stored, an events post is refused.
// On a disk busy with other work a sync took seconds, and a fleet coming
// up gave up on its first requests.
func TestSoftWritesDoNotSync(t *testing.T) {
	if os.Getenv("G8_STORE_NOSYNC_CHILD") != "" {
		softWritesChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSoftWritesDoNotSync$", "-test.v")
	cmd.Env = append(os.Environ(), "G8_STORE_NOSYNC_CHILD="+filepath.Join(t.TempDir(), "ac.db"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func softWritesChild(t *testing.T) {
	s := open(t, os.Getenv("G8_STORE_NOSYNC_CHILD"))
	ctx := context.Background()
	n, err := s.AddNode(ctx, []string{"52:54:00:00:07:04"}, true, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CertIssued(ctx, n.ID, "b2", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	failSyncs(t)
	if err := s.RecordHeartbeat(ctx, n.ID, "10.0.0.1", &acapi.Heartbeat{BootID: "nosync"}, time.Now()); err != nil {
		t.Fatalf("heartbeat with syncs failing: %v", err)
	}
	if ok, err := s.PromoteCert(ctx, n.ID, "b2"); err != nil || !ok {
		t.Fatalf("promotion with syncs failing: %v %v", ok, err)
	}
	got, err := s.Node(ctx, n.ID)
	if err != nil || got.BootID != "nosync" || got.CertSerial != "b2" {
		t.Fatalf("after the soft writes: %+v (%v)", got, err)
	}
	if _, err := s.AddEvents(ctx, n.ID, []acapi.Event{{Seq: 1, Time: time.Now(), Kind: "test"}}, 0, time.Now()); err == nil {
		t.Fatal("an events post was answered without its sync")
	}
}

// failSyncs makes fsync and fdatasync fail with EIO in every thread of
// this process from now on.
func failSyncs(t *testing.T) {
	const (
		retAllow   = 0x7fff0000 // SECCOMP_RET_ALLOW
		retErrno   = 0x00050000 // SECCOMP_RET_ERRNO
		modeFilter = 1          // SECCOMP_SET_MODE_FILTER
		flagTsync  = 1          // SECCOMP_FILTER_FLAG_TSYNC
	)
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_FSYNC, SkipTrue: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_FDATASYNC, SkipTrue: 1},
		bpf.RetConstant{Val: retAllow},
		bpf.RetConstant{Val: retErrno | uint32(unix.EIO)},
	})
	if err != nil {
		t.Fatal(err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, modeFilter, flagTsync, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		t.Skipf("seccomp: %v", errno)
	}
	// The filter holds: a sync fails now.
	f, err := os.CreateTemp(t.TempDir(), "sync")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); !errors.Is(err, unix.EIO) {
		t.Fatal(fmt.Errorf("a sync under the filter: %v, want EIO", err))
	}
}
