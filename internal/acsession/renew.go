package acsession

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/sd"
)

// RenewDue says whether a node certificate valid from notBefore to
// notAfter should be renewed at now: once half its lifetime has passed.
// g8-unlock renews at two thirds (at its start, or when the session could
// not), so the two never race while the session works.
func RenewDue(notBefore, notAfter, now time.Time) bool {
	if notAfter.IsZero() || !notAfter.After(notBefore) {
		return false
	}
	return now.After(notBefore.Add(notAfter.Sub(notBefore) / 2))
}

// renewCert asks the controller, over the session's mTLS, for a certificate
// for a fresh key, checks the answer, and writes key and certificate into
// the unlocked config atomically (the key first: a crash in between leaves
// a pair that does not match, which g8-unlock re-enrolls at its next
// start, never a certificate whose key is lost). The caller reconnects, so
// the controller sees the new certificate at once and refuses the old one.
func (s *Session) renewCert(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	resp, err := s.client.RenewCert(ctx, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	defer clear(keyPEM)
	clear(kder)
	pair, err := tls.X509KeyPair([]byte(resp.Cert), keyPEM)
	if err != nil {
		return fmt.Errorf("controller %s: renewed certificate: %w", s.controller, err)
	}
	leaf := pair.Leaf
	if leaf == nil || leaf.Subject.CommonName != s.id.Subject || !time.Now().Before(leaf.NotAfter) {
		return fmt.Errorf("controller %s: renewed certificate is not a valid certificate of node %s", s.controller, s.id.Subject)
	}
	_, certPath, keyPath := identityPaths(s.cfg.ConfigRoot)
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(certPath, []byte(resp.Cert), 0o644); err != nil {
		return err
	}
	s.log.Info("node certificate renewed", sd.ACSessionCertRenewed.Attr(), "controller", s.controller, "node", s.id.NodeID,
		"serial", leaf.SerialNumber.Text(16), "expiry", s.id.NotAfter.UTC().Format(time.RFC3339), "new_expiry", leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// maybeRenew renews the certificate when due and reports whether the
// session must reconnect with the new one.
func (s *Session) maybeRenew(ctx context.Context) bool {
	if s.id == nil || !RenewDue(s.id.NotBefore, s.id.NotAfter, time.Now()) {
		return false
	}
	if err := s.renewCert(ctx); err != nil {
		s.log.Warn("renewing the node certificate failed; trying again at the next heartbeat", sd.ACSessionCertRenewFailed.Attr(),
			"controller", s.controller, "node", s.id.NodeID, "expiry", s.id.NotAfter.UTC().Format(time.RFC3339), "error", err)
		return false
	}
	return true
}
