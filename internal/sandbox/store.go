package sandbox

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
)

// Store holds blobs named by the BLAKE3-256 of their bytes. Readers never
// trust it: every blob is verified against its name after Get.
type Store interface {
	// Get returns the blob, at most max bytes; ErrNotFound if absent, an
	// ErrCorrupt error if it is longer.
	Get(ctx context.Context, h Hash, max int64) ([]byte, error)
	// GetTo streams the blob into w, at most max bytes, and returns its
	// length; errors as Get. Used where the blob is too big to hold.
	GetTo(ctx context.Context, h Hash, max int64, w io.Writer) (int64, error)
	Has(ctx context.Context, h Hash) (bool, error)
	Put(ctx context.Context, h Hash, data []byte) error
	String() string
}

// ErrNotFound is a blob the store does not have.
var ErrNotFound = errors.New("not in store")

// DirStore is a store in a local directory, laid out <root>/<first two
// hex digits>/<hex> so no directory grows past a few thousand entries.
type DirStore struct{ Root string }

func (s *DirStore) path(h Hash) string {
	x := h.String()
	return filepath.Join(s.Root, x[:2], x)
}

func (s *DirStore) String() string { return s.Root }

func (s *DirStore) Get(ctx context.Context, h Hash, max int64) ([]byte, error) {
	return getAll(ctx, s, h, max)
}

func (s *DirStore) GetTo(_ context.Context, h Hash, max int64, w io.Writer) (int64, error) {
	f, err := os.Open(s.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("store %s: %s: %w", s.Root, h, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("store %s: %w", s.Root, err)
	}
	defer f.Close()
	return copyMax(w, f, max, h, s.Root)
}

func (s *DirStore) Has(_ context.Context, h Hash) (bool, error) {
	_, err := os.Stat(s.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Put writes via a temporary file and rename so a reader never sees half
// a blob and a crash leaves no blob under a wrong name.
func (s *DirStore) Put(_ context.Context, h Hash, data []byte) error {
	if HashOf(data) != h {
		return fmt.Errorf("store %s: put %s: content does not match its name", s.Root, h)
	}
	p := s.path(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("store %s: %w", s.Root, err)
	}
	// Blobs are verified by hash whenever they are read, so a torn one
	// after a power cut is refetched, not trusted: no fsync per chunk.
	return atomicfile.WriteUnsynced(p, data, 0o644)
}

// getAll is Get over GetTo, sized for the common case of a chunk whose
// length the caller knows.
func getAll(ctx context.Context, s Store, h Hash, max int64) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(min(max, 1<<20)) + bytes.MinRead)
	if _, err := s.GetTo(ctx, h, max, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// copyMax copies at most max bytes of blob h to w. A longer blob cannot be
// the one named h with the length its flist gives, so it is corrupt (and
// not retried as an outage would be).
func copyMax(w io.Writer, r io.Reader, max int64, h Hash, from string) (int64, error) {
	n, err := io.Copy(w, io.LimitReader(r, max+1))
	if err != nil {
		return n, fmt.Errorf("store %s: %s: %w", from, h, err)
	}
	if n > max {
		return n, fmt.Errorf("store %s: %s: blob longer than %d bytes: %w", from, h, max, ErrCorrupt)
	}
	return n, nil
}

// HTTPStore fetches blobs with GET <base>/<hex> (HEAD for Has, PUT with a
// bearer token for uploads). The base may instead be a template containing
// {hex} and optionally {prefix} (the first two hex digits), so any static
// web server can serve a DirStore directory:
// "https://mirror.example/store/{prefix}/{hex}".
type HTTPStore struct {
	Base   string
	Client *http.Client
	// Token is the admin bearer token, needed only to Put.
	Token    string
	headAuth atomic.Bool // the store refused HEAD without Token
}

// NewHTTPStore returns a store for base using tlsConf for https (the node's
// client certificate and the controller's CA; nil means system roots).
func NewHTTPStore(base string, tlsConf *tls.Config) (*HTTPStore, error) {
	if !strings.HasPrefix(base, "https://") && !strings.HasPrefix(base, "http://") {
		return nil, fmt.Errorf("store %q: want an http(s) URL", base)
	}
	return &HTTPStore{Base: strings.TrimSuffix(base, "/"), Client: NewHTTPClient(tlsConf)}, nil
}

// NewHTTPClient is the client of every g8-fs fetch (chunks, flists by URL,
// uploads): a warm pool of connections to the store, the project's
// redirect policy (never to plain http), no proxy.
func NewHTTPClient(tlsConf *tls.Config) *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		MaxIdleConnsPerHost:   16,
		// Six connections at most, as browsers open per host: eight
		// background fetches plus a reader's would overflow the accept
		// backlog of a small server (python's http.server listens with
		// five) whenever its accept loop lags, and a dropped SYN costs the
		// reader waiting on that chunk a one-second retransmit. With
		// HTTP/2 all fetches share one connection anyway.
		MaxConnsPerHost:   6,
		IdleConnTimeout:   90 * time.Second,
		ForceAttemptHTTP2: true,
	}
	return acapi.HTTPClient(tr, 0)
}

// StoreTLS builds the client TLS config for a controller store from the
// node identity under configRoot/ssl (ca.pem, node.pem, node.key). Missing
// files are left out: the system roots are used without ca.pem, and no
// client certificate is offered without node.pem.
func StoreTLS(configRoot string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	ssl := filepath.Join(configRoot, "ssl")
	if pem, err := os.ReadFile(filepath.Join(ssl, "ca.pem")); err == nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate in it", filepath.Join(ssl, "ca.pem"))
		}
		conf.RootCAs = pool
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	cert, key := filepath.Join(ssl, "node.pem"), filepath.Join(ssl, "node.key")
	if _, err := os.Stat(cert); err == nil {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("node identity %s: %w", cert, err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return conf, nil
}

func (s *HTTPStore) String() string { return s.Base }

func (s *HTTPStore) url(h Hash) string {
	x := h.String()
	if strings.Contains(s.Base, "{hex}") {
		return strings.NewReplacer("{hex}", x, "{prefix}", x[:2]).Replace(s.Base)
	}
	return s.Base + "/" + x
}

func (s *HTTPStore) do(ctx context.Context, method string, h Hash, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url(h), rd)
	if err != nil {
		return nil, err
	}
	// The admin token goes only where it is needed, and only over https
	// (RunBuild refuses a token for a plain http store): on uploads, and on
	// HEAD once the store has refused one without it (the controller
	// answers HEAD only to nodes and the admin); never on GET.
	if s.Token != "" && req.URL.Scheme == "https" && (method == http.MethodPut || method == http.MethodHead && s.headAuth.Load()) {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
		req.ContentLength = int64(len(body))
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("store %s: %s %s: %w", s.Base, method, h, err)
	}
	return resp, nil
}

// StatusError is an unexpected HTTP status from a store.
type StatusError struct {
	Method string
	Hash   Hash
	Code   int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d %s", e.Method, e.Hash, e.Code, strings.TrimSpace(e.Body))
}

func statusErr(resp *http.Response, method string, h Hash) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	return &StatusError{Method: method, Hash: h, Code: resp.StatusCode, Body: string(b)}
}

func (s *HTTPStore) Get(ctx context.Context, h Hash, max int64) ([]byte, error) {
	return getAll(ctx, s, h, max)
}

func (s *HTTPStore) GetTo(ctx context.Context, h Hash, max int64, w io.Writer) (int64, error) {
	resp, err := s.do(ctx, http.MethodGet, h, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength > max {
			return 0, fmt.Errorf("store %s: %s: blob of %d bytes, longer than %d: %w", s.Base, h, resp.ContentLength, max, ErrCorrupt)
		}
		return copyMax(w, resp.Body, max, h, s.Base)
	case http.StatusNotFound:
		return 0, fmt.Errorf("store %s: %s: %w", s.Base, h, ErrNotFound)
	}
	return 0, fmt.Errorf("store %s: %w", s.Base, statusErr(resp, "GET", h))
}

func (s *HTTPStore) Has(ctx context.Context, h Hash) (bool, error) {
	resp, err := s.do(ctx, http.MethodHead, h, nil)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && s.Token != "" && !s.headAuth.Swap(true) {
		return s.Has(ctx, h)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("store %s: %w", s.Base, statusErr(resp, "HEAD", h))
}

func (s *HTTPStore) Put(ctx context.Context, h Hash, data []byte) error {
	resp, err := s.do(ctx, http.MethodPut, h, data)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return fmt.Errorf("store %s: %w", s.Base, statusErr(resp, "PUT", h))
}

// permanent reports whether retrying a Get cannot help.
func permanent(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 400 && se.Code < 500 && se.Code != http.StatusTooManyRequests && se.Code != http.StatusRequestTimeout
	}
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt)
}

// OpenStore picks the backend for a --store value: an http(s) URL or a
// local directory.
func OpenStore(spec string, tlsConf *tls.Config) (Store, error) {
	if strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://") {
		return NewHTTPStore(spec, tlsConf)
	}
	if spec == "" {
		return nil, errors.New("no store given")
	}
	abs, err := filepath.Abs(spec)
	if err != nil {
		return nil, err
	}
	return &DirStore{Root: abs}, nil
}
