package apps

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/g8os/boot/internal/acapi"
)

// The boundary an app runs in (docs/grid.md "Boundary"): its root is its
// sandbox, read-only; it writes only to a private /tmp, a private /run
// (systemd's, needed to start anything in the root) and, when its spec
// asks, its state directory; it sees a private /dev with the basic
// devices; it runs as a dynamic user with no capabilities and cannot gain
// any. A spec opts out with user = "root" or named capabilities.

// StateDir is where an app's state directory lives on the node (systemd's
// StateDirectory=, relative to /var/lib); the app finds it in
// $STATE_DIRECTORY, at /var/lib/<StateDir> inside its root too.
func StateDir(app string) string { return "g8os/apps/" + app }

// ownPaths are the paths in the app's root that systemd mounts over:
// the API file systems, the private /run, /tmp and /var/tmp, and the
// state directory. The sandbox's own entries there are not bound (and
// systemd must be able to create them as mountpoints).
func ownPaths(s *acapi.AppSpec) []string {
	p := []string{"/dev", "/proc", "/run", "/sys", "/tmp", "/var/tmp"}
	if s.State {
		p = append(p, "/var/lib/"+StateDir(s.Name))
	}
	return p
}

// bind is one read-only bind of the sandbox into the app's root, as
// systemd's BindReadOnlyPaths= takes it over D-Bus: a(ssbt).
type bind struct {
	Source, Destination string
	IgnoreMissing       bool
	Flags               uint64
}

// rootBinds lists the read-only binds that make the app's root its
// sandbox: each top-level entry of the sandbox, except the paths systemd
// mounts over (own), and, for a directory on the way to one of those
// (var for /var/tmp), that directory's entries instead, one level down,
// the same way. systemd creates the mountpoints it needs in the root
// directory, which is writable while it sets up and read-only after.
func rootBinds(sandbox string, own []string) ([]bind, error) {
	var out []bind
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := os.ReadDir(filepath.Join(sandbox, rel))
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := path.Join("/", rel, e.Name())
			switch {
			case contains(own, p):
				continue
			case e.IsDir() && onTheWay(own, p):
				if err := walk(strings.TrimPrefix(p, "/")); err != nil {
					return err
				}
				continue
			}
			out = append(out, bind{Source: filepath.Join(sandbox, p), Destination: p})
		}
		return nil
	}
	if err := walk(""); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// onTheWay reports whether dir is an ancestor of one of the paths.
func onTheWay(paths []string, dir string) bool {
	for _, p := range paths {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// boundaryProperties are the unit's sandboxing: everything
// `systemd-analyze security` scores, at the strictest an ordinary network
// service still runs with. Network stays open (apps serve on the node's
// network); JIT compilers keep writable executable memory.
func boundaryProperties(s *acapi.AppSpec) ([]sddbus.Property, error) {
	caps, err := acapi.CapabilityMask(s.Capabilities)
	if err != nil {
		return nil, fmt.Errorf("spec %s: %w", s.Name, err)
	}
	root := s.User == "root"
	prop := func(name string, v any) sddbus.Property {
		return sddbus.Property{Name: name, Value: dbus.MakeVariant(v)}
	}
	type filter struct {
		Allow bool
		Names []string
	}
	props := []sddbus.Property{
		prop("NoNewPrivileges", true),
		prop("ProtectSystem", "strict"),
		prop("ProtectHome", "yes"),
		prop("PrivateTmp", true),
		prop("PrivateDevices", true),
		prop("PrivateIPC", true),
		prop("ProtectKernelTunables", true),
		prop("ProtectKernelModules", true),
		prop("ProtectKernelLogs", true),
		prop("ProtectControlGroups", true),
		prop("ProtectClock", true),
		prop("ProtectHostname", true),
		prop("ProtectProc", "invisible"),
		prop("ProcSubset", "pid"),
		prop("RestrictNamespaces", uint64(0)), // the namespaces it may create: none
		prop("LockPersonality", true),
		prop("RestrictRealtime", true),
		prop("RestrictSUIDSGID", true),
		prop("SystemCallArchitectures", []string{"native"}),
		prop("SystemCallFilter", filter{true, []string{"@system-service"}}),
		prop("SystemCallErrorNumber", int32(1)), // EPERM rather than a kill: the app sees why
		prop("RestrictAddressFamilies", filter{true, []string{"AF_INET", "AF_INET6", "AF_UNIX"}}),
		prop("UMask", uint32(0o077)),
	}
	switch {
	case root && len(s.Capabilities) == 0:
		// user = "root" and no capabilities named: root as before, with
		// every capability, still in the read-only sandbox.
	case root:
		props = append(props, prop("CapabilityBoundingSet", caps))
	default:
		props = append(props, prop("DynamicUser", true),
			prop("CapabilityBoundingSet", caps), prop("AmbientCapabilities", caps))
		if caps == 0 {
			// No capability to keep: a user namespace of its own as well
			// (capabilities held there would not count on the node's
			// network, so only without any).
			props = append(props, prop("PrivateUsers", true),
				prop("SystemCallFilter", filter{false, []string{"@privileged", "@resources"}}))
		}
	}
	if s.State {
		props = append(props, prop("StateDirectory", []string{StateDir(s.Name)}))
	}
	return props, nil
}
