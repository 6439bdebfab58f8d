package sandbox

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Options are g8-fs mount's flags.
type Options struct {
	Config       string
	CacheDir     string
	CacheSize    int64
	StateDir     string
	ConfigRoot   string // holds ssl/{ca.pem,node.pem,node.key}
	Store        string // overrides fs.toml and net.json
	FetchTimeout time.Duration
	Readahead    int
	Passthrough  PassthroughMode
}

// Defaults for the daemon's flags.
const (
	DefaultConfig     = "/mnt/etc/g8os/fs.toml"
	DefaultCacheDir   = "/var/cache/g8os/fs"
	DefaultCacheSize  = 10 << 30
	DefaultConfigRoot = "/mnt/etc"
)

// ErrConfig marks errors in the configuration (exit code 3 at start).
var ErrConfig = errors.New("invalid configuration or input")

type sandboxRun struct {
	cfg      SandboxConfig
	m        *Mounted
	state    string // pending | mounted | failed
	err      string
	attempts int
	cancel   context.CancelFunc
	done     chan struct{}
	first    chan struct{} // closed after the first mount attempt
}

type daemon struct {
	opt     Options
	log     *slog.Logger
	notify  *sd.Notifier
	tlsConf *tls.Config
	storeID string
	fetch   *Fetcher
	started time.Time
	ctx     context.Context // the daemon's life

	mu      sync.Mutex
	cfg     *Config
	sbs     map[string]*sandboxRun
	readyAt time.Time
	ready   bool
	wake    chan struct{}
}

// Run is g8-fs mount: it mounts every sandbox of the configuration, sends
// READY=1 once each is mounted (or failed for good), re-reads the
// configuration on SIGHUP and unmounts everything when ctx ends or on
// SIGTERM/SIGINT.
func Run(ctx context.Context, opt Options, log *slog.Logger) error {
	notify := &sd.Notifier{}
	d := &daemon{opt: opt, log: log, notify: notify, started: time.Now(), sbs: map[string]*sandboxRun{}, wake: make(chan struct{}, 1)}
	// First thing: a SIGHUP (reload) during start-up must not kill us
	// (its default action); it is handled once the sandboxes are started,
	// and the config is read after this point anyway.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log.Info("starting", sd.PhaseStarted.Attr(), "config", opt.Config, "cache", opt.CacheDir)
	cfg, err := LoadConfig(opt.Config)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if _, err := os.Stat(opt.Config); errors.Is(err, os.ErrNotExist) {
		log.Warn("no configuration: no sandboxes until it exists and g8-fs is reloaded", "file", opt.Config)
	}
	// No sandboxes need no store: a node without fs.toml (or with an empty
	// one) must come up even before g8-netup recorded a controller; the
	// store is resolved by the reload that first adds a sandbox.
	var store Store
	if len(cfg.Sandboxes) > 0 {
		if store, err = d.openStore(cfg); err != nil {
			return err
		}
	}
	cache, err := OpenCache(opt.CacheDir, opt.CacheSize)
	if err != nil {
		return err
	}
	d.fetch = &Fetcher{Store: store, Cache: cache, Log: log, Timeout: opt.FetchTimeout, Readahead: opt.Readahead, Passthrough: opt.Passthrough}
	d.cfg = cfg

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d.ctx = ctx

	// Connections a previous g8-fs left in the fd store are served again
	// first; fs.toml then applies to them as a reload would.
	running := d.takeOver(ctx)
	plan := PlanReload(running, cfg.Sandboxes)
	d.mu.Lock()
	var stopping []*sandboxRun
	for _, n := range plan.Remove {
		stopping = append(stopping, d.sbs[n])
		delete(d.sbs, n)
	}
	d.mu.Unlock()
	for _, r := range stopping {
		d.stopOne(r)
	}
	d.mu.Lock()
	for _, s := range plan.Add {
		d.startLocked(ctx, s)
	}
	d.mu.Unlock()
	d.settle()

	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return d.shutdown()
		case <-hup:
			d.reload(ctx)
		case <-d.wake:
			d.settle()
		case <-tick.C:
			d.writeState()
		}
	}
}

// openStore resolves the store: --store, then fs.toml's store, then the
// controller recorded by g8-netup.
func (d *daemon) openStore(cfg *Config) (Store, error) {
	spec := d.opt.Store
	if spec == "" {
		spec = cfg.Store
	}
	if spec == "" {
		var n state.Net
		if err := state.Read(d.opt.StateDir, &n); err != nil || n.Controller == "" {
			return nil, fmt.Errorf("%w: no store: neither --store nor store in %s, and no controller in %s (%v)",
				ErrConfig, d.opt.Config, filepath.Join(d.opt.StateDir, "net.json"), err)
		}
		spec = strings.TrimSuffix(n.Controller, "/") + "/v1/store"
	}
	var err error
	if strings.HasPrefix(spec, "https://") || strings.HasPrefix(spec, "http://") {
		if d.tlsConf, err = StoreTLS(d.opt.ConfigRoot); err != nil {
			return nil, fmt.Errorf("store %s: %w", spec, err)
		}
	}
	d.storeID = spec
	return OpenStore(spec, d.tlsConf)
}

func (d *daemon) startLocked(ctx context.Context, s SandboxConfig) *sandboxRun {
	sctx, cancel := context.WithCancel(ctx)
	r := &sandboxRun{cfg: s, state: "pending", cancel: cancel, done: make(chan struct{}), first: make(chan struct{})}
	d.sbs[s.Name] = r
	go d.bring(sctx, r)
	return r
}

// bring mounts one sandbox, retrying while the flist cannot be fetched.
func (d *daemon) bring(ctx context.Context, r *sandboxRun) {
	defer close(r.done)
	b := backoff.New(backoff.Default)
	for {
		m, err := d.mountOne(ctx, r.cfg)
		d.mu.Lock()
		r.attempts++
		if r.attempts == 1 {
			close(r.first)
		}
		switch {
		case err == nil && ctx.Err() != nil:
			d.mu.Unlock()
			m.Unmount()
			return
		case err == nil:
			r.m, r.state, r.err = m, "mounted", ""
			d.log.Info("sandbox mounted", sd.FSSandboxMounted.Attr(), "sandbox", r.cfg.Name,
				"mountpoint", r.cfg.Mountpoint, "flist_hash", m.Flist.Hash().String())
			go d.watch(ctx, r, m)
			d.mu.Unlock()
			// fs.json describes the connection before the fd store holds it.
			d.writeState()
			d.keep(r.cfg.Name, m)
			d.poke()
			return
		case ctx.Err() != nil:
			d.mu.Unlock()
			return
		case retryable(err):
			r.err = err.Error()
			wait := b.Next()
			d.log.Warn("sandbox not mounted yet", sd.PhaseRetry.Attr(), "sandbox", r.cfg.Name, "error", err.Error(), "wait", wait.String())
			d.mu.Unlock()
			d.poke()
			if backoff.Sleep(ctx, wait) != nil {
				return
			}
			continue
		default:
			r.state, r.err = "failed", err.Error()
			d.log.Error("sandbox failed", sd.FSSandboxFailed.Attr(), "sandbox", r.cfg.Name, "error", err.Error())
		}
		d.mu.Unlock()
		d.poke()
		return
	}
}

// watch notices a sandbox unmounted behind g8-fs's back (an operator's
// umount) and mounts it again; stopOne and shutdown drop the sandbox from
// d.sbs first, so their unmounts are not mistaken for that.
func (d *daemon) watch(ctx context.Context, r *sandboxRun, m *Mounted) {
	<-m.Gone()
	d.mu.Lock()
	defer d.mu.Unlock()
	if ctx.Err() != nil || d.sbs[r.cfg.Name] != r || r.m != m {
		return
	}
	d.log.Warn("sandbox unmounted from outside g8-fs, mounting it again", sd.FSSandboxUnmounted.Attr(),
		"sandbox", r.cfg.Name, "mountpoint", r.cfg.Mountpoint)
	// A copy of the mount in another namespace keeps the old connection
	// serving from this flist until that copy goes.
	go func() {
		m.Wait()
		m.Flist.Close()
	}()
	delete(d.sbs, r.cfg.Name)
	d.startLocked(d.ctx, r.cfg)
	d.poke()
}

func (d *daemon) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// retryable: the store or URL could not be reached, as opposed to a flist
// that is missing, corrupt or invalid, which only a config change fixes.
func retryable(err error) bool {
	var fe *FlistError
	return !(errors.As(err, &fe) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) ||
		errors.Is(err, os.ErrNotExist) || errors.Is(err, errMount) || permanent(err))
}

var errMount = errors.New("mount failed")

func (d *daemon) mountOne(ctx context.Context, s SandboxConfig) (*Mounted, error) {
	fl, err := d.loadFlist(ctx, s.Flist)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: flist %s: %w", s.Name, s.Flist, err)
	}
	m, err := Mount(s.Name, s.Mountpoint, fl, d.fetch, d.log)
	if err != nil {
		fl.Close()
		return nil, fmt.Errorf("sandbox %s: %w: %v", s.Name, errMount, err)
	}
	return m, nil
}

// loadFlist opens a flist by hash (cache, then store), URL or path.
func (d *daemon) loadFlist(ctx context.Context, spec string) (*Flist, error) {
	cache := d.fetch.Cache
	switch {
	case strings.HasPrefix(spec, "blake3:"):
		h, err := ParseHash(strings.TrimPrefix(spec, "blake3:"))
		if err != nil {
			return nil, err
		}
		// The cached copy was verified against h when it was fetched and
		// only g8-fs writes the cache (0700).
		p := cache.FlistPath(h)
		if fl, err := OpenFlist(p); err == nil {
			return fl, nil
		}
		gctx, cancel := context.WithTimeout(ctx, d.fetch.Timeout)
		defer cancel()
		if err := FetchFlist(gctx, d.fetch.Store, h, p); err != nil {
			return nil, err
		}
		return OpenFlist(p)
	case strings.HasPrefix(spec, "https://") || strings.HasPrefix(spec, "http://"):
		p := filepath.Join(cache.root, "flists", "url-"+HashOf([]byte(spec)).String()+".flist")
		gctx, cancel := context.WithTimeout(ctx, d.fetch.Timeout)
		defer cancel()
		if err := FetchFlistURL(gctx, NewHTTPClient(d.tlsConf), spec, p); err != nil {
			// The last good copy keeps a node booting while the URL is down.
			if fl, cerr := OpenFlist(p); cerr == nil {
				d.log.Warn("flist URL unreachable, using the cached copy", "flist", spec, "error", err.Error())
				return fl, nil
			}
			return nil, err
		}
		return OpenFlist(p)
	default:
		return OpenFlist(spec)
	}
}

// settle updates STATUS and the state file, and sends READY=1 the first
// time every sandbox is mounted or has failed for good.
func (d *daemon) settle() { d.settleReady(false) }

// settleReady with force sends READY=1 even while sandboxes are pending:
// a reload must end (systemctl reload waits for it) even when the store is
// down; STATUS keeps naming what is pending.
func (d *daemon) settleReady(force bool) {
	d.mu.Lock()
	var pending, failed, mounted []string
	for _, n := range d.namesLocked() {
		switch r := d.sbs[n]; r.state {
		case "mounted":
			mounted = append(mounted, n)
		case "failed":
			failed = append(failed, n)
		default:
			p := n
			if r.err != "" {
				p += " (" + r.err + ")"
			}
			pending = append(pending, p)
		}
	}
	status := fmt.Sprintf("%d sandboxes mounted", len(mounted))
	if len(failed) > 0 {
		status += "; failed: " + strings.Join(failed, ", ")
	}
	if len(pending) > 0 {
		status += "; waiting for: " + strings.Join(pending, ", ")
	}
	becameReady := (len(pending) == 0 || force) && !d.ready
	if becameReady {
		d.ready, d.readyAt = true, time.Now()
	}
	d.mu.Unlock()
	d.writeState()
	if becameReady {
		d.notify.Ready(status)
		d.log.Info("ready", sd.PhaseReady.Attr(), "mounted", strings.Join(mounted, ","), "failed", strings.Join(failed, ","))
	} else {
		d.notify.Status("%s", status)
	}
}

func (d *daemon) namesLocked() []string {
	names := make([]string, 0, len(d.sbs))
	for n := range d.sbs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

const reloadWait = 20 * time.Second

// reload applies a new fs.toml: an invalid one changes nothing.
func (d *daemon) reload(ctx context.Context) {
	d.notify.Reloading()
	cfg, err := LoadConfig(d.opt.Config)
	if err != nil {
		d.log.Error("configuration refused", sd.FSConfigRejected.Attr(), "file", d.opt.Config, "error", err.Error())
		d.notify.Ready(d.notify.LastStatus)
		return
	}
	if d.fetch.Store == nil && len(cfg.Sandboxes) > 0 {
		// No sandbox has run yet, so nothing reads d.fetch concurrently.
		store, err := d.openStore(cfg)
		if err != nil {
			d.log.Error("configuration refused", sd.FSConfigRejected.Attr(), "file", d.opt.Config, "error", err.Error())
			d.notify.Ready(d.notify.LastStatus)
			return
		}
		d.fetch.Store = store
	}
	d.mu.Lock()
	running := make([]SandboxConfig, 0, len(d.sbs))
	for _, n := range d.namesLocked() {
		running = append(running, d.sbs[n].cfg)
	}
	plan := PlanReload(running, cfg.Sandboxes)
	var stopping []*sandboxRun
	for _, n := range plan.Remove {
		stopping = append(stopping, d.sbs[n])
		delete(d.sbs, n)
	}
	d.cfg = cfg
	d.mu.Unlock()
	for _, r := range stopping {
		d.stopOne(r)
	}
	var added []string
	var firsts []chan struct{}
	d.mu.Lock()
	for _, s := range plan.Add {
		firsts = append(firsts, d.startLocked(ctx, s).first)
		added = append(added, s.Name)
	}
	d.ready = false
	d.mu.Unlock()
	// The reload is over when each new sandbox had its first attempt (or
	// after reloadWait); one still waiting for its store keeps retrying.
	timeout := time.After(reloadWait)
wait:
	for _, f := range firsts {
		select {
		case <-f:
		case <-timeout:
			break wait
		case <-ctx.Done():
			return
		}
	}
	d.log.Info("configuration reloaded", sd.FSReloaded.Attr(), "added", strings.Join(added, ","), "removed", strings.Join(plan.Remove, ","))
	d.settleReady(true)
}

func (d *daemon) stopOne(r *sandboxRun) {
	r.cancel()
	<-r.done
	if r.m != nil {
		d.release(r.cfg.Name)
		if err := r.m.Unmount(); err != nil {
			d.log.Error("unmount failed", "sandbox", r.cfg.Name, "error", err.Error())
		}
		d.log.Info("sandbox unmounted", sd.FSSandboxUnmounted.Attr(), "sandbox", r.cfg.Name, "mountpoint", r.cfg.Mountpoint)
	}
}

func (d *daemon) shutdown() error {
	d.notify.Stopping()
	d.log.Info("stopping", sd.PhaseStopping.Attr())
	if d.detach() {
		d.writeState()
		return nil
	}
	d.mu.Lock()
	var all []*sandboxRun
	for _, n := range d.namesLocked() {
		all = append(all, d.sbs[n])
	}
	d.sbs = map[string]*sandboxRun{}
	d.mu.Unlock()
	for _, r := range all {
		d.stopOne(r)
	}
	d.fetch.Settle()
	d.fetch.Cache.Close()
	d.writeState()
	return nil
}

// writeState records each sandbox and the cache in fs.json.
func (d *daemon) writeState() {
	d.mu.Lock()
	st := &state.FS{
		CacheDir:   d.opt.CacheDir,
		CacheBytes: d.fetch.Cache.Used(),
		CacheLimit: d.opt.CacheSize,
		CacheFiles: d.fetch.Cache.Len(),
		Store:      d.storeID,
		Fetches:    d.fetch.Fetches.Load(),
		FetchBytes: d.fetch.FetchBytes.Load(),
		Failures:   d.fetch.Failures.Load(),
		StartedAt:  d.started,
		ReadyAt:    d.readyAt,
	}
	for _, n := range d.namesLocked() {
		r := d.sbs[n]
		sb := state.Sandbox{Name: n, Flist: r.cfg.Flist, Mountpoint: r.cfg.Mountpoint, State: r.state, Error: r.err, Attempts: r.attempts}
		if r.m != nil {
			sb.FlistHash = r.m.Flist.Hash().String()
			sb.Nodes = int(r.m.Flist.Len())
			sb.ReadErrors = r.m.ReadErrors()
			sb.CachedBytes = cachedBytes(r.m.Flist, d.fetch.Cache)
			k := r.m.Init
			sb.Conn = &state.FUSEConn{FDName: fdName(n), FlistPath: r.m.Flist.Path(),
				Major: k.Major, Minor: k.Minor, MaxReadAhead: k.MaxReadAhead, Flags: k.Flags, Flags2: k.Flags2}
		}
		st.Sandboxes = append(st.Sandboxes, sb)
	}
	d.mu.Unlock()
	if err := state.Write(d.opt.StateDir, st); err != nil {
		d.log.Warn("state file not written", "error", err.Error())
	}
}

// cachedBytes is how much of a sandbox's content the cache holds.
func cachedBytes(fl *Flist, c *Cache) int64 {
	var sum int64
	for i := uint32(0); i < fl.Len(); i++ {
		n := fl.Node(i)
		if !n.IsRegular() {
			continue
		}
		for k := uint32(0); k < n.B; k++ {
			if c.Has(fl.Chunk(n.A + k).Hash) {
				sum += int64(fl.plainSize(&n, k))
			}
		}
	}
	return sum
}
