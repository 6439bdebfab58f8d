package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/acapi"
	xrate "golang.org/x/time/rate"
)

// flood is the pending-node flood of issue 16: sources from an IPv4 and
// an IPv6 prefix (the caller makes them local: 127/8 is, a /64 needs
// `ip -6 route add local PREFIX dev lo`), each sending unlock requests
// that each claim a new machine (a fresh identity key and fresh MACs), so
// that every request may make a pending node. It prints how many were
// answered with each status.
func flood(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ExitOnError)
	url := fs.String("url", "", "controller URL")
	caF := fs.String("ca", "", "trust anchor")
	v4 := fs.String("v4", "127.16.0.0/16", "IPv4 prefix the sources are taken from")
	v6 := fs.String("v6", "", "IPv6 prefix the sources are taken from (none: IPv4 only)")
	sources := fs.Int("sources", 150, "sources per prefix")
	requests := fs.Int("requests", 10, "requests per source (each a new machine)")
	conc := fs.Int("concurrency", 32, "requests under way at once")
	dur := fs.Duration("duration", 0, "keep flooding, round after round, this long (0: one round)")
	perSec := fs.Float64("rate", 0, "requests per second at most, all sources together (0: as fast as answered)")
	fs.Parse(args)
	pace := xrate.NewLimiter(xrate.Inf, 1)
	if *perSec > 0 {
		pace = xrate.NewLimiter(xrate.Limit(*perSec), 1)
	}
	pool, err := acapi.LoadPool(*caF)
	if err != nil {
		return err
	}
	var srcs []netip.Addr
	for _, p := range []string{*v4, *v6} {
		if p == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return err
		}
		a := pfx.Addr().Next()
		for range *sources {
			srcs = append(srcs, a)
			a = a.Next()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The duration ends the feeding; requests under way still finish.
	feedCtx := ctx
	if *dur > 0 {
		var cancel context.CancelFunc
		feedCtx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	var mu sync.Mutex
	codes := map[string]int{}
	work := make(chan netip.Addr)
	var wg sync.WaitGroup
	start := time.Now()
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for src := range work {
				code := floodOne(ctx, *url, pool, src)
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
feed:
	for {
		for range *requests {
			for _, s := range srcs {
				if pace.Wait(feedCtx) != nil {
					break feed
				}
				select {
				case work <- s:
				case <-feedCtx.Done():
					break feed
				}
			}
		}
		if *dur == 0 {
			break
		}
	}
	close(work)
	wg.Wait()
	keys := make([]string, 0, len(codes))
	total := 0
	for k, n := range codes {
		keys = append(keys, k)
		total += n
	}
	sort.Strings(keys)
	fmt.Printf("sources %d\nsent %d\nelapsed_s %.1f\n", len(srcs), total, time.Since(start).Seconds())
	for _, k := range keys {
		fmt.Printf("status_%s %d\n", k, codes[k])
	}
	return nil
}

// floodOne sends one unlock request from src as a machine never seen
// before and returns the HTTP status ("err" when there was none).
func floodOne(ctx context.Context, url string, pool *x509.CertPool, src netip.Addr) string {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	ident, err := acapi.IdentityCertificate(key)
	if err != nil {
		return "err"
	}
	conf := acapi.TLSConfig(pool, ident)
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 10 * time.Second}
	tr := &http.Transport{TLSClientConfig: conf, DialContext: d.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	macs := make([]string, 2)
	for i := range macs {
		b := make([]byte, 6)
		rand.Read(b)
		b[0] = b[0]&0xfc | 0x02 // locally administered, unicast
		macs[i] = net.HardwareAddr(b).String()
	}
	body, _ := json.Marshal(acapi.UnlockRequest{MACs: macs, Hostname: "flood"})
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, url+acapi.PathUnlock, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "err"
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return fmt.Sprint(resp.StatusCode)
}

// heartbeats sends a node's heartbeat every interval over one connection,
// as its session does, and prints the latencies: what the fleet feels of
// whatever else the controller is going through.
func heartbeats(args []string) error {
	fs := flag.NewFlagSet("heartbeats", flag.ExitOnError)
	node := nodeFlags(fs)
	every := fs.Duration("interval", 200*time.Millisecond, "between heartbeats")
	dur := fs.Duration("duration", 10*time.Second, "how long")
	fs.Parse(args)
	pool, cert, err := node.load()
	if err != nil {
		return err
	}
	cl, err := acapi.NewClient(*node.url, acapi.TLSConfig(pool, cert), 10*time.Second)
	if err != nil {
		return err
	}
	var lat []time.Duration
	failed := 0
	var firstErr error
	t := time.NewTicker(*every)
	defer t.Stop()
	for stop := time.Now().Add(*dur); time.Now().Before(stop); <-t.C {
		start := time.Now()
		_, err := cl.Heartbeat(context.Background(), &acapi.Heartbeat{BootID: "bench", Uptime: acapi.Duration(time.Hour)})
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		lat = append(lat, time.Since(start))
	}
	if len(lat) == 0 {
		return fmt.Errorf("no heartbeat answered: %w", firstErr)
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	fmt.Printf("heartbeats %d\nfailed %d\np50_ms %.2f\np95_ms %.2f\nmax_ms %.2f\n", len(lat), failed, ms(lat[len(lat)/2]), ms(lat[len(lat)*95/100]), ms(lat[len(lat)-1]))
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "acload: first failed heartbeat:", firstErr)
	}
	return nil
}
