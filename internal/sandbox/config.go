package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is fs.toml.
type Config struct {
	// Store is the content store's base URL (or a local directory); empty
	// means the controller g8-netup found, + "/v1/store".
	Store     string          `toml:"store"`
	Sandboxes []SandboxConfig `toml:"sandbox"`
}

// SandboxConfig is one [[sandbox]].
type SandboxConfig struct {
	Name string `toml:"name"`
	// Flist is "blake3:<hex>" (fetched from the store and verified by that
	// hash), an http(s) URL, or a local path.
	Flist      string `toml:"flist"`
	Mountpoint string `toml:"mountpoint"`
}

// MaxSandboxes bounds fs.toml: g8-fs.service's FileDescriptorStoreMax= is
// twice as many (a connection and its open-file table per sandbox).
const MaxSandboxes = 256

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// LoadConfig reads and validates fs.toml; errors name the file and field.
// A missing file is a node without sandboxes (yet): the controller may
// write one later and reload.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Config{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes and validates fs.toml contents.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("unknown field %q", und[0].String())
	}
	if len(c.Sandboxes) > MaxSandboxes {
		return nil, fmt.Errorf("sandbox: %d tables, at most %d (each mount's connection has a place in systemd's fd store, FileDescriptorStoreMax= in g8-fs.service)", len(c.Sandboxes), MaxSandboxes)
	}
	names := map[string]bool{}
	mps := map[string]string{}
	for i, s := range c.Sandboxes {
		at := fmt.Sprintf("sandbox[%d]", i)
		if s.Name != "" {
			at = fmt.Sprintf("sandbox %q", s.Name)
		}
		switch {
		case !nameRE.MatchString(s.Name):
			return nil, fmt.Errorf("%s: name: want 1-64 of [a-z0-9._-], starting with a letter or digit", at)
		case names[s.Name]:
			return nil, fmt.Errorf("%s: name: used twice", at)
		case s.Flist == "":
			return nil, fmt.Errorf("%s: flist: missing", at)
		case !filepath.IsAbs(s.Mountpoint) || filepath.Clean(s.Mountpoint) == "/":
			return nil, fmt.Errorf("%s: mountpoint %q: want an absolute path below /", at, s.Mountpoint)
		}
		if strings.HasPrefix(s.Flist, "http://") {
			// The flist pins every chunk's hash; over plain http it
			// could be swapped in transit.
			return nil, fmt.Errorf("%s: flist %q: plain http is not verified; use https:// or blake3:<hash>", at, s.Flist)
		}
		if strings.HasPrefix(s.Flist, "blake3:") {
			if _, err := ParseHash(strings.TrimPrefix(s.Flist, "blake3:")); err != nil {
				return nil, fmt.Errorf("%s: flist: %w", at, err)
			}
		}
		mp := filepath.Clean(s.Mountpoint)
		if other, dup := mps[mp]; dup {
			return nil, fmt.Errorf("%s: mountpoint %s: also used by sandbox %q", at, mp, other)
		}
		for o, on := range mps {
			if strings.HasPrefix(mp+"/", o+"/") || strings.HasPrefix(o+"/", mp+"/") {
				return nil, fmt.Errorf("%s: mountpoint %s: nested with sandbox %q at %s", at, mp, on, o)
			}
		}
		c.Sandboxes[i].Mountpoint = mp
		names[s.Name] = true
		mps[mp] = s.Name
	}
	return &c, nil
}

// ReloadPlan is what a reload changes: sandboxes to unmount and to mount.
// A sandbox whose flist or mountpoint changed is in both.
type ReloadPlan struct {
	Remove []string
	Add    []SandboxConfig
}

// PlanReload compares the running sandboxes with a new configuration;
// sandboxes that did not change are left alone.
func PlanReload(running []SandboxConfig, next []SandboxConfig) ReloadPlan {
	var p ReloadPlan
	old := map[string]SandboxConfig{}
	for _, s := range running {
		old[s.Name] = s
	}
	seen := map[string]bool{}
	for _, s := range next {
		seen[s.Name] = true
		o, ok := old[s.Name]
		switch {
		case !ok:
			p.Add = append(p.Add, s)
		case o != s:
			p.Remove = append(p.Remove, s.Name)
			p.Add = append(p.Add, s)
		}
	}
	for _, s := range running {
		if !seen[s.Name] {
			p.Remove = append(p.Remove, s.Name)
		}
	}
	return p
}
