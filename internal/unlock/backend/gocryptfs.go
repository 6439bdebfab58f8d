package backend

import (
	"context"
	"fmt"
	"os"
	"strconv"
)

// Gocryptfs is the recommended backend: authenticated encryption, audited.
type Gocryptfs struct {
	Bin     string // gocryptfs binary
	ScryptN int    // -scryptn for Init; 0 keeps the tool's default
}

func (g *Gocryptfs) Name() string       { return "gocryptfs" }
func (g *Gocryptfs) FSType() string     { return "fuse.gocryptfs" }
func (g *Gocryptfs) ConfigFile() string { return "gocryptfs.conf" }
func (g *Gocryptfs) Check() error       { return checkTool(orDefault(g.Bin, "gocryptfs")) }

// Exit codes of gocryptfs (internal/exitcodes in its source).
const (
	gocryptfsCipherDir         = 6
	gocryptfsLoadConf          = 11
	gocryptfsPasswordIncorrect = 12
	gocryptfsOpenConf          = 23
)

// Init runs `gocryptfs -init` with the password on stdin.
func (g *Gocryptfs) Init(ctx context.Context, private string, password []byte) error {
	if err := os.MkdirAll(private, 0o700); err != nil {
		return fmt.Errorf("gocryptfs init: %w", err)
	}
	args := []string{"-init", "-q"}
	if g.ScryptN > 0 {
		args = append(args, "-scryptn", strconv.Itoa(g.ScryptN))
	}
	line := append(append(make([]byte, 0, len(password)+1), password...), '\n')
	defer clear(line)
	if err := runWithStdin(ctx, orDefault(g.Bin, "gocryptfs"), append(args, private), nil, line, g.classify); err != nil {
		return fmt.Errorf("gocryptfs init: %w", err)
	}
	return nil
}

// Passwd runs `gocryptfs -passwd` (old and new password lines on stdin) on
// a copy of gocryptfs.conf given with -config, renamed over the original
// when done.
func (g *Gocryptfs) Passwd(ctx context.Context, private string, old, new []byte) error {
	return passwd(private, g.ConfigFile(), old, new, func(copyPath string, stdin []byte) error {
		args := []string{"-passwd", "-q", "-config", copyPath}
		if g.ScryptN > 0 {
			args = append(args, "-scryptn", strconv.Itoa(g.ScryptN))
		}
		return runWithStdin(ctx, orDefault(g.Bin, "gocryptfs"), append(args, private), nil, stdin, g.classify)
	})
}

// Mount runs `gocryptfs -fg`, which reads the password from stdin.
func (g *Gocryptfs) Mount(ctx context.Context, private, mountpoint string, password []byte) (*Mount, error) {
	return startFUSE(ctx, orDefault(g.Bin, "gocryptfs"), g.FSType(), private, mountpoint, nil, password,
		[]string{"-q", "-nosyslog", "-fg", private, mountpoint}, g.classify)
}

func (g *Gocryptfs) classify(code int, _ string) error {
	switch code {
	case gocryptfsPasswordIncorrect:
		return ErrWrongKey
	case gocryptfsCipherDir, gocryptfsLoadConf, gocryptfsOpenConf:
		return ErrCorrupt
	}
	return nil
}
