package main

// `acsessionbench fleet`: one controller holding N simulated nodes
// (simnode.go) at N = 1k, 10k, 30k, 100k, beside the baseline server in the
// same run. Per N: nodes connected, controller CPU per 1,000 nodes and
// memory per node in steady state, job round trip (queued -> result
// stored) p50/p99, and the reconnect storm: the time from a controller
// restart until every node is connected again. The simulator's own CPU
// and memory are reported apart.

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/hoststat"
)

type fleetResult struct {
	n          int
	skipped    string // why this size was not measured
	connected  int
	cpu        float64 // controller, fraction of one core
	rssPerNode float64 // bytes
	rtt        []time.Duration
	jobsLost   int
	storm      time.Duration // 0: not everyone came back
	stormGot   int
	resumed    float64 // share of the storm's handshakes that resumed
	busy       int64   // 503/429 answers during the storm
	simCPU     float64
	simRSS     float64 // bytes per node
}

// fleetServer is g8-ac or the baseline, restartable on the same port.
type fleetServer interface {
	name() string
	start(addr string) (pid int, err error)
	job(ctx context.Context, id string) error
	stop()
}

type fleetG8 struct {
	bin, data, log string
	args           []string // more serve flags
	cmd            *exec.Cmd
	st             *store.Store
}

func (g *fleetG8) name() string { return "g8-ac" }
func (g *fleetG8) start(addr string) (int, error) {
	g.cmd = exec.Command(g.bin, append([]string{"serve", "--data", g.data, "--listen", addr}, g.args...)...)
	_, pid, err := startServer(g.cmd, g.log)
	return pid, err
}
func (g *fleetG8) job(ctx context.Context, id string) error {
	_, err := g.st.CreateJob(ctx, id, acapi.KindPing, nil, 10*time.Second, time.Now())
	return err
}
func (g *fleetG8) stop() { stopCmd(g.cmd) }

type fleetBaseline struct {
	bin, dir, log, admin string
	cmd                  *exec.Cmd
}

func (b *fleetBaseline) name() string { return "baseline" }
func (b *fleetBaseline) start(addr string) (int, error) {
	b.cmd = exec.Command(b.bin, "baseline", "--dir", b.dir, "--listen", addr, "--admin", b.admin)
	_, pid, err := startServer(b.cmd, b.log)
	return pid, err
}
func (b *fleetBaseline) job(ctx context.Context, id string) error {
	return (&baselineController{admin: b.admin}).job(ctx, id)
}
func (b *fleetBaseline) stop() { stopCmd(b.cmd) }

func stopCmd(c *exec.Cmd) {
	if c != nil && c.Process != nil {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("%v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// raiseNoFile lifts the open-files limit as far as the kernel allows (as
// root up to fs.nr_open); the servers started from here inherit it.
func raiseNoFile() uint64 {
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}) == nil {
				return n
			}
		}
	}
	l.Cur = l.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}

func runFleet(args []string) {
	fs := flag.NewFlagSet("fleet", flag.ExitOnError)
	acBin := fs.String("g8-ac", "bin/g8-ac", "the g8-ac binary")
	nodesFlag := fs.String("nodes", "1000,10000,30000,100000", "fleet sizes, ascending")
	heartbeat := fs.Duration("heartbeat", acsession.DefaultHeartbeat, "heartbeat interval of every node")
	longPoll := fs.Duration("long-poll", acsession.DefaultLongPoll, "jobs long-poll wait")
	window := fs.Duration("window", 20*time.Second, "steady-state measurement window per size")
	jobRate := fs.Float64("jobs", 10, "jobs queued per second during the window")
	cache := fs.String("cache", "/var/tmp/g8-acfleet", "enrolled identities and the controller they belong to")
	budget := fs.Duration("budget", 9*time.Minute, "sizes that would end past this are reported, not run")
	memShare := fs.Float64("mem-share", 0.5, "a server over this share of the machine's memory cannot hold the next size")
	only := fs.String("only", "", "g8-ac or baseline")
	_ = fs.Parse(args)
	t0 := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "fleet: %5.1fs %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, a...))
	}
	ns := parseCounts(*nodesFlag)
	nofile := raiseNoFile()
	// Each side holds a descriptor per node, plus its own.
	maxN := 0
	for _, n := range ns {
		if uint64(n)+4096 <= nofile {
			maxN = n
		}
	}
	work, err := os.MkdirTemp("/var/tmp", "acfleet-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(work)
	ids := fleetIdentities(*acBin, *cache, maxN, logf)
	// The budget is the measuring: a first run's enrolment (minutes,
	// once per cache) is not in it.
	t0 = time.Now()
	data := filepath.Join(work, "ac")
	if err := copyDir(filepath.Join(*cache, "ac"), data); err != nil {
		fatalf("%v", err)
	}
	if err := serverFiles(data, filepath.Join(work, "base")); err != nil {
		fatalf("%v", err)
	}
	roots, st := openController(data)
	defer st.Close()
	self, _ := os.Executable()
	servers := []fleetServer{
		&fleetG8{bin: *acBin, data: data, log: filepath.Join(work, "g8-ac.log"), st: st},
		&fleetBaseline{bin: self, dir: filepath.Join(work, "base"), log: filepath.Join(work, "base", "server.log"), admin: freeAddr()},
	}
	memTotal, _, _ := hoststat.Memory()
	memLimit := uint64(float64(memTotal) * *memShare)
	res := map[string][]fleetResult{}
	// Both servers share the budget; each gets half of what is left.
	for i, srv := range servers {
		if *only != "" && srv.name() != *only {
			continue
		}
		left := time.Until(t0.Add(*budget)) / time.Duration(len(servers)-i)
		res[srv.name()] = fleetRun(srv, ids, roots, ns, nofile, memLimit, time.Now().Add(left),
			fleetOpts{heartbeat: *heartbeat, longPoll: *longPoll, window: *window, jobRate: *jobRate}, logf)
	}
	fleetReport(ns, res["g8-ac"], res["baseline"])
}

type fleetOpts struct {
	heartbeat, longPoll, window time.Duration
	jobRate                     float64
}

// openController is what the bench needs of the controller's data
// directory: the roots its nodes trust, and its store (to queue jobs).
func openController(data string) (*x509.CertPool, *store.Store) {
	anchor, err := ac.TrustAnchor(data)
	if err != nil {
		fatalf("%v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(anchor)
	st, err := ac.OpenStore(data, "")
	if err != nil {
		fatalf("%v", err)
	}
	return roots, st
}

// fleetRun grows the fleet size by size against one server, measures, and
// restarts the server for the storm at each size.
func fleetRun(srv fleetServer, ids []identity, roots *x509.CertPool, ns []int, nofile, memLimit uint64, deadline time.Time, o fleetOpts, logf func(string, ...any)) []fleetResult {
	addr := freeAddr()
	pid, err := srv.start(addr)
	if err != nil {
		fatalf("%s: %v", srv.name(), err)
	}
	defer srv.stop()
	f := &fleet{addr: addr, host: "127.0.0.1", heartbeat: o.heartbeat, longPoll: o.longPoll,
		timeout: acsession.DefaultRequestTimeout, retry: sessionRetry,
		jobT0: map[int]time.Time{}, jobDone: make(chan jobSample, 4096)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	self, _ := procfs.NewProc(os.Getpid())
	debug.FreeOSMemory() // what the previous server's run left behind
	selfIdle := rss(self)
	time.Sleep(500 * time.Millisecond)
	proc, _ := procfs.NewProc(pid)
	idle := rss(proc)
	var out []fleetResult
	var nodes []*simNode
	defer func() {
		for _, nd := range nodes {
			nd.timer.Stop()
		}
	}()
	var stop string
	// What a size needs at least: its ramp, the window, and the storm at
	// the pace the last one went (nodes back per second).
	stormRate := 1000.0
	need := func(more int) time.Duration {
		return time.Duration(more)*time.Second/2000 + o.window + 10*time.Second +
			time.Duration(float64(len(nodes)+more)/stormRate*float64(time.Second))
	}
	for _, n := range ns {
		r := fleetResult{n: n}
		switch {
		case stop != "":
			r.skipped = stop
		case uint64(n)+4096 > nofile:
			r.skipped = fmt.Sprintf("a server cannot hold %d connections: its open-files limit is %d (raising the hard limit needs CAP_SYS_RESOURCE)", n, nofile)
		case n > len(ids):
			r.skipped = fmt.Sprintf("%d identities enrolled", len(ids))
		case time.Now().Add(need(n - len(nodes))).After(deadline):
			r.skipped = fmt.Sprintf("bench time budget (%v left of this server's share, about %v needed)",
				time.Until(deadline).Round(time.Second), need(n-len(nodes)).Round(time.Second))
		}
		if r.skipped != "" {
			logf("%s N=%d: not run: %s", srv.name(), n, r.skipped)
			out = append(out, r)
			continue
		}
		began := time.Now()
		// New nodes come up over a ramp, as racks booting.
		ramp := time.Duration(n-len(nodes)) * time.Second / 2000
		logf("%s: starting nodes %d..%d over %v", srv.name(), len(nodes), n-1, ramp)
		nodes = startNodes(ctx, f, nodes, ids, roots, n, ramp, o.heartbeat)
		r.connected = waitConnected(f, n, ramp+30*time.Second)
		logf("%s: %d of %d connected (last node error: %v)", srv.name(), r.connected, n, f.lastError())
		// Steady state: at least one heartbeat interval past the ramp.
		time.Sleep(min(o.heartbeat, 5*time.Second))
		cpu0, self0, w0 := cpuTime(proc), cpuTime(self), time.Now()
		r.rtt, r.jobsLost = fleetJobs(ctx, srv, f, nodes, o)
		el := time.Since(w0).Seconds()
		r.cpu = (cpuTime(proc) - cpu0) / el
		r.simCPU = (cpuTime(self) - self0) / el
		held := rss(proc)
		r.rssPerNode = (float64(held) - float64(idle)) / float64(max(r.connected, 1))
		r.simRSS = (float64(rss(self)) - float64(selfIdle)) / float64(len(nodes))
		logf("%s N=%d: cpu %.1f%% rss %.0f KiB/node; storm", srv.name(), n, r.cpu*100, r.rssPerNode/1024)
		// The reconnect storm: the server restarts under the whole fleet.
		h0, res0, busy0 := f.handshakes.Load(), f.resumed.Load(), f.unavailable.Load()
		stop0 := time.Now()
		srv.stop()
		logf("%s stopped in %v", srv.name(), time.Since(stop0).Round(time.Millisecond))
		s0 := time.Now()
		if pid, err = srv.start(addr); err != nil {
			fatalf("%s restart: %v", srv.name(), err)
		}
		proc, _ = procfs.NewProc(pid)
		got := waitConnected(f, r.connected, 60*time.Second)
		if got >= r.connected {
			r.storm = time.Since(s0)
		}
		r.stormGot = got
		if h := f.handshakes.Load() - h0; h > 0 {
			r.resumed = float64(f.resumed.Load()-res0) / float64(h)
		}
		r.busy = f.unavailable.Load() - busy0
		logf("%s N=%d: storm %v (%d back, %.0f%% resumed; last node error: %v)", srv.name(), n, r.storm, got, r.resumed*100, f.lastError())
		if held > memLimit {
			stop = fmt.Sprintf("the server held %d MiB at N=%d (limit %d MiB)", held>>20, n, memLimit>>20)
		}
		if r.storm > 0 {
			stormRate = float64(r.connected) / r.storm.Seconds()
		}
		logf("%s N=%d took %v", srv.name(), n, time.Since(began).Round(time.Second))
		out = append(out, r)
	}
	return out
}

// startNodes adds the nodes of ids[len(nodes):n] to nodes, coming up over
// ramp, each heartbeating every interval; ctx ends them, and the caller
// stops their timers.
func startNodes(ctx context.Context, f *fleet, nodes []*simNode, ids []identity, roots *x509.CertPool, n int, ramp, interval time.Duration) []*simNode {
	for i := len(nodes); i < n; i++ {
		cfg, err := tlsFor(ids[i], roots)
		if err != nil {
			fatalf("%v", err)
		}
		nd := &simNode{f: f, idx: i, id: ids[i].ID, tls: cfg, hb: heartbeatBody(ids[i].ID, i),
			local: &net.TCPAddr{IP: net.IPv4(127, 1, byte(i/10000), 1)}}
		nodes = append(nodes, nd)
		go nd.run(ctx, time.Duration(rand.Int64N(int64(ramp)+1)))
		nd.timer = time.AfterFunc(time.Hour, func() {
			nd.beat()
			nd.timer.Reset(interval)
		})
		nd.timer.Reset(time.Duration(rand.Int64N(int64(interval))) + ramp)
	}
	return nodes
}

// waitConnected waits until want nodes are connected, or for d.
func waitConnected(f *fleet, want int, d time.Duration) int {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if int(f.connected.Load()) >= want {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return int(f.connected.Load())
}

// fleetJobs queues jobs at o.jobRate on random nodes for the window, and
// collects their round trips (queued -> the node's result stored).
func fleetJobs(ctx context.Context, srv fleetServer, f *fleet, nodes []*simNode, o fleetOpts) ([]time.Duration, int) {
	end := time.Now().Add(o.window)
	var wg sync.WaitGroup
	queued := 0
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.jobRate))
	defer tick.Stop()
	for time.Now().Before(end) {
		<-tick.C
		i := rand.IntN(len(nodes))
		f.mu.Lock()
		_, busy := f.jobT0[i]
		if !busy {
			f.jobT0[i] = time.Now()
		}
		f.mu.Unlock()
		if busy {
			continue
		}
		queued++
		wg.Add(1)
		go func() {
			defer wg.Done()
			jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := srv.job(jctx, nodes[i].id); err != nil && !errors.Is(err, context.Canceled) {
				f.failures.Add(1)
			}
		}()
	}
	var rtt []time.Duration
	grace := time.After(5 * time.Second)
collect:
	for len(rtt) < queued {
		select {
		case s := <-f.jobDone:
			rtt = append(rtt, s.rtt)
		case <-grace:
			break collect
		}
	}
	f.mu.Lock()
	clear(f.jobT0)
	f.mu.Unlock()
	return rtt, queued - len(rtt)
}

func fleetReport(ns []int, g8, base []fleetResult) {
	get := func(rs []fleetResult, i int) fleetResult {
		if i < len(rs) {
			return rs[i]
		}
		return fleetResult{n: ns[i], skipped: "not run"}
	}
	ratio := ratioOf
	for i, n := range ns {
		g, b := get(g8, i), get(base, i)
		l := fmt.Sprintf("fleet N=%d", n)
		if g.skipped != "" {
			fmt.Printf("| %s | not measured: %s | %s | | |\n", l, g.skipped, orSkip(b))
			continue
		}
		cell := func(r fleetResult, f func(fleetResult) string) string {
			if r.skipped != "" {
				return "not run: " + r.skipped
			}
			return f(r)
		}
		perK := func(r fleetResult) float64 { return r.cpu / float64(max(r.connected, 1)) * 1000 }
		fmt.Printf("| %s: nodes connected | %d | %s | | all |\n", l, g.connected, cell(b, func(r fleetResult) string { return strconv.Itoa(r.connected) }))
		fmt.Printf("| %s: controller CPU per 1,000 nodes (%% of one core) | %.2f%% | %s | %s | ≤ 3%% |\n", l, perK(g)*100,
			cell(b, func(r fleetResult) string { return fmt.Sprintf("%.2f%%", perK(r)*100) }), ratio(perK(g), perK(b)))
		fmt.Printf("| %s: controller memory per node | %.1f KiB | %s | %s | ≤ 40 KiB |\n", l, g.rssPerNode/1024,
			cell(b, func(r fleetResult) string { return fmt.Sprintf("%.1f KiB", r.rssPerNode/1024) }), ratio(g.rssPerNode, b.rssPerNode))
		rttCell := func(r fleetResult) string {
			s := fmt.Sprintf("%s / %s (%d jobs", ms(pctl(r.rtt, 50)), ms(pctl(r.rtt, 99)), len(r.rtt))
			if r.jobsLost > 0 {
				s += fmt.Sprintf(", %d without result", r.jobsLost)
			}
			return s + ")"
		}
		fmt.Printf("| %s: job round trip p50 / p99 | %s | %s | %s | p99 ≤ 250 ms |\n", l, rttCell(g), cell(b, rttCell),
			ratio(float64(pctl(g.rtt, 99)), float64(pctl(b.rtt, 99))))
		storm := func(r fleetResult) string {
			s := fmt.Sprintf("%d of %d in 60 s", r.stormGot, r.connected)
			if r.storm > 0 {
				s = fmt.Sprintf("%.1f s", r.storm.Seconds())
			}
			s += fmt.Sprintf(" (%.0f%% resumed", r.resumed*100)
			if r.busy > 0 {
				s += fmt.Sprintf(", %d told to wait", r.busy)
			}
			return s + ")"
		}
		fmt.Printf("| %s: reconnect storm, restart to all connected | %s | %s | %s | no node lost |\n", l, storm(g), cell(b, storm),
			ratio(g.storm.Seconds(), b.storm.Seconds()))
		fmt.Printf("| %s: simulator's own CPU per 1,000 nodes / memory per node | %.2f%% / %.1f KiB | %s | | |\n", l,
			g.simCPU/float64(max(g.connected, 1))*1e5, g.simRSS/1024,
			cell(b, func(r fleetResult) string {
				return fmt.Sprintf("%.2f%% / %.1f KiB", r.simCPU/float64(max(r.connected, 1))*1e5, r.simRSS/1024)
			}))
	}
}

func orSkip(r fleetResult) string {
	if r.skipped != "" {
		return "not run: " + r.skipped
	}
	return fmt.Sprintf("%d connected", r.connected)
}
