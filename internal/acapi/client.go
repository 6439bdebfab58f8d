package acapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// LoadPool reads a PEM bundle of trust anchors.
func LoadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trust anchor: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("trust anchor %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// TLSConfig is the one client TLS setup: the controller is verified against
// roots, never skipped; cert (may be nil) is the node's mTLS identity.
func TLSConfig(roots *x509.CertPool, cert *tls.Certificate) *tls.Config {
	// The session cache lets a reconnect through this config resume its
	// TLS session (no certificate verify or signature on either side).
	// One cache per config on purpose: a session carries the client
	// certificate it was made with, so it must not serve another identity.
	c := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// MaxRedirects is the most redirects any HTTP client of the project follows.
const MaxRedirects = 5

// ErrRedirect is a redirect an HTTP client of the project refused.
var ErrRedirect = errors.New("redirect refused")

// CheckRedirect is the one redirect policy of every HTTP client of the
// project (controller API, netup's probe, the g8-fs store and flist
// fetches, g8-fs build): never to plain http, which would drop the TLS that
// authenticates the peer (and an https-only flist URL would be swapped in
// transit), and at most MaxRedirects.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if req.URL.Scheme != "https" {
		return fmt.Errorf("%w: %s to %s: only https may be redirected to", ErrRedirect, via[len(via)-1].URL.Redacted(), req.URL.Redacted())
	}
	if len(via) > MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects from %s", ErrRedirect, MaxRedirects, via[0].URL.Redacted())
	}
	return nil
}

// HTTPClient is how the project makes an http.Client: over tr, with the
// redirect policy, each request bounded by timeout (0: only by its context).
func HTTPClient(tr http.RoundTripper, timeout time.Duration) *http.Client {
	return &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: CheckRedirect}
}

// Client talks to one controller.
type Client struct {
	BaseURL string // e.g. https://10.254.254.254:8443
	HTTP    *http.Client
}

// NewClient returns a client for base that verifies the controller with
// tlsConf. timeout bounds each request (long-polls pass their own context).
func NewClient(base string, tlsConf *tls.Config, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("controller %q: not an https URL", base)
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: timeout,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
		Proxy:               nil, // a boot chain never goes through a proxy
	}
	return &Client{BaseURL: strings.TrimRight(base, "/"), HTTP: HTTPClient(tr, timeout)}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Peer       string
	Code       int
	Body       Error
	RetryAfter time.Duration // from Retry-After, 0 if absent
}

func (e *StatusError) Error() string {
	msg := e.Body.Error
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("controller %s: %d %s", e.Peer, e.Code, msg)
}

// IsStatus reports whether err is a StatusError with the given code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// Do sends in (nil for no body) and decodes a 2xx answer into out (nil to
// discard). Bodies over MaxBody are an error naming the peer. A 202 is
// returned as a *StatusError too: for this API it always means "not yet".
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("controller %s: %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	// The body of an unlock answer holds the node's key (base64); decoding
	// copies what is kept, so the raw bytes are wiped when Do returns.
	defer clear(data)
	if err != nil {
		return fmt.Errorf("controller %s: %s %s: reading answer: %w", c.BaseURL, method, path, err)
	}
	if len(data) > MaxBody {
		return fmt.Errorf("controller %s: %s %s: answer larger than %d bytes", c.BaseURL, method, path, MaxBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 || resp.StatusCode == http.StatusAccepted {
		se := &StatusError{Peer: c.BaseURL, Code: resp.StatusCode}
		_ = json.Unmarshal(data, &se.Body) // a non-JSON error body still has its status
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			se.RetryAfter = time.Duration(s) * time.Second
		}
		return se
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("controller %s: %s %s: malformed answer: %w", c.BaseURL, method, path, err)
	}
	return nil
}

// Health checks that the controller answers 200 with status ok.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.Do(ctx, http.MethodGet, PathHealth, nil, &h); err != nil {
		return nil, err
	}
	if h.Status != "ok" {
		return nil, fmt.Errorf("controller %s: health status %q", c.BaseURL, h.Status)
	}
	return &h, nil
}

// Unlock asks for the node's unlock key. Pending (202), denied (403) and
// rate-limited (429) answers come back as *StatusError.
func (c *Client) Unlock(ctx context.Context, req *UnlockRequest) (*UnlockResponse, error) {
	var r UnlockResponse
	if err := c.Do(ctx, http.MethodPost, PathUnlock, req, &r); err != nil {
		return nil, err
	}
	if r.NodeID == "" || (len(r.Key) == 0 && r.RecoveryKey == nil) {
		return nil, fmt.Errorf("controller %s: unlock answer without node_id, or without both recovery_key and key", c.BaseURL)
	}
	return &r, nil
}

// RenewCert asks for a new node certificate for the key of csr (mTLS).
func (c *Client) RenewCert(ctx context.Context, csr string) (*CertResponse, error) {
	var r CertResponse
	if err := c.Do(ctx, http.MethodPost, PathCert, &CertRequest{CSR: csr}, &r); err != nil {
		return nil, err
	}
	if r.Cert == "" || r.CA == "" {
		return nil, fmt.Errorf("controller %s: certificate answer without cert or ca", c.BaseURL)
	}
	return &r, nil
}

// Heartbeat reports the node's status (mTLS).
func (c *Client) Heartbeat(ctx context.Context, hb *Heartbeat) (*HeartbeatReply, error) {
	var r HeartbeatReply
	return &r, c.Do(ctx, http.MethodPost, PathHeartbeat, hb, &r)
}

// Jobs long-polls for jobs, waiting up to wait on the controller side.
func (c *Client) Jobs(ctx context.Context, wait time.Duration) ([]Job, error) {
	var jobs []Job
	err := c.Do(ctx, http.MethodGet, PathJobs+"?wait="+url.QueryEscape(wait.String()), nil, &jobs)
	return jobs, err
}

// ResumeJobs is a session's first long-poll: besides what Jobs answers, it
// gets again the node's jobs the controller marked running, whose delivery
// may have been lost with the connection (a controller killed right after
// handing them out). The node runs a job id once, so a job it already has
// is not run again.
func (c *Client) ResumeJobs(ctx context.Context, wait time.Duration) ([]Job, error) {
	var jobs []Job
	err := c.Do(ctx, http.MethodGet, PathJobs+"?resume=1&wait="+url.QueryEscape(wait.String()), nil, &jobs)
	return jobs, err
}

// PostResult reports a job's outcome (mTLS).
func (c *Client) PostResult(ctx context.Context, r *JobResult) error {
	return c.Do(ctx, http.MethodPost, PathJobs+"/"+url.PathEscape(r.ID)+"/result", r, nil)
}

// SSHHostCert asks the controller to sign the node's SSH host key (mTLS).
func (c *Client) SSHHostCert(ctx context.Context, req *SSHHostCertRequest) (*SSHHostCertResponse, error) {
	var r SSHHostCertResponse
	return &r, c.Do(ctx, http.MethodPost, PathSSHHostCert, req, &r)
}

// PostEvents sends queued events in order (mTLS).
func (c *Client) PostEvents(ctx context.Context, evs []Event) (*EventsReply, error) {
	var r EventsReply
	return &r, c.Do(ctx, http.MethodPost, PathEvents, evs, &r)
}
