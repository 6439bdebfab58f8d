package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHHostCAKey is the controller's SSH host CA (OpenSSH private key format,
// ed25519) in its data directory. It signs each node's SSH host key, so an
// operator trusts the whole fleet with one known_hosts line.
const SSHHostCAKey = "ssh-host-ca"

// HostCertValidity is how long a node's host certificate is valid. The node
// asks for a new one well before (at every session start once a third of it
// is left), so a node cut off from the controller keeps a valid certificate
// for weeks.
const HostCertValidity = 90 * 24 * time.Hour

// MaxSSHPublicKey bounds a host key sent for signing (an RSA-8192 key in
// authorized_keys form is about 1.4 kB).
const MaxSSHPublicKey = 4 << 10

// SSHHostCA signs node SSH host keys.
type SSHHostCA struct {
	Signer ssh.Signer
}

// LoadOrCreateSSHHostCA reads the SSH host CA from dir, making it the first
// time (controllers initialised before host certificates existed get one
// at their next start). created says whether it was made now.
func LoadOrCreateSSHHostCA(dir string) (ca *SSHHostCA, created bool, err error) {
	p := filepath.Join(dir, SSHHostCAKey)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, false, fmt.Errorf("pki: SSH host CA: %w", gerr)
		}
		block, merr := ssh.MarshalPrivateKey(priv, "g8os SSH host CA")
		if merr != nil {
			return nil, false, fmt.Errorf("pki: SSH host CA: %w", merr)
		}
		b = pem.EncodeToMemory(block)
		clear(block.Bytes)
		if err := writeFile(p, b, 0o600); err != nil {
			return nil, false, err
		}
		created = true
	} else if err != nil {
		return nil, false, fmt.Errorf("pki: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	clear(b)
	if err != nil {
		return nil, false, fmt.Errorf("pki: %s: %w", p, err)
	}
	return &SSHHostCA{Signer: signer}, created, nil
}

// PublicKey is the CA in authorized_keys form, without a newline.
func (ca *SSHHostCA) PublicKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca.Signer.PublicKey())))
}

// KnownHostsLine is what an operator puts in ~/.ssh/known_hosts to trust
// every node this controller enrolled, for host names matching pattern.
func (ca *SSHHostCA) KnownHostsLine(pattern string) string {
	return "@cert-authority " + pattern + " " + ca.PublicKey() + " g8os host CA"
}

// ParseHostPublicKey reads a node's SSH host key as sent for signing: one
// authorized_keys-form key, ed25519, ECDSA or RSA of at least 2048 bits,
// not a certificate. Errors name what is wrong.
func ParseHostPublicKey(text string) (ssh.PublicKey, error) {
	if len(text) > MaxSSHPublicKey {
		return nil, fmt.Errorf("public_key: %d bytes, at most %d", len(text), MaxSSHPublicKey)
	}
	pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("public_key: %w", err)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("public_key: more than one key")
	}
	switch pub.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
	case ssh.KeyAlgoRSA:
		if ck, ok := pub.(ssh.CryptoPublicKey); ok {
			if rk, ok := ck.CryptoPublicKey().(interface{ Size() int }); ok && rk.Size()*8 < 2048 {
				return nil, fmt.Errorf("public_key: RSA key of %d bits, at least 2048", rk.Size()*8)
			}
		}
	default:
		return nil, fmt.Errorf("public_key: type %s is not a host key type (ed25519, ecdsa, rsa)", pub.Type())
	}
	return pub, nil
}

// SignHostKey issues a host certificate for pub, valid for the given
// principals (host names and addresses the node is reached by) from now
// for HostCertValidity. The key id names the node, so sshd and ssh logs
// say whose certificate it is.
func (ca *SSHHostCA) SignHostKey(pub ssh.PublicKey, nodeID string, principals []string, now time.Time) (*ssh.Certificate, error) {
	if len(principals) == 0 {
		return nil, errors.New("pki: host certificate without principals")
	}
	var sb [8]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return nil, err
	}
	c := &ssh.Certificate{
		Key:             pub,
		Serial:          binary.BigEndian.Uint64(sb[:]),
		CertType:        ssh.HostCert,
		KeyId:           "g8os node " + nodeID,
		ValidPrincipals: principals,
		// A few minutes back for clocks that are a little behind.
		ValidAfter:  uint64(now.Add(-5 * time.Minute).Unix()),
		ValidBefore: uint64(now.Add(HostCertValidity).Unix()),
	}
	if err := c.SignCert(rand.Reader, ca.Signer); err != nil {
		return nil, fmt.Errorf("pki: signing the host key of %s: %w", nodeID, err)
	}
	return c, nil
}
