// acsessionbench measures one g8-ac holding N node sessions: the real
// session code (internal/acsession), many instances in this process, each
// with its own certificate, state directory, on-disk queue and HTTP/2
// connection, heartbeating every 10 s and long-polling for jobs. It reports
// the controller's CPU and memory per 1000 nodes and the job round trip
// (job queued → result stored) at each N, beside a baseline measured in the
// same run: the same sessions against a trivial Go mTLS server that speaks
// the same API and stores nothing (`acsessionbench baseline`).
//
// Usage: acsessionbench --g8-ac PATH [--nodes 1000,10000]
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/state"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "fleet" {
		runFleet(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "fleetlat" {
		runFleetLatency(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "baseline" {
		if err := serveBaseline(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "acsessionbench baseline:", err)
			os.Exit(1)
		}
		return
	}
	acBin := flag.String("g8-ac", "bin/g8-ac", "the g8-ac binary")
	nodesFlag := flag.String("nodes", "1000,10000", "session counts, ascending")
	heartbeat := flag.Duration("heartbeat", 10*time.Second, "heartbeat interval of every session")
	window := flag.Duration("window", 10*time.Second, "measurement window per N (at least one heartbeat interval)")
	settle := flag.Duration("settle", 12*time.Second, "longest wait, after the ramp, for a large batch of sessions to connect before measuring")
	work := flag.String("dir", "", "work directory (default: a new one in /dev/shm)")
	profile := flag.String("cpuprofile", "", "write this process's (the sessions') CPU profile here")
	only := flag.String("only", "", "run against only this server: g8-ac or baseline (no table)")
	flag.Parse()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			fatalf("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf("%v", err)
		}
		defer pprof.StopCPUProfile()
	}
	ns := parseCounts(*nodesFlag)
	dir := *work
	if dir == "" {
		base := "/dev/shm"
		if _, err := os.Stat(base); err != nil {
			base = ""
		}
		d, err := os.MkdirTemp(base, "acsessionbench-")
		if err != nil {
			fatalf("%v", err)
		}
		dir = d
		defer os.RemoveAll(dir)
	}
	b := &bench{dir: dir, heartbeat: *heartbeat, window: *window, settle: *settle, ns: ns}
	self, _ := os.Executable()
	if *only != "" {
		var c controller = &g8Controller{bin: *acBin}
		if *only == "baseline" {
			c = &baselineController{bin: self}
		}
		ms, err := b.run(c)
		if err != nil {
			fatalf("%s: %v", *only, err)
		}
		for _, m := range ms {
			fmt.Printf("%+v\n", m)
		}
		return
	}
	g8, err := b.run(&g8Controller{bin: *acBin})
	if err != nil {
		fatalf("g8-ac: %v", err)
	}
	base, err := b.run(&baselineController{bin: self})
	if err != nil {
		fatalf("baseline: %v", err)
	}
	report(ns, g8, base)
}

// parseCounts reads --nodes: ascending positive counts.
func parseCounts(list string) []int {
	var ns []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || (len(ns) > 0 && n <= ns[len(ns)-1]) {
			fatalf("--nodes %q: want ascending positive counts", list)
		}
		ns = append(ns, n)
	}
	return ns
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "acsessionbench: "+format+"\n", a...)
	os.Exit(1)
}

// controller is the server under test: g8-ac or the baseline.
type controller interface {
	name() string
	// setup prepares n node identities and returns the CA bundle nodes
	// verify the server with.
	setup(dir string, n int) (ids []string, certs []tls.Certificate, caPEM []byte, err error)
	start(dir string) (url string, pid int, err error)
	// job queues a ping for node id and returns when its result is stored.
	job(ctx context.Context, id string) error
	stop()
}

type measurement struct {
	n          int
	connected  int
	cpu        float64 // server CPU, fraction of one core
	rssPerK    float64 // server RSS growth per 1000 sessions, MiB
	clientCPU  float64 // this process (the sessions), fraction of one core
	clientRSS  float64 // Go heap and stacks, MiB per 1000 sessions
	rtt        []time.Duration
	failedJobs int
}

type bench struct {
	dir       string
	heartbeat time.Duration
	window    time.Duration
	settle    time.Duration
	ns        []int
}

func (b *bench) run(c controller) ([]measurement, error) {
	dir := filepath.Join(b.dir, c.name())
	maxN := b.ns[len(b.ns)-1]
	t0 := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "acsessionbench: %5.1fs %s: %s\n", time.Since(t0).Seconds(), c.name(), fmt.Sprintf(format, a...))
	}
	logf("enrolling %d nodes", maxN)
	ids, certs, caPEM, err := c.setup(dir, maxN)
	if err != nil {
		return nil, err
	}
	url, pid, err := c.start(dir)
	if err != nil {
		return nil, err
	}
	logf("enrolled; server up at %s", url)
	if err := prepareNodes(filepath.Join(dir, "nodes"), ids, certs, caPEM, url); err != nil {
		c.stop()
		return nil, err
	}
	logf("node directories ready")
	defer c.stop()
	srv, err := procfs.NewProc(pid)
	if err != nil {
		return nil, err
	}
	self, _ := procfs.NewProc(os.Getpid())
	time.Sleep(500 * time.Millisecond)
	idleRSS := rss(srv)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ready atomic.Int64
	var wg sync.WaitGroup
	sys := &sharedSystem{}
	// Every session is set up before the clock runs: the loop below only
	// starts goroutines, so it is not slowed down by the sessions it
	// already started.
	sessions := make([]*acsession.Session, maxN)
	if err := parallel(maxN, func(i int) error {
		var err error
		sessions[i], err = newSession(filepath.Join(dir, "nodes", strconv.Itoa(i)), b.heartbeat, sys, &ready)
		return err
	}); err != nil {
		return nil, err
	}
	logf("%d sessions set up", maxN)
	selfIdle := goMemory()
	started := 0
	var out []measurement
	for _, n := range b.ns {
		// The new sessions start spread over a few seconds, as a rack
		// booting, not all in the same millisecond.
		ramp := min(time.Duration(n-started)*time.Millisecond, 10*time.Second)
		logf("starting sessions up to %d over %v", n, ramp)
		for _, s := range sessions[started:n] {
			wg.Add(1)
			delay := time.Duration(mrand.Int64N(int64(ramp) + 1))
			go func() {
				defer wg.Done()
				select {
				case <-time.After(delay):
					_ = s.Run(ctx)
				case <-ctx.Done():
				}
			}()
		}
		started = n
		// Bounded: a controller that cannot take them all is measured
		// with those it took, and the report says how many that was.
		wait := 6 * time.Second
		if ramp >= time.Second {
			wait = b.settle
		}
		deadline := time.Now().Add(ramp + wait)
		for ready.Load() < int64(n) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		logf("%d of %d sessions ready", ready.Load(), n)
		m := measurement{n: n, connected: int(ready.Load())}
		cpu0, self0, t0 := cpuTime(srv), cpuTime(self), time.Now()
		// Jobs go to random nodes one after another during the window; the
		// report gives how many finished. The loop does not wait for the
		// one still out at the end (a store write can outlast its context).
		type jobOutcome struct {
			rtt time.Duration
			err error
		}
		outcomes := make(chan jobOutcome, 1024)
		end := t0.Add(b.window)
		go func() {
			for time.Now().Before(end) {
				id := ids[mrand.IntN(n)]
				jctx, jcancel := context.WithDeadline(ctx, end)
				start := time.Now()
				err := c.job(jctx, id)
				jcancel()
				outcomes <- jobOutcome{time.Since(start), err}
				time.Sleep(200 * time.Millisecond)
			}
			close(outcomes)
		}()
		time.Sleep(b.window)
		logf("window over")
		el := time.Since(t0).Seconds()
		m.cpu = (cpuTime(srv) - cpu0) / el
		m.clientCPU = (cpuTime(self) - self0) / el
		// Per 1000 sessions that are connected: those are what the
		// controller holds.
		perK := float64(max(m.connected, 1)) / 1000
		m.rssPerK = (float64(rss(srv)) - float64(idleRSS)) / (1 << 20) / perK
		m.clientRSS = (float64(goMemory()) - float64(selfIdle)) / (1 << 20) / perK
		grace := time.After(time.Second)
	collect:
		for {
			select {
			case o, ok := <-outcomes:
				if !ok {
					break collect
				}
				switch {
				case o.err == nil:
					m.rtt = append(m.rtt, o.rtt)
				case errors.Is(o.err, context.DeadlineExceeded) && !time.Now().Before(end):
					// cut by the end of the window: neither a sample nor a failure
				default:
					m.failedJobs++
				}
			case <-grace:
				break collect // the one still out was cut by the window
			}
		}
		logf("measured")
		out = append(out, m)
	}
	cancel()
	// Sessions stop within a request timeout; do not wait that long.
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
	}
	logf("sessions stopped")
	c.stop()
	logf("done")
	return out, nil
}

// goMemory is the live Go heap as of the last collection plus stacks:
// unlike RSS it shrinks when the previous run's sessions are gone, and
// reading it forces no collection (which takes long with 10,000 sessions).
func goMemory() uint64 {
	ms := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(ms)
	var total uint64
	for _, m := range ms {
		if m.Value.Kind() == metrics.KindUint64 {
			total += m.Value.Uint64()
		}
	}
	return total
}

func cpuTime(p procfs.Proc) float64 {
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return st.CPUTime()
}

func rss(p procfs.Proc) uint64 {
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return uint64(st.ResidentMemory())
}

// sharedSystem gives every simulated node the same host figures, sampled
// once a second: thousands of nodes in one process share one host, and
// sampling it thousands of times a second would measure /proc, not the
// session.
type sharedSystem struct {
	mu   sync.Mutex
	host acsession.HostSystem
	last acapi.Heartbeat
	at   time.Time
}

func (s *sharedSystem) Status(ctx context.Context, hb *acapi.Heartbeat) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.at) > time.Second {
		s.last = acapi.Heartbeat{}
		s.host.Status(ctx, &s.last)
		s.at = time.Now()
	}
	*hb = s.last
}

type readyCounter struct {
	ready *atomic.Int64
	once  sync.Once
}

func (r *readyCounter) Ready(string)          { r.once.Do(func() { r.ready.Add(1) }) }
func (r *readyCounter) Status(string, ...any) {}
func (r *readyCounter) Watchdog()             {}
func (r *readyCounter) Stopping()             {}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newSession(dir string, hb time.Duration, sys acsession.System, ready *atomic.Int64) (*acsession.Session, error) {
	return acsession.New(acsession.Config{StateDir: filepath.Join(dir, "run"), ConfigRoot: filepath.Join(dir, "etc"), Heartbeat: hb,
		System: sys, Notifier: &readyCounter{ready: ready}, Log: discard, NoApps: true})
}

// prepareNodes lays out every node's identity and net.json before the
// clock runs.
func prepareNodes(dir string, ids []string, certs []tls.Certificate, caPEM []byte, url string) error {
	return parallel(len(ids), func(i int) error {
		return prepareNode(filepath.Join(dir, strconv.Itoa(i)), ids[i], certs[i], caPEM, url)
	})
}

// parallel runs f(0..n-1) on a few workers and returns the first error.
func parallel(n int, f func(i int) error) error {
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func prepareNode(dir, id string, cert tls.Certificate, caPEM []byte, url string) error {
	stateDir, root := filepath.Join(dir, "run"), filepath.Join(dir, "etc")
	if err := os.MkdirAll(filepath.Join(root, "ssl"), 0o700); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"ca.pem": caPEM, "node.pem": certPEM,
		"node.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})} {
		if err := os.WriteFile(filepath.Join(root, "ssl", name), data, 0o600); err != nil {
			return err
		}
	}
	now := time.Now().UTC()
	if err := state.Write(stateDir, &state.Net{Controller: url, Interface: "eth0", Method: "static", StartedAt: now, ReadyAt: now}); err != nil {
		return err
	}
	return state.Write(stateDir, &state.Unlock{NodeID: id, StartedAt: now, ReadyAt: now})
}

// nodeKey is one key shared by all simulated nodes: each still gets its own
// certificate (CN = node id), which is what the controller checks, and the
// run does not spend its time generating keys.
func nodeKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bench"}}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), nil
}

func pairOf(certPEM []byte, key *ecdsa.PrivateKey) (tls.Certificate, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return tls.Certificate{}, errors.New("no certificate PEM")
	}
	return tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key}, nil
}

// g8Controller is the real g8-ac: init, nodes enrolled straight into its
// store with certificates from its node CA, `g8-ac serve`.
type g8Controller struct {
	bin  string
	cmd  *exec.Cmd
	st   *store.Store
	data string
}

func (g *g8Controller) name() string { return "g8-ac" }

func (g *g8Controller) setup(dir string, n int) ([]string, []tls.Certificate, []byte, error) {
	g.data = filepath.Join(dir, "ac")
	if out, err := exec.Command(g.bin, "init", "--data", g.data, "--name", "127.0.0.1").CombinedOutput(); err != nil {
		return nil, nil, nil, fmt.Errorf("g8-ac init: %v: %s", err, out)
	}
	st, err := ac.OpenStore(g.data, "")
	if err != nil {
		return nil, nil, nil, err
	}
	g.st = st
	ca, err := pki.Load(g.data, pki.NodeCACert, pki.NodeCAKey)
	if err != nil {
		return nil, nil, nil, err
	}
	key, csr, err := nodeKey()
	if err != nil {
		return nil, nil, nil, err
	}
	ids := make([]string, n)
	certs := make([]tls.Certificate, n)
	ctx := context.Background()
	// The store takes one writer at a time; signing runs in parallel after.
	for i := range n {
		mac := fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
		node, err := st.AddNode(ctx, []string{mac}, true, time.Now())
		if err != nil {
			return nil, nil, nil, err
		}
		ids[i] = node.ID
	}
	if err := parallel(n, func(i int) error {
		certPEM, _, err := ca.SignCSR(csr, ids[i], pki.DefaultNodeValidity)
		if err == nil {
			certs[i], err = pairOf(certPEM, key)
		}
		return err
	}); err != nil {
		return nil, nil, nil, err
	}
	serverCA, err := ac.TrustAnchor(g.data)
	if err != nil {
		return nil, nil, nil, err
	}
	return ids, certs, serverCA, nil
}

var listenLine = regexp.MustCompile(`msg=listening .*addr=(\S+)`)

func (g *g8Controller) start(dir string) (string, int, error) {
	g.cmd = exec.Command(g.bin, "serve", "--data", g.data, "--listen", "127.0.0.1:0")
	return startServer(g.cmd, filepath.Join(dir, "server.log"))
}

// startServer starts cmd and waits for its "listening ... addr=" line.
func startServer(cmd *exec.Cmd, logPath string) (string, int, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", 0, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return "", 0, err
	}
	logFile.Close() // the child has it
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		data, _ := os.ReadFile(logPath)
		if m := listenLine.FindSubmatch(data); m != nil {
			return "https://" + string(m[1]), cmd.Process.Pid, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return "", 0, fmt.Errorf("%s did not report its listen address (log: %s)", cmd.Path, logPath)
}

func (g *g8Controller) job(ctx context.Context, id string) error {
	j, err := g.st.CreateJob(ctx, id, acapi.KindPing, nil, 10*time.Second, time.Now())
	if err != nil {
		return err
	}
	for {
		if j, err = g.st.Job(ctx, j.ID); err != nil {
			return err
		}
		if j.Finished() {
			if j.State != acapi.JobOK {
				return fmt.Errorf("job %s: %s", j.ID, j.State)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (g *g8Controller) stop() {
	if g.cmd != nil && g.cmd.Process != nil {
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		_ = g.cmd.Wait()
	}
	if g.st != nil {
		g.st.Close()
	}
}

// baselineController is the trivial server: this binary's `baseline`
// subcommand, a separate process like g8-ac.
type baselineController struct {
	bin   string
	cmd   *exec.Cmd
	admin string
}

func (b *baselineController) name() string { return "baseline" }

func (b *baselineController) setup(dir string, n int) ([]string, []tls.Certificate, []byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "baseline CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	sign := func(tmpl *x509.Certificate, pub any) ([]byte, error) {
		return x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := sign(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, &srvKey.PublicKey)
	if err != nil {
		return nil, nil, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	srvKeyDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	for name, data := range map[string][]byte{"ca.pem": caPEM,
		"server.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"server.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: srvKeyDER})} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, nil, nil, err
		}
	}
	key, _, err := nodeKey()
	if err != nil {
		return nil, nil, nil, err
	}
	ids := make([]string, n)
	certs := make([]tls.Certificate, n)
	if err := parallel(n, func(i int) error {
		ids[i] = fmt.Sprintf("b-%06d", i)
		der, err := sign(&x509.Certificate{SerialNumber: big.NewInt(int64(i) + 10), Subject: pkix.Name{CommonName: ids[i]},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey)
		certs[i] = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		return err
	}); err != nil {
		return nil, nil, nil, err
	}
	return ids, certs, caPEM, nil
}

func (b *baselineController) start(dir string) (string, int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", 0, err
	}
	b.admin = ln.Addr().String()
	ln.Close()
	b.cmd = exec.Command(b.bin, "baseline", "--dir", dir, "--admin", b.admin)
	return startServer(b.cmd, filepath.Join(dir, "server.log"))
}

// adminClient has the project's redirect policy like every other client.
var adminClient = acapi.HTTPClient(nil, 0)

func (b *baselineController) job(ctx context.Context, id string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+b.admin+"/job?node="+id, nil)
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("baseline job: %s: %s", resp.Status, body)
	}
	return nil
}

func (b *baselineController) stop() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		_ = b.cmd.Wait()
	}
}

// serveBaseline is the trivial controller: mTLS and the node API, with the
// client certificate's CN as the node id, nothing stored. Jobs come in on a
// plain loopback admin port and are handed to the node's waiting long-poll
// at once; the admin request returns when the result is posted.
func serveBaseline(args []string) error {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory with ca.pem, server.pem, server.key")
	admin := fs.String("admin", "127.0.0.1:0", "plain HTTP address for /job")
	listen := fs.String("listen", "127.0.0.1:0", "the mTLS address nodes connect to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pool, err := acapi.LoadPool(filepath.Join(*dir, "ca.pem"))
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dir, "server.pem"), filepath.Join(*dir, "server.key"))
	if err != nil {
		return err
	}
	var mu sync.Mutex
	pending := map[string]chan acapi.Job{}
	results := map[string]chan struct{}{}
	queue := func(node string) chan acapi.Job {
		mu.Lock()
		defer mu.Unlock()
		ch, ok := pending[node]
		if !ok {
			ch = make(chan acapi.Job, 8)
			pending[node] = ch
		}
		return ch
	}
	node := func(r *http.Request) string { return r.TLS.VerifiedChains[0][0].Subject.CommonName }
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+acapi.PathHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		var hb acapi.Heartbeat
		if err := json.NewDecoder(io.LimitReader(r.Body, acapi.MaxBody)).Decode(&hb); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(acapi.HeartbeatReply{NodeID: node(r), ServerTime: time.Now()})
	})
	mux.HandleFunc("GET "+acapi.PathJobs, func(w http.ResponseWriter, r *http.Request) {
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		t := time.NewTimer(wait)
		defer t.Stop()
		jobs := []acapi.Job{}
		select {
		case j := <-queue(node(r)):
			jobs = append(jobs, j)
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		_ = json.NewEncoder(w).Encode(jobs)
	})
	mux.HandleFunc("POST "+acapi.PathJobs+"/{id}/result", func(w http.ResponseWriter, r *http.Request) {
		var res acapi.JobResult
		if err := json.NewDecoder(io.LimitReader(r.Body, acapi.MaxBody)).Decode(&res); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		if ch, ok := results[r.PathValue("id")]; ok {
			close(ch)
			delete(results, r.PathValue("id"))
		}
		mu.Unlock()
		_, _ = w.Write([]byte("{}"))
	})
	mux.HandleFunc("POST "+acapi.PathEvents, func(w http.ResponseWriter, r *http.Request) {
		var evs []acapi.Event
		if err := json.NewDecoder(io.LimitReader(r.Body, acapi.MaxBody)).Decode(&evs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var high uint64
		for _, e := range evs {
			high = max(high, e.Seq)
		}
		_ = json.NewEncoder(w).Encode(acapi.EventsReply{Acked: high})
	})
	var seq atomic.Int64
	adminMux := http.NewServeMux()
	adminMux.HandleFunc("POST /job", func(w http.ResponseWriter, r *http.Request) {
		id := fmt.Sprintf("bj-%d", seq.Add(1))
		done := make(chan struct{})
		mu.Lock()
		results[id] = done
		mu.Unlock()
		queue(r.URL.Query().Get("node")) <- acapi.Job{ID: id, Kind: acapi.KindPing, Timeout: acapi.Duration(10 * time.Second), CreatedAt: time.Now()}
		select {
		case <-done:
		case <-r.Context().Done():
			return
		}
	})
	go func() { _ = http.ListenAndServe(*admin, adminMux) }()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}}
	fmt.Fprintf(os.Stderr, "msg=listening addr=%s\n", ln.Addr())
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		srv.Close()
	}()
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func report(ns []int, g8, base []measurement) {
	pct := func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) }
	ratio := func(a, b float64) string {
		if b <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fx", a/b)
	}
	cores := float64(runtime.NumCPU())
	for i, n := range ns {
		g, b := g8[i], base[i]
		label := fmt.Sprintf("acsession N=%d", n)
		target := ""
		if n >= 10000 {
			target = "< 50% of the machine at N=10,000"
		}
		fmt.Printf("| %s: sessions connected | %d/%d | %d/%d | | all |\n", label, g.connected, n, b.connected, n)
		fmt.Printf("| %s: controller CPU (%% of %d cores) | %s | %s | %s | %s |\n", label, int(cores), pct(g.cpu/cores), pct(b.cpu/cores), ratio(g.cpu, b.cpu), target)
		fmt.Printf("| %s: controller CPU per 1000 connected nodes (%% of one core) | %s | %s | %s | |\n", label, pct(perK(g.cpu, g)), pct(perK(b.cpu, b)), ratio(perK(g.cpu, g), perK(b.cpu, b)))
		fmt.Printf("| %s: controller memory per 1000 connected nodes | %.1f MiB | %.1f MiB | %s | |\n", label, g.rssPerK, b.rssPerK, ratio(g.rssPerK, b.rssPerK))
		fmt.Printf("| %s: job round trip p50 / p99 (%d / %d jobs) | %s / %s | %s / %s | %s | |\n", label, len(g.rtt), len(b.rtt),
			ms(pctl(g.rtt, 50)), ms(pctl(g.rtt, 99)), ms(pctl(b.rtt, 50)), ms(pctl(b.rtt, 99)), ratio(float64(pctl(g.rtt, 50)), float64(pctl(b.rtt, 50))))
		fmt.Printf("| %s: node sessions (client side) CPU / memory per 1000 connected | %s / %.1f MiB | %s / %.1f MiB | | |\n", label,
			pct(perK(g.clientCPU, g)), g.clientRSS, pct(perK(b.clientCPU, b)), b.clientRSS)
		if g.failedJobs+b.failedJobs > 0 {
			fmt.Printf("| %s: jobs failed | %d | %d | | 0 |\n", label, g.failedJobs, b.failedJobs)
		}
	}
}

// perK scales a figure to 1000 connected sessions.
func perK(v float64, m measurement) float64 { return v / float64(max(m.connected, 1)) * 1000 }

func pctl(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
}
