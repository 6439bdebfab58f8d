package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"testing"
	"time"
)

// FuzzSignCSR: whatever CSR a node sends, what the controller signs is a
// client certificate for that node and nothing more: the node id as the
// only name, the CSR's own key, no CA rights, client auth only, the
// lifetime the controller chose, and a chain that verifies for client
// auth only. Nothing the CSR asks for (names, extensions, CA bits) gets in.
func FuzzSignCSR(f *testing.F) {
	ca, err := newCA("g8os node CA", x509.ExtKeyUsageClientAuth)
	if err != nil {
		f.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	basicCA, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	for _, tmpl := range []*x509.CertificateRequest{
		{Subject: pkix.Name{CommonName: "node"}},
		{Subject: pkix.Name{CommonName: "root", Organization: []string{"g8os admin"}}, DNSNames: []string{"ac.example"},
			IPAddresses: []net.IP{net.IPv4(10, 254, 254, 254)}, EmailAddresses: []string{"a@b"}},
		{Subject: pkix.Name{CommonName: "ca"}, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: basicCA}}},
	} {
		for _, key := range []any{ec, ed} {
			der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(der)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	const nodeID = "n-0123456789"
	f.Fuzz(func(t *testing.T, der []byte) {
		csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		before := time.Now()
		certPEM, cert, err := ca.SignCSR(csrPEM, nodeID, DefaultNodeValidity)
		if err != nil {
			return
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatalf("signed a CSR that does not parse or verify: %v", err)
		}
		if b, _ := pem.Decode(certPEM); b == nil || string(b.Bytes) != string(cert.Raw) {
			t.Fatal("PEM and parsed certificate differ")
		}
		if cert.Subject.CommonName != nodeID || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "g8os node" ||
			len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) != 0 {
			t.Fatalf("certificate names %v %v %v %v %v, want node %s only", cert.Subject, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs, nodeID)
		}
		if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature ||
			len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(cert.UnknownExtKeyUsage) != 0 {
			t.Fatalf("certificate rights: CA %v, usage %v, EKU %v %v", cert.IsCA, cert.KeyUsage, cert.ExtKeyUsage, cert.UnknownExtKeyUsage)
		}
		for _, e := range cert.Extensions {
			for _, asked := range csr.Extensions {
				if e.Id.Equal(asked.Id) && string(e.Value) == string(asked.Value) && !e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 15}) && !e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 37}) {
					t.Fatalf("extension %v copied from the CSR", e.Id)
				}
			}
		}
		pk, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pk.Equal(csr.PublicKey) {
			t.Fatal("certificate for another key than the CSR's")
		}
		if life := cert.NotAfter.Sub(before); life < DefaultNodeValidity-time.Minute || life > DefaultNodeValidity+time.Minute {
			t.Fatalf("lifetime %v, want %v", life, DefaultNodeValidity)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("does not verify for client auth: %v", err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Fatal("verifies for server auth")
		}
	})
}
