package backend

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// EncFS is the backend the design names. It has published weaknesses
// (see docs/unlock.md); gocryptfs is the recommended choice.
type EncFS struct {
	Bin        string // encfs binary
	Fusermount string // for unmounting the init mount
}

func (e *EncFS) Name() string       { return "encfs" }
func (e *EncFS) FSType() string     { return "fuse.encfs" }
func (e *EncFS) ConfigFile() string { return ".encfs6.xml" }
func (e *EncFS) Check() error       { return checkTool(orDefault(e.Bin, "encfs")) }

// Init creates the volume. EncFS has no separate init command: it creates
// a volume when it mounts an empty directory with --standard, so Init
// mounts once on a scratch mountpoint and unmounts.
func (e *EncFS) Init(ctx context.Context, private string, password []byte) error {
	if err := os.MkdirAll(private, 0o700); err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	scratch, err := os.MkdirTemp("", "g8-unlock-init-")
	if err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	defer os.Remove(scratch)
	m, err := startFUSE(ctx, orDefault(e.Bin, "encfs"), e.FSType(), private, scratch, password,
		[]string{"-f", "--standard", "--stdinpass", private, scratch}, e.classify)
	if err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	if err := Unmount(e.Fusermount, scratch); err != nil {
		_ = m.Signal(os.Interrupt)
	}
	<-m.Done()
	if _, err := os.Stat(private + "/" + e.ConfigFile()); err != nil {
		return fmt.Errorf("encfs init %s: no %s afterwards: %v", private, e.ConfigFile(), err)
	}
	return nil
}

// Mount runs `encfs -f --stdinpass` without --standard, so an existing
// volume is never re-created.
func (e *EncFS) Mount(ctx context.Context, private, mountpoint string, password []byte) (*Mount, error) {
	return startFUSE(ctx, orDefault(e.Bin, "encfs"), e.FSType(), private, mountpoint, password,
		[]string{"-f", "--stdinpass", private, mountpoint}, e.classify)
}

func (e *EncFS) classify(code int, stderr string) error {
	switch {
	case strings.Contains(stderr, "Error decoding volume key"), strings.Contains(stderr, "password incorrect"):
		return ErrWrongKey
	case strings.Contains(stderr, "Failed to load config file"), strings.Contains(stderr, "Unable to load or parse config file"),
		strings.Contains(stderr, "Creating new encrypted volume"):
		return ErrCorrupt
	}
	return nil
}
