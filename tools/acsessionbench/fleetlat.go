package main

// `acsessionbench fleetlat`: whether a fleet's heartbeats make the
// operator's and the nodes' other requests wait (issue 14.3). One g8-ac,
// on its SQLite file and then on PostgreSQL, measured quiet (a handful of
// nodes) and with N simulated nodes heartbeating; in each state: a new
// node's first unlock (it becomes pending), the operator's approval (the
// store write `g8-ac node approve` makes), the approved node's unlock
// answered with its key and certificate, and the job round trip.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
)

// latencies is one state's samples.
type latencies struct {
	connected                int
	pending, approve, unlock []time.Duration
	jobs                     []time.Duration
	jobsLost, unlockFailures int
}

func runFleetLatency(args []string) {
	fs := flag.NewFlagSet("fleetlat", flag.ExitOnError)
	acBin := fs.String("g8-ac", "bin/g8-ac", "the g8-ac binary")
	nodes := fs.Int("nodes", 2000, "simulated nodes heartbeating in the busy state")
	quiet := fs.Int("quiet", 20, "simulated nodes in the quiet state (their polls take the jobs)")
	samples := fs.Int("samples", 10, "unlocks and approvals per state")
	window := fs.Duration("window", 20*time.Second, "job measurement window per state")
	cache := fs.String("cache", "/var/tmp/g8-acfleet", "enrolled identities and the controller they belong to")
	database := fs.String("database", "", "also measure on this empty PostgreSQL database (postgres:// URL)")
	_ = fs.Parse(args)
	t0 := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "fleetlat: %5.1fs %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, a...))
	}
	nofile := raiseNoFile()
	if uint64(*nodes)+4096 > nofile {
		fatalf("%d nodes need more open files than the limit %d", *nodes, nofile)
	}
	work, err := os.MkdirTemp("/var/tmp", "acfleetlat-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(work)
	ids := fleetIdentities(*acBin, *cache, *nodes, logf)
	engines := []string{"SQLite"}
	if *database != "" {
		engines = append(engines, "PostgreSQL")
	}
	for _, eng := range engines {
		data := filepath.Join(work, eng)
		if err := copyDir(filepath.Join(*cache, "ac"), data); err != nil {
			fatalf("%v", err)
		}
		if eng == "PostgreSQL" {
			// The cached store brought to this build's schema, then copied.
			st, err := ac.OpenStore(data, "")
			if err != nil {
				fatalf("%v", err)
			}
			st.Close()
			if out, err := exec.Command(*acBin, "db", "copy", "--from", data, "--to", *database).CombinedOutput(); err != nil {
				fatalf("g8-ac db copy: %v: %s", err, out)
			}
		}
		q, b := fleetLatency(*acBin, data, filepath.Join(work, eng+".log"), ids, *quiet, *nodes, *samples, *window, logf)
		latencyReport(eng, q, b)
	}
}

// fleetLatency measures one store engine quiet, then busy.
func fleetLatency(acBin, data, log string, ids []identity, quiet, busy, samples int, window time.Duration, logf func(string, ...any)) (q, b latencies) {
	roots, st := openController(data)
	defer st.Close()
	srv := &fleetG8{bin: acBin, data: data, log: log, st: st,
		// The samples' unlocks all come from 127.0.0.1.
		args: []string{"--unlock-rate", "1000", "--unlock-burst", "1000"}}
	addr := freeAddr()
	if _, err := srv.start(addr); err != nil {
		fatalf("g8-ac: %v", err)
	}
	defer srv.stop()
	next := 0 // new nodes' MACs
	for i, n := range []int{quiet, busy} {
		f := &fleet{addr: addr, host: "127.0.0.1", heartbeat: acsession.DefaultHeartbeat, longPoll: acsession.DefaultLongPoll,
			timeout: acsession.DefaultRequestTimeout, retry: sessionRetry,
			jobT0: map[int]time.Time{}, jobDone: make(chan jobSample, 4096)}
		ctx, cancel := context.WithCancel(context.Background())
		ramp := time.Duration(n) * time.Second / 2000
		nodes := startNodes(ctx, f, nil, ids, roots, n, ramp, f.heartbeat)
		var l latencies
		l.connected = waitConnected(f, n, ramp+30*time.Second)
		logf("%s: %d of %d nodes connected", data, l.connected, n)
		time.Sleep(min(f.heartbeat, 5*time.Second))
		jobs := make(chan struct{})
		go func() {
			defer close(jobs)
			l.jobs, l.jobsLost = fleetJobs(ctx, srv, f, nodes, fleetOpts{window: window, jobRate: 10})
		}()
		for range samples {
			next++
			if err := unlockSample(ctx, st, addr, roots, fmt.Sprintf("52:54:fe:%02x:%02x:%02x", i, next>>8, next&0xff), &l); err != nil {
				l.unlockFailures++
				logf("unlock sample: %v", err)
			}
		}
		<-jobs
		cancel()
		for _, nd := range nodes {
			nd.timer.Stop()
		}
		if i == 0 {
			q = l
		} else {
			b = l
		}
	}
	return q, b
}

// unlockSample is a new machine's enrolment as the operator sees it: its
// first unlock (pending), the approval, its unlock answered with the key.
func unlockSample(ctx context.Context, st *store.Store, addr string, roots *x509.CertPool, mac string, l *latencies) error {
	idCert, err := newIdentityCert()
	if err != nil {
		return err
	}
	client, err := acapi.NewClient("https://"+addr, acapi.TLSConfig(roots, idCert), acsession.DefaultRequestTimeout)
	if err != nil {
		return err
	}
	defer client.HTTP.CloseIdleConnections()
	// The connection first: the figures are the requests, not handshakes.
	if _, err := client.Health(ctx); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: mac}}, key)
	if err != nil {
		return err
	}
	req := &acapi.UnlockRequest{MACs: []string{mac}, Hostname: "lat-" + strings.ReplaceAll(mac, ":", ""),
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
	start := time.Now()
	_, err = client.Unlock(ctx, req)
	if !acapi.IsStatus(err, http.StatusAccepted) {
		return fmt.Errorf("first unlock of %s: %v, want 202 pending", mac, err)
	}
	l.pending = append(l.pending, time.Since(start))
	start = time.Now()
	if _, err := st.SetState(ctx, mac, store.StateApproved, time.Now()); err != nil {
		return err
	}
	l.approve = append(l.approve, time.Since(start))
	start = time.Now()
	resp, err := client.Unlock(ctx, req)
	if err != nil {
		return fmt.Errorf("unlock of approved %s: %v", mac, err)
	}
	if resp.Cert == "" {
		return fmt.Errorf("unlock of approved %s: no certificate", mac)
	}
	l.unlock = append(l.unlock, time.Since(start))
	return nil
}

func latencyReport(eng string, q, b latencies) {
	row := func(what string, qs, bs []time.Duration) {
		fmt.Printf("| fleet latency, %s: %s p50 / p99, %d nodes heartbeating vs quiet | %s / %s | %s / %s | %s | no worse |\n",
			eng, what, b.connected, ms(pctl(bs, 50)), ms(pctl(bs, 99)), ms(pctl(qs, 50)), ms(pctl(qs, 99)),
			ratioOf(float64(pctl(bs, 99)), float64(pctl(qs, 99))))
	}
	row("new node's first unlock (pending)", q.pending, b.pending)
	row("operator's approval", q.approve, b.approve)
	row("approved node's unlock (key + certificate)", q.unlock, b.unlock)
	row("job round trip", q.jobs, b.jobs)
	if q.unlockFailures+b.unlockFailures+q.jobsLost+b.jobsLost > 0 {
		fmt.Printf("| fleet latency, %s: failures | %d unlocks, %d jobs without result | %d unlocks, %d jobs without result | | none |\n",
			eng, b.unlockFailures, b.jobsLost, q.unlockFailures, q.jobsLost)
	}
}

func ratioOf(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}
