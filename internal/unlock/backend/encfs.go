package backend

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// EncFS is the design's default backend. Its standard mode does not
// authenticate ciphertext, so volumes are created in expert mode with a MAC
// on every block and file IVs chained to the path (docs/unlock.md).
type EncFS struct {
	Bin        string // encfs binary
	Fusermount string // for unmounting the init mount
}

func (e *EncFS) Name() string       { return "encfs" }
func (e *EncFS) FSType() string     { return "fuse.encfs" }
func (e *EncFS) ConfigFile() string { return ".encfs6.xml" }
func (e *EncFS) Check() error       { return checkTool(orDefault(e.Bin, "encfs")) }

// encfsExpertAnswers are the answers to encfs 1.9's expert-mode creation
// prompts, in the order it asks them: expert mode, AES, 256-bit key,
// 1024-byte blocks, block name encoding, filename IV chaining, per-file IV,
// file IV chained to the path (a file's ciphertext moved under another
// name no longer decodes), an 8-byte MAC on every block, no random bytes
// per block (the per-file IV already makes MACs of equal blocks differ),
// file holes passed through. The password line follows. The resulting
// config is checked (encfsWant), so prompts that change in another encfs
// version fail the init instead of making a weaker volume.
var encfsExpertAnswers = []byte("x\n1\n256\n1024\n1\ny\ny\ny\ny\n0\ny\n")

// encfsConfig is the part of .encfs6.xml that decides how ciphertext is
// protected.
type encfsConfig struct {
	Cipher             string `xml:"cfg>cipherAlg>name"`
	KeySize            int    `xml:"cfg>keySize"`
	UniqueIV           int    `xml:"cfg>uniqueIV"`
	ChainedNameIV      int    `xml:"cfg>chainedNameIV"`
	ExternalIVChaining int    `xml:"cfg>externalIVChaining"`
	BlockMACBytes      int    `xml:"cfg>blockMACBytes"`
}

// encfsWant is what every volume g8-unlock creates must have.
var encfsWant = encfsConfig{Cipher: "ssl/aes", KeySize: 256, UniqueIV: 1, ChainedNameIV: 1, ExternalIVChaining: 1, BlockMACBytes: 8}

// readEncFSConfig parses the protection settings of the volume in private.
func readEncFSConfig(private string) (encfsConfig, error) {
	var c encfsConfig
	f, err := os.Open(private + "/.encfs6.xml")
	if err != nil {
		return c, err
	}
	defer f.Close()
	if err := xml.NewDecoder(io.LimitReader(f, 64<<10)).Decode(&c); err != nil {
		return c, fmt.Errorf("%s/.encfs6.xml: %w", private, err)
	}
	return c, nil
}

// Authenticated reports whether the EncFS volume in private has block MACs.
// Volumes made before g8-unlock created them in expert mode have none.
func (e *EncFS) Authenticated(private string) (bool, error) {
	c, err := readEncFSConfig(private)
	if err != nil {
		return false, err
	}
	return c.BlockMACBytes > 0, nil
}

// Init creates the volume. EncFS has no separate init command: it creates
// a volume when it mounts an empty directory, so Init mounts once on a
// scratch mountpoint, answering the expert-mode prompts on stdin before the
// password, and unmounts.
func (e *EncFS) Init(ctx context.Context, private string, password []byte) error {
	if err := os.MkdirAll(private, 0o700); err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	scratch, err := os.MkdirTemp("", "g8-unlock-init-")
	if err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	defer os.Remove(scratch)
	m, err := startFUSE(ctx, orDefault(e.Bin, "encfs"), e.FSType(), private, scratch, encfsExpertAnswers, password,
		[]string{"-f", "--stdinpass", private, scratch}, e.classify)
	if err != nil {
		return fmt.Errorf("encfs init: %w", err)
	}
	if err := Unmount(e.Fusermount, scratch); err != nil {
		_ = m.Signal(os.Interrupt)
	}
	<-m.Done()
	c, err := readEncFSConfig(private)
	if err != nil {
		return fmt.Errorf("encfs init %s: no usable %s afterwards: %v", private, e.ConfigFile(), err)
	}
	if c != encfsWant {
		return fmt.Errorf("encfs init %s: the volume came out as %+v, not %+v (did this encfs version change its expert-mode prompts?)", private, c, encfsWant)
	}
	return nil
}

// Mount runs `encfs -f --stdinpass` without a creation mode, so an existing
// volume is never re-created. A volume with MACs is mounted with
// --require-macs; see MountLegacy for the ones without.
func (e *EncFS) Mount(ctx context.Context, private, mountpoint string, password []byte) (*Mount, error) {
	return e.mount(ctx, private, mountpoint, password, true)
}

// MountLegacy mounts a volume created before block MACs (the seed's
// standard mode). It exists only to move such a volume over; Mount refuses
// it, so a config edited to drop its MACs is not silently accepted.
func (e *EncFS) MountLegacy(ctx context.Context, private, mountpoint string, password []byte) (*Mount, error) {
	return e.mount(ctx, private, mountpoint, password, false)
}

func (e *EncFS) mount(ctx context.Context, private, mountpoint string, password []byte, requireMACs bool) (*Mount, error) {
	args := []string{"-f", "--stdinpass", private, mountpoint}
	if requireMACs {
		args = append([]string{"--require-macs"}, args...)
	}
	return startFUSE(ctx, orDefault(e.Bin, "encfs"), e.FSType(), private, mountpoint, nil, password, args, e.classify)
}

// Passwd runs `encfsctl autopasswd` (old and new password lines on stdin)
// on a copy of the config named by ENCFS6_CONFIG, renamed over the
// original when done: encfs rewrites its config in place otherwise.
func (e *EncFS) Passwd(ctx context.Context, private string, old, new []byte) error {
	ctl := filepath.Join(filepath.Dir(orDefault(e.Bin, "encfs")), "encfsctl")
	if !strings.Contains(orDefault(e.Bin, "encfs"), "/") {
		ctl = "encfsctl"
	}
	return passwd(private, e.ConfigFile(), old, new, func(copyPath string, stdin []byte) error {
		return runWithStdin(ctx, ctl, []string{"autopasswd", private}, []string{"ENCFS6_CONFIG=" + copyPath}, stdin, func(code int, out string) error {
			if strings.Contains(out, "Invalid password") {
				return ErrWrongKey
			}
			return e.classify(code, out)
		})
	})
}

// ErrUnauthenticated: an EncFS volume without block MACs was refused.
var ErrUnauthenticated = errors.New("volume has no block MACs (created before authenticated encryption)")

func (e *EncFS) classify(code int, stderr string) error {
	switch {
	case strings.Contains(stderr, "Error decoding volume key"), strings.Contains(stderr, "password incorrect"):
		return ErrWrongKey
	case strings.Contains(stderr, "require-macs"), strings.Contains(stderr, "MAC block headers"):
		return ErrUnauthenticated
	case strings.Contains(stderr, "Failed to load config file"), strings.Contains(stderr, "Unable to load or parse config file"),
		strings.Contains(stderr, "Creating new encrypted volume"):
		return ErrCorrupt
	}
	return nil
}
