// Package pgtest starts a real PostgreSQL server for a test: Debian's
// postgresql package, initdb into a fresh directory owned by the postgres
// user, listening only on its own unix socket (no TCP, so parallel runs
// never collide and network namespaces reach it through the file system),
// stopped and removed when the test ends, also when it fails.
//
//	srv := pgtest.Start(t)
//	dsn := srv.NewDatabase(t) // an empty database of its own
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDir is where Debian's postgresql-15 puts initdb and pg_ctl.
var BinDir = "/usr/lib/postgresql/15/bin"

// Port names the socket file (.s.PGSQL.PORT); there is no TCP listener.
const Port = 5432

// Server is one running PostgreSQL.
type Server struct {
	Dir    string // data in Dir/data, the socket in Dir, the log in Dir/log
	Socket string // directory holding the unix socket
	n      atomic.Int64
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
}

// Start initializes and starts a server for t, stopped and removed when t
// ends, or skips t with the reason when this machine cannot run one (not
// root, postgresql not installed).
func Start(t testing.TB) *Server {
	t.Helper()
	skipUnlessPossible(t)
	s, err := start()
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("--- PostgreSQL log ---\n%s", s.log())
			}
			if err := s.Stop(); err != nil {
				t.Error(err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// Shared is one server for the whole test binary, started by the first
// test that asks; the package's TestMain must call Main (or
// tests/testenv.Main), which stops it.
// Tests take a database of their own with NewDatabase.
func Shared(t testing.TB) *Server {
	t.Helper()
	skipUnlessPossible(t)
	sharedOnce.Do(func() { shared, sharedErr = start() })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// Main runs the tests and stops the shared server, also when they fail:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if err := StopShared(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// StopShared stops the shared server if a test started it.
func StopShared() error {
	if shared == nil {
		return nil
	}
	return shared.Stop()
}

func skipUnlessPossible(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to run a real PostgreSQL as the postgres user; CI runs it as root")
	}
	for _, tool := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir, tool)); err != nil {
			t.Fatalf("%s not installed (%v): run `make deps` (Debian package postgresql)", filepath.Join(BinDir, tool), err)
		}
	}
}

// start initializes and starts a server. On error the returned server (if
// any) still needs Stop.
func start() (*Server, error) {
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no postgres user (%v): run `make deps` (Debian package postgresql)", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	removeStale()
	// Not t.TempDir(): its parents are 0700 root, which postgres cannot
	// traverse.
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Socket: dir, done: make(chan struct{})}
	if err := os.Chown(dir, uid, gid); err != nil {
		return s, err
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	initdb := exec.Command(filepath.Join(BinDir, "initdb"), "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return s, fmt.Errorf("initdb in %s: %v\n%s", dir, err, out)
	}
	log, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return s, err
	}
	defer log.Close()
	// The postmaster is our child, not a daemon: should the test binary
	// die without cleaning up (a panic, a kill), the kernel sends it
	// SIGQUIT (immediate shutdown) instead of leaving it running.
	s.cmd = exec.Command(filepath.Join(BinDir, "postgres"), "-D", filepath.Join(dir, "data"), "-k", dir, "-p", strconv.Itoa(Port),
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=300")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return s, fmt.Errorf("postgres in %s: %w", dir, err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			return s, nil
		}
		cancel()
		select {
		case <-s.done:
			return s, fmt.Errorf("postgres in %s exited: %v\n%s", dir, s.err, s.log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("postgres in %s not accepting connections after 2m: %v\n%s", dir, err, s.log())
		}
	}
}

const dirPrefix = "g8-pgtest-"

// removeStale removes the directories of earlier runs whose server is
// gone (a test binary killed before it could clean up).
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		pid := 0
		if b, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid")); err == nil {
			pid, _ = strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
		}
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue
		}
		if info, err := os.Stat(d); err == nil && time.Since(info.ModTime()) > time.Minute {
			os.RemoveAll(d)
		}
	}
}

func (s *Server) log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "log"))
	return string(b)
}

// Stop stops the server at once (its data is thrown away) and removes its
// directory.
func (s *Server) Stop() error {
	var err error
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			err = fmt.Errorf("postgres in %s ignored SIGQUIT for 30s", s.Dir)
		}
	}
	if rerr := os.RemoveAll(s.Dir); err == nil {
		err = rerr
	}
	return err
}

// DSN is the connection URL of database db on this server.
func (s *Server) DSN(db string) string {
	q := url.Values{"host": {s.Socket}, "port": {strconv.Itoa(Port)}}
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db, RawQuery: q.Encode()}).String()
}

// NewDatabase creates an empty database for t and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatalf("connecting to PostgreSQL in %s: %v", s.Dir, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	return s.DSN(name)
}
