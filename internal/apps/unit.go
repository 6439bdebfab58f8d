package apps

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/g8os/boot/internal/acapi"
)

// UnitName is the transient systemd unit an app runs as, so operators find
// it with `systemctl status g8-app-<name>` and `journalctl -u`.
func UnitName(app string) string { return "g8-app-" + app + ".service" }

// SandboxName is the app's sandbox in g8-fs's configuration.
func SandboxName(app string) string { return "app-" + app }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidName reports whether app is a name the node accepts.
func ValidName(app string) bool { return nameRE.MatchString(app) }

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// CheckSpec refuses a spec the node cannot turn into a unit; the grid
// validates the same rules earlier, this guards the node against any sender.
func CheckSpec(s *acapi.AppSpec) error {
	switch {
	case !nameRE.MatchString(s.Name):
		return fmt.Errorf("spec: name %q: lower-case letters, digits and '-', at most 63", s.Name)
	case s.Flist == "":
		return fmt.Errorf("spec %s: flist: missing", s.Name)
	case len(s.Command) == 0 || !strings.HasPrefix(s.Command[0], "/"):
		return fmt.Errorf("spec %s: command: want an absolute path first", s.Name)
	}
	switch s.Restart {
	case "always", "on-failure", "no":
	default:
		return fmt.Errorf("spec %s: restart: %q is not always, on-failure or no", s.Name, s.Restart)
	}
	for k, v := range s.Env {
		if !envKeyRE.MatchString(k) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("spec %s: env: %q is not a valid variable", s.Name, k)
		}
	}
	if s.RestartSec < 0 || s.CPUQuota < 0 {
		return fmt.Errorf("spec %s: negative restart_sec or cpu_quota", s.Name)
	}
	if s.CPUQuota > acapi.MaxCPUQuota {
		// A huge one would wrap around as µs per second.
		return fmt.Errorf("spec %s: cpu_quota %d%%: more than %d%% (%d CPUs)", s.Name, s.CPUQuota, acapi.MaxCPUQuota, acapi.MaxCPUQuota/100)
	}
	if s.User != "" && s.User != "root" {
		return fmt.Errorf("spec %s: user: %q is not \"root\" (leave it out for a dynamic user)", s.Name, s.User)
	}
	if _, err := acapi.CapabilityMask(s.Capabilities); err != nil {
		return fmt.Errorf("spec %s: %w", s.Name, err)
	}
	return nil
}

// UnitProperties turns a spec into the transient unit's properties: the
// command chrooted into a read-only view of the sandbox (binds, from
// rootBinds), the boundary (boundaryProperties), the restart policy and
// the cgroup limits. Type=exec makes a command missing from the sandbox
// fail the start instead of a silent crash loop.
//
// The chroot is not the sandbox itself: systemd needs /proc, /run and
// /dev (and /tmp, the state directory) inside the root to start anything
// there, and cannot create those mountpoints in a read-only sandbox. So
// the root is an empty directory (root) into which the sandbox's entries
// are bound read-only; ProtectSystem=strict then makes the whole of it
// read-only: the app sees exactly its sandbox, plus the API file systems
// and its private writable places.
func UnitProperties(s *acapi.AppSpec, hash, root string, binds []bind) ([]sddbus.Property, error) {
	props := []sddbus.Property{
		sddbus.PropDescription(fmt.Sprintf("g8os grid app %s (spec %s)", s.Name, hash)),
		sddbus.PropType("exec"),
		ExecStart(s.Command[0], s.Command),
		{Name: "RootDirectory", Value: dbus.MakeVariant(root)},
		{Name: "MountAPIVFS", Value: dbus.MakeVariant(true)},
		{Name: "Restart", Value: dbus.MakeVariant(s.Restart)},
		{Name: "RestartUSec", Value: dbus.MakeVariant(uint64(time.Duration(s.RestartSec) / time.Microsecond))},
	}
	if len(binds) > 0 {
		props = append(props, sddbus.Property{Name: "BindReadOnlyPaths", Value: dbus.MakeVariant(binds)})
	}
	boundary, err := boundaryProperties(s)
	if err != nil {
		return nil, err
	}
	props = append(props, boundary...)
	if len(s.Env) > 0 {
		keys := make([]string, 0, len(s.Env))
		for k := range s.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		env := make([]string, 0, len(keys))
		for _, k := range keys {
			env = append(env, k+"="+s.Env[k])
		}
		props = append(props, sddbus.Property{Name: "Environment", Value: dbus.MakeVariant(env)})
	}
	if s.MemoryMax > 0 {
		props = append(props, sddbus.Property{Name: "MemoryMax", Value: dbus.MakeVariant(s.MemoryMax)})
	}
	if s.CPUQuota > 0 {
		// CPUQuota=50% is 500 ms of CPU time per second.
		props = append(props, sddbus.Property{Name: "CPUQuotaPerSecUSec", Value: dbus.MakeVariant(uint64(s.CPUQuota) * 10000)})
	}
	return props, nil
}

// ExecStart is a unit's command as ExecStartEx with systemd's
// no-env-expand flag (the ":" prefix of systemd.service(5)): plain
// ExecStart= expands $VAR, ${VAR} and $$ when the process starts, so an
// argument declared as "$HOME" or "C=$$" would reach the process
// rewritten, and one that is only an unset $VAR would vanish. argv is
// passed as is, argv[0] included; path is the executable. No
// ignore-failure flag ("-").
func ExecStart(path string, argv []string) sddbus.Property {
	type execCommandEx struct {
		Path  string
		Args  []string
		Flags []string
	}
	return sddbus.Property{Name: "ExecStartEx", Value: dbus.MakeVariant([]execCommandEx{{
		Path: path, Args: argv, Flags: []string{"no-env-expand"}}})}
}

// RootDir is the app's chroot: an empty directory beside its sandbox
// mount, into which the sandbox's entries are bound.
func RootDir(sandbox string) string { return filepath.Clean(sandbox) + ".root" }

// UnitState is the part of a unit's D-Bus properties an app's status
// comes from.
type UnitState struct {
	LoadState   string // loaded | not-found (a transient unit that is gone)
	ActiveState string // active | activating | deactivating | inactive | failed
	SubState    string // running | auto-restart | exited | dead | failed ...
	Result      string // success | exit-code | signal | core-dump | start-limit-hit ...
	ExitStatus  int32  // ExecMainStatus
	NRestarts   uint32 // restarts systemd did under Restart=
	Since       time.Time
}

// unitState reads UnitState from the property maps of the Unit and
// Service interfaces; missing properties stay zero.
func unitState(unit, service map[string]any) UnitState {
	var u UnitState
	u.LoadState, _ = unit["LoadState"].(string)
	u.ActiveState, _ = unit["ActiveState"].(string)
	u.SubState, _ = unit["SubState"].(string)
	if us, ok := unit["StateChangeTimestamp"].(uint64); ok && us > 0 {
		u.Since = time.UnixMicro(int64(us)).UTC()
	}
	u.Result, _ = service["Result"].(string)
	u.ExitStatus, _ = service["ExecMainStatus"].(int32)
	u.NRestarts, _ = service["NRestarts"].(uint32)
	return u
}

// Status is an app's state for the heartbeat, from its unit and what the
// node remembers of it. Pure, so the mapping is table-tested.
func Status(rec *Record, u UnitState, healthFailures int) acapi.AppStatus {
	st := acapi.AppStatus{Name: rec.Spec.Name, Spec: rec.SpecHash(), Since: u.Since,
		Restarts: rec.Restarts + int(u.NRestarts), Error: rec.Error}
	if st.Since.IsZero() {
		st.Since = rec.Since
	}
	switch {
	case u.LoadState != "loaded" || u.ActiveState == "inactive":
		// Gone (a reboot, or it exited under Restart=no) or stopped on request.
		st.State = acapi.AppStopped
	case u.ActiveState == "active" && rec.Spec.Health != nil && healthFailures >= rec.Spec.Health.Retries:
		st.State = acapi.AppUnhealthy
		st.Error = fmt.Sprintf("health check failed %d times in a row", healthFailures)
	case u.ActiveState == "active":
		st.State = acapi.AppRunning
		st.Error = ""
	case u.ActiveState == "activating":
		st.State = acapi.AppStarting
		if u.SubState == "auto-restart" && u.Result != "" && u.Result != "success" {
			st.Error = unitError(u)
		}
	case u.ActiveState == "deactivating":
		st.State = acapi.AppStarting
	case u.ActiveState == "failed":
		st.State = acapi.AppFailed
		st.Error = unitError(u)
	default:
		st.State = u.ActiveState
	}
	return st
}

func unitError(u UnitState) string {
	switch u.Result {
	case "exit-code":
		return fmt.Sprintf("exited with status %d", u.ExitStatus)
	case "signal", "core-dump":
		return fmt.Sprintf("killed by signal %d (%s)", u.ExitStatus, u.Result)
	case "start-limit-hit":
		return "restarted too often (start-limit-hit)"
	case "", "success":
		return ""
	}
	return u.Result
}
