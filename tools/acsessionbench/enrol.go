package main

// The simulated fleet's identities come from the real enrolment: each node
// is registered approved (as `g8-ac node add --approve` does), then asks
// POST /v1/unlock of a running g8-ac with its own key's CSR and keeps the
// certificate it is given. Enrolling 100,000 nodes takes minutes, so the
// controller's data directory and the identities are cached and grown
// on demand; every run works on a copy.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/acapi"
)

// cacheFormat names the enrolment protocol the cache was made with (2:
// identity keys proven on unlock, certificate serials recorded).
const cacheFormat = "2"

// identity is one enrolled node as the cache keeps it.
type identity struct {
	ID   string `json:"id"`
	MAC  string `json:"mac"`
	Cert []byte `json:"cert"` // DER
	Key  []byte `json:"key"`  // PKCS#8 DER
}

func fleetMAC(i int) string {
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
}

// loadIdentities reads the cache's identities; a certificate that expires
// within a day invalidates the cache (the caller enrols afresh).
func loadIdentities(path string) ([]identity, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []identity
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var id identity
		if err := json.Unmarshal(sc.Bytes(), &id); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(ids) == 0 {
			c, err := x509.ParseCertificate(id.Cert)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if time.Until(c.NotAfter) < 24*time.Hour {
				return nil, fmt.Errorf("%s: certificates expire %s", path, c.NotAfter)
			}
		}
		ids = append(ids, id)
	}
	return ids, sc.Err()
}

// enrolFleet makes sure cache holds at least n enrolled identities and
// returns them. The enrolment runs on a copy in stage (tmpfs: registering
// 100,000 nodes with an fsync each would take long on a disk), which then
// replaces the cached data directory.
func enrolFleet(acBin, cache, stage string, n int, logf func(string, ...any)) ([]identity, error) {
	idPath := filepath.Join(cache, "identities.jsonl")
	ids, err := loadIdentities(idPath)
	if v, _ := os.ReadFile(filepath.Join(cache, "format")); err == nil && len(ids) > 0 && string(v) != cacheFormat {
		err = fmt.Errorf("enrolled by another protocol (format %q, want %q)", v, cacheFormat)
	}
	if err != nil {
		logf("cache unusable (%v): enrolling afresh", err)
		ids = nil
		if err := os.RemoveAll(cache); err != nil {
			return nil, err
		}
	}
	if len(ids) >= n {
		return ids[:n], nil
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cache, "format"), []byte(cacheFormat), 0o600); err != nil {
		return nil, err
	}
	data := filepath.Join(stage, "ac")
	if len(ids) == 0 {
		os.RemoveAll(filepath.Join(cache, "ac"))
		if out, err := exec.Command(acBin, "init", "--data", data, "--name", "127.0.0.1").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("g8-ac init: %v: %s", err, out)
		}
	} else if err := copyDir(filepath.Join(cache, "ac"), data); err != nil {
		return nil, err
	}
	logf("enrolling nodes %d..%d through the real controller (cached in %s)", len(ids), n-1, cache)
	st, err := ac.OpenStore(data, "")
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	for i := len(ids); i < n; i++ {
		if _, err := st.AddNode(ctx, []string{fleetMAC(i)}, true, time.Now()); err != nil {
			st.Close()
			return nil, err
		}
	}
	st.Close()
	cmd := exec.Command(acBin, "serve", "--data", data, "--listen", "127.0.0.1:0", "--unlock-rate", "1000000", "--unlock-burst", "1000000")
	url, _, err := startServer(cmd, filepath.Join(stage, "enrol.log"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	anchor, err := ac.TrustAnchor(data)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(anchor)
	fresh := make([]identity, n-len(ids))
	if err := parallel(len(fresh), func(k int) error {
		i := len(ids) + k
		// As g8-unlock: the node's identity key proves itself as the TLS
		// client certificate; the CSR is for the session's key.
		idCert, err := newIdentityCert()
		if err != nil {
			return err
		}
		client, err := acapi.NewClient(url, acapi.TLSConfig(roots, idCert), 30*time.Second)
		if err != nil {
			return err
		}
		defer client.HTTP.CloseIdleConnections()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: fleetMAC(i)}}, key)
		if err != nil {
			return err
		}
		req := &acapi.UnlockRequest{MACs: []string{fleetMAC(i)}, Hostname: fmt.Sprintf("sim-%d", i),
			CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
		resp, err := client.Unlock(ctx, req)
		// The store answers a burst of enrolments with the odd busy
		// error (500): a node would ask again, so does this one.
		for try := 0; try < 5 && err != nil && acapi.IsStatus(err, http.StatusInternalServerError); try++ {
			time.Sleep(time.Duration(200*(try+1)) * time.Millisecond)
			resp, err = client.Unlock(ctx, req)
		}
		if err != nil {
			return fmt.Errorf("enrolling node %d: %w", i, err)
		}
		blk, _ := pem.Decode([]byte(resp.Cert))
		if blk == nil {
			return fmt.Errorf("enrolling node %d: no certificate in the answer", i)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		fresh[k] = identity{ID: resp.NodeID, MAC: fleetMAC(i), Cert: blk.Bytes, Key: der}
		return err
	}); err != nil {
		return nil, err
	}
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	// The data directory first: identities without their controller
	// would be a cache that lies.
	tmp := filepath.Join(cache, "ac.new")
	os.RemoveAll(tmp)
	if err := copyDir(data, tmp); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(cache, "ac"))
	if err := os.Rename(tmp, filepath.Join(cache, "ac")); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(idPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	for _, id := range fresh {
		b, _ := json.Marshal(id)
		w.Write(append(b, '\n'))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	logf("enrolled %d nodes", len(fresh))
	return append(ids, fresh...), nil
}

// fleetIdentities enrols (or takes from cache) n nodes, staged in memory.
func fleetIdentities(acBin, cache string, n int, logf func(string, ...any)) []identity {
	stage, err := os.MkdirTemp("/dev/shm", "acfleet-enrol-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(stage)
	ids, err := enrolFleet(acBin, cache, stage, n, logf)
	if err != nil {
		fatalf("enrolment: %v", err)
	}
	return ids
}

// newIdentityCert is a new machine's identity key as g8-unlock presents
// it: the TLS client certificate of its unlock requests.
func newIdentityCert() (*tls.Certificate, error) {
	_, idKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return acapi.IdentityCertificate(idKey)
}

// copyDir copies a controller data directory (flat files and the chunk
// store directory) with its modes.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		t := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(t, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(t, b, fi.Mode().Perm())
	})
}

// tlsFor is a simulated node's client configuration: its certificate, the
// controller's trust anchor, HTTP/2, and its own session cache as
// acapi.TLSConfig gives a real session.
func tlsFor(id identity, roots *x509.CertPool) (*tls.Config, error) {
	key, err := x509.ParsePKCS8PrivateKey(id.Key)
	if err != nil {
		return nil, err
	}
	c := acapi.TLSConfig(roots, &tls.Certificate{Certificate: [][]byte{id.Cert}, PrivateKey: key})
	c.ServerName = "127.0.0.1"
	c.NextProtos = []string{"h2", "http/1.1"}
	return c, nil
}

// serverFiles lays out what the baseline server needs to stand in for
// this controller: its server certificate and, as the client CA, the node
// CA that signed the fleet's certificates.
func serverFiles(data, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for src, dst := range map[string]string{pki.NodeCACert: "ca.pem", pki.ServerCert: "server.pem", pki.ServerKey: "server.key"} {
		b, err := os.ReadFile(filepath.Join(data, src))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
