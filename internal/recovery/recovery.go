// Package recovery is network-bound key recovery in the McCallum–Relyea
// style (the exchange Tang and Clevis use), on P-256: the node's disk key
// can be recomputed only with the controller's help, yet the controller
// never sees the disk key, and nothing the node stores is secret.
//
// Enrolment (node, offline, with the controller's public key S for it):
// pick c, store C = cG, compute K = cS, derive a wrapping key from K and
// encrypt the node's share of the disk key with it; forget c and K.
// Recovery (each boot): pick e, send X = C + eG (blinded: X is a uniformly
// random point, it tells nothing about C); the controller answers Y = sX;
// the node computes K = Y − eS = sC = cS and unwraps its share.
//
// The controller holds one master key per generation (kid) and answers each
// node with a key derived from the master and the node's id, so an approved
// node cannot recover another node's key from that node's public values.
//
// The stored metadata lists pins, one per controller, and a threshold: the
// disk key is split with Shamir's scheme so that any t of n controllers
// recover it. This version makes and reads t = 1 (each pin wraps the whole
// key); the format already carries t, each pin's share index and each
// pin's controller, so t-of-n needs no format change.
//
// It is wire protocol, imported by g8-ac and g8-unlock alike; it does no
// I/O.
package recovery

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"

	"filippo.io/nistec"
)

// Sizes and limits of the format.
const (
	PointSize    = 33 // a compressed P-256 point
	ScalarSize   = 32
	KeySize      = 32 // the disk key
	MaxExchanges = 8  // exchanges in one request (one per pin held at that controller)
	MaxPins      = 16 // controllers a node's key can be split across
	MetadataMax  = 16 << 10
	Schema       = 1
)

// Errors callers branch on.
var (
	ErrBadPoint  = errors.New("not a compressed P-256 point")
	ErrUnwrap    = errors.New("recovered key does not unwrap the share (wrong controller key or altered metadata)")
	ErrThreshold = errors.New("threshold not supported")
)

// order is the P-256 group order n.
var order, _ = new(big.Int).SetString("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)

var kidRE = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

// KeyID names a master public key: base64url of the first 16 bytes of the
// SHA-256 of its compressed form (22 characters).
func KeyID(pub []byte) string {
	h := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(h[:16])
}

// ValidKeyID reports whether s has the form KeyID gives.
func ValidKeyID(s string) bool { return kidRE.MatchString(s) }

// PublicKey is a controller's public recovery key for one node, as the
// controller advertises it in the unlock answer.
type PublicKey struct {
	KID string `json:"kid"` // the master key's id
	Pub []byte `json:"pub"` // the node's derived public key, compressed point (base64 in JSON)
}

// Exchange is one blinded recovery request.
type Exchange struct {
	KID string `json:"kid"`
	X   []byte `json:"x"` // compressed point
}

// Reply is the controller's answer to one Exchange.
type Reply struct {
	KID string `json:"kid"`
	Y   []byte `json:"y"` // compressed point
}

// MasterKey is one generation of the controller's recovery key. Its bytes
// are secret: the controller keeps them wrapped (see docs/unlock.md).
type MasterKey struct {
	KID  string
	seed []byte // 32 random bytes; node keys derive from it
}

// NewMasterKey makes a fresh master key.
func NewMasterKey() (*MasterKey, error) {
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	return MasterKeyFromBytes(seed)
}

// MasterKeyFromBytes restores a master key from Bytes.
func MasterKeyFromBytes(b []byte) (*MasterKey, error) {
	if len(b) != 32 {
		return nil, fmt.Errorf("recovery master key: %d bytes, want 32", len(b))
	}
	m := &MasterKey{seed: bytes.Clone(b)}
	// The id comes from a public value, so it can be shown and stored in the
	// clear: the public key of the derivation for no node.
	priv, err := m.nodeKey("")
	if err != nil {
		return nil, err
	}
	m.KID = KeyID(compress(priv.PublicKey().Bytes()))
	return m, nil
}

// Bytes is the secret seed, for wrapping into storage.
func (m *MasterKey) Bytes() []byte { return bytes.Clone(m.seed) }

// nodeKey derives the node's private scalar: HKDF-SHA-256 of the seed with
// the node id, 48 bytes reduced mod n (bias below 2^-128), never zero.
func (m *MasterKey) nodeKey(nodeID string) (*ecdh.PrivateKey, error) {
	wide, err := hkdf.Key(sha256.New, m.seed, nil, "g8os recovery node key v1\x00"+nodeID, 48)
	if err != nil {
		return nil, err
	}
	k := new(big.Int).SetBytes(wide)
	k.Mod(k, new(big.Int).Sub(order, big.NewInt(1)))
	k.Add(k, big.NewInt(1)) // 1..n-1
	clear(wide)
	return ecdh.P256().NewPrivateKey(k.FillBytes(make([]byte, ScalarSize)))
}

// Public is the public key a node enrols with.
func (m *MasterKey) Public(nodeID string) (PublicKey, error) {
	priv, err := m.nodeKey(nodeID)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{KID: m.KID, Pub: compress(priv.PublicKey().Bytes())}, nil
}

// Answer is the controller's private-key operation for node nodeID: Y = sX.
// X must be a valid compressed point other than the identity.
func (m *MasterKey) Answer(nodeID string, x []byte) ([]byte, error) {
	X, err := parsePoint(x)
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	priv, err := m.nodeKey(nodeID)
	if err != nil {
		return nil, err
	}
	Y, err := nistec.NewP256Point().ScalarMult(X, priv.Bytes())
	if err != nil {
		return nil, err
	}
	return Y.BytesCompressed(), nil
}

func parsePoint(b []byte) (*nistec.P256Point, error) {
	if len(b) != PointSize || (b[0] != 2 && b[0] != 3) {
		return nil, fmt.Errorf("%w (%d bytes)", ErrBadPoint, len(b))
	}
	p, err := nistec.NewP256Point().SetBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPoint, err)
	}
	return p, nil
}

// compress turns an uncompressed SEC 1 point (from crypto/ecdh) into the
// 33-byte form the format uses.
func compress(uncompressed []byte) []byte {
	p, err := nistec.NewP256Point().SetBytes(uncompressed)
	if err != nil {
		panic("recovery: crypto/ecdh gave an invalid point: " + err.Error())
	}
	return p.BytesCompressed()
}

// Pin is one controller's part of a node's key: public values only.
type Pin struct {
	// Controller names where to ask (informational for one controller: the
	// node asks the one it found).
	Controller string `json:"controller,omitempty"`
	KID        string `json:"kid"`
	Pub        []byte `json:"pub"`   // the controller's public key for this node (S)
	C          []byte `json:"c"`     // the node's public enrolment value (C = cG)
	Index      int    `json:"index"` // the Shamir x-coordinate of this pin's share, 1..n
	Nonce      []byte `json:"nonce"` // AES-GCM nonce
	Share      []byte `json:"share"` // the share, AES-256-GCM-wrapped under a key derived from cS
}

// Metadata is what a node stores next to its encrypted directory.
type Metadata struct {
	Schema    int   `json:"schema"`
	Threshold int   `json:"threshold"`
	Pins      []Pin `json:"pins"`
}

// NewKey makes a random disk key.
func NewKey() ([]byte, error) {
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	return k, err
}

// Wrap makes a pin that wraps share (the whole key, for t = 1) to the
// controller key pub. Only public values remain in the pin.
func Wrap(pub PublicKey, controller string, index int, share []byte) (Pin, error) {
	S, err := parsePoint(pub.Pub)
	if err != nil {
		return Pin{}, fmt.Errorf("controller key %s: %w", pub.KID, err)
	}
	if !ValidKeyID(pub.KID) {
		return Pin{}, fmt.Errorf("controller key id %.40q: not a key id", pub.KID)
	}
	c, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return Pin{}, err
	}
	K, err := nistec.NewP256Point().ScalarMult(S, c.Bytes())
	if err != nil {
		return Pin{}, err
	}
	p := Pin{Controller: controller, KID: pub.KID, Pub: bytes.Clone(pub.Pub), C: compress(c.PublicKey().Bytes()), Index: index}
	aead, err := p.aead(K)
	if err != nil {
		return Pin{}, err
	}
	p.Nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(p.Nonce); err != nil {
		return Pin{}, err
	}
	p.Share = aead.Seal(nil, p.Nonce, share, p.ad())
	return p, nil
}

// aead is AES-256-GCM under HKDF(x(K)), bound to the pin's public values.
func (p *Pin) aead(K *nistec.P256Point) (cipher.AEAD, error) {
	x, err := K.BytesX()
	if err != nil {
		return nil, err
	}
	key, err := hkdf.Key(sha256.New, x, nil, "g8os recovery wrap v1\x00"+p.KID+"\x00"+string(p.C), 32)
	clear(x)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// ad is the authenticated data of the share: a share moved to another
// index or pin does not unwrap.
func (p *Pin) ad() []byte {
	return fmt.Appendf(nil, "g8os recovery share v1 index=%d pub=%x", p.Index, p.Pub)
}

// Blinded is an exchange in flight: send Exchange, feed the reply to
// Unblind.
type Blinded struct {
	Exchange Exchange
	pin      Pin
	eS       *nistec.P256Point // −eS, to subtract the blinding from Y
}

// Blind starts a recovery of p's share.
func (p Pin) Blind() (*Blinded, error) {
	S, err := parsePoint(p.Pub)
	if err != nil {
		return nil, fmt.Errorf("pin %s pub: %w", p.KID, err)
	}
	C, err := parsePoint(p.C)
	if err != nil {
		return nil, fmt.Errorf("pin %s c: %w", p.KID, err)
	}
	e, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	E, err := nistec.NewP256Point().SetBytes(e.PublicKey().Bytes())
	if err != nil {
		return nil, err
	}
	X := nistec.NewP256Point().Add(C, E)
	negE := new(big.Int).Sub(order, new(big.Int).SetBytes(e.Bytes()))
	negES, err := nistec.NewP256Point().ScalarMult(S, negE.FillBytes(make([]byte, ScalarSize)))
	if err != nil {
		return nil, err
	}
	return &Blinded{Exchange: Exchange{KID: p.KID, X: X.BytesCompressed()}, pin: p, eS: negES}, nil
}

// Unblind turns the controller's reply into the pin's share.
func (b *Blinded) Unblind(r Reply) ([]byte, error) {
	if r.KID != b.pin.KID {
		return nil, fmt.Errorf("reply for key %.40q, asked with %s", r.KID, b.pin.KID)
	}
	Y, err := parsePoint(r.Y)
	if err != nil {
		return nil, fmt.Errorf("reply y: %w", err)
	}
	K := nistec.NewP256Point().Add(Y, b.eS)
	aead, err := b.pin.aead(K)
	if err != nil {
		return nil, err
	}
	share, err := aead.Open(nil, b.pin.Nonce, b.pin.Share, b.pin.ad())
	if err != nil {
		return nil, fmt.Errorf("pin %s: %w", b.pin.KID, ErrUnwrap)
	}
	return share, nil
}

// Enrol makes a fresh disk key and metadata wrapping it to one controller
// key. The caller uses the key and wipes it; the metadata holds only public
// values.
func Enrol(pub PublicKey, controller string) (key []byte, md *Metadata, err error) {
	key, err = NewKey()
	if err != nil {
		return nil, nil, err
	}
	p, err := Wrap(pub, controller, 1, key)
	if err != nil {
		clear(key)
		return nil, nil, err
	}
	return key, &Metadata{Schema: Schema, Threshold: 1, Pins: []Pin{p}}, nil
}

// Combine turns the recovered shares (by pin index) into the disk key. With
// t = 1 any one share is the key.
func (m *Metadata) Combine(shares map[int][]byte) ([]byte, error) {
	if m.Threshold != 1 {
		return nil, fmt.Errorf("%w: %d of %d (this version recovers 1 of n)", ErrThreshold, m.Threshold, len(m.Pins))
	}
	for _, s := range shares {
		if len(s) == KeySize {
			return bytes.Clone(s), nil
		}
	}
	return nil, fmt.Errorf("need %d share(s) of %d bytes, have %d", m.Threshold, KeySize, len(shares))
}

// Parse reads and validates metadata: every field present and well formed,
// so a damaged or hostile file is refused with what is wrong.
func Parse(b []byte) (*Metadata, error) {
	if len(b) > MetadataMax {
		return nil, fmt.Errorf("recovery metadata: %d bytes, over %d", len(b), MetadataMax)
	}
	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("recovery metadata: %w", err)
	}
	if dec.More() {
		return nil, errors.New("recovery metadata: data after the object")
	}
	if m.Schema != Schema {
		return nil, fmt.Errorf("recovery metadata: schema %d, want %d", m.Schema, Schema)
	}
	if len(m.Pins) == 0 || len(m.Pins) > MaxPins {
		return nil, fmt.Errorf("recovery metadata: %d pins, want 1..%d", len(m.Pins), MaxPins)
	}
	if m.Threshold < 1 || m.Threshold > len(m.Pins) {
		return nil, fmt.Errorf("recovery metadata: threshold %d of %d pins", m.Threshold, len(m.Pins))
	}
	seen := map[int]bool{}
	for i, p := range m.Pins {
		if err := p.check(); err != nil {
			return nil, fmt.Errorf("recovery metadata: pin %d: %w", i, err)
		}
		if seen[p.Index] {
			return nil, fmt.Errorf("recovery metadata: pin %d: index %d twice", i, p.Index)
		}
		seen[p.Index] = true
	}
	return &m, nil
}

func (p *Pin) check() error {
	switch {
	case !ValidKeyID(p.KID):
		return fmt.Errorf("kid %.40q: not a key id", p.KID)
	case len(p.Controller) > 256:
		return errors.New("controller: over 256 bytes")
	case p.Index < 1 || p.Index > MaxPins:
		return fmt.Errorf("index %d: want 1..%d", p.Index, MaxPins)
	case len(p.Nonce) != 12:
		return fmt.Errorf("nonce: %d bytes, want 12", len(p.Nonce))
	case len(p.Share) < 16+1 || len(p.Share) > 16+64:
		return fmt.Errorf("share: %d bytes, want 17..80", len(p.Share))
	}
	if _, err := parsePoint(p.Pub); err != nil {
		return fmt.Errorf("pub: %w", err)
	}
	if _, err := parsePoint(p.C); err != nil {
		return fmt.Errorf("c: %w", err)
	}
	return nil
}

// Marshal is the stored form of m.
func (m *Metadata) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// CheckPublicKey validates an advertised key before a node enrols with it.
func CheckPublicKey(k PublicKey) error {
	if !ValidKeyID(k.KID) {
		return fmt.Errorf("kid %.40q: not a key id", k.KID)
	}
	if _, err := parsePoint(k.Pub); err != nil {
		return fmt.Errorf("pub: %w", err)
	}
	return nil
}

// CheckExchanges validates a request's exchanges before any private-key
// operation: count, key ids, points.
func CheckExchanges(xs []Exchange) error {
	if len(xs) > MaxExchanges {
		return fmt.Errorf("recovery: %d exchanges, at most %d", len(xs), MaxExchanges)
	}
	for i, x := range xs {
		if !ValidKeyID(x.KID) {
			return fmt.Errorf("recovery[%d].kid %.40q: not a key id", i, x.KID)
		}
		if _, err := parsePoint(x.X); err != nil {
			return fmt.Errorf("recovery[%d].x: %w", i, err)
		}
	}
	return nil
}
