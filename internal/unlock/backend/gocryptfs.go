package backend

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"
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
	cmd := exec.CommandContext(ctx, orDefault(g.Bin, "gocryptfs"), append(args, private)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return fmt.Errorf("gocryptfs init %s: %w", private, err)
	}
	ferr := feed(stdin, nil, password)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("gocryptfs init %s: %v: %s", private, err, bytes.TrimSpace(out.Bytes()))
	}
	if ferr != nil {
		return fmt.Errorf("gocryptfs init %s: password pipe: %w", private, ferr)
	}
	return nil
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
