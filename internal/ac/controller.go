// Package ac is the reference agent controller g8-ac: its data directory
// (init, ca), the HTTPS server (serve) and the admin commands that work on
// the same store while the server runs. docs/controller.md is the manual,
// docs/api.md the wire protocol.
package ac

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/server"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/sd"
	"golang.org/x/time/rate"
)

// Defaults other parts of the project rely on.
const (
	DefaultDataDir = "/var/lib/g8-ac"
	DefaultListen  = ":8443"
)

// Files in the data directory besides the PKI files.
const (
	DBFile         = "ac.db"
	AdminTokenFile = "admin.token"
	ChunkDir       = "store"
	// DatabaseFile holds the URL of the PostgreSQL database the store
	// lives in (written by init --database); without it the store is
	// DIR/ac.db.
	DatabaseFile = "database"
)

// StoreDSN says where dataDir's store is: database (a postgres:// URL)
// when given, else the URL in DIR/database, else the SQLite file
// DIR/ac.db. A URL must not hold a password: it would sit in argv or in
// the data directory; PostgreSQL takes it from a pgpass file (PGPASSFILE)
// or authenticates by peer or client certificate instead.
func StoreDSN(dataDir, database string) (string, error) {
	from := "--database"
	if database == "" {
		b, err := os.ReadFile(filepath.Join(dataDir, DatabaseFile))
		if errors.Is(err, os.ErrNotExist) {
			return filepath.Join(dataDir, DBFile), nil
		}
		if err != nil {
			return "", err
		}
		database, from = strings.TrimSpace(string(b)), filepath.Join(dataDir, DatabaseFile)
	}
	if err := checkDatabaseURL(database); err != nil {
		return "", fmt.Errorf("%s: %w", from, err)
	}
	return database, nil
}

func checkDatabaseURL(s string) error {
	if !store.IsPostgres(s) {
		return fmt.Errorf("%q is not a postgres:// URL", store.Redact(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", err)
	}
	if _, ok := u.User.Password(); ok || u.Query().Has("password") {
		return errors.New("the URL holds a password: put it in a pgpass file (PGPASSFILE) instead, never on the command line or in the data directory")
	}
	return nil
}

// Init creates a controller's data directory: both CAs, the server
// certificate for names, the admin token and the store — DIR/ac.db, or
// the PostgreSQL database at database (a URL, kept in DIR/database), which
// must not belong to another controller fleet yet.
func Init(dataDir string, names []string, database string) error {
	if len(names) == 0 {
		return errors.New("init: at least one --name (host name or IP address nodes use to reach the controller)")
	}
	for _, n := range names {
		if strings.ContainsAny(n, " /:") && net.ParseIP(n) == nil {
			return fmt.Errorf("init: --name %q: not a host name or IP address", n)
		}
	}
	for _, f := range []string{DBFile, DatabaseFile} {
		if _, err := os.Stat(filepath.Join(dataDir, f)); err == nil {
			return fmt.Errorf("init: %s is already a controller data directory", dataDir)
		}
	}
	dsn := filepath.Join(dataDir, DBFile)
	if database != "" {
		if err := checkDatabaseURL(database); err != nil {
			return fmt.Errorf("init: --database: %w", err)
		}
		dsn = database
		// Another fleet's database would get a second set of CAs: the
		// next controller of a fleet copies a data directory instead.
		st, err := store.Open(dsn)
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		name, err := st.Meta(context.Background(), "name")
		st.Close()
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		if name != "" {
			return fmt.Errorf("init: database %s already belongs to controller %s: give this controller a copy of that one's data directory instead (docs/controller.md)", store.Redact(dsn), name)
		}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := pki.Init(dataDir, names[0], names); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dataDir, AdminTokenFile), []byte(hex.EncodeToString(tok)+"\n"), 0o600); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dataDir, ChunkDir), 0o750); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if database != "" {
		if err := os.WriteFile(filepath.Join(dataDir, DatabaseFile), []byte(database+"\n"), 0o600); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	st, err := store.Open(dsn)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.SetMeta(ctx, "name", names[0]); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if _, err := OpenRecoveryKeys(ctx, st, filepath.Join(dataDir, RecoveryKEKFile), true, time.Now()); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return st.SetMeta(ctx, "names", strings.Join(names, ","))
}

// TrustAnchor is the PEM nodes ship as /etc/g8os/ac-ca.pem.
func TrustAnchor(dataDir string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, pki.ServerCACert))
	if err != nil {
		return nil, fmt.Errorf("ca: %w (is %s a controller data directory? run `g8-ac init`)", err, dataDir)
	}
	return b, nil
}

// OpenStore opens the data directory's store (or the one database names,
// see StoreDSN) for the admin commands and serve.
func OpenStore(dataDir, database string) (*store.Store, error) {
	dsn, err := StoreDSN(dataDir, database)
	if err != nil {
		return nil, err
	}
	if !store.IsPostgres(dsn) {
		if _, err := os.Stat(dsn); err != nil {
			return nil, fmt.Errorf("%s: not a controller data directory (run `g8-ac init --data %s` first)", dataDir, dataDir)
		}
	}
	return store.Open(dsn)
}

// ServeOptions are the knobs of `g8-ac serve`.
type ServeOptions struct {
	DataDir     string
	RecoveryKEK string // the recovery key-encryption key file; "" is DataDir/recovery.kek
	Database    string // postgres:// URL overriding the data directory's store (StoreDSN)
	Listen      []string
	RetryAfter  time.Duration
	UnlockRate  float64
	UnlockBurst int
	// Floods (server.Config): the budget for new pending nodes, the cap on
	// pending nodes and how long a never-approved one is kept (0: kept),
	// each node's request budget and event quota.
	NewNodeRate   float64
	NewNodeBurst  int
	MaxPending    int
	PendingExpiry time.Duration
	NodeRate      float64
	NodeBurst     int
	NodeEvents    int
	JobGrace      time.Duration // how long past its timeout a running job may stay silent
	Log           *slog.Logger
	Notifier      *sd.Notifier     // STATUS updates and watchdog pings; nil for none
	Retention     time.Duration    // finished jobs and events older than this are deleted; 0 keeps them
	Reload        <-chan os.Signal // each receive reloads the server certificate (SIGHUP)
	// MaxHandshakes bounds the TLS handshakes under way (default
	// DefaultMaxHandshakes); more connections wait in the accept queue.
	MaxHandshakes int
	// NodeCertLifetime is the validity of node certificates (default
	// pki.DefaultNodeValidity, 7 days).
	NodeCertLifetime time.Duration
}

// DefaultMaxHandshakes lets a few hundred handshakes run at once: enough
// to keep the cores busy across network round trips, few enough that each
// finishes within a node's timeout when a whole fleet reconnects.
const DefaultMaxHandshakes = 256

// Controller is a loaded data directory ready to serve.
type Controller struct {
	opts  ServeOptions
	store *store.Store
	api   *server.Server
	http  *http.Server
	log   *slog.Logger
	cert  atomic.Pointer[tls.Certificate]
	tls   *tls.Config // what every listener handshakes with
	day   int64       // of the session ticket keys in use
}

func loadServerCert(dir string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.ServerCert), filepath.Join(dir, pki.ServerKey))
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	return &cert, nil
}

// ReloadCertificate switches to the server certificate now in the data
// directory (after `g8-ac server-cert`). On error the old one stays.
// New connections get the new certificate; open ones keep theirs.
func (c *Controller) ReloadCertificate() error {
	cert, err := loadServerCert(c.opts.DataDir)
	if err != nil {
		return err
	}
	c.cert.Store(cert)
	return c.rotateTicketKeys(time.Now(), true)
}

// rotateTicketKeys sets the session ticket keys of day now (when the day
// changed, or always with force: after a new server key).
func (c *Controller) rotateTicketKeys(now time.Time, force bool) error {
	day := now.UTC().Unix() / 86400
	if day == c.day && !force {
		return nil
	}
	keys, err := server.SessionTicketKeys(c.cert.Load(), now)
	if err != nil {
		return err
	}
	c.tls.SetSessionTicketKeys(keys)
	c.day = day
	return nil
}

// Open loads the data directory: keys, certificates, token and store.
func Open(opts ServeOptions) (*Controller, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.JobGrace <= 0 {
		opts.JobGrace = 30 * time.Second
	}
	if opts.NodeCertLifetime == 0 {
		opts.NodeCertLifetime = pki.DefaultNodeValidity
	}
	if opts.NodeEvents != 0 && opts.NodeEvents < store.MinEventQuota {
		return nil, fmt.Errorf("--node-events %d: at least %d", opts.NodeEvents, store.MinEventQuota)
	}
	if opts.NodeCertLifetime < pki.MinNodeValidity || opts.NodeCertLifetime > pki.MaxNodeValidity {
		return nil, fmt.Errorf("--node-cert-lifetime %v: outside %v..%v", opts.NodeCertLifetime, pki.MinNodeValidity, pki.MaxNodeValidity)
	}
	dir := opts.DataDir
	serverCA, err := TrustAnchor(dir)
	if err != nil {
		return nil, err
	}
	nodeCA, err := pki.Load(dir, pki.NodeCACert, pki.NodeCAKey)
	if err != nil {
		return nil, err
	}
	sshCA, created, err := pki.LoadOrCreateSSHHostCA(dir)
	if err != nil {
		return nil, err
	}
	if created {
		opts.Log.Info("SSH host CA created: operators trust the fleet with `g8-ac ssh-ca`", sd.ACServing.Attr(), "file", filepath.Join(dir, pki.SSHHostCAKey))
	}
	cert, err := loadServerCert(dir)
	if err != nil {
		return nil, err
	}
	tok, err := readToken(filepath.Join(dir, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	st, err := OpenStore(dir, opts.Database)
	if err != nil {
		return nil, err
	}
	name, err := st.Meta(context.Background(), "name")
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	kekPath := opts.RecoveryKEK
	if kekPath == "" {
		kekPath = filepath.Join(dir, RecoveryKEKFile)
	}
	// A controller from before recovery keys gets its KEK and first key
	// here; one that shares a database with others must be given their KEK.
	rk, err := OpenRecoveryKeys(context.Background(), st, kekPath, true, time.Now())
	if err != nil {
		st.Close()
		return nil, err
	}
	api := server.New(server.Config{
		Name: name, Store: st, ServerCA: serverCA, NodeCA: nodeCA, Recovery: rk, SSHHostCA: sshCA,
		ChunkDir: filepath.Join(dir, ChunkDir), AdminToken: tok, Log: opts.Log,
		RetryAfter: opts.RetryAfter, UnlockRate: rate.Limit(opts.UnlockRate), UnlockBurst: opts.UnlockBurst,
		NewNodeRate: rate.Limit(opts.NewNodeRate), NewNodeBurst: opts.NewNodeBurst, MaxPending: opts.MaxPending,
		NodeRate: rate.Limit(opts.NodeRate), NodeBurst: opts.NodeBurst, NodeEvents: opts.NodeEvents,
		NodeCertLifetime: opts.NodeCertLifetime,
	})
	if opts.MaxHandshakes <= 0 {
		opts.MaxHandshakes = DefaultMaxHandshakes
	}
	c := &Controller{opts: opts, store: st, api: api, log: opts.Log}
	c.cert.Store(cert)
	c.tls = api.TLSConfig(c.cert.Load)
	if err := c.rotateTicketKeys(time.Now(), true); err != nil {
		st.Close()
		return nil, err
	}
	c.http = &http.Server{
		Handler: api,
		// Only read to set up HTTP/2 (which may write to it, so it is not
		// the config the listeners handshake with).
		TLSConfig: c.tls.Clone(),
		// Long-polls extend their own write deadline.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute, // a 16 MiB chunk on a slow link
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(&tlsErrorLog{log: opts.Log}, "", 0),
	}
	return c, nil
}

// readToken reads a secret from a file that only its owner may read.
func readToken(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("admin token %s: mode %o lets others read it; chmod 600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < 16 {
		return nil, fmt.Errorf("admin token %s: shorter than 16 characters", path)
	}
	return b, nil
}

// Listen binds every address before anything is served, so a bad --listen
// fails the start instead of leaving a half-reachable controller.
func Listen(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// Serve serves on lns until ctx ends, then shuts down gracefully: pending
// long-polls are answered empty and requests in flight finish (up to 10 s).
// ready is called once every listener serves.
func (c *Controller) Serve(ctx context.Context, lns []net.Listener, ready func()) error {
	defer c.store.Close()
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hl := server.NewHandshakeListener(ln, c.tls, c.opts.MaxHandshakes, 10*time.Second, c.log)
			if err := c.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", ln.Addr(), err)
			}
		}()
		c.log.Info("listening", sd.ACServing.Attr(), "addr", ln.Addr().String())
	}
	if ready != nil {
		ready()
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	defer stopSweep()
	addrs := make([]string, len(lns))
	for i, l := range lns {
		addrs[i] = l.Addr().String()
	}
	go c.sweepJobs(sweepCtx, "serving on "+strings.Join(addrs, ", "))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	c.api.Stop()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := c.http.Shutdown(shutCtx); serr != nil && err == nil {
		err = fmt.Errorf("shutdown: %w", serr)
	}
	wg.Wait()
	c.log.Info("stopped", sd.ACStopped.Attr())
	return err
}

// sweepJobs times out running jobs whose node went silent, prunes old
// records, reloads the certificate on request, and keeps systemd's STATUS=
// and watchdog current: it is the loop that proves the store still answers.
func (c *Controller) sweepJobs(ctx context.Context, serving string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastStatus, lastPrune, lastExpiry time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.opts.Reload:
			c.reload()
			continue
		case <-t.C:
		}
		if err := c.rotateTicketKeys(time.Now(), false); err != nil {
			c.log.Warn("rotating the TLS session ticket keys failed", sd.ACRequestFailed.Attr(), "error", err)
		}
		ids, err := c.store.ExpireJobs(ctx, time.Now(), c.opts.JobGrace)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("expiring jobs failed", sd.ACRequestFailed.Attr(), "error", err)
			}
			continue
		}
		for _, id := range ids {
			c.log.Warn("job timed out without a result", sd.ACJobExpired.Attr(), "job", id)
		}
		if c.opts.PendingExpiry > 0 && time.Since(lastExpiry) > 10*time.Second {
			lastExpiry = time.Now()
			c.expirePending(ctx)
		}
		if c.opts.Retention > 0 && time.Since(lastPrune) > time.Hour {
			lastPrune = time.Now()
			if j, e, err := c.store.Prune(ctx, time.Now().Add(-c.opts.Retention)); err != nil {
				c.log.Warn("pruning old jobs and events failed", sd.ACRequestFailed.Attr(), "error", err)
			} else if j+e > 0 {
				c.log.Info("pruned old jobs and events", "jobs", j, "events", e, "retention", c.opts.Retention.String())
			}
		}
		if c.opts.Notifier == nil {
			continue
		}
		if sd.WatchdogInterval() > 0 {
			c.opts.Notifier.Watchdog()
		}
		if time.Since(lastStatus) >= 10*time.Second {
			lastStatus = time.Now()
			if n, err := c.store.Counts(ctx); err == nil {
				c.opts.Notifier.Status("%s; nodes: %d approved, %d pending, %d denied, %d revoked", serving,
					n[store.StateApproved], n[store.StatePending], n[store.StateDenied], n[store.StateRevoked])
			}
		}
	}
}

// expirePending deletes the pending nodes never approved within
// --pending-expiry, in batches so one sweep never holds the store long.
func (c *Controller) expirePending(ctx context.Context) {
	ids, err := c.store.ExpirePending(ctx, time.Now().Add(-c.opts.PendingExpiry), 500)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("expiring pending nodes failed", sd.ACRequestFailed.Attr(), "error", err)
		}
		return
	}
	if len(ids) > 0 {
		c.log.Info("pending nodes never approved expired", sd.ACPendingExpired.Attr(), "count", len(ids), "expiry", c.opts.PendingExpiry.String())
	}
}

// reload runs in the sweep loop, the only goroutine that notifies systemd
// after READY.
func (c *Controller) reload() {
	var status string
	if c.opts.Notifier != nil {
		status = c.opts.Notifier.LastStatus
		c.opts.Notifier.Reloading()
	}
	if err := c.ReloadCertificate(); err != nil {
		c.log.Error("reloading the server certificate failed; keeping the old one", sd.ACRequestFailed.Attr(), "error", err)
	} else {
		c.log.Info("server certificate reloaded", sd.ACServing.Attr())
	}
	if c.opts.Notifier != nil {
		c.opts.Notifier.Ready(status)
	}
}

// tlsErrorLog sends net/http's own messages to the structured log (failed
// TLS handshakes are the listener's: HandshakeListener).
type tlsErrorLog struct{ log *slog.Logger }

func (t *tlsErrorLog) Write(p []byte) (int, error) {
	t.log.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}
