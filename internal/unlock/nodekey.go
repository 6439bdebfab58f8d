package unlock

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
)

// Node identity key defaults: outside the encrypted config, because it is
// what the node proves before the config can be unlocked.
const (
	DefaultIdentityDir = "/etc/g8os/identity"
	IdentityKeyFile    = "node.key"
)

// NodeKey is the node's identity key: made once at first boot, proven on
// every unlock request (a self-signed TLS client certificate of it), and
// shown by its fingerprint for the operator who approves the node.
type NodeKey struct {
	Path        string
	Fingerprint string           // SHA256:..., as `g8-ac node list` and `ssh-keygen -lf` show it
	Cert        *tls.Certificate // the self-signed client certificate for /v1/unlock
	Created     bool             // made by this start
}

// LoadOrCreateNodeKey reads dir/node.key (an OpenSSH Ed25519 private key)
// or, when there is none, makes one: dir 0700, key 0600, written
// atomically. A key that others may read, or that does not parse, is an
// error naming the file (never silently replaced: a new key makes the node
// a stranger to its controller).
func LoadOrCreateNodeKey(dir string) (*NodeKey, error) {
	path := filepath.Join(dir, IdentityKeyFile)
	data, err := os.ReadFile(path)
	created := false
	switch {
	case errors.Is(err, os.ErrNotExist):
		if data, err = newNodeKeyFile(dir, path); err != nil {
			return nil, err
		}
		created = true
	case err != nil:
		return nil, fmt.Errorf("identity key: %w", err)
	default:
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("identity key: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("identity key %s: mode %o lets others read it; chmod 600 it (and check who copied it)", path, fi.Mode().Perm())
		}
	}
	key, err := parseNodeKey(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("identity key %s: %w", path, err)
	}
	cert, err := acapi.IdentityCertificate(key)
	if err != nil {
		return nil, fmt.Errorf("identity key %s: %w", path, err)
	}
	fp, err := acapi.IdentityFingerprint(cert.Leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, fmt.Errorf("identity key %s: %w", path, err)
	}
	return &NodeKey{Path: path, Fingerprint: fp, Cert: cert, Created: created}, nil
}

func newNodeKeyFile(dir, path string) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "g8os node identity")
	clear(priv)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	data := pem.EncodeToMemory(block)
	clear(block.Bytes)
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		clear(data)
		return nil, fmt.Errorf("identity key: %w", err)
	}
	return data, nil
}

// parseNodeKey takes an OpenSSH private key (what the node writes, and what
// ssh-keygen -t ed25519 makes) or a PKCS#8 Ed25519 or P-256 key.
func parseNodeKey(data []byte) (crypto.Signer, error) {
	raw, err := ssh.ParseRawPrivateKey(data)
	if err != nil {
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, err
		}
		if raw, err = x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
			return nil, err
		}
	}
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case crypto.Signer:
		return k, nil
	}
	return nil, fmt.Errorf("%T is not a signing key", raw)
}
