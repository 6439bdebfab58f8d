// Package server is the controller's HTTPS API (docs/api.md): health and
// unlock over server TLS, the node endpoints over mTLS, and the content
// store. All state lives in the store package, so the admin CLI's changes
// (approvals, new jobs) are visible to the next request.
package server

import (
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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

	RetryAfter   time.Duration // told to pending nodes (default 5s)
	UnlockRate   rate.Limit    // unlock requests per second per source IP (default 1)
	UnlockBurst  int           // bucket size (default 10)
	PollInterval time.Duration // how often the store is checked for other processes' changes (default 50ms)
	MaxWait      time.Duration // longest long-poll (default 2m)
	Now          func() time.Time
}

// Server serves API v1.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	limiter  *ipLimiter
	certs    *ipLimiter // host certificate requests, per node
	queue    *storeWatch
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
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), stopping: make(chan struct{}),
		limiter: newIPLimiter(cfg.UnlockRate, cfg.UnlockBurst),
		// A node asks once per session start; a burst covers reconnects.
		certs: newIPLimiter(rate.Every(time.Minute), 5)}
	s.queue = newStoreWatch(s)
	s.mux.HandleFunc("GET "+acapi.PathHealth, s.health)
	s.mux.HandleFunc("POST "+acapi.PathUnlock, s.unlock)
	s.mux.HandleFunc("POST "+acapi.PathHeartbeat, s.node(s.heartbeat))
	s.mux.HandleFunc("GET "+acapi.PathJobs, s.node(s.jobs))
	s.mux.HandleFunc("POST "+acapi.PathJobs+"/{id}/result", s.node(s.jobResult))
	s.mux.HandleFunc("POST "+acapi.PathEvents, s.node(s.events))
	s.mux.HandleFunc("POST "+acapi.PathSSHHostCert, s.node(s.sshHostCert))
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

// TLSConfig is the server side of every listener: our certificate, client
// certificates requested but optional (unlock comes before a node has one)
// and, when given, verified against the node CA. Handlers that need a node
// identity check for it. cert returns the current server certificate, so
// it can be replaced (g8-ac server-cert + SIGHUP) without dropping
// connections.
func (s *Server) TLSConfig(cert func() *tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.cfg.NodeCA.Cert)
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert(), nil },
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      pool,
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

// nodeIdentity returns the approved node behind the request's verified
// client certificate, or writes the refusal. The TLS layer already checked
// the chain against the node CA; here the node's current state decides, so
// denying or revoking a node shuts out certificates it already holds.
func (s *Server) nodeIdentity(w http.ResponseWriter, r *http.Request) (*store.Node, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		writeError(w, http.StatusUnauthorized, "a node client certificate is required (mTLS)", "", "")
		return nil, false
	}
	id := r.TLS.VerifiedChains[0][0].Subject.CommonName
	n, err := s.queue.node(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("node %.80q is unknown to this controller", id), "", id)
		return nil, false
	}
	if err != nil {
		s.internalError(w, r, err)
		return nil, false
	}
	if n.State != store.StateApproved {
		s.cfg.Log.Warn("node certificate refused", sd.ACNodeRefused.Attr(), "node", n.ID, "state", n.State, "peer", r.RemoteAddr, "path", r.URL.Path)
		writeError(w, http.StatusForbidden, fmt.Sprintf("node %s is %s", n.ID, n.State), n.State, n.ID)
		return nil, false
	}
	return n, true
}

func (s *Server) node(h func(http.ResponseWriter, *http.Request, *store.Node)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n, ok := s.nodeIdentity(w, r); ok {
			h(w, r, n)
		}
	}
}

func (s *Server) unlock(w http.ResponseWriter, r *http.Request) {
	ip := peerIP(r)
	if ok, wait := s.limiter.allow(ip, s.cfg.Now()); !ok {
		retryAfter(w, wait)
		writeError(w, http.StatusTooManyRequests, "too many unlock requests from "+ip, "", "")
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
	now := s.cfg.Now()
	n, created, err := s.cfg.Store.SeenAtUnlock(r.Context(), req.MACs, nil, req.Hostname, ip, now)
	if errors.Is(err, store.ErrConflict) {
		s.cfg.Log.Warn("unlock refused: MACs of two nodes", sd.ACNodeRefused.Attr(), "peer", r.RemoteAddr, "error", err)
		writeError(w, http.StatusConflict, err.Error(), "", "")
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if created {
		s.cfg.Log.Info("new node waiting for approval", sd.ACNodePending.Attr(), "node", n.ID, "macs", n.MACs, "hostname", n.Hostname, "peer", ip)
	}
	switch n.State {
	case store.StatePending:
		retryAfter(w, s.cfg.RetryAfter)
		writeError(w, http.StatusAccepted, fmt.Sprintf("node %s is pending approval (g8-ac node approve %s)", n.ID, n.ID), n.State, n.ID)
		return
	case store.StateApproved:
	default:
		s.cfg.Log.Warn("unlock refused", sd.ACNodeRefused.Attr(), "node", n.ID, "state", n.State, "peer", ip)
		writeError(w, http.StatusForbidden, fmt.Sprintf("node %s is %s", n.ID, n.State), n.State, n.ID)
		return
	}
	if _, err := s.cfg.Store.RecordUnlock(r.Context(), n.ID, req.MACs, req.Hostname, ip, now); err != nil {
		s.internalError(w, r, err)
		return
	}
	resp := acapi.UnlockResponse{NodeID: n.ID, Key: n.Key, CA: string(s.cfg.ServerCA) + string(s.cfg.NodeCA.PEM)}
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
		cert, err := s.cfg.NodeCA.SignCSR([]byte(req.CSR), n.ID)
		if err != nil {
			writeError(w, http.StatusBadRequest, "unlock request: field "+err.Error(), "", n.ID)
			return
		}
		resp.Cert = string(cert)
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
	if err := s.cfg.Store.RecordHeartbeat(r.Context(), n.ID, peerIP(r), hb, now); err != nil {
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
	if ok, wait := s.certs.allow(n.ID, s.cfg.Now()); !ok {
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

// ipLimiter is a token bucket per source address. Idle buckets are dropped
// so a scan from many addresses cannot grow it without bound.
type ipLimiter struct {
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

func newIPLimiter(r rate.Limit, burst int) *ipLimiter {
	return &ipLimiter{rate: r, burst: burst, buckets: map[string]*bucket{}}
}

// allow takes a token for ip, or says how long until one is free.
func (l *ipLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
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
	b := l.buckets[ip]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[ip] = b
	}
	b.used = now
	res := b.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}
