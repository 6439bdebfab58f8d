package netup

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Reached is a controller that answered GET /v1/health over verified TLS.
type Reached struct {
	URL    string
	Name   string         // the controller's own name from /v1/health
	Local  netip.AddrPort // our end of the connection: tells the link used
	Remote netip.AddrPort
}

// Prober checks controllers against the trust anchor.
type Prober struct {
	Roots   *x509.CertPool
	Timeout time.Duration
	// DNS, when set, is used to resolve controller host names instead of
	// the system resolver (whose resolv.conf we may be rewriting).
	DNS func() []netip.Addr
}

// ProbeError lists why each controller did not count as reachable, in the
// order they were listed.
type ProbeError struct {
	URLs     []string
	Failures map[string]error
}

func (e *ProbeError) Error() string {
	if len(e.URLs) == 0 {
		return "no controller to probe"
	}
	parts := make([]string, 0, len(e.URLs))
	for _, u := range e.URLs {
		parts = append(parts, fmt.Sprintf("%s: %v", u, e.Failures[u]))
	}
	return strings.Join(parts, "; ")
}

// First probes all urls concurrently; the first to answer wins and the
// others are cancelled. A wrong certificate, a non-200 answer or a body
// that is not a health document all count as unreachable.
func (p *Prober) First(ctx context.Context, urls []string) (*Reached, error) {
	if len(urls) == 0 {
		return nil, &ProbeError{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		r   *Reached
		url string
		err error
	}
	var dns []netip.Addr
	if p.DNS != nil {
		dns = p.DNS() // once, here: losing probes outlive First
	}
	results := make(chan result, len(urls))
	var wg sync.WaitGroup
	for _, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.one(ctx, u, dns)
			results <- result{r, u, err}
		}()
	}
	go func() { wg.Wait(); close(results) }()
	fails := map[string]error{}
	for res := range results {
		if res.err == nil {
			cancel()
			return res.r, nil
		}
		fails[res.url] = res.err
	}
	return nil, &ProbeError{URLs: urls, Failures: fails}
}

func (p *Prober) one(ctx context.Context, url string, servers []netip.Addr) (*Reached, error) {
	c, err := acapi.NewClient(url, acapi.TLSConfig(p.Roots, nil), p.Timeout)
	if err != nil {
		return nil, err
	}
	tr := c.HTTP.Transport.(*http.Transport)
	defer tr.CloseIdleConnections()
	// One fresh connection per probe: addresses change between probes and a
	// kept-alive connection would prove nothing about the current ones.
	tr.DisableKeepAlives = true
	d := &net.Dialer{Timeout: p.Timeout}
	if len(servers) > 0 {
		d.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var last error
			for _, s := range servers {
				conn, err := (&net.Dialer{Timeout: p.Timeout}).DialContext(ctx, network, netip.AddrPortFrom(s, 53).String())
				if err == nil {
					return conn, nil
				}
				last = err
			}
			return nil, last
		}}
	}
	tr.DialContext = d.DialContext
	var mu sync.Mutex
	r := &Reached{URL: c.BaseURL}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		mu.Lock()
		defer mu.Unlock()
		r.Local = addrPort(info.Conn.LocalAddr())
		r.Remote = addrPort(info.Conn.RemoteAddr())
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(ctx, trace), p.Timeout)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		return nil, unwrapProbe(c.BaseURL, err)
	}
	mu.Lock()
	defer mu.Unlock()
	r.Name = h.Name
	return r, nil
}

// unwrapProbe shortens the error chain for STATUS= and the trace: the most
// useful part is the innermost cause (refused, timeout, unknown authority),
// and ProbeError names the URL once, so the client's "controller URL:" and
// net/http's `Get "URL/v1/health":` go.
func unwrapProbe(base string, err error) error {
	var cert x509.UnknownAuthorityError
	if errors.As(err, &cert) {
		return errors.New("certificate not signed by the trust anchor")
	}
	var hn x509.HostnameError
	if errors.As(err, &hn) {
		return fmt.Errorf("certificate does not name this controller: %v", hn.Error())
	}
	var ci x509.CertificateInvalidError
	if errors.As(err, &ci) {
		return fmt.Errorf("certificate invalid: %v", ci.Error())
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	if msg, ok := strings.CutPrefix(err.Error(), "controller "+base+": "); ok {
		return errors.New(msg)
	}
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
