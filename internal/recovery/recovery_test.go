package recovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func mustMaster(t testing.TB) *MasterKey {
	t.Helper()
	m, err := NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// recoverWith runs one exchange of md's first pin against master as node.
func recoverWith(t *testing.T, md *Metadata, master *MasterKey, node string) ([]byte, error) {
	t.Helper()
	b, err := md.Pins[0].Blind()
	if err != nil {
		t.Fatal(err)
	}
	y, err := master.Answer(node, b.Exchange.X)
	if err != nil {
		t.Fatal(err)
	}
	share, err := b.Unblind(Reply{KID: b.Exchange.KID, Y: y})
	if err != nil {
		return nil, err
	}
	return md.Combine(map[int][]byte{md.Pins[0].Index: share})
}

func TestEnrolRecover(t *testing.T) {
	master := mustMaster(t)
	pub, err := master.Public("n-1")
	if err != nil {
		t.Fatal(err)
	}
	key, md, err := Enrol(pub, "https://10.0.0.1:8443")
	if err != nil {
		t.Fatal(err)
	}
	// Through the stored form, as a node reads it at boot.
	raw, err := md.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, key) || strings.Contains(string(raw), string(mustJSON(t, key))) {
		t.Fatal("metadata holds the key")
	}
	md, err = Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := recoverWith(t, md, master, "n-1")
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("recovered %x, %v; want %x", got, err, key)
		}
	}

	// Another node's answer, another master, or an altered pin: nothing.
	if _, err := recoverWith(t, md, master, "n-2"); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("answered as another node: err = %v, want ErrUnwrap", err)
	}
	if _, err := recoverWith(t, md, mustMaster(t), "n-1"); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("another master: err = %v, want ErrUnwrap", err)
	}
	for name, alter := range map[string]func(p *Pin){
		"share": func(p *Pin) { p.Share[3] ^= 1 },
		"nonce": func(p *Pin) { p.Nonce[0] ^= 1 },
		"index": func(p *Pin) { p.Index = 2 },
	} {
		md2, _ := Parse(raw)
		alter(&md2.Pins[0])
		if _, err := recoverWith(t, md2, master, "n-1"); !errors.Is(err, ErrUnwrap) {
			t.Errorf("altered %s: err = %v, want ErrUnwrap", name, err)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Trim(b, `"`)
}

// What crosses the network tells nothing: X is fresh every time and never
// C, and the controller's answer differs with it.
func TestBlindingIsFresh(t *testing.T) {
	master := mustMaster(t)
	pub, _ := master.Public("n-1")
	_, md, err := Enrol(pub, "")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{string(md.Pins[0].C): true}
	for range 5 {
		b, err := md.Pins[0].Blind()
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(b.Exchange.X)] {
			t.Fatal("blinded value repeats or equals C")
		}
		seen[string(b.Exchange.X)] = true
	}
}

// Rotation: a node unwraps with the old key and wraps the same disk key to
// the new one; the old master is then no longer needed.
func TestRewrapToNewKey(t *testing.T) {
	old, cur := mustMaster(t), mustMaster(t)
	if old.KID == cur.KID {
		t.Fatal("two masters share a kid")
	}
	pub, _ := old.Public("n-1")
	key, md, err := Enrol(pub, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := recoverWith(t, md, old, "n-1")
	if err != nil {
		t.Fatal(err)
	}
	newPub, _ := cur.Public("n-1")
	p, err := Wrap(newPub, "", 1, got)
	if err != nil {
		t.Fatal(err)
	}
	md.Pins[0] = p
	if got, err := recoverWith(t, md, cur, "n-1"); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("after rewrap: %x, %v", got, err)
	}
	if _, err := recoverWith(t, md, old, "n-1"); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("old master after rewrap: %v", err)
	}
}

func TestMasterKeyFromBytes(t *testing.T) {
	m := mustMaster(t)
	m2, err := MasterKeyFromBytes(m.Bytes())
	if err != nil || m2.KID != m.KID || !ValidKeyID(m.KID) {
		t.Fatalf("restored %v, %v; kid %q", m2, err, m.KID)
	}
	p1, _ := m.Public("n-1")
	p2, _ := m2.Public("n-1")
	p3, _ := m.Public("n-3")
	if !bytes.Equal(p1.Pub, p2.Pub) || bytes.Equal(p1.Pub, p3.Pub) {
		t.Fatal("node keys: not deterministic per node, or equal across nodes")
	}
	if _, err := MasterKeyFromBytes(make([]byte, 31)); err == nil {
		t.Fatal("31-byte master accepted")
	}
}

func TestAnswerRejectsBadPoints(t *testing.T) {
	m := mustMaster(t)
	pub, _ := m.Public("n")
	offCurve := bytes.Clone(pub.Pub)
	offCurve[32] ^= 1 // most x have no point; check it is refused or valid
	for name, x := range map[string][]byte{
		"empty":        nil,
		"identity":     {0},
		"uncompressed": append([]byte{4}, make([]byte, 64)...),
		"prefix 5":     append([]byte{5}, pub.Pub[1:]...),
		"x too big":    append([]byte{2}, bytes.Repeat([]byte{0xff}, 32)...),
		"short":        pub.Pub[:32],
	} {
		if _, err := m.Answer("n", x); !errors.Is(err, ErrBadPoint) {
			t.Errorf("%s: err = %v, want ErrBadPoint", name, err)
		}
	}
	if _, err := m.Answer("n", pub.Pub); err != nil {
		t.Errorf("valid point refused: %v", err)
	}
}

func validMetadata(t testing.TB) []byte {
	m := mustMaster(t)
	pub, _ := m.Public("n-1")
	_, md, err := Enrol(pub, "https://ac:8443")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := md.Marshal()
	return b
}

func TestParse(t *testing.T) {
	good := validMetadata(t)
	edit := func(f func(m map[string]any)) string {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	pin := func(m map[string]any) map[string]any { return m["pins"].([]any)[0].(map[string]any) }
	for _, tc := range []struct{ name, in, err string }{
		{"good", string(good), ""},
		{"not json", "garbage", "invalid character"},
		{"trailing", string(good) + "{}", "after the object"},
		{"oversized", strings.Repeat(" ", MetadataMax+1), "over"},
		{"unknown field", edit(func(m map[string]any) { m["key"] = "x" }), "unknown field"},
		{"schema", edit(func(m map[string]any) { m["schema"] = 2 }), "schema 2"},
		{"no pins", edit(func(m map[string]any) { m["pins"] = []any{} }), "0 pins"},
		{"threshold 0", edit(func(m map[string]any) { m["threshold"] = 0 }), "threshold 0 of 1"},
		{"threshold over n", edit(func(m map[string]any) { m["threshold"] = 2 }), "threshold 2 of 1"},
		{"bad kid", edit(func(m map[string]any) { pin(m)["kid"] = "../x" }), "not a key id"},
		{"bad pub", edit(func(m map[string]any) { pin(m)["pub"] = "AAAA" }), "pub: not a compressed"},
		{"bad c", edit(func(m map[string]any) { pin(m)["c"] = "AAAA" }), "c: not a compressed"},
		{"index 0", edit(func(m map[string]any) { pin(m)["index"] = 0 }), "index 0"},
		{"short nonce", edit(func(m map[string]any) { pin(m)["nonce"] = "AAAA" }), "nonce: 3 bytes"},
		{"empty share", edit(func(m map[string]any) { pin(m)["share"] = "" }), "share: 0 bytes"},
		{"twice", edit(func(m map[string]any) {
			p := pin(m)
			m["pins"] = []any{p, p}
		}), "index 1 twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestCheckExchanges(t *testing.T) {
	m := mustMaster(t)
	pub, _ := m.Public("n")
	ok := Exchange{KID: m.KID, X: pub.Pub}
	for _, tc := range []struct {
		name string
		xs   []Exchange
		err  string
	}{
		{"none", nil, ""},
		{"one", []Exchange{ok}, ""},
		{"too many", make([]Exchange, MaxExchanges+1), "9 exchanges"},
		{"bad kid", []Exchange{{KID: "x", X: pub.Pub}}, "recovery[0].kid"},
		{"bad point", []Exchange{ok, {KID: m.KID, X: []byte{0}}}, "recovery[1].x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckExchanges(tc.xs)
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestCombineThreshold(t *testing.T) {
	md := &Metadata{Schema: 1, Threshold: 2, Pins: make([]Pin, 3)}
	if _, err := md.Combine(nil); !errors.Is(err, ErrThreshold) {
		t.Fatalf("t=2: %v", err)
	}
	md.Threshold = 1
	if _, err := md.Combine(map[int][]byte{1: {1, 2}}); err == nil {
		t.Fatal("short share combined")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(validMetadata(f))
	f.Add([]byte(`{"schema":1,"threshold":1,"pins":[]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		md, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses round-trips and every pin can start an exchange.
		out, err := md.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		for _, p := range md.Pins {
			if _, err := p.Blind(); err != nil {
				t.Fatalf("valid pin does not blind: %v", err)
			}
		}
	})
}

func FuzzAnswer(f *testing.F) {
	m, _ := MasterKeyFromBytes(bytes.Repeat([]byte{7}, 32))
	pub, _ := m.Public("n")
	f.Add(pub.Pub)
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, x []byte) {
		err := CheckExchanges([]Exchange{{KID: m.KID, X: x}})
		y, aerr := m.Answer("n", x)
		if (err == nil) != (aerr == nil) {
			t.Fatalf("CheckExchanges %v but Answer %v", err, aerr)
		}
		if aerr == nil && len(y) != PointSize {
			t.Fatalf("answer of %d bytes", len(y))
		}
	})
}
