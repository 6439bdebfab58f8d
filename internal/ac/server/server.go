// Package server is the controller's HTTPS API (docs/api.md): health and
// unlock over server TLS, the node endpoints over mTLS, and the content
// store. All state lives in the store package, so the admin CLI's changes
// (approvals, new jobs) are visible to the next request.
package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/recovery"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/version"
	"golang.org/x/crypto/ssh"
	"golang.org/x/time/rate"
)

// Config is what the API needs; the ac package fills it from the data dir.
type Config struct {
	Name       string // controller name, reported by /v1/health
	Store      *store.Store
	ServerCA   []byte         // PEM of the CA that signed our server certificate
	NodeCA     *pki.Authority // signs node client certificates
	SSHHostCA  *pki.SSHHostCA // signs node SSH host keys
	ChunkDir   string         // content store root (DATA/store)
	AdminToken []byte         // bearer token for admin endpoints
	Recovery   RecoveryKeys   // recovery master keys; nil answers no recovery exchange
	Log        *slog.Logger

	RetryAfter  time.Duration // told to pending nodes (default 5s)
	UnlockRate  rate.Limit    // unlock requests per second per source (default 1; IPv4 address, IPv6 /64: SourceKey)
	UnlockBurst int           // bucket size (default 10)
	// NewNodeRate and NewNodeBurst are the budget for new pending nodes,
	// over all sources (default 2/s, 100): a flood of made-up identities
	// from many addresses makes at most that many. MaxPending caps the
	// nodes waiting for approval (default 1000). Over either, 429.
	NewNodeRate  rate.Limit
	NewNodeBurst int
	MaxPending   int
	// NodeRate and NodeBurst are each node's request budget on the mTLS
	// endpoints (default 10/s, 100; an events post costs one per 256
	// events); over it, 429 with a Retry-After. NodeEvents is the events
	// a node may hold (default 10000, store.AddEvents).
	NodeRate     rate.Limit
	NodeBurst    int
	NodeEvents   int
	PollInterval time.Duration // how often the store is checked for other processes' changes (default 50ms)
	MaxWait      time.Duration // longest long-poll (default 2m)
	// NodeCertLifetime is how long a node certificate is valid (default
	// pki.DefaultNodeValidity); the node's session renews it well before.
	NodeCertLifetime time.Duration
	// HeartbeatBatch is how long a heartbeat may wait for others to share
	// its commit (default 100ms).
	HeartbeatBatch time.Duration
	// MaxInFlight bounds the node requests at work (default 4096); over
	// it, 503 with a Retry-After of 1 s plus up to RetryAfterBusy
	// (default 10s).
	MaxInFlight    int
	RetryAfterBusy time.Duration
	Now            func() time.Time
}

// Server serves API v1.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	limiter  *keyedLimiter // unlock requests per source (SourceKey)
	certs    *keyedLimiter // host certificate requests, per node
	renewals *keyedLimiter // certificate renewals per node
	budget   *keyedLimiter // every mTLS request, per node
	newNodes *rate.Limiter // new pending nodes, from every source
	throttle throttleLog
	nodePool *x509.CertPool
	queue    *storeWatch
	beats    *heartbeatBatch
	inFlight chan struct{} // admitted node requests
	vmu      sync.Mutex
	verified map[[sha256.Size]byte]time.Time // node certificate chains checked, until when (verifyChain)
	stopping chan struct{}
	stopOnce sync.Once
}

// New builds the API handler.
func New(cfg Config) *Server {
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 5 * time.Second
	}
	if cfg.UnlockRate <= 0 {
		cfg.UnlockRate = 1
	}
	if cfg.UnlockBurst <= 0 {
		cfg.UnlockBurst = 10
	}
	if cfg.NewNodeRate <= 0 {
		cfg.NewNodeRate = 2
	}
	if cfg.NewNodeBurst <= 0 {
		cfg.NewNodeBurst = 100
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1000
	}
	if cfg.NodeRate <= 0 {
		cfg.NodeRate = 10
	}
	if cfg.NodeBurst <= 0 {
		cfg.NodeBurst = 100
	}
	if cfg.NodeEvents <= 0 {
		cfg.NodeEvents = 10000
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 2 * time.Minute
	}
	if cfg.HeartbeatBatch <= 0 {
		cfg.HeartbeatBatch = 100 * time.Millisecond
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.RetryAfterBusy <= 0 {
		cfg.RetryAfterBusy = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NodeCertLifetime <= 0 {
		cfg.NodeCertLifetime = pki.DefaultNodeValidity
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), stopping: make(chan struct{}),
		limiter: newKeyedLimiter(cfg.UnlockRate, cfg.UnlockBurst),
		// A node asks once per session start; a burst covers reconnects.
		certs: newKeyedLimiter(rate.Every(time.Minute), 5),
		// A session renews once per lifetime; a few retries are plenty.
		renewals: newKeyedLimiter(rate.Every(time.Minute), 5),
		budget:   newKeyedLimiter(cfg.NodeRate, cfg.NodeBurst),
		newNodes: rate.NewLimiter(cfg.NewNodeRate, cfg.NewNodeBurst),
		nodePool: x509.NewCertPool(), verified: map[[sha256.Size]byte]time.Time{}}
	s.nodePool.AddCert(cfg.NodeCA.Cert)
	s.queue = newStoreWatch(s)
	s.beats = newHeartbeatBatch(s)
	s.inFlight = make(chan struct{}, cfg.MaxInFlight)
	s.mux.HandleFunc("GET "+acapi.PathHealth, s.health)
	s.mux.HandleFunc("POST "+acapi.PathUnlock, s.unlock)
	s.mux.HandleFunc("POST "+acapi.PathHeartbeat, s.admitted(s.node(s.heartbeat)))
	s.mux.HandleFunc("GET "+acapi.PathJobs, s.node(s.jobs))
	s.mux.HandleFunc("POST "+acapi.PathJobs+"/{id}/result", s.admitted(s.node(s.jobResult)))
	s.mux.HandleFunc("POST "+acapi.PathEvents, s.admitted(s.node(s.events)))
	s.mux.HandleFunc("POST "+acapi.PathSSHHostCert, s.admitted(s.node(s.sshHostCert)))
	s.mux.HandleFunc("POST "+acapi.PathCert, s.admitted(s.node(s.renewCert)))
	s.mux.HandleFunc("PUT "+acapi.PathStore+"{hash}", s.putChunk)
	s.mux.HandleFunc("GET "+acapi.PathStore+"{hash}", s.getChunk) // and HEAD
	return s
}

// Stop ends pending long-polls so a graceful shutdown does not wait for
// them, and stops watching the store.
func (s *Server) Stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// ServeHTTP answers unknown paths and methods with a JSON error too.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		// Never reached through our listeners; guards a mis-wired embedding.
		writeError(w, http.StatusForbidden, "plain HTTP is not served", "", "")
		return
	}
	if _, pat := s.mux.Handler(r); pat == "" {
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, p := s.mux.Handler(r2); p != "" {
				w.Header().Set("Allow", m)
				writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed", r.Method, r.URL.Path), "", "")
				return
			}
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s %s: no such endpoint", r.Method, r.URL.Path), "", "")
		return
	}
	s.mux.ServeHTTP(w, r)
}

// TLSConfig is the server side of every listener: our certificate, and a
// client certificate requested but neither required nor verified here.
// /v1/unlock takes the node's self-signed identity certificate, the mTLS
// endpoints a node certificate; authNode and ProvesIdentity check each in
// one place. The handshake itself still proves that the client holds the
// key of the certificate it sent. cert returns the current server
// certificate, so it can be replaced (g8-ac server-cert + SIGHUP) without
// dropping connections.
func (s *Server) TLSConfig(cert func() *tls.Certificate) *tls.Config {
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert(), nil },
		ClientAuth:     tls.RequestClientCert,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg, state, nodeID string) {
	writeJSON(w, code, acapi.Error{Error: msg, State: state, NodeID: nodeID})
}

func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	s.cfg.Log.Error("request failed", sd.ACRequestFailed.Attr(), "path", r.URL.Path, "peer", r.RemoteAddr, "error", err)
	writeError(w, http.StatusInternalServerError, "internal error (see the controller's journal)", "", "")
}

// readBody reads at most limit bytes; a larger body is answered 413.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", limit), "", "")
		} else {
			writeError(w, http.StatusBadRequest, "reading body: "+err.Error(), "", "")
		}
		return nil, false
	}
	return data, true
}

func peerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func retryAfter(w http.ResponseWriter, d time.Duration) {
	secs := int((d + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, acapi.Health{Status: "ok", Name: s.cfg.Name, Version: version.Version})
}

// admin reports whether the request carries the admin bearer token.
func (s *Server) admin(r *http.Request) bool {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) <= len(prefix) || h[:len(prefix)] != prefix || len(s.cfg.AdminToken) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(h[len(prefix):]), s.cfg.AdminToken) == 1
}

// refusal is why a request gets no node identity: the status, the
// error body and what the journal says.
type refusal struct {
	code         int
	msg, state   string
	node, serial string
	log          bool // worth a journal line (a stranger's or a stale certificate)
}

// authNode returns the approved node behind the request's client
// certificate. The TLS layer only proved that the client holds the
// certificate's key (the listener requests any certificate, because
// /v1/unlock takes a node's self-signed identity certificate); here the
// chain is verified against the node CA, then the node's current state and
// certificate serial decide, so revoking a node or renewing its
// certificate shuts out certificates issued before.
func (s *Server) authNode(r *http.Request) (*store.Node, *refusal) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, &refusal{code: http.StatusUnauthorized, msg: "a node client certificate is required (mTLS)"}
	}
	leaf := r.TLS.PeerCertificates[0]
	serial := leaf.SerialNumber.Text(16)
	if err := s.verifyChain(r.TLS.PeerCertificates); err != nil {
		return nil, &refusal{code: http.StatusUnauthorized, msg: "client certificate: not a valid node certificate of this controller: " + err.Error(),
			node: leaf.Subject.CommonName, serial: serial, log: true}
	}
	id := leaf.Subject.CommonName
	n, err := s.queue.node(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, &refusal{code: http.StatusForbidden, msg: fmt.Sprintf("node %.80q is unknown to this controller", id), node: id}
	}
	if err != nil {
		return nil, &refusal{code: http.StatusInternalServerError, msg: err.Error()}
	}
	if n.State != store.StateApproved {
		return nil, &refusal{code: http.StatusForbidden, msg: fmt.Sprintf("node %s is %s", n.ID, n.State), state: n.State, node: n.ID, log: true}
	}
	ok, promote := n.CertAccepted(serial)
	if !ok {
		// The cache may predate a certificate just issued (by another
		// controller on the same store, or by this one moments ago): ask
		// the store before refusing a node its new certificate.
		if fresh, err := s.cfg.Store.NodeAuth(r.Context(), id); err == nil && fresh.State == store.StateApproved {
			ok, promote = fresh.CertAccepted(serial)
		}
	}
	if !ok {
		return nil, &refusal{code: http.StatusForbidden, msg: fmt.Sprintf("certificate %s is not node %s's current certificate (superseded by a newer one, or issued before a rekey)", serial, n.ID),
			node: n.ID, serial: serial, log: true}
	}
	if promote {
		if _, err := s.cfg.Store.PromoteCert(r.Context(), n.ID, serial); err != nil {
			return nil, &refusal{code: http.StatusInternalServerError, msg: err.Error()}
		}
		// The cache still holds the old serial as current until the store
		// watch notices: drop the entry now, so the old certificate is
		// refused from the next request on.
		s.queue.forget(n.ID)
	}
	return n, nil
}

// maxVerified bounds the chains remembered (about 100 bytes each).
const maxVerified = 1 << 18

// verifyChain checks that certs (leaf first) chain to the node CA for
// client authentication now. A chain once checked is remembered, by the
// SHA-256 of its certificates, until its first certificate expires:
// checking it on every request (an ECDSA verification) was a seventh of
// the controller's CPU with a fleet heartbeating. Whether the node and
// this certificate are still accepted is the store's answer, asked on
// every request all the same.
func (s *Server) verifyChain(certs []*x509.Certificate) error {
	h := sha256.New()
	for _, c := range certs {
		h.Write(c.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	now := s.cfg.Now()
	s.vmu.Lock()
	until, ok := s.verified[key]
	s.vmu.Unlock()
	if ok && now.Before(until) && !now.Before(certs[0].NotBefore) {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: s.nodePool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return err
	}
	until = certs[0].NotAfter
	for _, c := range chains[0] {
		if c.NotAfter.Before(until) {
			until = c.NotAfter
		}
	}
	s.vmu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	s.verified[key] = until
	s.vmu.Unlock()
	return nil
}

// refuse answers a refusal (logging it when it is worth a line).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, f *refusal) {
	if f.code == http.StatusInternalServerError {
		s.internalError(w, r, errors.New(f.msg))
		return
	}
	if f.log {
		if f.state != "" {
			s.cfg.Log.Warn("node certificate refused", sd.ACNodeRefused.Attr(), "node", f.node, "state", f.state, "peer", r.RemoteAddr, "path", r.URL.Path)
		} else {
			s.cfg.Log.Warn("node certificate refused", sd.ACCertRefused.Attr(), "node", f.node, "serial", f.serial, "peer", r.RemoteAddr, "path", r.URL.Path, "error", f.msg)
		}
	}
	node := f.node
	if f.code == http.StatusUnauthorized {
		node = "" // a name from an unverified certificate is not an identity
	}
	writeError(w, f.code, f.msg, f.state, node)
}

// nodeIdentity returns the approved node behind the request's client
// certificate, or writes the refusal.
func (s *Server) nodeIdentity(w http.ResponseWriter, r *http.Request) (*store.Node, bool) {
	n, f := s.authNode(r)
	if f != nil {
		s.refuse(w, r, f)
		return nil, false
	}
	return n, true
}

// node serves h to approved nodes within their request budget.
func (s *Server) node(h func(http.ResponseWriter, *http.Request, *store.Node)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n, ok := s.nodeIdentity(w, r); ok && s.withinBudget(w, r, n, 1) {
			h(w, r, n)
		}
	}
}

// withinBudget takes cost tokens of node n's request budget, or answers
// 429 with the wait until they are there: one node's certificate must not
// be able to keep the store busy for the whole fleet.
func (s *Server) withinBudget(w http.ResponseWriter, r *http.Request, n *store.Node, cost int) bool {
	ok, wait := s.budget.allowN(n.ID, min(cost, s.cfg.NodeBurst), s.cfg.Now())
	if ok {
		return true
	}
	retryAfter(w, wait)
	s.throttle.refused(s.cfg.Log, s.cfg.Now(), throttledBy{sd.ACNodeThrottled, n.ID}, "node", n.ID, "peer", peerIP(r), "retry_after", w.Header().Get("Retry-After")+"s")
	writeError(w, http.StatusTooManyRequests, fmt.Sprintf("node %s: over its request budget (--node-rate); retry later", n.ID), "", n.ID)
	return false
}

// ProvesIdentity reports whether the request proved possession of node n's
// identity key: its TLS client certificate carries exactly that public key.
// The certificate is self-signed and nothing else in it counts: the TLS
// handshake (CertificateVerify over the server's fresh random) is the
// proof, so no challenge is kept and any controller sharing the store
// checks it alike. Every answer that unlocks anything for an enrolled node
// is gated on it (docs/api.md, "Trust model").
func ProvesIdentity(r *http.Request, n *store.Node) bool {
	der := presentedIdentity(r)
	return der != nil && len(n.Identity) > 0 && subtle.ConstantTimeCompare(der, n.Identity) == 1
}

// presentedIdentity is the public key (PKIX DER) of the request's client
// certificate, nil without one.
func presentedIdentity(r *http.Request) []byte {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return r.TLS.PeerCertificates[0].RawSubjectPublicKeyInfo
}

// admitted bounds the node requests at work (a waiting long-poll does no
// work and is not counted): when a whole fleet comes back at once and the
// store cannot keep up, the excess is told to come back later (503 with a
// Retry-After spread over seconds, which the session honours) instead of
// piling up goroutines and buffers until the process is out of memory.
func (s *Server) admitted(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case s.inFlight <- struct{}{}:
		default:
			retryAfter(w, time.Second+rand.N(s.cfg.RetryAfterBusy))
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("controller busy: %d node requests under way; retry later", cap(s.inFlight)), "", "")
			return
		}
		defer func() { <-s.inFlight }()
		h(w, r)
	}
}

func (s *Server) unlock(w http.ResponseWriter, r *http.Request) {
	ip := peerIP(r)
	src := SourceKey(ip)
	if ok, wait := s.limiter.allowN(src, 1, s.cfg.Now()); !ok {
		retryAfter(w, wait)
		s.throttle.refused(s.cfg.Log, s.cfg.Now(), throttledBy{sd.ACUnlockThrottled, "source"}, "reason", "source", "peer", src)
		writeError(w, http.StatusTooManyRequests, "too many unlock requests from "+src, "", "")
		return
	}
	data, ok := readBody(w, r, acapi.MaxBody)
	if !ok {
		return
	}
	req, err := DecodeUnlockRequest(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "unlock request: "+err.Error(), "", "")
		return
	}
	n, ok := s.unlockingNode(w, r, req)
	if !ok {
		return
	}
	now := s.cfg.Now()
	dropped, err := s.cfg.Store.RecordUnlock(r.Context(), n.ID, req.MACs, req.Hostname, ip, now)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if extra := unboundMACs(n, req.MACs); len(extra) > 0 {
		s.cfg.Log.Info("node reported MACs not bound to it", sd.ACMACReported.Attr(), "node", n.ID, "macs", extra, "dropped", dropped, "peer", ip)
	}
	resp := acapi.UnlockResponse{NodeID: n.ID, Key: n.Key, CA: s.caBundle()}
	// The recovery answer, like everything here, only after
	// unlockingNode saw the node's identity proven (ProvesIdentity).
	if s.cfg.Recovery != nil {
		resp.Recovery, resp.RecoveryKey, err = s.recover(r.Context(), n, req.Recovery)
		if errors.Is(err, errUnknownRecoveryKey) || errors.Is(err, recovery.ErrBadPoint) {
			s.cfg.Log.Warn("unlock refused: recovery exchange", sd.ACNodeRefused.Attr(), "node", n.ID, "peer", ip, "error", err)
			writeError(w, http.StatusConflict, "unlock request: "+err.Error(), "", n.ID)
			return
		}
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		if len(n.Key) > 0 && req.KeyRewrapped && len(req.Recovery) > 0 {
			// The node's volume opens with its recovered key now: the
			// stored key is no longer needed, and must not stay here.
			if _, err := s.cfg.Store.DropKey(r.Context(), n.ID); err != nil {
				s.internalError(w, r, err)
				return
			}
			clear(n.Key)
			resp.Key = nil
			s.cfg.Log.Info("stored unlock key dropped: the node re-wrapped to key recovery", sd.ACKeyDropped.Attr(), "node", n.ID, "peer", ip)
		}
	}
	if req.CSR != "" {
		cert, ok := s.issueCert(w, r, n, req.CSR, "unlock request: field ")
		if !ok {
			return
		}
		resp.Cert = cert
	}
	if resp.AuthorizedKeys, err = s.cfg.Store.AuthorizedKeys(r.Context()); err != nil {
		s.internalError(w, r, err)
		return
	}
	if resp.Files, err = s.cfg.Store.ConfigFiles(r.Context()); err != nil {
		s.internalError(w, r, err)
		return
	}
	s.cfg.Log.Info("unlock key handed out", sd.ACUnlockGranted.Attr(), "node", n.ID, "peer", ip, "cert", req.CSR != "")
	writeJSON(w, http.StatusOK, resp)
}

// unlockingNode decides who an unlock request is from: the node it names
// (by identity key, else MACs) when the request proves that node's identity
// key and the node is approved. Everything else is answered here and gets
// nothing: a request without an identity certificate (401), with another
// key than the node enrolled with (403, logged with its source), a pending
// (202), denied or revoked (403) node. The first key a node presents is
// recorded (trust on first approval: the operator approves the fingerprint
// the node shows on its console).
func (s *Server) unlockingNode(w http.ResponseWriter, r *http.Request, req *acapi.UnlockRequest) (*store.Node, bool) {
	ip := peerIP(r)
	key := presentedIdentity(r)
	var fp string
	if key != nil {
		var err error
		if fp, err = acapi.IdentityFingerprint(key); err != nil {
			writeError(w, http.StatusBadRequest, "unlock request: client certificate: "+err.Error(), "", "")
			return nil, false
		}
	}
	if key == nil {
		s.cfg.Log.Warn("unlock refused: no identity proof", sd.ACIdentityRefused.Attr(), "macs", req.MACs, "fingerprint", "", "peer", ip)
		writeError(w, http.StatusUnauthorized, "unlock request: no identity proof: present the node's identity key as the TLS client certificate (docs/api.md)", "", "")
		return nil, false
	}
	now := s.cfg.Now()
	n, created, err := s.cfg.Store.SeenAtUnlock(r.Context(), req.MACs, key, req.Hostname, ip, now, s.admitNewNode)
	var full *newNodeRefused
	if errors.As(err, &full) {
		retryAfter(w, full.wait)
		s.throttle.refused(s.cfg.Log, now, throttledBy{sd.ACUnlockThrottled, full.reason}, "reason", full.reason, "peer", SourceKey(ip))
		writeError(w, http.StatusTooManyRequests, "unlock request: "+full.Error(), "", "")
		return nil, false
	}
	if errors.Is(err, store.ErrConflict) {
		s.cfg.Log.Warn("unlock refused: MACs and key of different nodes", sd.ACNodeRefused.Attr(), "peer", ip, "fingerprint", fp, "error", err)
		writeError(w, http.StatusConflict, err.Error(), "", "")
		return nil, false
	}
	if err != nil {
		s.internalError(w, r, err)
		return nil, false
	}
	if created {
		s.cfg.Log.Info("new node waiting for approval", sd.ACNodePending.Attr(), "node", n.ID, "macs", n.MACs, "hostname", n.Hostname, "fingerprint", fp, "peer", ip)
	} else if n.Identity == nil && (n.State == store.StateApproved || n.State == store.StatePending) {
		// Approved by MAC before its first boot, enrolled before identities
		// existed, or rekeyed: this first key becomes the node's.
		if n, err = s.cfg.Store.BindIdentity(r.Context(), n.ID, key, now); err != nil {
			if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrIdentityMismatch) {
				s.cfg.Log.Warn("unlock refused: identity key of another node", sd.ACIdentityRefused.Attr(), "macs", req.MACs, "fingerprint", fp, "peer", ip, "error", err)
				writeError(w, http.StatusConflict, "unlock request: "+err.Error(), "", "")
				return nil, false
			}
			s.internalError(w, r, err)
			return nil, false
		}
		s.cfg.Log.Info("node identity key recorded", sd.ACIdentityBound.Attr(), "node", n.ID, "fingerprint", fp, "peer", ip)
	}
	if !ProvesIdentity(r, n) && n.Identity != nil {
		s.cfg.Log.Warn("unlock refused: not the node's identity key", sd.ACIdentityRefused.Attr(), "node", n.ID, "macs", req.MACs, "fingerprint", fp, "peer", ip)
		writeError(w, http.StatusForbidden, fmt.Sprintf("unlock request: identity key %s is not the one this node enrolled with (a replaced machine: g8-ac node rekey)", fp), "", "")
		return nil, false
	}
	switch {
	case n.State == store.StatePending:
		retryAfter(w, s.cfg.RetryAfter)
		writeError(w, http.StatusAccepted, fmt.Sprintf("node %s (identity %s) is pending approval (g8-ac node approve %s)", n.ID, n.Fingerprint, n.ID), n.State, n.ID)
		return nil, false
	case n.State == store.StateApproved && ProvesIdentity(r, n):
		return n, true
	}
	// Denied or revoked before it ever presented a key: nothing to prove.
	s.cfg.Log.Warn("unlock refused", sd.ACNodeRefused.Attr(), "node", n.ID, "state", n.State, "peer", ip)
	writeError(w, http.StatusForbidden, fmt.Sprintf("node %s is %s", n.ID, n.State), n.State, n.ID)
	return nil, false
}

// unboundMACs are the request's MACs that are not bound to n.
func unboundMACs(n *store.Node, macs []string) []string {
	bound := map[string]bool{}
	for _, m := range n.MACs {
		bound[m] = true
	}
	var out []string
	for _, m := range macs {
		if nm, err := store.NormalizeMAC(m); err == nil && !bound[nm] {
			bound[nm] = true
			out = append(out, nm)
		}
	}
	return out
}

func (s *Server) caBundle() string { return string(s.cfg.ServerCA) + string(s.cfg.NodeCA.PEM) }

// issueCert signs csr for node n and records the serial; on failure it
// writes the answer (field prefixes a bad CSR's message).
func (s *Server) issueCert(w http.ResponseWriter, r *http.Request, n *store.Node, csr, field string) (string, bool) {
	certPEM, cert, err := s.cfg.NodeCA.SignCSR([]byte(csr), n.ID, s.cfg.NodeCertLifetime)
	if err != nil {
		writeError(w, http.StatusBadRequest, field+err.Error(), "", n.ID)
		return "", false
	}
	serial := cert.SerialNumber.Text(16)
	if err := s.cfg.Store.CertIssued(r.Context(), n.ID, serial, cert.NotAfter); err != nil {
		s.internalError(w, r, err)
		return "", false
	}
	s.queue.forget(n.ID)
	s.cfg.Log.Info("node certificate issued", sd.ACCertIssued.Attr(), "node", n.ID, "serial", serial, "expiry", cert.NotAfter.UTC().Format(time.RFC3339), "peer", peerIP(r))
	return string(certPEM), true
}

// renewCert gives a node's session a new certificate for a fresh key,
// proven by the node's current certificate (mTLS).
func (s *Server) renewCert(w http.ResponseWriter, r *http.Request, n *store.Node) {
	if ok, wait := s.renewals.allowN(n.ID, 1, s.cfg.Now()); !ok {
		retryAfter(w, wait)
		writeError(w, http.StatusTooManyRequests, "too many certificate renewals for node "+n.ID, "", n.ID)
		return
	}
	data, ok := readBody(w, r, acapi.MaxBody)
	if !ok {
		return
	}
	req, err := DecodeCertRequest(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "certificate request: "+err.Error(), "", n.ID)
		return
	}
	cert, ok := s.issueCert(w, r, n, req.CSR, "certificate request: field ")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, acapi.CertResponse{Cert: cert, CA: s.caBundle()})
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request, n *store.Node) {
	data, ok := readBody(w, r, acapi.MaxBody)
	if !ok {
		return
	}
	hb, err := DecodeHeartbeat(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "heartbeat: "+err.Error(), "", n.ID)
		return
	}
	if hb.NodeID != "" && hb.NodeID != n.ID {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("heartbeat: field node_id: %.80q, but the certificate is node %s's", hb.NodeID, n.ID), "", n.ID)
		return
	}
	now := s.cfg.Now()
	select {
	case err = <-s.beats.add(store.HeartbeatRecord{ID: n.ID, Addr: peerIP(r), Heartbeat: hb, At: now}):
	case <-r.Context().Done():
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, acapi.HeartbeatReply{NodeID: n.ID, ServerTime: now.UTC()})
}

// sshHostCert signs the node's SSH host key, so operators trust every node
// with the one @cert-authority line of this controller. The principals are
// the node id and the address the node's request came from (what an
// operator on the same network types), never names the node asks for: a
// node must not be able to pass as another.
func (s *Server) sshHostCert(w http.ResponseWriter, r *http.Request, n *store.Node) {
	if ok, wait := s.certs.allowN(n.ID, 1, s.cfg.Now()); !ok {
		retryAfter(w, wait)
		writeError(w, http.StatusTooManyRequests, "too many host certificate requests from node "+n.ID, "", n.ID)
		return
	}
	if s.cfg.SSHHostCA == nil {
		writeError(w, http.StatusNotFound, "this controller has no SSH host CA", "", n.ID)
		return
	}
	data, ok := readBody(w, r, pki.MaxSSHPublicKey+256)
	if !ok {
		return
	}
	pub, err := DecodeSSHHostCertRequest(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "ssh host certificate request: "+err.Error(), "", n.ID)
		return
	}
	principals := []string{n.ID}
	if ip := peerIP(r); ip != "" && ip != n.ID {
		principals = append(principals, ip)
	}
	cert, err := s.cfg.SSHHostCA.SignHostKey(pub, n.ID, principals, s.cfg.Now())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	s.cfg.Log.Info("SSH host certificate issued", sd.ACSSHHostCert.Attr(), "node", n.ID, "fingerprint", ssh.FingerprintSHA256(pub),
		"serial", cert.Serial, "principals", strings.Join(principals, ","), "valid_before", time.Unix(int64(cert.ValidBefore), 0).UTC())
	writeJSON(w, http.StatusOK, acapi.SSHHostCertResponse{
		Certificate: string(ssh.MarshalAuthorizedKey(cert)),
		CA:          s.cfg.SSHHostCA.PublicKey(),
		Principals:  principals,
	})
}

// newNodeRefused is why no new pending node is made now.
type newNodeRefused struct {
	reason string // "new-nodes", "pending-full" (the log's reason)
	msg    string
	wait   time.Duration
}

func (e *newNodeRefused) Error() string { return e.msg }

// admitNewNode decides, with pending nodes waiting, whether an unknown
// node may become one more: below MaxPending, and within the budget for
// new nodes shared by every source.
func (s *Server) admitNewNode(pending int) error {
	if pending >= s.cfg.MaxPending {
		return &newNodeRefused{reason: "pending-full", wait: time.Minute,
			msg: fmt.Sprintf("%d nodes already wait for approval (--max-pending); retry later", pending)}
	}
	now := s.cfg.Now()
	res := s.newNodes.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 || !res.OK() {
		res.CancelAt(now)
		return &newNodeRefused{reason: "new-nodes", wait: max(d, time.Second),
			msg: "too many new nodes ask at once (--new-node-rate); retry later"}
	}
	return nil
}

// SourceKey is what unlock requests are counted by: the IPv4 address, or
// the /64 of an IPv6 address (one LAN host can use all 2^64 addresses of
// its prefix, RFC 4941). An IPv4-mapped address counts as IPv4.
func SourceKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// throttleLog writes a refusal to the journal at most once per message and
// key (node or reason) every throttleLogEvery, with the count refused
// since: a flood must not flood the journal too.
type throttleLog struct {
	mu   sync.Mutex
	keys map[string]*throttled
}

type throttled struct {
	logged  time.Time
	refused int
}

const throttleLogEvery = 10 * time.Second

// throttledBy is what refusals are counted by: the message and its key.
type throttledBy struct {
	Msg sd.MessageID
	Key string // a reason, a node
}

// refused counts one refusal; kv are the journal fields of its line.
func (t *throttleLog) refused(log *slog.Logger, now time.Time, by throttledBy, kv ...any) {
	key := by.Msg.ID + " " + by.Key
	t.mu.Lock()
	if t.keys == nil || len(t.keys) > 10000 {
		t.keys = map[string]*throttled{} // a sweep of keys costs a few extra lines, not memory
	}
	c := t.keys[key]
	if c == nil {
		c = &throttled{}
		t.keys[key] = c
	}
	c.refused++
	if now.Sub(c.logged) < throttleLogEvery {
		t.mu.Unlock()
		return
	}
	n := c.refused
	c.logged, c.refused = now, 0
	t.mu.Unlock()
	log.Warn(by.Msg.Subject, append([]any{by.Msg.Attr(), "refused", n}, kv...)...)
}

// keyedLimiter is a token bucket per key (a source, a node). Idle buckets
// are dropped so a scan from many keys cannot grow it without bound.
type keyedLimiter struct {
	mu      sync.Mutex
	rate    rate.Limit
	burst   int
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

func newKeyedLimiter(r rate.Limit, burst int) *keyedLimiter {
	return &keyedLimiter{rate: r, burst: burst, buckets: map[string]*bucket{}}
}

// allowN takes n tokens for key, or says how long until they are free.
func (l *keyedLimiter) allowN(key string, n int, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.used) > 10*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[key] = b
	}
	b.used = now
	res := b.lim.ReserveN(now, n)
	if d := res.DelayFrom(now); d > 0 || !res.OK() {
		res.CancelAt(now)
		return false, max(d, time.Second)
	}
	return true, 0
}
