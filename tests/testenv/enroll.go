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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// Enrolled is a node identity issued by a real controller, laid out as the
// node keeps it: ConfigRoot/ssl/{ca.pem,node.pem,node.key}.
type Enrolled struct {
	NodeID     string
	MAC        string
	ConfigRoot string        // pass as g8-acsession --config-root
	Identity   *NodeIdentity // the identity key it enrolled with
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
	ident := NewNodeIdentity(t)
	var resp *acapi.UnlockResponse
	if via == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if resp, err = ac.Client(t, ident.Cert).Unlock(ctx, req); err != nil {
			t.Fatalf("enroll %s: %v", mac, err)
		}
	} else {
		var code int
		var body string
		if resp, code, body = CurlUnlock(t, ac, via, ident, req); code != 200 {
			t.Fatalf("enroll %s via %s: status %d: %s", mac, via.Name, code, body)
		}
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
	return &Enrolled{NodeID: id, MAC: mac, ConfigRoot: root, Identity: ident}
}

// CurlUnlock posts req from inside via's namespace as curl, verifying the
// controller with its trust anchor and presenting id (nil: no client
// certificate, as an attacker who knows only a MAC). It returns the
// decoded answer (empty unless 200), the HTTP status and the raw body.
func CurlUnlock(t testing.TB, ac *Controller, via *Host, id *NodeIdentity, req *acapi.UnlockRequest) (*acapi.UnlockResponse, int, string) {
	t.Helper()
	body, _ := json.Marshal(req)
	f := filepath.Join(t.TempDir(), "unlock.json")
	if err := os.WriteFile(f, body, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--silent", "--show-error", "--max-time", "20", "--cacert", ac.TrustAnchor, "-w", "\n%{http_code}",
		"-H", "Content-Type: application/json", "--data-binary", "@" + f}
	if id != nil {
		args = append(args, id.CurlArgs()...)
	}
	out, err := via.Run("curl", append(args, ac.URL+acapi.PathUnlock)...)
	if err != nil {
		t.Fatalf("unlock via %s: %v: %s", via.Name, err, out)
	}
	i := strings.LastIndexByte(out, '\n')
	code, err := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	if i < 0 || err != nil {
		t.Fatalf("unlock via %s: no status in %q", via.Name, out)
	}
	var resp acapi.UnlockResponse
	if code == 200 {
		if err := json.Unmarshal([]byte(out[:i]), &resp); err != nil {
			t.Fatalf("unlock via %s: answer %q: %v", via.Name, out, err)
		}
	}
	return &resp, code, out[:i]
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
