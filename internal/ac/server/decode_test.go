package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/ac/store"
)

func TestDecodeUnlockRequest(t *testing.T) {
	for _, c := range []struct {
		in, err string
		macs    []string
	}{
		{in: `{"macs":["52:54:00:AB:CD:EF","52-54-00-ab-cd-01"],"hostname":"n1"}`, macs: []string{"52:54:00:ab:cd:ef", "52:54:00:ab:cd:01"}},
		{in: `{"macs":[]}`, err: "field macs: empty"},
		{in: `{}`, err: "field macs: empty"},
		{in: `{"macs":["nope"]}`, err: "field macs[0]"},
		{in: `{"macs":["00:00:00:00:00:00:00:01"]}`, err: "48-bit"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"hostname":"a b"}`, err: "field hostname"},
		{in: `{"macs":["52:54:00:ab:cd:ef"]}x`, err: "trailing"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"future_field":1}`, macs: []string{"52:54:00:ab:cd:ef"}},
		{in: `null`, err: "field macs: empty"},
		{in: `[`, err: "malformed JSON"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"csr":"` + strings.Repeat("A", maxCSR+1) + `"}`, err: "field csr"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"recovery":[{"kid":"AAAAAAAAAAAAAAAAAAAAAA","x":"AmsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKW"}]}`, macs: []string{"52:54:00:ab:cd:ef"}},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"recovery":[{"kid":"x","x":"AmsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKW"}]}`, err: "field recovery[0].kid"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"recovery":[{"kid":"AAAAAAAAAAAAAAAAAAAAAA","x":"AA=="}]}`, err: "field recovery[0].x: not a compressed P-256 point"},
		{in: `{"macs":["52:54:00:ab:cd:ef"],"recovery":[` + strings.Repeat(`{},`, 8) + `{}]}`, err: "9 exchanges"},
	} {
		req, err := DecodeUnlockRequest([]byte(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%.60s: error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%.60s: %v", c.in, err)
			continue
		}
		if strings.Join(req.MACs, ",") != strings.Join(c.macs, ",") {
			t.Errorf("%.60s: macs %v, want %v", c.in, req.MACs, c.macs)
		}
	}
}

func TestDecodeJobResultMatchesPath(t *testing.T) {
	if _, err := DecodeJobResult([]byte(`{"id":"j-1","state":"ok"}`), "j-2"); err == nil {
		t.Fatal("a result for another job id was accepted")
	}
	r, err := DecodeJobResult([]byte(`{"state":"failed","exit_code":3}`), "j-2")
	if err != nil || r.ID != "j-2" || r.ExitCode != 3 {
		t.Fatalf("%v %+v", err, r)
	}
	if _, err := DecodeJobResult([]byte(`{"state":"running"}`), "j-2"); err == nil {
		t.Fatal("a non-final state was accepted as a result")
	}
}

// The fuzz targets hold every decoder to: no panic, and anything accepted
// satisfies the invariants the handlers rely on.

func FuzzDecodeUnlockRequest(f *testing.F) {
	f.Add([]byte(`{"macs":["52:54:00:ab:cd:ef"],"hostname":"n1","csr":"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"}`))
	f.Add([]byte(`{"macs":["52-54-00-AB-CD-EF","02:00:00:00:00:01"]}`))
	f.Add([]byte(`{"macs":null}`))
	f.Add([]byte(`{"macs":[""],"hostname":"\u0000"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeUnlockRequest(data)
		if err != nil {
			return
		}
		if len(req.MACs) == 0 || len(req.MACs) > maxMACs || len(req.CSR) > maxCSR || len(req.Hostname) > maxHostname {
			t.Fatalf("accepted out-of-bounds request %+v", req)
		}
		for _, m := range req.MACs {
			if n, err := store.NormalizeMAC(m); err != nil || n != m {
				t.Fatalf("accepted MAC %q is not canonical", m)
			}
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	f.Add([]byte(`{"node_id":"n-1","boot_id":"b","uptime":"1m","units":{"a":"active"},"phases":{"net":"eth0 dhcp"},"load1":0.5,"apps":[{"name":"x","state":"running","since":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"uptime":12345}`))
	f.Add([]byte(`{"uptime":"-1s"}`))
	f.Add([]byte(`{"units":{"g8-x\u001b]52;c;aGk=\u0007":"active"}}`))
	f.Add([]byte(`{"apps":[{"name":"x","error":"\u009b2J"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		hb, err := DecodeHeartbeat(data)
		if err != nil {
			return
		}
		if hb.Uptime < 0 || len(hb.BootID) > 64 || hb.CheckText() != nil {
			t.Fatalf("accepted %+v", hb)
		}
		if _, err := json.Marshal(hb); err != nil {
			t.Fatalf("accepted heartbeat does not re-encode for the store: %v", err)
		}
	})
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(`[{"seq":1,"time":"2026-01-01T00:00:00Z","kind":"phase.ready","data":{"phase":"net"}}]`))
	f.Add([]byte(`[{"seq":18446744073709551615,"kind":"x"}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		evs, err := DecodeEvents(data)
		if err != nil {
			return
		}
		for _, e := range evs {
			if e.Seq == 0 || e.Seq > 1<<63-1 || e.Kind == "" || len(e.Data) > 0 && !json.Valid(e.Data) {
				t.Fatalf("accepted event %+v", e)
			}
		}
	})
}

func FuzzDecodeJobResult(f *testing.F) {
	f.Add([]byte(`{"id":"j-1","state":"ok","exit_code":0,"stdout":"aGk=","output":{"a":1}}`), "j-1")
	f.Add([]byte(`{"state":"rejected","error":"unknown kind"}`), "j-2")
	f.Fuzz(func(t *testing.T, data []byte, id string) {
		r, err := DecodeJobResult(data, id)
		if err != nil {
			return
		}
		if r.ID != id {
			t.Fatalf("accepted result for %q on path %q", r.ID, id)
		}
		switch r.State {
		case "ok", "failed", "timeout", "rejected":
		default:
			t.Fatalf("accepted state %q", r.State)
		}
	})
}

func FuzzDecodeCertRequest(f *testing.F) {
	f.Add([]byte(`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}`))
	f.Add([]byte(`{"csr":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeCertRequest(data)
		if err != nil {
			return
		}
		if req.CSR == "" || len(req.CSR) > maxCSR {
			t.Fatalf("accepted a CSR of %d bytes", len(req.CSR))
		}
	})
}
