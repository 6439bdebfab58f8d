package unlock

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/acapi"
)

// testCA signs CSRs the way a controller would, for the pure enrollment
// logic (the netns tests use the real g8-ac).
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

func (ca *testCA) sign(t *testing.T, id *Identity, notBefore, notAfter time.Time) string {
	t.Helper()
	b, _ := pem.Decode([]byte(id.CSR))
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("CSR: %v", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "n-1"},
		NotBefore: notBefore, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func key32() []byte { return []byte(strings.Repeat("k", KeySize)) }

func TestValidate(t *testing.T) {
	ca := newTestCA(t)
	id, err := NewIdentity("node")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewIdentity("other")
	good := func() *acapi.UnlockResponse {
		return &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), CA: ca.pem,
			Cert: ca.sign(t, id, time.Now().Add(-time.Minute), time.Now().Add(time.Hour)), AuthorizedKeys: "# none yet\n"}
	}
	for _, tc := range []struct {
		name string
		mod  func(r *acapi.UnlockResponse)
		id   *Identity
		want string
	}{
		{"good with CSR", func(r *acapi.UnlockResponse) {}, id, ""},
		{"good without CSR", func(r *acapi.UnlockResponse) { r.Cert = "" }, nil, ""},
		{"short key", func(r *acapi.UnlockResponse) { r.Key = r.Key[:16] }, nil, "field key: 16 bytes"},
		{"no node id", func(r *acapi.UnlockResponse) { r.NodeID = "" }, nil, "field node_id"},
		{"node id with slash", func(r *acapi.UnlockResponse) { r.NodeID = "../x" }, nil, "field node_id"},
		{"CA garbage", func(r *acapi.UnlockResponse) { r.CA = "garbage" }, nil, "field ca: no PEM certificate"},
		{"cert missing after CSR", func(r *acapi.UnlockResponse) { r.Cert = "" }, id, "field cert: empty"},
		{"cert for another key", func(r *acapi.UnlockResponse) {
			r.Cert = ca.sign(t, other, time.Now(), time.Now().Add(time.Hour))
		}, id, "another key"},
		{"cert expired", func(r *acapi.UnlockResponse) {
			r.Cert = ca.sign(t, id, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
		}, id, "expired"},
		{"bad authorized key", func(r *acapi.UnlockResponse) { r.AuthorizedKeys = "ssh-ed25519 !!!" }, nil, "field authorized_keys: line 1"},
		// A bad managed file is Apply's to skip, not a reason to refuse
		// the whole answer (and with it the boot).
		{"absolute file", func(r *acapi.UnlockResponse) { r.Files = map[string]string{"/etc/shadow": ""} }, nil, ""},
		{"file over the TLS key", func(r *acapi.UnlockResponse) { r.Files = map[string]string{"ssl/node.key": ""} }, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.mod(r)
			err := Validate(r, tc.id)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestApplyFirstBootThenRefresh(t *testing.T) {
	ca := newTestCA(t)
	id, _ := NewIdentity("node")
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, pub := sshKey(t)
	resp := &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), CA: ca.pem,
		Cert: ca.sign(t, id, time.Now().Add(-time.Minute), time.Now().Add(90*24*time.Hour)), AuthorizedKeys: pub,
		Files: map[string]string{"g8os/fs.toml": "[sandbox]\n"}}
	if err := Validate(resp, id); err != nil {
		t.Fatal(err)
	}
	if e := InspectEnrollment(root, time.Now()); e.Need == "" || e.NodeID != "" {
		t.Fatalf("empty config: %+v", e)
	}
	a, err := Apply(root, resp, id)
	if err != nil {
		t.Fatal(err)
	}
	if !a.HostKeyCreated || a.CertExpiry.IsZero() || len(a.Wrote) != 8 {
		t.Fatalf("Apply = %+v", a)
	}
	modes := map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644, CAFile: 0o644, HostKeyFile: 0o600,
		HostKeyFile + ".pub": 0o644, AuthorizedKeys: 0o600, "g8os/fs.toml": 0o640, MarkerFile: 0o644}
	for rel, want := range modes {
		st, err := os.Stat(filepath.Join(dir, rel))
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %v", rel, err, st.Mode().Perm(), want)
		}
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Fatalf("node.pem/node.key: %v", err)
	}
	hostKey, _ := os.ReadFile(filepath.Join(dir, HostKeyFile))
	if _, err := ssh.ParsePrivateKey(hostKey); err != nil || !strings.Contains(string(hostKey), "OPENSSH PRIVATE KEY") {
		t.Fatalf("host key not in OpenSSH format: %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*", ".*.tmp"))
	if len(leftovers) != 0 {
		t.Fatalf("temp files left: %v", leftovers)
	}
	e := InspectEnrollment(root, time.Now())
	if e.NodeID != "n-1" || e.Need != "" || e.CertExpiry.IsZero() {
		t.Fatalf("after enrollment: %+v", e)
	}

	// A later boot without a CSR: identity and host key stay, the rest is
	// refreshed.
	_, pub2 := sshKey(t)
	later := &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), CA: ca.pem, AuthorizedKeys: pub2, Files: map[string]string{"g8os/fs.toml": "v2\n"}}
	a, err = Apply(root, later, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.HostKeyCreated || !a.CertExpiry.IsZero() || strings.Contains(strings.Join(a.Wrote, ","), "node.") {
		t.Fatalf("refresh rewrote the identity: %+v", a)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, HostKeyFile)); string(b) != string(hostKey) {
		t.Fatal("host key replaced")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, AuthorizedKeys)); string(b) != pub2 {
		t.Fatalf("authorized_keys = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "g8os/fs.toml")); string(b) != "v2\n" {
		t.Fatalf("fs.toml = %q", b)
	}
}

func TestApplyStaysInsideTheMount(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	// A symlink planted in the config must not lead a write outside it.
	if err := os.Symlink(outside, filepath.Join(dir, "g8os")); err != nil {
		t.Fatal(err)
	}
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	a, err := Apply(root, &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), Files: map[string]string{"g8os/fs.toml": "x"}}, nil)
	if err != nil || len(a.Skipped) != 1 || a.Skipped[0].Path != "g8os/fs.toml" {
		t.Fatalf("a symlink leading out of the mount: Apply = %+v, %v; want g8os/fs.toml skipped", a, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("wrote outside the mount: %v", entries)
	}
}

func TestInspectEnrollment(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	for _, tc := range []struct {
		name          string
		from, to      time.Duration
		mismatchedKey bool
		want          string
	}{
		{"fresh", -time.Hour, 89 * 24 * time.Hour, false, ""},
		{"last third", -60 * 24 * time.Hour, 29 * 24 * time.Hour, false, "certificate expires at"},
		{"expired", -90 * 24 * time.Hour, -time.Hour, false, "certificate expires at"},
		{"key mismatch", -time.Hour, 89 * 24 * time.Hour, true, "does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root, _ := os.OpenRoot(dir)
			defer root.Close()
			id, _ := NewIdentity("n")
			certID := id
			if tc.mismatchedKey {
				certID, _ = NewIdentity("other")
			}
			resp := &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), CA: ca.pem, Cert: ca.sign(t, certID, now.Add(tc.from), now.Add(tc.to))}
			if _, err := Apply(root, resp, id); err != nil {
				t.Fatal(err)
			}
			e := InspectEnrollment(root, now)
			if (tc.want == "") != (e.Need == "") || !strings.Contains(e.Need, tc.want) {
				t.Fatalf("Need = %q, want %q", e.Need, tc.want)
			}
		})
	}
}

func TestPasswordIsHexOfTheKey(t *testing.T) {
	key := []byte{0, 1, 0xfe, 0xff}
	if got := string(Password(key)); got != "0001feff" {
		t.Fatalf("Password = %q", got)
	}
}

func sshKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s, string(ssh.MarshalAuthorizedKey(s.PublicKey()))
}

func TestApplySkipsUpToDateFiles(t *testing.T) {
	dir := t.TempDir()
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	r := &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), AuthorizedKeys: "", Files: map[string]string{"a.conf": "1"}}
	if _, err := Apply(root, r, nil); err != nil {
		t.Fatal(err)
	}
	a, err := Apply(root, r, nil)
	if err != nil || len(a.Wrote) != 0 {
		t.Fatalf("second Apply wrote %v, %v", a.Wrote, err)
	}
	r.Files["a.conf"] = "2"
	if a, _ := Apply(root, r, nil); strings.Join(a.Wrote, ",") != "a.conf" {
		t.Fatalf("changed file: wrote %v", a.Wrote)
	}
}

// A managed file the node owns, outside the mount, or blocked by a
// directory is skipped and reported; the rest of the answer is written.
func TestApplySkipsBadManagedFiles(t *testing.T) {
	dir := t.TempDir()
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	if err := os.MkdirAll(filepath.Join(dir, "notes/old"), 0o700); err != nil {
		t.Fatal(err)
	}
	r := &acapi.UnlockResponse{NodeID: "n-1", Key: key32(), Files: map[string]string{
		"ok.conf": "1", "ssl/node.key": "evil", "ssh": "evil", "/etc/shadow": "evil", "../x": "evil", "notes": "blocked"}}
	a, err := Apply(root, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, f := range a.Skipped {
		skipped = append(skipped, f.Path)
	}
	if got := strings.Join(skipped, ","); got != "../x,/etc/shadow,notes,ssh,ssl/node.key" {
		t.Errorf("skipped %s", got)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ok.conf")); err != nil || string(b) != "1" {
		t.Errorf("ok.conf: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ssl/node.key")); !os.IsNotExist(err) {
		t.Errorf("ssl/node.key written from a managed file: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "ssh")); err != nil || !st.IsDir() {
		t.Errorf("ssh is no longer the node's directory: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, MarkerFile)); markerNode(b) != "n-1" {
		t.Errorf("marker not written: %q", b)
	}
}

// FuzzValidate: whatever JSON a controller answers, validation returns an
// error or accepts an answer Apply can write inside the mount; it never
// panics.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"node_id":"n-1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`,
		`{"node_id":"n-1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","files":{"g8os/fs.toml":"x","../y":"z"}}`,
		`{"node_id":"n-1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","ca":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}`,
		`{"node_id":"n-1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","authorized_keys":"ssh-ed25519 AAAA x\n# c\n"}`,
		`{"node_id":"","key":""}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	id, err := NewIdentity("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r acapi.UnlockResponse
		if json.Unmarshal(data, &r) != nil {
			return
		}
		_ = Validate(&r, id)
		if Validate(&r, nil) != nil {
			return
		}
		for p := range r.Files {
			if acapi.CheckConfigPath(p) == nil && !filepath.IsLocal(p) {
				t.Fatalf("accepted file path %q", p)
			}
		}
	})
}
