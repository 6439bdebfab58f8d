package apps

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Config says where a node keeps its apps.
type Config struct {
	Dir       string // app records; persistent and private (in the unlocked config)
	FSConfig  string // g8-fs's config, where app sandboxes are added
	FSUnit    string // g8-fs's unit, reloaded after a change
	MountRoot string // app sandboxes are mounted below it
	StateDir  string // the phases' state files (g8-fs's fs.json)
}

// DefaultConfig places everything for a config root (/mnt/etc) and state
// directory (/run/g8os).
func DefaultConfig(configRoot, stateDir string) Config {
	return Config{
		Dir:       filepath.Join(configRoot, "g8os", "apps"),
		FSConfig:  filepath.Join(configRoot, "g8os", "fs.toml"),
		FSUnit:    "g8-fs.service",
		MountRoot: filepath.Join(stateDir, "apps"),
		StateDir:  stateDir,
	}
}

// Open connects to systemd over D-Bus (its private socket, so no bus
// daemon is needed) and returns a Runner for cfg, and a func that closes
// the connection.
// The connection outlives any one job, so it takes no job's context.
func Open(cfg Config, log *slog.Logger) (*Runner, func(), error) {
	conn, err := sddbus.NewSystemdConnectionContext(context.Background())
	if err != nil {
		conn, err = sddbus.NewWithContext(context.Background())
	}
	if err != nil {
		return nil, nil, fmt.Errorf("apps: connect to systemd: %w", err)
	}
	// g8-fs re-reads its config on SIGHUP. The signal goes to its main
	// process through systemd (KillUnit) rather than through the unit's
	// ExecReload=, which depends on a kill binary the image may not have.
	// g8-fs not running yet (a restore early in boot) reads the config when
	// it starts; Mount waits for its state file either way.
	reload := func(ctx context.Context) error {
		if p, err := conn.GetUnitPropertyContext(ctx, cfg.FSUnit, "ActiveState"); err == nil {
			if st, _ := p.Value.Value().(string); st != "active" && st != "reloading" {
				return nil
			}
		}
		return conn.KillUnitWithTarget(ctx, cfg.FSUnit, sddbus.Main, int32(syscall.SIGHUP))
	}
	r := &Runner{
		Dir:     cfg.Dir,
		Systemd: conn,
		Sandboxes: &FSConfig{Config: cfg.FSConfig, MountRoot: cfg.MountRoot, StateDir: cfg.StateDir,
			Reload: reload, Timeout: 60 * time.Second},
		Log: log,
	}
	return r, conn.Close, nil
}
