package acsession

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/sd"
)

// The node's SSH host key (made by g8-unlock at enrolment) and the host
// certificate g8-sshd offers beside it, under the config root.
const (
	hostKeyPub  = "ssh/ssh_host_ed25519_key.pub"
	hostCertPub = "ssh/ssh_host_ed25519_key-cert.pub"
)

// hostCertDue says whether the node should ask the controller for a new
// host certificate, and why: none yet, one for another key (the host key
// was replaced) or by another CA than the controller now uses (caKey, nil
// when unknown), one that was not valid for the principals wanted, or one
// with less than a third of its validity left.
func hostCertDue(certText []byte, pub ssh.PublicKey, now time.Time) (bool, string) {
	if len(bytes.TrimSpace(certText)) == 0 {
		return true, "no host certificate yet"
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(certText)
	if err != nil {
		return true, "the host certificate is unreadable: " + err.Error()
	}
	c, ok := k.(*ssh.Certificate)
	if !ok || c.CertType != ssh.HostCert {
		return true, "the host certificate file holds no host certificate"
	}
	if !bytes.Equal(c.Key.Marshal(), pub.Marshal()) {
		return true, "the host certificate is for another host key"
	}
	after, before := time.Unix(int64(c.ValidAfter), 0), time.Unix(int64(c.ValidBefore), 0)
	if c.ValidBefore != ssh.CertTimeInfinity && now.After(before.Add(-before.Sub(after)/3)) {
		return true, "the host certificate expires at " + before.UTC().Format(time.RFC3339)
	}
	return false, ""
}

// renewHostCert asks the controller to sign the node's SSH host key when
// hostCertDue says so, and writes the certificate for g8-sshd. It is best
// effort: SSH works with the plain host key without it, so a failure is
// logged and tried again at the next session start.
func (s *Session) renewHostCert(ctx context.Context) {
	pubPath, certPath := filepath.Join(s.cfg.ConfigRoot, hostKeyPub), filepath.Join(s.cfg.ConfigRoot, hostCertPub)
	fail := func(err error) {
		s.log.Warn("SSH host certificate not renewed", sd.ACSessionHostCert.Attr(), "file", certPath, "error", err.Error())
	}
	pubText, err := os.ReadFile(pubPath)
	if errors.Is(err, os.ErrNotExist) {
		return // no host key: nothing to certify (g8-sshd refuses to start anyway)
	}
	if err != nil {
		fail(err)
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubText)
	if err != nil {
		fail(fmt.Errorf("%s: %w", pubPath, err))
		return
	}
	old, err := os.ReadFile(certPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fail(err)
		return
	}
	due, why := hostCertDue(old, pub, time.Now())
	if !due {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	r, err := s.client.SSHHostCert(rctx, &acapi.SSHHostCertRequest{PublicKey: strings.TrimSpace(string(pubText))})
	if err != nil {
		fail(err)
		return
	}
	// The answer is checked before it replaces anything: a host
	// certificate of this very key, one the node would ask again for at
	// once otherwise.
	got := []byte(r.Certificate)
	if again, whyBad := hostCertDue(got, pub, time.Now()); again {
		fail(fmt.Errorf("controller %s: unusable answer: %s", s.controller, whyBad))
		return
	}
	if err := atomicfile.Write(certPath, got, 0o644); err != nil {
		fail(err)
		return
	}
	k, _, _, _, _ := ssh.ParseAuthorizedKey(got)
	c := k.(*ssh.Certificate)
	s.log.Info("SSH host certificate renewed", sd.ACSessionHostCert.Attr(), "file", certPath, "reason", why,
		"principals", strings.Join(c.ValidPrincipals, ","), "valid_before", time.Unix(int64(c.ValidBefore), 0).UTC(), "ca", r.CA)
}
