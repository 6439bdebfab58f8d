package acapi

import (
	"fmt"
	"path"
	"strings"
)

// Files g8-unlock keeps in a node's unlocked config (/mnt/etc), relative
// to it. The node owns them: a controller-managed file never takes their
// place, or one `g8-ac config set` would stop every node of the fleet from
// unlocking.
const (
	ConfigMarker         = ".g8os-unlocked"
	ConfigCA             = "ssl/ca.pem"
	ConfigCert           = "ssl/node.pem"
	ConfigKey            = "ssl/node.key"
	ConfigHostKey        = "ssh/ssh_host_ed25519_key"
	ConfigAuthorizedKeys = "ssh/authorized_keys"
	// ConfigTempSuffix ends the names g8-unlock writes a file under
	// before renaming it into place.
	ConfigTempSuffix = ".g8-unlock.tmp"
)

var nodeOwnedFiles = []string{ConfigMarker, ConfigCA, ConfigCert, ConfigKey,
	ConfigHostKey, ConfigHostKey + ".pub", ConfigAuthorizedKeys}

// MaxConfigPath caps a managed file's path (PATH_MAX is 4096; a few
// directories deep is what config needs).
const MaxConfigPath = 512

// CheckConfigPath is the one rule for a controller-managed file's path,
// applied by `g8-ac config set` and again by the node before writing:
// relative to the unlocked config, clean, inside it, printable, and
// neither a file the node owns, a directory holding one (ssh, ssl), a path
// below one, nor one of g8-unlock's temporary names.
func CheckConfigPath(p string) error {
	switch {
	case p == "" || p == ".":
		return fmt.Errorf("path %q: empty", p)
	case len(p) > MaxConfigPath:
		return fmt.Errorf("path %.40q...: %d bytes, at most %d", p, len(p), MaxConfigPath)
	case !IsText(p) || strings.ContainsRune(p, '\\'):
		return fmt.Errorf("path %q: control characters or backslashes; a managed path is printable text with / between directories", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q: absolute; paths are relative to the node's unlocked config (/mnt/etc)", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %q: not clean (want %q)", p, path.Clean(p))
	case p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q: leaves the unlocked config", p)
	case strings.HasSuffix(p, ConfigTempSuffix):
		return fmt.Errorf("path %q: ends in %s, the name g8-unlock writes its files under", p, ConfigTempSuffix)
	}
	for _, own := range nodeOwnedFiles {
		switch {
		case p == own:
			return fmt.Errorf("path %q: written by the node itself (g8-unlock), not a controller-managed file", p)
		case strings.HasPrefix(own, p+"/"):
			return fmt.Errorf("path %q: a directory of the node's own files (%s); manage a file inside it instead", p, own)
		case strings.HasPrefix(p, own+"/"):
			return fmt.Errorf("path %q: below %s, a file the node writes itself", p, own)
		}
	}
	return nil
}
