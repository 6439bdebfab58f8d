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
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// enrol takes the node approved with --mac through its first unlock, as
// g8-unlock does, and writes its certificate and key to DIR/node.{pem,key}.
func enrol(args []string) error {
	fs := flag.NewFlagSet("enrol", flag.ExitOnError)
	url := fs.String("url", "", "controller URL")
	caF := fs.String("ca", "", "trust anchor")
	mac := fs.String("mac", "", "MAC of an approved node")
	out := fs.String("out", "", "directory for node.pem and node.key")
	fs.Parse(args)
	pool, err := acapi.LoadPool(*caF)
	if err != nil {
		return err
	}
	_, idKey, _ := ed25519.GenerateKey(rand.Reader)
	ident, err := acapi.IdentityCertificate(idKey)
	if err != nil {
		return err
	}
	cl, err := acapi.NewClient(*url, acapi.TLSConfig(pool, ident), 10*time.Second)
	if err != nil {
		return err
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	resp, err := cl.Unlock(context.Background(), &acapi.UnlockRequest{MACs: []string{*mac},
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	if err != nil {
		return err
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	if err := os.WriteFile(filepath.Join(*out, "node.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*out, "node.pem"), []byte(resp.Cert), 0o600)
}

// hammer posts batches of events as one node from several connections as
// fast as the controller answers (issue 16.2) and prints how many it took
// and refused.
func hammer(args []string) error {
	fs := flag.NewFlagSet("hammer", flag.ExitOnError)
	node := nodeFlags(fs)
	conns := fs.Int("connections", 8, "concurrent posts")
	batch := fs.Int("batch", 1000, "events per post")
	dur := fs.Duration("duration", 10*time.Second, "how long")
	fs.Parse(args)
	pool, cert, err := node.load()
	if err != nil {
		return err
	}
	var seq, stored, refused atomic.Uint64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	data := []byte(`{"x":"` + strings.Repeat("x", 200) + `"}`)
	for range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One connection each, as many sessions with the same
			// certificate would.
			cl, err := acapi.NewClient(*node.url, acapi.TLSConfig(pool, cert), 30*time.Second)
			if err != nil {
				failed.Store(err)
				return
			}
			for time.Since(start) < *dur {
				from := seq.Add(uint64(*batch)) - uint64(*batch) + 1
				evs := make([]acapi.Event, *batch)
				for i := range evs {
					evs[i] = acapi.Event{Seq: from + uint64(i), Time: time.Now(), Kind: "flood", Data: data}
				}
				_, err := cl.PostEvents(context.Background(), evs)
				var se *acapi.StatusError
				switch {
				case err == nil:
					stored.Add(uint64(*batch))
				case errors.As(err, &se) && se.Code == http.StatusTooManyRequests:
					refused.Add(1)
				default:
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("events_accepted %d\nevents_per_s %.0f\nposts_refused %d\n", stored.Load(), float64(stored.Load())/secs, refused.Load())
	return nil
}

// node names the controller and a node's certificate, for the commands
// that speak as an enrolled node.
type node struct{ url, ca, cert, key *string }

func nodeFlags(fs *flag.FlagSet) *node {
	return &node{url: fs.String("url", "", "controller URL"), ca: fs.String("ca", "", "trust anchor"),
		cert: fs.String("cert", "", "the node's certificate"), key: fs.String("key", "", "the node's key")}
}

// load reads the trust anchor and the node's key pair.
func (n *node) load() (*x509.CertPool, *tls.Certificate, error) {
	pool, err := acapi.LoadPool(*n.ca)
	if err != nil {
		return nil, nil, err
	}
	cert, err := tls.LoadX509KeyPair(*n.cert, *n.key)
	return pool, &cert, err
}
