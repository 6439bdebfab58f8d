package state

import (
	"slices"
	"time"
)

// Each phase's state struct embeds Header and lives in this package so that
// a phase can read another's decisions without importing its code. A phase
// owns its struct; fields are added, never renamed (readers of an older
// build must still parse the file).

func (h *Header) header() *Header { return h }

// Net is g8-netup's decision: how the node reached a controller.
type Net struct {
	Header
	Controller string    `json:"controller"`    // base URL that answered /v1/health
	Interface  string    `json:"interface"`     // link the controller was reached through
	MAC        string    `json:"mac,omitempty"` // that link's hardware address
	Method     string    `json:"method"`        // static | dhcp | fallback
	Address    string    `json:"address"`       // CIDR, e.g. 10.254.254.17/24
	Gateway    string    `json:"gateway,omitempty"`
	DNS        []string  `json:"dns,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitempty"` // DHCP only
	Rounds     int       `json:"rounds"`                // search rounds until found
	StartedAt  time.Time `json:"started_at"`
	ReadyAt    time.Time `json:"ready_at"`
	Trace      []string  `json:"trace,omitempty"` // attempts in order, e.g. "round 1: eth0 dhcp: no lease: ..."

	ControllerName string    `json:"controller_name,omitempty"` // the name /v1/health gave
	DHCPServer     string    `json:"dhcp_server,omitempty"`     // DHCP only
	Renewals       int       `json:"renewals,omitempty"`        // DHCP renewals since the lease was obtained
	Took           string    `json:"took"`                      // start to READY, e.g. "312ms"
	Searches       int       `json:"searches"`                  // 1, plus one per search after a lost lease/address/controller
	ControllerOK   bool      `json:"controller_ok"`             // the last health check answered
	LastCheck      time.Time `json:"last_check"`
	CheckFailures  int       `json:"check_failures,omitempty"` // consecutive failed checks
	LastError      string    `json:"last_error,omitempty"`
	// Controllers is every controller this network leads to, Controller
	// first, then the others net.toml lists in its order: the phases after
	// g8-netup fail over along it when the one in use stops answering.
	Controllers []string `json:"controllers,omitempty"`
}

func (*Net) PhaseName() string { return "net" }

// ControllerList is the controllers to try, in order: Controller, then the
// rest of Controllers (a net.json of an older g8-netup lists only the one).
func (n *Net) ControllerList() []string {
	var l []string
	for _, c := range append([]string{n.Controller}, n.Controllers...) {
		if c != "" && !slices.Contains(l, c) {
			l = append(l, c)
		}
	}
	return l
}

// FailoverOrder is ControllerList with failed (the controller that failed
// last) moved to the end: after a loss the others are tried first, so a
// dead machine costs a timeout only when nothing else answers either.
func (n *Net) FailoverOrder(failed string) []string {
	l := n.ControllerList()
	if i := slices.Index(l, failed); i >= 0 {
		l = append(slices.Delete(l, i, i+1), failed)
	}
	return l
}

// Unlock is g8-unlock's result. It never holds the key.
type Unlock struct {
	Header
	NodeID     string    `json:"node_id"`
	Controller string    `json:"controller"`
	Backend    string    `json:"backend"` // encfs | gocryptfs
	Private    string    `json:"private"` // encrypted directory
	Mountpoint string    `json:"mountpoint"`
	FUSEPID    int       `json:"fuse_pid,omitempty"`
	Enrolled   bool      `json:"enrolled"`       // this boot created the private dir
	MACs       []string  `json:"macs,omitempty"` // sent to the controller, primary first
	CertExpiry time.Time `json:"cert_expiry,omitempty"`
	// SkippedFiles are the controller-managed files this boot did not
	// write, each "path: reason".
	SkippedFiles []string  `json:"skipped_files,omitempty"`
	StartedAt    time.Time `json:"started_at"`
	ReadyAt      time.Time `json:"ready_at"`
}

func (*Unlock) PhaseName() string { return "unlock" }

// ACSession is g8-acsession's view of its channel to the controller.
type ACSession struct {
	Header
	Controller     string    `json:"controller"`
	NodeID         string    `json:"node_id"`
	Connected      bool      `json:"connected"`
	ConnectedSince time.Time `json:"connected_since,omitempty"`
	LastOK         time.Time `json:"last_ok,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	QueueDepth     int       `json:"queue_depth"`
	StartedAt      time.Time `json:"started_at"`
	ReadyAt        time.Time `json:"ready_at"`
	Status         string    `json:"status,omitempty"`         // the STATUS= line: what it waits for
	Attempts       int       `json:"attempts"`                 // failed connects since the last success
	NextAttempt    time.Time `json:"next_attempt,omitempty"`   // when it tries again while not connected
	EventsAcked    uint64    `json:"events_acked"`             // highest event seq the controller stored
	EventsDropped  uint64    `json:"events_dropped,omitempty"` // refused while the queue was full, not yet reported
	JobsRun        int       `json:"jobs_run"`                 // jobs finished by this process
	CertNotAfter   time.Time `json:"cert_not_after,omitempty"` // expiry of the node certificate in use
	Controllers    []string  `json:"controllers,omitempty"`    // the failover list from net.json; Controller is the one in use
	Failovers      int       `json:"failovers,omitempty"`      // moves to another controller of the list since start
}

func (*ACSession) PhaseName() string { return "acsession" }

// SSHD is g8-sshd's listener and identity.
type SSHD struct {
	Header
	Listen         []string  `json:"listen"`
	HostKeys       []string  `json:"host_keys"` // SHA256 fingerprints
	AuthorizedKeys int       `json:"authorized_keys"`
	StartedAt      time.Time `json:"started_at"`
	ReadyAt        time.Time `json:"ready_at"`

	SSHDir             string    `json:"ssh_dir,omitempty"`
	AuthorizedKeysFile string    `json:"authorized_keys_file,omitempty"`
	SkippedLines       int       `json:"skipped_lines"`            // malformed authorized_keys lines
	KeysLoadedAt       time.Time `json:"keys_loaded_at,omitempty"` // last (re)load of authorized_keys
}

func (*SSHD) PhaseName() string { return "sshd" }

// FS is g8-fs's mounted sandboxes.
type FS struct {
	Header
	Sandboxes  []Sandbox `json:"sandboxes"`
	CacheDir   string    `json:"cache_dir"`
	CacheBytes int64     `json:"cache_bytes"`
	StartedAt  time.Time `json:"started_at"`
	ReadyAt    time.Time `json:"ready_at"`
	CacheLimit int64     `json:"cache_limit"` // --cache-size
	CacheFiles int       `json:"cache_files"` // chunks cached
	Store      string    `json:"store"`       // where chunks come from
	Fetches    int64     `json:"fetches"`     // blobs fetched since start
	FetchBytes int64     `json:"fetch_bytes"`
	Failures   int64     `json:"failures"` // fetches that ended in EIO
}

// Sandbox is one mounted flist.
type Sandbox struct {
	Name        string `json:"name"`
	Flist       string `json:"flist"`
	FlistHash   string `json:"flist_hash"`
	Mountpoint  string `json:"mountpoint"`
	State       string `json:"state"` // pending | mounted | failed
	Error       string `json:"error,omitempty"`
	Attempts    int    `json:"attempts"`               // mount attempts so far
	Nodes       int    `json:"nodes,omitempty"`        // inodes in the flist
	CachedBytes int64  `json:"cached_bytes,omitempty"` // of its content in the cache
	ReadErrors  int64  `json:"read_errors,omitempty"`  // reads answered with EIO
	// Conn is what the next g8-fs needs to take the mount's FUSE
	// connection over from systemd's fd store (docs/fs.md, "Restarts").
	Conn *FUSEConn `json:"fuse_conn,omitempty"`
}

// FUSEConn describes a live FUSE connection held in systemd's fd store.
type FUSEConn struct {
	FDName    string `json:"fd_name"`    // FDNAME= in the fd store
	FlistPath string `json:"flist_path"` // the flist file served (FlistHash checks it)
	// The kernel's INIT of the connection (the kernel sends it only once).
	Major        uint32 `json:"major"`
	Minor        uint32 `json:"minor"`
	MaxReadAhead uint32 `json:"max_readahead"`
	Flags        uint32 `json:"flags"`
	Flags2       uint32 `json:"flags2"`
}

func (*FS) PhaseName() string { return "fs" }
