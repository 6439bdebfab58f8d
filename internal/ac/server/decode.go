package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/recovery"
)

// Limits on request fields, beyond the body size limit, so that one node
// cannot fill the store or the operator's terminal.
const (
	maxMACs        = 64
	maxHostname    = 253
	maxCSR         = 16 << 10
	maxEvents      = 10000
	maxEventKind   = 128
	maxJobIDLen    = 128
	maxStatusField = 4096
)

// decodeJSON decodes exactly one JSON value from data into v.
func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("malformed JSON: trailing data after the value")
	}
	return nil
}

// DecodeUnlockRequest parses and validates the body of POST /v1/unlock. MACs
// come back in canonical form.
func DecodeUnlockRequest(data []byte) (*acapi.UnlockRequest, error) {
	var req acapi.UnlockRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	if len(req.MACs) == 0 {
		return nil, errors.New("field macs: empty; send every physical link's MAC")
	}
	if len(req.MACs) > maxMACs {
		return nil, fmt.Errorf("field macs: %d entries, at most %d", len(req.MACs), maxMACs)
	}
	for i, m := range req.MACs {
		n, err := store.NormalizeMAC(m)
		if err != nil {
			return nil, fmt.Errorf("field macs[%d]: %w", i, err)
		}
		req.MACs[i] = n
	}
	if len(req.Hostname) > maxHostname || !acapi.IsText(req.Hostname) || strings.ContainsAny(req.Hostname, " /") {
		return nil, fmt.Errorf("field hostname: not a host name (%d bytes)", len(req.Hostname))
	}
	if len(req.CSR) > maxCSR {
		return nil, fmt.Errorf("field csr: %d bytes, at most %d", len(req.CSR), maxCSR)
	}
	if err := recovery.CheckExchanges(req.Recovery); err != nil {
		return nil, fmt.Errorf("field %w", err)
	}
	return &req, nil
}

// DecodeSSHHostCertRequest parses the body of POST /v1/node/ssh-host-cert
// into the host key to sign.
func DecodeSSHHostCertRequest(data []byte) (ssh.PublicKey, error) {
	var req acapi.SSHHostCertRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	return pki.ParseHostPublicKey(req.PublicKey)
}

// DecodeCertRequest parses and validates the body of POST /v1/node/cert
// (the CSR itself is checked when it is signed).
func DecodeCertRequest(data []byte) (*acapi.CertRequest, error) {
	var req acapi.CertRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	if req.CSR == "" {
		return nil, errors.New("field csr: empty")
	}
	if len(req.CSR) > maxCSR {
		return nil, fmt.Errorf("field csr: %d bytes, at most %d", len(req.CSR), maxCSR)
	}
	return &req, nil
}

// DecodeHeartbeat parses and validates the body of POST /v1/node/heartbeat.
func DecodeHeartbeat(data []byte) (*acapi.Heartbeat, error) {
	var hb acapi.Heartbeat
	if err := decodeJSON(data, &hb); err != nil {
		return nil, err
	}
	// Every text a CLI shows an operator must be printable: no terminal
	// escapes from a node (ESC, OSC 52, C1 controls).
	if err := hb.CheckText(); err != nil {
		return nil, err
	}
	if len(hb.Hostname) > maxHostname {
		return nil, errors.New("field hostname: not a host name")
	}
	if len(hb.BootID) > 64 {
		return nil, errors.New("field boot_id: not a boot id")
	}
	if hb.Uptime < 0 {
		return nil, errors.New("field uptime: negative")
	}
	for k, v := range hb.Units {
		if len(k) > maxStatusField || len(v) > maxStatusField {
			return nil, fmt.Errorf("field units[%.40q]: too long", k)
		}
	}
	for k, v := range hb.Phases {
		if len(k) > maxStatusField || len(v) > maxStatusField {
			return nil, fmt.Errorf("field phases[%.40q]: too long", k)
		}
	}
	return &hb, nil
}

// DecodeEvents parses and validates the body of POST /v1/node/events.
func DecodeEvents(data []byte) ([]acapi.Event, error) {
	var evs []acapi.Event
	if err := decodeJSON(data, &evs); err != nil {
		return nil, err
	}
	if len(evs) > maxEvents {
		return nil, fmt.Errorf("%d events, at most %d per request", len(evs), maxEvents)
	}
	for i, e := range evs {
		if e.Seq == 0 {
			return nil, fmt.Errorf("event[%d]: field seq: must start at 1", i)
		}
		if e.Seq > 1<<63-1 {
			return nil, fmt.Errorf("event[%d]: field seq: %d out of range", i, e.Seq)
		}
		if e.Kind == "" || len(e.Kind) > maxEventKind || !acapi.IsText(e.Kind) {
			return nil, fmt.Errorf("event[%d]: field kind: empty, too long or not printable", i)
		}
		if len(e.Data) > 0 && !json.Valid(e.Data) {
			return nil, fmt.Errorf("event[%d]: field data: not JSON", i)
		}
	}
	return evs, nil
}

// DecodeJobResult parses and validates the body of POST
// /v1/node/jobs/<id>/result for job id.
func DecodeJobResult(data []byte, id string) (*acapi.JobResult, error) {
	var r acapi.JobResult
	if err := decodeJSON(data, &r); err != nil {
		return nil, err
	}
	if r.ID == "" {
		r.ID = id
	}
	if r.ID != id {
		return nil, fmt.Errorf("field id: %.80q does not match the path's job %.80q", r.ID, id)
	}
	switch r.State {
	case acapi.JobOK, acapi.JobFailed, acapi.JobTimeout, acapi.JobRejected:
	default:
		return nil, fmt.Errorf("field state: %.40q is not ok, failed, timeout or rejected", r.State)
	}
	return &r, nil
}
