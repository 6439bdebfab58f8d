// Package acsession is g8-acsession: the node's mutual-TLS session with
// the controller. One loop connects (and reconnects forever), heartbeats,
// takes jobs from a long-poll, posts their results and sends the on-disk
// event queue in order; it pings the systemd watchdog itself, so a stalled
// loop gets the unit restarted.
package acsession

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession/jobs"
	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/chain"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// Defaults of Config.
const (
	DefaultHeartbeat      = 10 * time.Second
	DefaultLongPoll       = 30 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultRefusedRetry   = 5 * time.Minute
	DefaultNetCheck       = 2 * time.Second
	DefaultChangeCheck    = time.Second
	DefaultJobGrace       = 20 * time.Second
)

// DefaultRetry reconnects quickly at first and then every 30 s at most.
// The jitter is full (each wait drawn from [0, d]): when a controller
// restarts, its whole fleet loses the session in the same instant, and
// waits spread over the full interval turn that into a ramp instead of a
// wave of TLS handshakes that overflows its accept queue.
var DefaultRetry = backoff.Policy{Initial: 500 * time.Millisecond, Max: 30 * time.Second, Factor: 2, Jitter: 1}

// Notifier is what the session tells systemd; sd.Notifier implements it.
type Notifier interface {
	Ready(status string)
	Status(format string, a ...any)
	Watchdog()
	Stopping()
}

// Config is one session. Zero durations take the defaults above.
type Config struct {
	StateDir string // /run/g8os: net.json and unlock.json in, acsession.json out
	// DataDir holds the event queue, the job records and what was already
	// queued. It must outlive a reboot and a power cut (the node delivers
	// what it held): g8-acsession puts it on disk, /var/lib/g8os/acsession.
	// Empty: StateDir/acsession (tests, simulated nodes).
	DataDir        string
	ConfigRoot     string // /mnt/etc: ssl/{ca.pem,node.pem,node.key}
	Heartbeat      time.Duration
	QueueMax       int
	LongPoll       time.Duration // how long the controller may hold a jobs request
	RequestTimeout time.Duration // every other request
	RefusedRetry   time.Duration // wait after the controller refused the certificate
	NetCheck       time.Duration // how often net.json is looked at
	ChangeCheck    time.Duration // how often units and state files are compared, for a heartbeat on change
	Retry          backoff.Policy
	// JobGrace is how long jobs still running when the unit is restarted
	// (an upgrade, systemctl restart) may finish before they are killed;
	// a stop kills them at once.
	JobGrace time.Duration
	// Watchdog is how often the loop must ping the systemd watchdog
	// (sd.WatchdogInterval()); 0 disables it.
	Watchdog time.Duration
	System   System // default: the running host
	// NoApps leaves out the grid's apps (restore, health checks, heartbeat
	// report): for simulated nodes, whose apps would be the host's.
	NoApps   bool
	Notifier Notifier // default: sd.Notifier
	Log      *slog.Logger
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Heartbeat, DefaultHeartbeat)
	def(&c.LongPoll, DefaultLongPoll)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.RefusedRetry, DefaultRefusedRetry)
	def(&c.NetCheck, DefaultNetCheck)
	def(&c.ChangeCheck, DefaultChangeCheck)
	def(&c.JobGrace, DefaultJobGrace)
	if c.QueueMax <= 0 {
		c.QueueMax = DefaultQueueMax
	}
	if c.DataDir == "" {
		c.DataDir = filepath.Join(c.StateDir, "acsession")
	}
	if c.Retry.Initial <= 0 {
		c.Retry = DefaultRetry
	}
	if c.System == nil {
		c.System = &HostSystem{}
	}
	if c.Notifier == nil {
		c.Notifier = &sd.Notifier{}
	}
	if c.Log == nil {
		c.Log = sd.NewTextLogger(os.Stderr, "acsession", slog.LevelInfo)
	}
}

// Session is one node's channel to its controller.
type Session struct {
	cfg     Config
	log     *slog.Logger
	dataDir string
	queue   *Queue
	exec    *jobs.Executor
	// Jobs run under their own context, not Run's: a restart lets them
	// finish (stopJobs).
	jobCtx    context.Context
	jobCancel context.CancelFunc
	st        state.ACSession
	seen      seenState
	bootID    string
	jobsRun   atomic.Int64

	// The connection; only the loop goroutine touches these.
	id          *Identity
	controller  string        // the one asked last
	usedCtrl    string        // the one the last session was with
	failedCtrl  string        // the one that failed last; tried last
	netLink     string        // interface, method and address of the last net.json
	client      *acapi.Client // bounded requests
	poller      *acapi.Client // the long-poll: same transport, no global timeout
	tlsCache    tls.ClientSessionCache
	tlsCacheFor string // the serial of the certificate the cached sessions carry
	connected   bool
	gen         int // poller generation; results of older pollers are ignored
	stopPoll    context.CancelFunc
	polled      chan pollResult
	retry       *backoff.Backoff
	ready       bool
	lastPing    time.Time
	netStamp    string
	lastChain   string      // chainFingerprint at the last look
	phases      []phaseView // read this heartbeat tick; nil: read afresh
	holdUntil   time.Time   // the controller's Retry-After of a 429: nothing is sent before
}

type pollResult struct {
	gen  int
	jobs []acapi.Job
	err  error
}

// seenState remembers, across restarts of the unit, which boot-timeline
// steps and which network decision were already queued as events.
type seenState struct {
	Phases map[string]string `json:"phases"` // phase → "bootid readyAt"
	Net    string            `json:"net"`
}

// New prepares a session: its queue and job records under DataDir, and its
// state file.
func New(cfg Config) (*Session, error) {
	cfg.defaults()
	s := &Session{cfg: cfg, log: cfg.Log, dataDir: cfg.DataDir,
		polled: make(chan pollResult, 1), retry: backoff.New(cfg.Retry)}
	var err error
	if s.queue, err = OpenQueue(filepath.Join(s.dataDir, "events"), cfg.QueueMax); err != nil {
		return nil, err
	}
	env := &jobs.Env{StateDir: cfg.StateDir, Log: cfg.Log}
	if cfg.ConfigRoot != "" && !cfg.NoApps {
		jobs.ConfigureApps(cfg.ConfigRoot, cfg.StateDir) // grid apps: records in the unlocked config
	}
	if s.exec, err = jobs.NewExecutor(filepath.Join(s.dataDir, "jobs"), env); err != nil {
		return nil, err
	}
	s.exec.Finished = s.jobFinished
	s.jobCtx, s.jobCancel = context.WithCancel(context.Background())
	if s.bootID, err = BootID(); err != nil {
		s.log.Warn("no boot id; events carry none", "error", err)
	}
	s.loadSeen()
	s.st = state.ACSession{StartedAt: time.Now().UTC()}
	return s, nil
}

// Run is the session loop; it returns when ctx ends (nil) or on an error
// that retrying cannot fix.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Run runs the loop until ctx ends. Everything that talks to the
// controller happens here, one thing at a time, with the watchdog pinged
// between them: if any step hangs, systemd notices.
func (s *Session) Run(ctx context.Context) error {
	s.log.Info("g8-acsession starting", sd.PhaseStarted.Attr(), "state_dir", s.cfg.StateDir, "config_root", s.cfg.ConfigRoot)
	s.setStatus("starting: looking for the controller in %s", state.Path(s.cfg.StateDir, &state.Net{}))
	defer s.shutdown()
	s.scanTimeline()
	s.netChanged()
	if !s.cfg.NoApps {
		go s.restoreApps(ctx)
	}

	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	netCheck := time.NewTicker(s.cfg.NetCheck)
	defer netCheck.Stop()
	changeCheck := time.NewTicker(s.cfg.ChangeCheck)
	defer changeCheck.Stop()
	var watchdog <-chan time.Time
	if s.cfg.Watchdog > 0 {
		t := time.NewTicker(s.cfg.Watchdog / 2)
		defer t.Stop()
		watchdog = t.C
	}
	reconnect := time.NewTimer(0)
	defer reconnect.Stop()

	for {
		s.ping()
		select {
		case <-ctx.Done():
			return nil
		case <-watchdog:
		case <-reconnect.C:
			if wait, ok := s.connect(ctx); !ok {
				reconnect.Reset(wait)
			}
		case <-heartbeat.C:
			s.phases = readPhases(s.cfg.StateDir) // one read per tick, for the timeline
			s.scanTimeline()
			s.phases = nil
			if !s.connected {
				s.writeState() // queue depth; a heartbeat writes the state itself
			} else if err := s.heartbeat(ctx); err != nil {
				reconnect.Reset(s.lost(err))
			} else if s.maybeRenew(ctx) {
				s.disconnect()
				reconnect.Reset(0)
			}
		case <-changeCheck.C:
			// A unit or phase that changed is reported now, not at the next
			// interval: the controller's view follows the chain within
			// about a second.
			if fp := s.chainFingerprint(ctx); fp != s.lastChain {
				s.lastChain = fp
				s.scanTimeline() // a phase restarted: its phase.ready now, not at the next heartbeat
				if s.connected {
					if err := s.heartbeat(ctx); err != nil {
						reconnect.Reset(s.lost(err))
					}
				}
			}
		case <-netCheck.C:
			if s.netChanged() {
				s.disconnect()
				s.retry.Reset()
				reconnect.Reset(0)
			}
		case r := <-s.polled:
			if r.gen != s.gen || !s.connected {
				continue
			}
			if r.err != nil {
				reconnect.Reset(s.lost(fmt.Errorf("jobs long-poll: %w", r.err)))
				continue
			}
			for _, j := range r.jobs {
				s.submit(ctx, j)
			}
		case <-s.exec.Ready():
			// Jobs finished: the state file counts them before their
			// results go out, so whoever sees a result at the controller
			// finds the file at least as new (as with STATUS=).
			s.writeState()
			if s.connected {
				if err := s.postResults(ctx); err != nil {
					reconnect.Reset(s.lost(err))
				}
			}
		case <-s.queue.Ready():
			if s.connected {
				if err := s.flushEvents(ctx); err != nil {
					reconnect.Reset(s.lost(err))
				}
			}
		}
	}
}

// chainFingerprint is what a heartbeat's unit and phase lines depend on:
// the g8 units' ActiveState/SubState (one D-Bus call) and the other
// phases' state files' stamps, plus whether this session is connected (its
// own file changes with every heartbeat, so it is left out).
func (s *Session) chainFingerprint(ctx context.Context) string {
	var b strings.Builder
	if w, ok := s.cfg.System.(interface {
		UnitStates(context.Context) map[string]string
	}); ok {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		us := w.UnitStates(cctx)
		cancel()
		names := make([]string, 0, len(us))
		for n := range us {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(&b, "%s=%s ", n, us[n])
		}
	}
	for _, p := range chain.Phases {
		if p.Name == s.st.PhaseName() {
			continue
		}
		if fi, err := os.Stat(state.Path(s.cfg.StateDir, p.New())); err == nil {
			fmt.Fprintf(&b, "%s@%d/%d ", p.Name, fi.ModTime().UnixNano(), fi.Size())
		}
	}
	fmt.Fprintf(&b, "connected=%v", s.connected)
	return b.String()
}

// ping pings the watchdog when due. It is called from the loop only.
func (s *Session) ping() {
	if s.cfg.Watchdog <= 0 || time.Since(s.lastPing) < s.cfg.Watchdog/4 {
		return
	}
	s.cfg.Notifier.Watchdog()
	s.lastPing = time.Now()
}

// stopJobs ends the jobs still running. On a restart (sd.AskRestarting:
// an upgrade, systemctl restart) they may finish within JobGrace, so that
// a restart loses no job; their results are on disk and the next process
// posts what this one did not. On a stop, or past the grace, they are
// killed and recorded as failed.
func (s *Session) stopJobs() {
	if n := s.exec.Running(); n > 0 {
		if restart, job, why := sd.AskRestarting(); restart {
			s.log.Info("restarting: running jobs may finish first", "jobs", n, "grace", s.cfg.JobGrace.String(), "job", job, "reason", why)
			if !s.exec.WaitFor(s.cfg.JobGrace) {
				s.log.Warn("jobs still running after the grace are killed", "jobs", s.exec.Running(), "grace", s.cfg.JobGrace.String())
			}
		}
	}
	s.jobCancel()
	s.exec.Wait()
}

func (s *Session) shutdown() {
	s.cfg.Notifier.Stopping()
	s.log.Info("g8-acsession stopping", sd.PhaseStopping.Attr())
	s.stopJobs()
	s.scanTimeline() // what became ready since the last look, before the next process overwrites acsession.json
	s.disconnect()
	s.st.Status = "stopped"
	s.writeState()
	if h, ok := s.cfg.System.(*HostSystem); ok {
		h.Close()
	}
}

// connect reads its inputs afresh (net.json, the identity) and makes the
// first round trip, a heartbeat. It returns false and how long to wait
// when that failed.
func (s *Session) connect(ctx context.Context) (time.Duration, bool) {
	var n state.Net
	if err := state.Read(s.cfg.StateDir, &n); err != nil || n.Controller == "" {
		if err == nil {
			err = fmt.Errorf("%s: no controller in it", state.Path(s.cfg.StateDir, &n))
		}
		return s.waitInput("the controller URL from g8-netup", err), false
	}
	id, err := LoadIdentity(s.cfg.ConfigRoot, s.cfg.StateDir)
	if err != nil {
		return s.waitInput("the node identity from enrollment", err), false
	}
	s.id = id
	s.st.NodeID, s.st.CertNotAfter = id.NodeID, id.NotAfter
	s.st.Controllers = n.ControllerList()
	s.exec.SetNodeID(id.NodeID)
	// Every controller net.json lists serves the same fleet from one store:
	// one that does not answer is skipped for the next at once. A refusal
	// of the certificate is the fleet's verdict and ends the round.
	var reply *acapi.HeartbeatReply
	for _, ctrl := range n.FailoverOrder(s.failedCtrl) {
		if reply, err = s.dial(ctx, ctrl, id); err == nil || refused(err) || ctx.Err() != nil {
			break
		}
		s.log.Warn("controller did not answer; trying the next one listed", sd.ACSessionLost.Attr(), "controller", ctrl, "error", err)
		s.failedCtrl = ctrl
	}
	if err != nil {
		return s.failed(err), false
	}
	if reply.NodeID != "" && reply.NodeID != id.NodeID {
		s.log.Warn("controller knows this node under another id", "controller", s.controller, "node", id.NodeID, "controller_node", reply.NodeID)
	}
	if s.usedCtrl != "" && s.usedCtrl != s.controller {
		s.st.Failovers++
		s.log.Info("session moved to another controller", sd.ACSessionControllerChanged.Attr(), "controller", s.controller,
			"previous", s.usedCtrl, "failovers", s.st.Failovers)
	}
	s.usedCtrl = s.controller
	now := time.Now().UTC()
	s.connected, s.st.Connected, s.st.ConnectedSince, s.st.LastOK, s.st.LastError, s.st.Attempts = true, true, now, now, "", 0
	s.st.NextAttempt = time.Time{}
	s.retry.Reset()
	s.log.Info("connected to the controller", sd.ACSessionConnected.Attr(), "controller", s.controller, "node", id.NodeID)
	status := fmt.Sprintf("connected to %s as node %s", s.controller, id.NodeID)
	if !s.ready {
		s.ready = true
		s.st.ReadyAt = now
		s.st.Status = status
		s.writeState()
		s.scanTimeline() // its own phase.ready, before a quick restart could lose it
		s.cfg.Notifier.Ready(status)
		s.log.Info("session ready", sd.PhaseReady.Attr(), "controller", s.controller)
	} else {
		s.setStatus("%s", status)
	}
	s.startPoller(ctx)
	if err := s.postResults(ctx); err != nil {
		return s.lost(err), false
	}
	if err := s.flushEvents(ctx); err != nil {
		return s.lost(err), false
	}
	s.renewHostCert(ctx)
	return 0, true
}

// dial points the clients at ctrl and makes the first round trip.
func (s *Session) dial(ctx context.Context, ctrl string, id *Identity) (*acapi.HeartbeatReply, error) {
	s.controller, s.st.Controller = ctrl, ctrl
	conf := acapi.TLSConfig(id.Roots, &id.Cert)
	// A reconnect resumes the last connection's TLS session: no signature
	// and no certificate check on either side, which is what lets a
	// controller take its whole fleet back after a restart. A session
	// carries the certificate it was made with: a new one starts afresh.
	// The cache holds one session per controller address.
	if s.tlsCacheFor == id.Serial && s.tlsCache != nil {
		conf.ClientSessionCache = s.tlsCache
	}
	s.tlsCache, s.tlsCacheFor = conf.ClientSessionCache, id.Serial
	client, err := acapi.NewClient(ctrl, conf, s.cfg.RequestTimeout)
	if err != nil {
		return nil, fmt.Errorf("%s: controller: %w", state.Path(s.cfg.StateDir, &state.Net{}), err)
	}
	if s.client != nil {
		s.client.HTTP.CloseIdleConnections()
	}
	s.client = client
	// The long-poll shares the connection but not the client's Timeout,
	// which would cut every poll; each poll has its own deadline instead.
	s.poller = &acapi.Client{BaseURL: client.BaseURL, HTTP: acapi.HTTPClient(client.HTTP.Transport, 0)}
	s.setStatus("connecting to %s as node %s", ctrl, id.NodeID)
	return s.sendHeartbeat(ctx)
}

// waitInput reports a missing input and returns the wait before the next look.
func (s *Session) waitInput(what string, err error) time.Duration {
	d := s.retry.Next()
	s.st.LastError = err.Error()
	s.st.NextAttempt = time.Now().Add(d).UTC()
	s.st.Attempts++
	s.log.Warn("waiting for "+what, sd.ACSessionWaiting.Attr(), "error", err, "wait", d)
	s.setStatus("waiting for %s: %v; next look in %v", what, err, d.Round(100*time.Millisecond))
	return d
}

// refused reports whether the controller refused the node's identity: an
// HTTP 401/403, or a TLS alert about our certificate during the handshake.
func refused(err error) bool {
	if acapi.IsStatus(err, http.StatusForbidden) || acapi.IsStatus(err, http.StatusUnauthorized) {
		return true
	}
	var alert tls.AlertError
	if errors.As(err, &alert) {
		switch alert {
		case 42, 43, 44, 45, 46, 48, 49: // bad/unsupported/revoked/expired/unknown certificate, unknown CA, access denied
			return true
		}
	}
	// Over TLS 1.3 the server's verdict on our certificate arrives after
	// the handshake, as an alert on the first read.
	msg := err.Error()
	for _, s := range []string{"bad certificate", "certificate revoked", "certificate required", "unknown certificate", "access denied"} {
		if strings.Contains(msg, "remote error: tls: "+s) {
			return true
		}
	}
	return false
}

// failed accounts for a failed attempt and returns the wait before the next.
func (s *Session) failed(err error) time.Duration {
	s.st.Attempts++
	s.st.LastError = err.Error()
	if refused(err) {
		d := s.cfg.RefusedRetry
		s.st.NextAttempt = time.Now().Add(d).UTC()
		s.log.Error("the controller refused this node's certificate; never falling back to an unauthenticated channel",
			sd.ACSessionRefused.Attr(), "controller", s.controller, "node", s.id.NodeID, "serial", s.id.Serial, "error", err, "wait", d)
		s.setStatus("controller %s refused this node's certificate (CN %s, serial %s): %v; re-enroll or un-revoke the node; retry in %v",
			s.controller, s.id.Subject, s.id.Serial, err, d)
		return d
	}
	d := s.retry.Next()
	var se *acapi.StatusError
	if errors.As(err, &se) && se.RetryAfter > d {
		d = se.RetryAfter
	}
	s.st.NextAttempt = time.Now().Add(d).UTC()
	s.log.Warn("controller unreachable", sd.PhaseRetry.Attr(), "controller", s.controller, "error", err, "attempt", s.st.Attempts, "wait", d)
	s.setStatus("controller %s unreachable: %v; attempt %d, next in %v; %d events queued",
		s.controller, err, s.st.Attempts, d.Round(100*time.Millisecond), s.queue.Len())
	return d
}

// lost tears the connection down after err and returns the wait before the
// next connect.
func (s *Session) lost(err error) time.Duration {
	if s.connected {
		s.log.Warn("lost the controller", sd.ACSessionLost.Attr(), "controller", s.controller, "error", err)
	}
	if !refused(err) {
		s.failedCtrl = s.controller
	}
	s.disconnect()
	d := s.failed(err)
	s.writeState()
	return d
}

func (s *Session) disconnect() {
	if s.stopPoll != nil {
		s.stopPoll()
		s.stopPoll = nil
	}
	s.gen++
	if s.client != nil {
		s.client.HTTP.CloseIdleConnections()
	}
	s.connected, s.st.Connected = false, false
}

func (s *Session) startPoller(ctx context.Context) {
	s.gen++
	gen, poller, wait, grace := s.gen, s.poller, s.cfg.LongPoll, s.cfg.RequestTimeout
	pctx, cancel := context.WithCancel(ctx)
	s.stopPoll = cancel
	go func() {
		// The first poll of a connection resumes: jobs handed out through
		// a connection (or a controller) that died in between come again.
		poll := poller.ResumeJobs
		for {
			rctx, rcancel := context.WithTimeout(pctx, wait+grace)
			js, err := poll(rctx, wait)
			rcancel()
			if err == nil {
				poll = poller.Jobs
			}
			if pctx.Err() != nil {
				return
			}
			var se *acapi.StatusError
			if errors.As(err, &se) && se.Code == http.StatusTooManyRequests {
				// Over the node's request budget: ask again after the
				// controller's Retry-After, on the same connection.
				select {
				case <-time.After(max(se.RetryAfter, time.Second)):
					continue
				case <-pctx.Done():
					return
				}
			}
			select {
			case s.polled <- pollResult{gen: gen, jobs: js, err: err}:
			case <-pctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

func (s *Session) buildHeartbeat(ctx context.Context) *acapi.Heartbeat {
	hb := &acapi.Heartbeat{}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	s.cfg.System.Status(cctx, hb)
	if !s.cfg.NoApps {
		hb.Apps = jobs.AppHeartbeat(cctx, nil)
	}
	hb.NodeID = s.id.NodeID
	units, _ := s.cfg.System.(chain.Units)
	hb.Phases = phaseSummaries(cctx, units, s.cfg.StateDir)
	// The controller refuses a heartbeat with non-printable text (an app's
	// multi-line error, a unit name with an escape): send it escaped.
	hb.CleanText()
	return hb
}

func (s *Session) sendHeartbeat(ctx context.Context) (*acapi.HeartbeatReply, error) {
	hb := s.buildHeartbeat(ctx)
	s.ping()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	return s.client.Heartbeat(rctx, hb)
}

func (s *Session) heartbeat(ctx context.Context) error {
	if s.holding() {
		return nil
	}
	if _, err := s.sendHeartbeat(ctx); err != nil {
		if s.throttled(err) {
			return nil
		}
		return fmt.Errorf("heartbeat: %w", err)
	}
	s.st.LastOK = time.Now().UTC()
	s.setStatus("connected to %s as node %s since %s; last heartbeat %s; %d events queued",
		s.controller, s.id.NodeID, s.st.ConnectedSince.Format(time.TimeOnly), s.st.LastOK.Format(time.TimeOnly), s.queue.Len())
	// Anything a failed post left behind goes now.
	if err := s.postResults(ctx); err != nil {
		return err
	}
	return s.flushEvents(ctx)
}

func (s *Session) submit(ctx context.Context, j acapi.Job) {
	out, err := s.exec.Submit(s.jobCtx, j)
	switch out {
	case jobs.Started:
		s.log.Debug("job started", "job", j.ID, "kind", j.Kind)
	case jobs.Duplicate, jobs.Rejected, jobs.Dropped:
		s.log.Warn("job not run", sd.ACSessionJobRefused.Attr(), "job", j.ID, "kind", j.Kind, "outcome", out.String(), "error", err)
	}
}

// jobFinished runs on the job's goroutine: it only queues (Queue is safe
// for concurrent use) and logs.
func (s *Session) jobFinished(j acapi.Job, r acapi.JobResult) {
	s.jobsRun.Add(1)
	s.log.Info("job finished", sd.ACSessionJobFinished.Attr(), "job", j.ID, "kind", j.Kind, "state", r.State, "exit_code", r.ExitCode)
	s.appendEvent(acapi.EventJobFinished, acapi.JobFinishedData{ID: j.ID, Kind: j.Kind, State: r.State, ExitCode: r.ExitCode,
		Duration: acapi.Duration(r.FinishedAt.Sub(r.StartedAt)), Error: r.Error})
}

// throttled reports whether err is the controller's 429 (this node is
// over its request budget) and then holds every request until its
// Retry-After: the connection is fine and stays, and asking again sooner
// would only be refused again.
func (s *Session) throttled(err error) bool {
	var se *acapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests {
		return false
	}
	d := max(se.RetryAfter, time.Second)
	s.holdUntil = time.Now().Add(d)
	s.log.Warn("the controller asks this node to slow down", sd.ACSessionThrottled.Attr(), "controller", s.controller, "wait", d, "error", err)
	s.setStatus("connected to %s as node %s; the controller asked for a pause of %v (this node is over its request budget); %d events queued",
		s.controller, s.id.NodeID, d, s.queue.Len())
	return true
}

// holding reports whether a 429's Retry-After is still running.
func (s *Session) holding() bool { return time.Now().Before(s.holdUntil) }

// transient reports whether err is a controller-side failure worth
// retrying on the same connection later (5xx, 429), as opposed to a broken
// connection or a refusal.
func transient(err error) bool {
	var se *acapi.StatusError
	return errors.As(err, &se) && (se.Code >= 500 || se.Code == http.StatusTooManyRequests)
}

// postResults sends every pending result. A result the controller rejects
// outright (4xx: it no longer knows the job) is dropped with a warning,
// or it would be retried forever.
func (s *Session) postResults(ctx context.Context) error {
	if s.holding() {
		return nil
	}
	for _, r := range s.exec.Pending() {
		s.ping()
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		err := s.client.PostResult(rctx, &r)
		cancel()
		var se *acapi.StatusError
		switch {
		case err == nil:
		case s.throttled(err):
			return nil
		case transient(err):
			s.log.Warn("controller could not take a job result; retrying with the next heartbeat", "job", r.ID, "error", err)
			return nil
		case errors.As(err, &se) && !refused(err):
			s.log.Warn("controller refused a job result; dropping it", "job", r.ID, "error", err)
		default:
			return fmt.Errorf("job %s result: %w", r.ID, err)
		}
		if err := s.exec.Posted(r); err != nil {
			s.log.Warn("recording a posted result", "job", r.ID, "error", err)
		}
	}
	return nil
}

// flushEvents sends the queue in order, a batch at a time, and removes
// what the controller acknowledged.
func (s *Session) flushEvents(ctx context.Context) error {
	for range 64 { // bounded, so the loop comes back to its other work
		if s.holding() {
			return nil
		}
		evs, err := s.queue.Peek()
		if err != nil {
			s.log.Error("event queue: unreadable events skipped", "error", err)
		}
		if len(evs) == 0 {
			return nil
		}
		if !s.queue.Sent() {
			// Before this queue's first send, learn the controller's mark.
			r, err := s.postEvents(ctx, []acapi.Event{})
			if err != nil {
				return s.eventsError(err)
			}
			if err := s.queue.PrepareFirstSend(r.Acked); err != nil {
				s.log.Error("preparing the event queue", "error", err)
				return nil
			}
			if evs, err = s.queue.Peek(); err != nil {
				s.log.Error("event queue: unreadable events skipped", "error", err)
			}
			if len(evs) == 0 {
				return nil
			}
		}
		s.ping()
		r, err := s.postEvents(ctx, evs)
		if err != nil {
			return s.eventsError(err)
		}
		if r.Acked < evs[0].Seq {
			s.log.Warn("controller acknowledged none of the events sent; retrying with the next heartbeat",
				"first", evs[0].Seq, "last", evs[len(evs)-1].Seq, "acked", r.Acked)
			return nil
		}
		if err := s.queue.Ack(r.Acked); err != nil {
			s.log.Error("removing acknowledged events", "error", err)
			return nil
		}
		s.st.EventsAcked = r.Acked
	}
	return nil
}

func (s *Session) postEvents(ctx context.Context, evs []acapi.Event) (*acapi.EventsReply, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	return s.client.PostEvents(rctx, evs)
}

func (s *Session) eventsError(err error) error {
	if s.throttled(err) {
		return nil
	}
	if transient(err) {
		s.log.Warn("controller could not take events; retrying with the next heartbeat", "error", err)
		return nil
	}
	return fmt.Errorf("events: %w", err)
}

func (s *Session) appendEvent(kind string, data any) {
	if _, err := s.queue.Append(kind, data); err != nil {
		if errors.Is(err, ErrQueueFull) {
			s.log.Warn("event queue full", sd.ACSessionQueueFull.Attr(), "kind", kind, "error", err)
			return
		}
		if errors.Is(err, ErrEventDropped) {
			s.log.Warn("event dropped", sd.ACSessionEventDropped.Attr(), "kind", kind, "error", err)
			return
		}
		s.log.Error("queueing an event", "kind", kind, "error", err)
	}
}

// scanTimeline queues a phase.ready event for every phase that became
// ready since the last look (the boot timeline).
func (s *Session) scanTimeline() {
	changed := false
	views := s.phases
	if views == nil {
		views = readPhases(s.cfg.StateDir)
	}
	for _, v := range views {
		if v.ReadyAt.IsZero() {
			continue
		}
		key := s.bootID + " " + v.ReadyAt.UTC().Format(time.RFC3339Nano)
		if s.seen.Phases[v.Phase] == key {
			continue
		}
		s.appendEvent(acapi.EventPhaseReady, acapi.PhaseReadyData{Phase: v.Phase, BootID: s.bootID, StartedAt: v.StartedAt, ReadyAt: v.ReadyAt})
		s.seen.Phases[v.Phase] = key
		changed = true
	}
	if changed {
		s.saveSeen()
	}
}

// netChanged looks at net.json and reports whether the controller it
// names differs from the one in use; a changed network decision is queued
// as a net.changed event.
func (s *Session) netChanged() bool {
	path := state.Path(s.cfg.StateDir, &state.Net{})
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	stamp := fmt.Sprint(st.ModTime().UnixNano(), st.Size())
	if stamp == s.netStamp {
		return false
	}
	var n state.Net
	if err := state.Read(s.cfg.StateDir, &n); err != nil {
		return false // half a decision is no decision; look again next time
	}
	s.netStamp = stamp
	desc := fmt.Sprintf("%s %s %s %s", n.Interface, n.Method, n.Address, n.Controller)
	if desc != s.seen.Net {
		if s.seen.Net != "" {
			s.appendEvent(acapi.EventNetChanged, acapi.NetChangedData{Controller: n.Controller, Interface: n.Interface,
				Method: n.Method, Address: n.Address, Previous: s.seen.Net})
		}
		s.seen.Net = desc
		s.saveSeen()
	}
	// Another controller of the same list is no reason to leave one that
	// works (g8-netup switches when the one it checks dies, which the
	// session may have survived already); a new address or link is: the
	// connection may be bound to the old one.
	link := fmt.Sprintf("%s %s %s", n.Interface, n.Method, n.Address)
	prevLink := s.netLink
	s.netLink = link
	if s.controller == "" {
		return false
	}
	if !slices.Contains(n.ControllerList(), s.controller) {
		s.log.Info("net.json no longer lists the controller in use", sd.ACSessionControllerChanged.Attr(), "controller", n.Controller, "previous", s.controller)
		return true
	}
	if prevLink != "" && link != prevLink {
		s.log.Info("net.json names another link; reconnecting", sd.ACSessionControllerChanged.Attr(), "controller", n.Controller, "previous", s.controller,
			"link", link, "previous_link", prevLink)
		return true
	}
	return false
}

func (s *Session) loadSeen() {
	s.seen = seenState{Phases: map[string]string{}}
	data, err := os.ReadFile(filepath.Join(s.dataDir, "seen.json"))
	if err == nil {
		_ = json.Unmarshal(data, &s.seen)
	}
	if s.seen.Phases == nil {
		s.seen.Phases = map[string]string{}
	}
}

func (s *Session) saveSeen() {
	b, _ := json.Marshal(s.seen)
	if err := atomicfile.Write(filepath.Join(s.dataDir, "seen.json"), b, 0o600); err != nil {
		s.log.Warn("remembering queued timeline events", "error", err)
	}
}

// setStatus records the status in the state file, then tells systemd: a
// reader that saw the STATUS= line finds the file at least as new.
func (s *Session) setStatus(format string, a ...any) {
	s.st.Status = fmt.Sprintf(format, a...)
	s.writeState()
	s.cfg.Notifier.Status("%s", s.st.Status)
}

func (s *Session) writeState() {
	s.st.QueueDepth = s.queue.Len()
	s.st.EventsDropped, s.st.EventsAcked = s.queue.Stats()
	s.st.JobsRun = int(s.jobsRun.Load())
	if err := state.Write(s.cfg.StateDir, &s.st); err != nil {
		s.log.Warn("writing the state file", "error", err)
	}
}
