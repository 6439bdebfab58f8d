package acsession

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/state"
)

// Identity is the node's mTLS identity from the unlocked config: its
// client certificate and the CA the controller is verified against.
type Identity struct {
	Cert      tls.Certificate
	Roots     *x509.CertPool
	NodeID    string
	Subject   string // the certificate's CN
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	CAFile    string
}

// Paths of the identity under the config root (/mnt/etc).
func identityPaths(configRoot string) (ca, cert, key string) {
	ssl := filepath.Join(configRoot, "ssl")
	return filepath.Join(ssl, "ca.pem"), filepath.Join(ssl, "node.pem"), filepath.Join(ssl, "node.key")
}

// LoadIdentity reads ssl/{ca.pem,node.pem,node.key} under configRoot. The
// node id is g8-unlock's (unlock.json) when it ran, else the certificate's
// CN. Errors name the file at fault.
func LoadIdentity(configRoot, stateDir string) (*Identity, error) {
	caPath, certPath, keyPath := identityPaths(configRoot)
	roots, err := acapi.LoadPool(caPath)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		// The error from crypto/tls does not say which file; ours does.
		return nil, fmt.Errorf("identity: %s + %s: %w", certPath, keyPath, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("identity: %s: %w", certPath, err)
		}
	}
	id := &Identity{Cert: pair, Roots: roots, Subject: leaf.Subject.CommonName,
		Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, CAFile: caPath}
	var u state.Unlock
	switch err := state.Read(stateDir, &u); {
	case err == nil && u.NodeID != "":
		id.NodeID = u.NodeID
	case err == nil || errors.Is(err, state.ErrNotRun):
		id.NodeID = leaf.Subject.CommonName
	default:
		return nil, fmt.Errorf("identity: %w", err)
	}
	if id.NodeID == "" {
		return nil, fmt.Errorf("identity: %s: certificate has no CN and %s has no node_id", certPath, state.Path(stateDir, &u))
	}
	return id, nil
}
