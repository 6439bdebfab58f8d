// Package acapi is the wire contract between the node phases and the agent
// controller (g8-ac): request and response types, paths, and the client.
// It is the only package both sides import. docs/api.md documents it for
// humans; change both together.
package acapi

import (
	"encoding/json"
	"time"

	"github.com/g8os/boot/internal/recovery"
)

// Paths of API v1.
const (
	PathHealth    = "/v1/health"
	PathUnlock    = "/v1/unlock"
	PathHeartbeat = "/v1/node/heartbeat" // mTLS
	PathJobs      = "/v1/node/jobs"      // mTLS: GET long-polls, POST {id}/result
	PathEvents    = "/v1/node/events"    // mTLS
	PathCert      = "/v1/node/cert"      // mTLS: renew the node certificate
	PathStore     = "/v1/store/"         // GET (mTLS) / PUT (admin) /v1/store/<hash>

	PathSSHHostCert = "/v1/node/ssh-host-cert" // mTLS: sign the node's SSH host key
)

// SSHHostCertRequest is the body of POST /v1/node/ssh-host-cert: the node's
// SSH host public key in authorized_keys form.
type SSHHostCertRequest struct {
	PublicKey string `json:"public_key"`
}

// SSHHostCertResponse is the host certificate (ssh-keygen's -cert.pub
// form) and the CA that signed it (authorized_keys form).
type SSHHostCertResponse struct {
	Certificate string   `json:"certificate"`
	CA          string   `json:"ca"`
	Principals  []string `json:"principals"`
}

// MaxBody is the largest request or response body either side accepts,
// except store chunks.
const MaxBody = 1 << 20

// A poll answer carries whole jobs and must fit MaxBody: the controller
// queues no job whose args are over MaxJobArgs, and hands a node, per
// answer, its oldest jobs while their args and envelopes (JobEnvelope
// each, generously: id, kind, timeout, creation time) stay within
// ClaimBudget; the rest wait for the next poll. One job alone always fits.
const (
	MaxJobArgs  = MaxBody - 64<<10
	JobEnvelope = 512
	ClaimBudget = MaxBody - 16<<10
)

// Health is the body of GET /v1/health.
type Health struct {
	Status  string `json:"status"` // "ok"
	Name    string `json:"name"`   // controller name
	Version string `json:"version"`
}

// UnlockRequest is the body of POST /v1/unlock.
type UnlockRequest struct {
	MACs     []string `json:"macs"` // all physical links, primary first
	Hostname string   `json:"hostname,omitempty"`
	CSR      string   `json:"csr,omitempty"` // PEM; the controller signs it
	// Recovery are blinded key-recovery exchanges, one per pin of the
	// node's disk key held at this controller (docs/unlock.md).
	Recovery []recovery.Exchange `json:"recovery,omitempty"`
	// KeyRewrapped says the node's volume opens with its recovered key:
	// the controller forgets the unlock key it held for the node from
	// before key recovery, if any.
	KeyRewrapped bool `json:"key_rewrapped,omitempty"`
}

// UnlockResponse answers an approved node (200).
type UnlockResponse struct {
	NodeID string `json:"node_id"`
	// Key is the unlock key of a node enrolled before key recovery, until
	// the node has re-wrapped its volume (base64 in JSON; wipe after use).
	// Nodes enrolled since get none: their disk key comes from Recovery.
	Key            []byte `json:"key,omitempty"`
	Cert           string `json:"cert,omitempty"` // PEM client certificate, when a CSR was sent
	CA             string `json:"ca"`             // PEM: node CA (verify peers) + server CA (verify the AC)
	AuthorizedKeys string `json:"authorized_keys"`
	// Files are config files the controller manages inside the unlocked
	// config (/mnt/etc), by path relative to it, e.g. "g8os/fs.toml".
	// g8-unlock writes them at enrollment and refreshes them on later boots.
	Files map[string]string `json:"files,omitempty"`
	// Recovery answers the request's exchanges, in order.
	Recovery []recovery.Reply `json:"recovery,omitempty"`
	// RecoveryKey is the controller's current public recovery key for this
	// node: a node enrols with it, and re-wraps to it when its pin names
	// an older key.
	RecoveryKey *recovery.PublicKey `json:"recovery_key,omitempty"`
}

// CertRequest is the body of POST /v1/node/cert: a session renewing its
// node certificate before it expires.
type CertRequest struct {
	CSR string `json:"csr"` // PEM, for a fresh key
}

// CertResponse answers it.
type CertResponse struct {
	Cert string `json:"cert"` // PEM client certificate, CN = node id
	CA   string `json:"ca"`   // as in UnlockResponse
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error  string `json:"error"`           // human reason
	State  string `json:"state,omitempty"` // node state for unlock: pending | denied | revoked
	NodeID string `json:"node_id,omitempty"`
}

// Heartbeat is the body of POST /v1/node/heartbeat.
type Heartbeat struct {
	NodeID    string            `json:"node_id"`
	BootID    string            `json:"boot_id"`
	Hostname  string            `json:"hostname,omitempty"`
	Uptime    Duration          `json:"uptime"`
	Addresses []string          `json:"addresses,omitempty"`
	Units     map[string]string `json:"units,omitempty"`  // unit → ActiveState
	Phases    map[string]string `json:"phases,omitempty"` // phase → summary from its state file
	Load1     float64           `json:"load1"`
	MemUsed   uint64            `json:"mem_used"`
	MemTotal  uint64            `json:"mem_total"`
	DiskUsed  uint64            `json:"disk_used"`
	DiskTotal uint64            `json:"disk_total"`
	Apps      []AppStatus       `json:"apps,omitempty"`
}

// AppStatus is a grid app's state as the node sees it.
type AppStatus struct {
	Name     string    `json:"name"`
	State    string    `json:"state"`
	Since    time.Time `json:"since,omitempty"`
	Restarts int       `json:"restarts"`
	Error    string    `json:"error,omitempty"`
	Spec     string    `json:"spec,omitempty"` // AppSpec.Hash of what runs; the grid rolls the app when it differs
}

// HeartbeatReply answers a heartbeat.
type HeartbeatReply struct {
	NodeID     string    `json:"node_id"`
	ServerTime time.Time `json:"server_time"`
}

// Job states.
const (
	JobQueued   = "queued"
	JobRunning  = "running"
	JobOK       = "ok"
	JobFailed   = "failed"
	JobTimeout  = "timeout"
	JobRejected = "rejected" // malformed, unknown kind, or a duplicate id
)

// Job is one unit of work for a node. Args is kind-specific JSON.
type Job struct {
	ID        string          `json:"id"`
	Kind      string          `json:"kind"`
	Args      json.RawMessage `json:"args,omitempty"`
	Timeout   Duration        `json:"timeout,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}

// JobResult is posted to /v1/node/jobs/<id>/result.
type JobResult struct {
	ID         string          `json:"id"`
	State      string          `json:"state"` // ok | failed | timeout | rejected
	ExitCode   int             `json:"exit_code"`
	Stdout     []byte          `json:"stdout,omitempty"`
	Stderr     []byte          `json:"stderr,omitempty"`
	Truncated  bool            `json:"truncated,omitempty"`
	Output     json.RawMessage `json:"output,omitempty"` // structured result (info, ...)
	Error      string          `json:"error,omitempty"`
	StartedAt  time.Time       `json:"started_at"`
	FinishedAt time.Time       `json:"finished_at"`
}

// Event is one entry of the node's on-disk queue. Seq is assigned by the
// node, strictly increasing per node; the controller keeps the highest seq
// it stored and ignores any at or below it, which makes delivery
// exactly-once across reconnects and restarts.
type Event struct {
	Seq  uint64          `json:"seq"`
	Time time.Time       `json:"time"`
	Kind string          `json:"kind"` // phase.ready | net.changed | job.finished | ...
	Data json.RawMessage `json:"data,omitempty"`
}

// EventsReply acknowledges stored events.
type EventsReply struct {
	Acked uint64 `json:"acked"` // highest seq stored
}

// Duration is a time.Duration that travels as a Go duration string ("1.5s").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return err
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}
