package acapi

import "time"

// Job kinds the node's session runs (Job.Kind), with their Args and the
// structured Output of their results. The grid manager adds app lifecycle
// kinds the same way: a name, an args type and an output type here, one
// file under internal/acsession/jobs on the node.
const (
	KindPing    = "ping"
	KindExec    = "exec"
	KindInfo    = "info"
	KindJournal = "journal"
)

// Job timeouts: a job without Timeout gets DefaultJobTimeout; a longer one
// than MaxJobTimeout is rejected.
const (
	DefaultJobTimeout = time.Minute
	MaxJobTimeout     = 24 * time.Hour
)

// PingOutput answers a ping job; it proves the node runs jobs end to end.
type PingOutput struct {
	NodeID string    `json:"node_id"`
	Time   time.Time `json:"time"` // node clock when the job ran
}

// ExecArgs is an exec job: argv run directly (no shell) as its own
// transient systemd unit on the node, its cgroup killed as a whole when it
// ends or times out. Encoded, at most MaxJobArgs (Stdin is base64).
type ExecArgs struct {
	Argv []string `json:"argv"`
	// Env is KEY=VALUE lines added to a minimal environment (PATH, HOME,
	// LANG); the session's own environment is not inherited.
	Env   []string `json:"env,omitempty"`
	Stdin []byte   `json:"stdin,omitempty"` // base64 in JSON
	Dir   string   `json:"dir,omitempty"`   // working directory, default /
	// MaxOutput caps stdout and stderr each, in bytes (default
	// DefaultMaxOutput, at most MaxOutput); the rest is discarded and the
	// result marked Truncated.
	MaxOutput int `json:"max_output,omitempty"`
}

// Output caps of exec and journal jobs, per stream. Both streams at the
// maximum, base64-encoded, still fit in MaxBody.
const (
	DefaultMaxOutput = 64 << 10
	MaxOutput        = 256 << 10
)

// JournalArgs asks for the last Lines lines of a unit's journal.
type JournalArgs struct {
	Unit  string `json:"unit"`            // e.g. g8-netup.service
	Lines int    `json:"lines,omitempty"` // default 100, at most 10000
}

// InfoOutput is the node's hardware and OS inventory (info job).
type InfoOutput struct {
	Hostname string     `json:"hostname"`
	OS       string     `json:"os"`       // e.g. linux
	Platform string     `json:"platform"` // e.g. debian 12.8
	Kernel   string     `json:"kernel"`
	Arch     string     `json:"arch"`
	BootTime time.Time  `json:"boot_time"`
	CPUs     []CPUInfo  `json:"cpus"`
	Cores    int        `json:"cores"`   // physical
	Threads  int        `json:"threads"` // logical
	MemTotal uint64     `json:"mem_total"`
	MemUsed  uint64     `json:"mem_used"`
	Disks    []DiskInfo `json:"disks"`
	NICs     []NICInfo  `json:"nics"`
	Warnings []string   `json:"warnings,omitempty"` // parts that could not be read
}

// CPUInfo is one CPU model (sockets of the same model are merged).
type CPUInfo struct {
	Model string  `json:"model"`
	MHz   float64 `json:"mhz"`
	Count int     `json:"count"` // logical CPUs of this model
}

// DiskInfo is one mounted file system.
type DiskInfo struct {
	Device     string `json:"device"`
	Mountpoint string `json:"mountpoint"`
	FSType     string `json:"fstype"`
	Total      uint64 `json:"total"`
	Used       uint64 `json:"used"`
}

// NICInfo is one network interface.
type NICInfo struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac,omitempty"`
	MTU       int      `json:"mtu"`
	Up        bool     `json:"up"`
	Addresses []string `json:"addresses,omitempty"` // CIDR
}

// Event kinds the session queues (Event.Kind).
const (
	EventPhaseReady    = "phase.ready"    // PhaseReadyData
	EventNetChanged    = "net.changed"    // NetChangedData
	EventJobFinished   = "job.finished"   // JobFinishedData
	EventEventsDropped = "events.dropped" // EventsDroppedData
)

// PhaseReadyData is one step of the boot timeline.
type PhaseReadyData struct {
	Phase     string    `json:"phase"`
	BootID    string    `json:"boot_id"`
	StartedAt time.Time `json:"started_at"`
	ReadyAt   time.Time `json:"ready_at"`
}

// NetChangedData reports that g8-netup's decision changed.
type NetChangedData struct {
	Controller string `json:"controller"`
	Interface  string `json:"interface"`
	Method     string `json:"method"`
	Address    string `json:"address"`
	Previous   string `json:"previous,omitempty"` // "eth0 dhcp 10.0.0.5/24 https://..."
}

// JobFinishedData is a job's outcome, without its output.
type JobFinishedData struct {
	ID       string   `json:"id"`
	Kind     string   `json:"kind"`
	State    string   `json:"state"`
	ExitCode int      `json:"exit_code"`
	Duration Duration `json:"duration"`
	Error    string   `json:"error,omitempty"`
}

// EventsDroppedData says the on-disk queue was full while the controller
// was unreachable and Count newer events were not kept; or, with By
// DroppedByController, that the controller deleted the node's Count
// oldest events, seq First to Last, to keep it within its event quota.
type EventsDroppedData struct {
	Count uint64 `json:"count"`
	First uint64 `json:"first,omitempty"`
	Last  uint64 `json:"last,omitempty"`
	By    string `json:"by,omitempty"`
}

// DroppedByController is EventsDroppedData.By of the controller's record.
const DroppedByController = "controller"
