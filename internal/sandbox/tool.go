package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/g8os/boot/internal/atomicfile"
)

// BuildCommand is `g8-fs build DIR -o NAME.flist --store URL|DIR`.
type BuildCommand struct {
	Dir        string
	Output     string
	Store      string
	TokenFile  string // admin bearer token for an HTTP store; never argv or env
	ConfigRoot string // ssl/ca.pem to verify an https store
	CA         string // a CA file instead (e.g. `g8-ac ca > ac-ca.pem`)
	ChunkSize  ByteSize
}

// RunBuild builds, uploads and writes the flist, printing its reference.
func RunBuild(ctx context.Context, c BuildCommand, stdout, stderr io.Writer) error {
	if c.Output == "" {
		return fmt.Errorf("%w: -o NAME.flist is required", ErrConfig)
	}
	if c.Store == "" {
		return fmt.Errorf("%w: --store URL|DIR is required", ErrConfig)
	}
	var tlsConf *tls.Config
	if strings.HasPrefix(c.Store, "https://") {
		var err error
		if tlsConf, err = StoreTLS(c.ConfigRoot); err != nil {
			return err
		}
		if c.CA != "" {
			pem, err := os.ReadFile(c.CA)
			if err != nil {
				return fmt.Errorf("%w: --ca: %v", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%w: --ca %s: no certificate in it", ErrConfig, c.CA)
			}
			tlsConf.RootCAs = pool
		}
	}
	store, err := OpenStore(c.Store, tlsConf)
	if err != nil {
		return err
	}
	if hs, ok := store.(*HTTPStore); ok && c.TokenFile != "" {
		if !strings.HasPrefix(c.Store, "https://") {
			return fmt.Errorf("%w: --token-file with %s: the admin token is only sent over https", ErrConfig, c.Store)
		}
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("token file: %w", err)
		}
		hs.Token = strings.TrimSpace(string(tok))
		if hs.Token == "" {
			return fmt.Errorf("%w: token file %s is empty", ErrConfig, c.TokenFile)
		}
	}
	opt := BuildOptions{ChunkSize: uint32(c.ChunkSize)}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		opt.Progress = stderr
	}
	res, err := Build(ctx, c.Dir, store, opt)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.Output), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(c.Output, res.Flist, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", c.Output, err)
	}
	fmt.Fprintf(stdout, "%s: %d entries, %s in %d chunks; uploaded %d blobs (%s) to %s\nblake3:%s\n",
		c.Output, res.Entries, human(res.Bytes), res.Chunks, res.Uploaded, human(res.UploadedBytes), store, res.Ref)
	return nil
}

// Inspect prints a flist's header and, with list, every entry.
func Inspect(path string, list bool, w io.Writer) error {
	fl, err := OpenFlist(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	defer fl.Close()
	var files, dirs, links, other int
	var bytes, stored int64
	uniq := map[Hash]bool{}
	for i := uint32(0); i < fl.Len(); i++ {
		n := fl.Node(i)
		switch {
		case n.IsDir():
			dirs++
		case n.IsRegular():
			files++
			bytes += int64(n.Size)
			for k := uint32(0); k < n.B; k++ {
				r := fl.Chunk(n.A + k)
				if !uniq[r.Hash] {
					uniq[r.Hash] = true
					stored += int64(r.StoredSize)
				}
			}
		case n.IsSymlink():
			links++
		default:
			other++
		}
	}
	fmt.Fprintf(w, "flist      %s\nref        blake3:%s (packed, as g8-fs build stores it)\nfile hash  %s\nversion    %d\nchunk size %s\ninodes     %d (%d dirs, %d files, %d symlinks, %d other)\ncontent    %s in %d unique chunks (%s stored)\n",
		path, HashOf(PackFlist(fl.data)), fl.Hash(), FlistVersion, human(int64(fl.ChunkSize())), fl.Len(), dirs, files, links, other, human(bytes), len(uniq), human(stored))
	if !list {
		return nil
	}
	return fl.Walk(func(p string, idx uint32, n *Node) error {
		extra := ""
		switch {
		case n.IsSymlink():
			extra = " -> " + string(fl.Target(n))
		case n.IsRegular():
			extra = fmt.Sprintf(" %d chunks", n.B)
		}
		_, err := fmt.Fprintf(w, "%7d %s %5d:%-5d %12d %s%s\n", idx+1, modeString(n.Mode), n.UID, n.GID, n.Size, p, extra)
		return err
	})
}

func modeString(m uint32) string {
	t := map[uint32]byte{syscall.S_IFDIR: 'd', syscall.S_IFREG: '-', syscall.S_IFLNK: 'l', syscall.S_IFCHR: 'c',
		syscall.S_IFBLK: 'b', syscall.S_IFIFO: 'p', syscall.S_IFSOCK: 's'}[m&syscall.S_IFMT]
	return string(t) + strconv.FormatUint(uint64(m&0o7777), 8)
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ByteSize is a flag value such as 10G, 512M or 1048576.
type ByteSize int64

func (b *ByteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

// Type implements pflag.Value: the word --help shows for the value.
func (b *ByteSize) Type() string { return "SIZE" }

// Set implements pflag.Value.
func (b *ByteSize) Set(s string) error {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I"))
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	*b = ByteSize(v * mult)
	return nil
}
