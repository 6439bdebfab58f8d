package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Enrolled is a node identity issued by a real controller, laid out as the
// node keeps it: ConfigRoot/ssl/{ca.pem,node.pem,node.key}.
type Enrolled struct {
	NodeID     string
	MAC        string
	ConfigRoot string // pass as g8-acsession --config-root
}

// EnrollNode approves a node with mac on ac and enrolls it as g8-unlock
// does on first boot: a fresh key, a CSR in POST /v1/unlock, the signed
// certificate and the CA bundle from the answer written under a new config
// root. With via == nil the request goes from this process (controller on
// loopback); otherwise curl sends it from inside that host's namespace.
func EnrollNode(t testing.TB, ac *Controller, via *Host, mac string) *Enrolled {
	t.Helper()
	id := ac.ApproveMAC(t, mac)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: mac}}, key)
	if err != nil {
		t.Fatal(err)
	}
	req := &acapi.UnlockRequest{MACs: []string{mac}, Hostname: "node-" + id,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
	var resp *acapi.UnlockResponse
	if via == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if resp, err = ac.Client(t, nil).Unlock(ctx, req); err != nil {
			t.Fatalf("enroll %s: %v", mac, err)
		}
	} else {
		resp = curlUnlock(t, ac, via, req)
	}
	if resp.NodeID != id || resp.Cert == "" || resp.CA == "" {
		t.Fatalf("enroll %s: answer for node %q without cert or CA", mac, resp.NodeID)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ssl := filepath.Join(root, "ssl")
	if err := os.MkdirAll(ssl, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"ca.pem":   []byte(resp.CA),
		"node.pem": []byte(resp.Cert),
		"node.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(ssl, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &Enrolled{NodeID: id, MAC: mac, ConfigRoot: root}
}

// curlUnlock posts req from inside via's namespace, verifying the
// controller with its trust anchor.
func curlUnlock(t testing.TB, ac *Controller, via *Host, req *acapi.UnlockRequest) *acapi.UnlockResponse {
	t.Helper()
	body, _ := json.Marshal(req)
	f := filepath.Join(t.TempDir(), "unlock.json")
	if err := os.WriteFile(f, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := via.Run("curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "20",
		"--cacert", ac.TrustAnchor, "-H", "Content-Type: application/json", "--data-binary", "@"+f, ac.URL+acapi.PathUnlock)
	if err != nil {
		t.Fatalf("enroll via %s: %v", via.Name, err)
	}
	var resp acapi.UnlockResponse
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("enroll via %s: answer %q: %v", via.Name, out, err)
	}
	return &resp
}

// StartLocal runs a command on this machine (no namespace) in the
// background, stopped when the test ends, like Host.Start.
func StartLocal(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	return startLocal(t, exec.Command(name, args...), filepath.Base(name))
}

// StartLocalCmd is StartLocal for a prepared command (env, files); its
// Stdout and Stderr are set by the fixture.
func StartLocalCmd(t testing.TB, cmd *exec.Cmd, label string) *Process {
	t.Helper()
	return startLocal(t, cmd, label)
}
