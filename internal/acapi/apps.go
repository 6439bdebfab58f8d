package acapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Job kinds of the grid's app lifecycle. The controller's grid manager
// enqueues them; g8-acsession runs them. Every one is idempotent: running
// it twice leaves the node as running it once does.
const (
	// JobAppInstall makes the app run with exactly Spec: its sandbox
	// mounted, the spec persisted, its unit started, or replaced when it
	// runs another spec (a roll). Args: AppInstallArgs.
	JobAppInstall = "app.install"
	// JobAppStart starts an installed app that is not running. Args: AppArgs.
	JobAppStart = "app.start"
	// JobAppStop stops an app and keeps it installed. Args: AppArgs.
	JobAppStop = "app.stop"
	// JobAppRestart stops and starts an installed app. Args: AppArgs.
	JobAppRestart = "app.restart"
	// JobAppRemove stops an app, unmounts its sandbox and forgets it. Args: AppArgs.
	JobAppRemove = "app.remove"
	// JobAppLogs returns the app's last journal lines on stdout. Args: AppLogsArgs.
	JobAppLogs = "app.logs"
	// JobAppShow returns, on stdout, `systemd-analyze security` of the
	// app's unit as it runs. Args: AppArgs.
	JobAppShow = "app.show"
)

// App states reported in AppStatus.State.
const (
	AppRunning    = "running"    // unit active
	AppStarting   = "starting"   // unit activating (first start or a restart after a crash)
	AppStopped    = "stopped"    // installed, not running, by request
	AppFailed     = "failed"     // the unit failed and systemd gave up restarting it
	AppUnhealthy  = "unhealthy"  // running, but its health check fails
	AppInstalling = "installing" // sandbox being mounted
)

// AppSpec is everything a node needs to run one app. The grid builds it
// from the repository; the node persists it and turns it into a transient
// systemd unit.
type AppSpec struct {
	Name       string            `json:"name"`
	Flist      string            `json:"flist"`   // the sandbox, as g8-fs names flists
	Command    []string          `json:"command"` // argv; argv[0] is a path inside the sandbox
	Env        map[string]string `json:"env,omitempty"`
	Restart    string            `json:"restart"` // systemd Restart=: always | on-failure | no
	RestartSec Duration          `json:"restart_sec"`
	MemoryMax  uint64            `json:"memory_max,omitempty"` // bytes, 0 = no limit
	CPUQuota   int               `json:"cpu_quota,omitempty"`  // percent of one CPU, 0 = no limit
	Health     *AppHealth        `json:"health,omitempty"`
	// The app's boundary (docs/grid.md "Boundary"); the zero value is the
	// strictest: a dynamic user, no capabilities, no state directory.
	User         string   `json:"user,omitempty"`         // "" (a dynamic user) or "root"
	Capabilities []string `json:"capabilities,omitempty"` // capability names it keeps (CAP_NET_BIND_SERVICE)
	State        bool     `json:"state,omitempty"`        // a writable state directory, $STATE_DIRECTORY
}

// AppHealth is a command run inside the sandbox; non-zero exit or a
// timeout counts as a failure, Retries failures in a row as unhealthy.
type AppHealth struct {
	Command  []string `json:"command"`
	Interval Duration `json:"interval"`
	Timeout  Duration `json:"timeout"`
	Retries  int      `json:"retries"`
}

// Hash identifies the spec's content: the node reports it in
// AppStatus.Spec and the grid rolls the app when it differs from the
// repository's. encoding/json sorts map keys, so equal specs hash equal.
func (s *AppSpec) Hash() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic("acapi: AppSpec is always encodable: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// MaxCPUQuota is the largest AppSpec.CPUQuota (percent of one CPU): 1024
// CPUs. The grid and the node both refuse more.
const MaxCPUQuota = 1024 * 100

// AppInstallArgs are the args of JobAppInstall.
type AppInstallArgs struct {
	Spec AppSpec `json:"spec"`
	// Hash is the controller's Spec.Hash. The node reports it back as it
	// came, so a node built with another AppSpec (a field more or less)
	// never sees a different spec and rolls forever. New AppSpec fields
	// are omitempty for the same reason.
	Hash string `json:"hash,omitempty"`
}

// AppArgs name the app of JobAppStart, JobAppStop, JobAppRestart, JobAppRemove.
type AppArgs struct {
	Name string `json:"name"`
}

// AppLogsArgs are the args of JobAppLogs.
type AppLogsArgs struct {
	Name  string `json:"name"`
	Lines int    `json:"lines"`
}

// capNames are the Linux capabilities by number (capability.h), the names
// an AppSpec may ask for.
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// CapabilityMask turns capability names into systemd's bit mask; an
// unknown name is an error naming it.
func CapabilityMask(names []string) (uint64, error) {
	var m uint64
	for _, n := range names {
		i := -1
		for j, c := range capNames {
			if c == n {
				i = j
			}
		}
		if i < 0 {
			return 0, fmt.Errorf("capabilities: %q is not a Linux capability (like CAP_NET_BIND_SERVICE)", n)
		}
		m |= 1 << i
	}
	return m, nil
}
