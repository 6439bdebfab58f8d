// Command acload measures g8-ac's request rate for unlock and heartbeat
// against a plain Go TLS server answering the same requests with a fixed
// body, run in the same way in the same run (bench/ac.sh).
//
//	acload baseline --listen ADDR --cert F --key F   # the baseline server
//	acload run --name NAME --url URL --ca F --mac M [--duration D] [--clients N]
//	acload flood --url URL --ca F [--v4 PREFIX] [--v6 PREFIX] [--sources N] [--requests N] [--duration D]
//	acload heartbeats --url URL --ca F --cert F --key F [--interval D] [--duration D]
//	acload enrol --url URL --ca F --mac M --out DIR
//	acload hammer --url URL --ca F --cert F --key F [--connections N] [--batch N] [--duration D]
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: acload baseline|run|flood|heartbeats|enrol|hammer ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "baseline":
		err = baseline(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "flood":
		err = flood(os.Args[2:])
	case "heartbeats":
		err = heartbeats(os.Args[2:])
	case "enrol":
		err = enrol(os.Args[2:])
	case "hammer":
		err = hammer(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "acload:", err)
		os.Exit(1)
	}
}

// baseline answers unlock and heartbeat like g8-ac would, without a store:
// the cost of TLS, HTTP and JSON alone.
func baseline(args []string) error {
	fs := flag.NewFlagSet("baseline", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	certF := fs.String("cert", "", "server certificate")
	keyF := fs.String("key", "", "server key")
	fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(*certF, *keyF)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	answer := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, acapi.MaxBody))
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, body)
		}
	}
	mux.HandleFunc("POST "+acapi.PathUnlock, answer(`{"node_id":"n-0000000000","key":"yUsAOWAbX46d2ACb75aVNRcwYgLh/Lp4ku9EwGFQcfI=","ca":"","authorized_keys":""}`))
	mux.HandleFunc("POST "+acapi.PathHeartbeat, answer(`{"node_id":"n-0000000000","server_time":"2026-01-01T00:00:00Z"}`))
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}}
	ln, err := tls.Listen("tcp", *listen, srv.TLSConfig)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	return srv.Serve(ln)
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	url := fs.String("url", "", "server URL")
	caF := fs.String("ca", "", "trust anchor")
	mac := fs.String("mac", "", "MAC of an approved node")
	dur := fs.Duration("duration", 3*time.Second, "how long each measurement runs")
	clients := fs.Int("clients", 16, "concurrent clients")
	fs.Parse(args)
	pool, err := acapi.LoadPool(*caF)
	if err != nil {
		return err
	}
	ctx := context.Background()
	// A client certificate for the heartbeat: from the unlock answer (g8-ac),
	// or self-signed (the baseline only requests one).
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	// Unlock requests prove a node identity key, as g8-unlock's do.
	_, idKey, _ := ed25519.GenerateKey(rand.Reader)
	ident, err := acapi.IdentityCertificate(idKey)
	if err != nil {
		return err
	}
	plain, err := acapi.NewClient(*url, acapi.TLSConfig(pool, ident), 10*time.Second)
	if err != nil {
		return err
	}
	resp, err := plain.Unlock(ctx, &acapi.UnlockRequest{MACs: []string{*mac}, CSR: csr})
	if err != nil {
		return err
	}
	var cert *tls.Certificate
	if resp.Cert != "" {
		kder, _ := x509.MarshalPKCS8PrivateKey(k)
		c, err := tls.X509KeyPair([]byte(resp.Cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
		if err != nil {
			return err
		}
		cert = &c
	}
	mtls, err := acapi.NewClient(*url, acapi.TLSConfig(pool, cert), 10*time.Second)
	if err != nil {
		return err
	}
	unlock := rate(*clients, *dur, func() error {
		_, err := plain.Unlock(ctx, &acapi.UnlockRequest{MACs: []string{*mac}})
		return err
	})
	hb := rate(*clients, *dur, func() error {
		_, err := mtls.Heartbeat(ctx, &acapi.Heartbeat{BootID: "bench", Uptime: acapi.Duration(time.Hour), Units: map[string]string{"g8-sshd.service": "active"}})
		return err
	})
	fmt.Printf("unlock %.0f\nheartbeat %.0f\n", unlock, hb)
	return nil
}

// rate runs op from n goroutines for d and returns successful ops/s; any
// error aborts the run, so a failing server never looks fast.
func rate(n int, d time.Duration, op func() error) float64 {
	var ok atomic.Int64
	var failed atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && failed.Load() == nil {
				if err := op(); err != nil {
					failed.Store(err)
					return
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		fmt.Fprintln(os.Stderr, "acload:", err)
		os.Exit(1)
	}
	return float64(ok.Load()) / time.Since(start).Seconds()
}
