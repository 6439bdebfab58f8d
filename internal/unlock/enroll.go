package unlock

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/recovery"
)

// Files g8-unlock keeps inside the unlocked config, relative to the mount
// (the list both sides check managed paths against is acapi's).
const (
	MarkerFile     = acapi.ConfigMarker
	CAFile         = acapi.ConfigCA
	CertFile       = acapi.ConfigCert
	KeyFile        = acapi.ConfigKey
	HostKeyFile    = acapi.ConfigHostKey
	AuthorizedKeys = acapi.ConfigAuthorizedKeys
)

// Identity is a fresh TLS key of the node and the CSR the controller signs.
type Identity struct {
	Key crypto.Signer
	CSR string // PEM
}

// NewIdentity makes an ECDSA P-256 key (what every TLS stack and the
// controller's CA accept) and a CSR for it. The controller sets the
// certificate's subject to the node id; the CN here only helps a human
// reading a pending CSR.
func NewIdentity(hostname string) (*Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("enroll: node key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: hostname}}, key)
	if err != nil {
		return nil, fmt.Errorf("enroll: CSR: %w", err)
	}
	return &Identity{Key: key, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}, nil
}

// Validate checks an unlock answer completely before anything is mounted
// or written, so a garbled answer changes nothing on the node. id is the
// identity whose CSR was sent, or nil.
func Validate(r *acapi.UnlockResponse, id *Identity) error {
	if len(r.Key) != 0 && len(r.Key) != KeySize {
		return fmt.Errorf("field key: %d bytes, want %d", len(r.Key), KeySize)
	}
	if k := r.RecoveryKey; k != nil {
		if err := recovery.CheckPublicKey(*k); err != nil {
			return fmt.Errorf("field recovery_key: %w", err)
		}
	} else if len(r.Key) == 0 {
		return errors.New("field recovery_key: missing, and no key either")
	}
	if r.NodeID == "" || len(r.NodeID) > 128 || strings.ContainsAny(r.NodeID, "/\n\r\x00 ") {
		return fmt.Errorf("field node_id: %.40q is not a node id", r.NodeID)
	}
	if r.CA != "" {
		if _, err := parseCerts(r.CA); err != nil {
			return fmt.Errorf("field ca: %w", err)
		}
	}
	if id != nil {
		if r.CA == "" {
			return errors.New("field ca: empty, but a CSR was sent")
		}
		if r.Cert == "" {
			return errors.New("field cert: empty, but a CSR was sent")
		}
		certs, err := parseCerts(r.Cert)
		if err != nil {
			return fmt.Errorf("field cert: %w", err)
		}
		if !samePublicKey(certs[0].PublicKey, id.Key.Public()) {
			return errors.New("field cert: certifies another key than the CSR's")
		}
		if time.Now().After(certs[0].NotAfter) {
			return fmt.Errorf("field cert: expired at %v", certs[0].NotAfter)
		}
	}
	if _, err := parseAuthorizedKeys(r.AuthorizedKeys); err != nil {
		return fmt.Errorf("field authorized_keys: %w", err)
	}
	// Managed files (r.Files) are checked one by one in Apply: a bad one
	// is skipped, never a reason to refuse the unlock.
	return nil
}

func parseCerts(pemText string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(pemText)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q, want CERTIFICATE", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func parseAuthorizedKeys(text string) (int, error) {
	n := 0
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil {
			return 0, fmt.Errorf("line %d: %w", i+1, err)
		}
		n++
	}
	return n, nil
}

// NeedsRenewal reports whether a certificate is in the last third of its
// lifetime (or past it): early enough that a node which boots rarely, or a
// controller that is down for a while, still renews in time.
func NeedsRenewal(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return now.After(c.NotAfter.Add(-life / 3))
}

// Enrollment is what the unlocked config holds of the node's identity.
type Enrollment struct {
	NodeID     string    // from the marker; "" before the first complete enrollment
	CertExpiry time.Time // zero without a usable certificate
	// Need says why a new certificate is needed ("" when not).
	Need string
}

// Inspect reads the marker and the TLS identity in the unlocked config.
func InspectEnrollment(root *os.Root, now time.Time) Enrollment {
	var e Enrollment
	if b, err := root.ReadFile(MarkerFile); err == nil {
		e.NodeID = markerNode(b)
	}
	certPEM, cerr := root.ReadFile(CertFile)
	keyPEM, kerr := root.ReadFile(KeyFile)
	switch {
	case e.NodeID == "":
		e.Need = "first enrollment not completed"
	case cerr != nil || kerr != nil:
		e.Need = "no certificate or key in " + path.Dir(CertFile)
	default:
		certs, err := parseCerts(string(certPEM))
		if err != nil {
			e.Need = CertFile + ": " + err.Error()
			break
		}
		key, err := parsePrivateKey(keyPEM)
		if err != nil {
			e.Need = KeyFile + ": " + err.Error()
			break
		}
		if !samePublicKey(certs[0].PublicKey, key.Public()) {
			e.Need = CertFile + " does not match " + KeyFile
			break
		}
		e.CertExpiry = certs[0].NotAfter
		if NeedsRenewal(certs[0], now) {
			e.Need = fmt.Sprintf("certificate expires at %s", certs[0].NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return e
}

func parsePrivateKey(pemText []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(pemText)
	if b == nil {
		return nil, errors.New("no PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

func markerNode(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "node_id="); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func markerText(nodeID string) []byte {
	return []byte("# written by g8-unlock when the node enrolled; do not remove\nnode_id=" + nodeID + "\n")
}

// Applied says what Apply wrote (files already up to date are not
// rewritten).
type Applied struct {
	Wrote          []string // relative paths, sorted
	Skipped        []SkippedFile
	CertExpiry     time.Time
	HostKeyCreated bool
}

// SkippedFile is a controller-managed file Apply did not write.
type SkippedFile struct {
	Path string
	Err  error
}

// Apply writes a validated answer into the unlocked config: the TLS
// identity when id is the one the certificate was issued for, the CA
// bundle, the SSH host key when there is none, authorized_keys, the
// controller-managed files, and last the marker. Every file is replaced
// atomically; root confines every path to the mount. A managed file whose
// path breaks acapi.CheckConfigPath, or that cannot be written (a
// directory in its place), is skipped and listed in Skipped: one bad file
// from the controller must not stop the node from booting.
func Apply(root *os.Root, r *acapi.UnlockResponse, id *Identity) (*Applied, error) {
	a := &Applied{}
	write := func(rel string, data []byte, mode fs.FileMode) error {
		if unchanged(root, rel, data, mode) {
			return nil // most boots: no write, no fsync through FUSE
		}
		if err := writeAtomic(root, rel, data, mode); err != nil {
			return err
		}
		a.Wrote = append(a.Wrote, rel)
		return nil
	}
	if id != nil && r.Cert != "" {
		der, err := x509.MarshalPKCS8PrivateKey(id.Key)
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		clear(der)
		err = write(KeyFile, keyPEM, 0o600)
		clear(keyPEM)
		if err != nil {
			return nil, err
		}
		if err := write(CertFile, []byte(r.Cert), 0o644); err != nil {
			return nil, err
		}
		certs, _ := parseCerts(r.Cert)
		a.CertExpiry = certs[0].NotAfter
	}
	if r.CA != "" {
		if err := write(CAFile, []byte(r.CA), 0o644); err != nil {
			return nil, err
		}
	}
	created, err := ensureHostKey(root)
	if err != nil {
		return nil, err
	}
	if created {
		a.HostKeyCreated = true
		a.Wrote = append(a.Wrote, HostKeyFile, HostKeyFile+".pub")
	}
	if err := write(AuthorizedKeys, []byte(r.AuthorizedKeys), 0o600); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(r.Files))
	for p := range r.Files {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		err := acapi.CheckConfigPath(p)
		if err == nil {
			err = write(p, []byte(r.Files[p]), 0o640)
		}
		if err != nil {
			a.Skipped = append(a.Skipped, SkippedFile{Path: p, Err: err})
		}
	}
	if err := write(MarkerFile, markerText(r.NodeID), 0o644); err != nil {
		return nil, err
	}
	sort.Strings(a.Wrote)
	return a, nil
}

// ensureHostKey creates the node's own SSH host key, in OpenSSH format,
// unless a usable one is there: the host key is the node's, made once,
// never sent anywhere.
func ensureHostKey(root *os.Root) (bool, error) {
	if b, err := root.ReadFile(HostKeyFile); err == nil {
		if _, err := ssh.ParseRawPrivateKey(b); err == nil {
			return false, nil
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return false, fmt.Errorf("enroll: SSH host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "g8os node host key")
	clear(priv)
	if err != nil {
		return false, fmt.Errorf("enroll: SSH host key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(block)
	clear(block.Bytes)
	err = writeAtomic(root, HostKeyFile, keyPEM, 0o600)
	clear(keyPEM)
	if err != nil {
		return false, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return false, err
	}
	return true, writeAtomic(root, HostKeyFile+".pub", ssh.MarshalAuthorizedKey(sshPub), 0o644)
}

// unchanged reports whether rel already holds data with mode.
func unchanged(root *os.Root, rel string, data []byte, mode fs.FileMode) bool {
	st, err := root.Lstat(rel)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != mode || st.Size() != int64(len(data)) {
		return false
	}
	old, err := root.ReadFile(rel)
	eq := err == nil && bytes.Equal(old, data)
	clear(old)
	return eq
}

// writeAtomic replaces rel under root: a reader sees the old file or the
// new one, and a crash leaves one of the two.
func writeAtomic(root *os.Root, rel string, data []byte, mode fs.FileMode) error {
	dir := path.Dir(rel)
	if dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("enroll: %s: %w", rel, err)
		}
	}
	tmp := path.Join(dir, "."+path.Base(rel)+".g8-unlock.tmp")
	_ = root.Remove(tmp)
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("enroll: %s: %w", rel, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode) // not subject to the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, rel)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("enroll: write %s: %w", rel, err)
	}
	return nil
}

// wipeKey clears the key bytes of an answer once they were used.
func wipeKey(r *acapi.UnlockResponse) {
	if r != nil {
		clear(r.Key)
	}
}
