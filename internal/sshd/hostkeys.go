package sshd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// HostKeyFile is the host key every enrolled node has.
const HostKeyFile = "ssh_host_ed25519_key"

// ErrNoHostKey means the ssh dir holds no usable host key. The server never
// makes one up: enrollment creates the node's own, and a key generated here
// would change on every boot and train operators to ignore the warning.
var ErrNoHostKey = errors.New("no usable host key")

// HostKey is one loaded host key.
type HostKey struct {
	File        string
	Signer      gossh.Signer
	Fingerprint string             // of the key (also for a certificate)
	Cert        *gossh.Certificate // set when Signer presents a host certificate
}

// HostCertSuffix names a host key's certificate, as OpenSSH's
// HostCertificate files are named: ssh_host_ed25519_key-cert.pub.
const HostCertSuffix = "-cert.pub"

// LoadHostKeys loads ssh_host_ed25519_key and every other ssh_host_*_key in
// dir. A key that cannot be used is reported in skipped and passed over as
// long as another one loads: losing SSH on a node because of a stray file
// is worse than serving with the remaining keys.
func LoadHostKeys(dir string) (keys []HostKey, skipped []error, err error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh dir: %w", err)
	}
	if !st.IsDir() {
		return nil, nil, fmt.Errorf("ssh dir %s: not a directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "ssh_host_") && strings.HasSuffix(n, "_key") && !e.IsDir() {
			names = append(names, n)
		}
	}
	// ed25519 first: it is the key clients are told to expect.
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == HostKeyFile) != (names[j] == HostKeyFile) {
			return names[i] == HostKeyFile
		}
		return names[i] < names[j]
	})
	seen := map[string]bool{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		hk, err := loadHostKey(p)
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		// x/crypto keeps one key per algorithm; a second is a mistake.
		if t := hk.Signer.PublicKey().Type(); seen[t] {
			skipped = append(skipped, fmt.Errorf("host key %s: a %s host key is already loaded", p, t))
			continue
		} else {
			seen[t] = true
		}
		keys = append(keys, hk)
		// The certificate is offered beside the plain key (its algorithm
		// name differs), so clients that trust the fleet's CA accept the
		// node without a known_hosts line of its own, and others still see
		// the key they know.
		if c, err := loadHostCert(p+HostCertSuffix, hk.Signer); err == nil {
			keys = append(keys, c)
		} else if !errors.Is(err, os.ErrNotExist) {
			skipped = append(skipped, err)
		}
	}
	if len(keys) == 0 {
		why := fmt.Sprintf("no ssh_host_*_key file (expected %s from enrollment)", filepath.Join(dir, HostKeyFile))
		if len(skipped) > 0 {
			why = errors.Join(skipped...).Error()
		}
		return nil, skipped, fmt.Errorf("%w in %s: %s", ErrNoHostKey, dir, why)
	}
	return keys, skipped, nil
}

func loadHostKey(p string) (HostKey, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return HostKey{}, fmt.Errorf("host key: %w", err)
	}
	signer, err := gossh.ParsePrivateKey(data)
	clear(data)
	if err != nil {
		var pp *gossh.PassphraseMissingError
		if errors.As(err, &pp) {
			return HostKey{}, fmt.Errorf("host key %s: protected by a passphrase, which a daemon cannot type", p)
		}
		return HostKey{}, fmt.Errorf("host key %s: %w", p, err)
	}
	return HostKey{File: p, Signer: signer, Fingerprint: gossh.FingerprintSHA256(signer.PublicKey())}, nil
}

// loadHostCert reads the certificate of host key signer from p. It must be
// a host certificate of that very key; an expired one is still offered
// (clients refuse it and say why) but reported.
func loadHostCert(p string, signer gossh.Signer) (HostKey, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return HostKey{}, err
		}
		return HostKey{}, fmt.Errorf("host certificate: %w", err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey(data)
	if err != nil {
		return HostKey{}, fmt.Errorf("host certificate %s: %w", p, err)
	}
	cert, ok := pub.(*gossh.Certificate)
	if !ok {
		return HostKey{}, fmt.Errorf("host certificate %s: a plain %s key, not a certificate", p, pub.Type())
	}
	if cert.CertType != gossh.HostCert {
		return HostKey{}, fmt.Errorf("host certificate %s: a user certificate, not a host certificate", p)
	}
	cs, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		return HostKey{}, fmt.Errorf("host certificate %s: %w", p, err)
	}
	return HostKey{File: p, Signer: cs, Fingerprint: gossh.FingerprintSHA256(signer.PublicKey()), Cert: cert}, nil
}
