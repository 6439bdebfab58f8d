// Command g8-fs mounts the node's sandboxes: read-only trees described by
// flists whose contents are fetched lazily from a content store, verified
// and cached (see docs/fs.md). It also builds and inspects flists.
package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"time"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sandbox"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

func main() {
	o := sandbox.Options{}
	cacheSize := sandbox.ByteSize(sandbox.DefaultCacheSize)
	debug := false
	mountFlags := func(fs *flag.FlagSet) {
		fs.StringVar(&o.Config, "config", sandbox.DefaultConfig, "sandboxes to mount (TOML)")
		fs.StringVar(&o.CacheDir, "cache", sandbox.DefaultCacheDir, "chunk and flist cache directory")
		fs.Var(&cacheSize, "cache-size", "cache limit in bytes (K, M, G, T suffixes); least recently used chunks are evicted")
		fs.StringVar(&o.StateDir, "state-dir", state.DefaultDir, "state directory (reads net.json, writes fs.json)")
		fs.StringVar(&o.ConfigRoot, "config-root", sandbox.DefaultConfigRoot, "unlocked config; its ssl/ holds the node's TLS identity for the store")
		fs.StringVar(&o.Store, "store", "", "content store URL or directory (overrides fs.toml and the controller from net.json)")
		fs.DurationVar(&o.FetchTimeout, "fetch-timeout", 30*time.Second, "longest wait for an uncached chunk before the read fails with EIO")
		fs.IntVar(&o.Readahead, "readahead", 4, "chunks fetched ahead of a sequential reader (0: none)")
		fs.BoolVar(&debug, "debug", false, "log debug messages")
	}
	mount := func([]string) error {
		o.CacheSize = int64(cacheSize)
		log := sd.NewLogger("fs", debug)
		err := sandbox.Run(context.Background(), o, log)
		if err != nil {
			log.Error("failed", sd.PhaseFailed.Attr(), "error", err.Error())
			if errors.Is(err, sandbox.ErrConfig) {
				return cli.Exit(cli.ExitConfig, err)
			}
		}
		return err
	}
	mountDetails := `fs.toml lists [[sandbox]] tables (name, flist, mountpoint) and an optional
store URL; an flist is "blake3:<hex>" (fetched from the store and verified by
that hash), an http(s) URL or a path. READY=1 once every sandbox is mounted
(or failed for good); SIGHUP re-reads fs.toml and mounts/unmounts only what
changed; SIGTERM unmounts everything. See docs/fs.md.`

	var b sandbox.BuildCommand
	b.ChunkSize = sandbox.DefaultChunkSize
	var list bool
	// Func/BoolFunc rather than StringVar/BoolVar: these flags are parsed
	// again after the positional argument (interspersed) and must not be
	// reset to their defaults by the second registration.
	b.ConfigRoot = sandbox.DefaultConfigRoot
	set := func(p *string) func(string) error { return func(v string) error { *p = v; return nil } }
	buildFlags := func(fs *flag.FlagSet) {
		fs.Func("o", "flist file to write", set(&b.Output))
		fs.Func("store", "store URL (https://AC/v1/store) or directory", set(&b.Store))
		fs.Func("token-file", "file holding the admin bearer token for uploads (e.g. DATA/admin.token)", set(&b.TokenFile))
		fs.Func("config-root", "directory whose ssl/ca.pem verifies an https store (default /mnt/etc)", set(&b.ConfigRoot))
		fs.Func("ca", "CA certificate that verifies an https store (e.g. from `g8-ac ca`), instead of --config-root", set(&b.CA))
		fs.Var(&b.ChunkSize, "chunk-size", "chunk size, a power of two from 4K to 64M")
	}
	inspectFlags := func(fs *flag.FlagSet) {
		fs.BoolFunc("list", "also list every entry (inode, mode, owner, size, path)", func(string) error { list = true; return nil })
	}
	cli.Main(&cli.Command{
		Name:    "g8-fs",
		Summary: "Mount the sandboxes of fs.toml (the default command), or build and inspect flists.",
		Details: mountDetails,
		Flags:   mountFlags,
		Run:     mount,
		Sub: []*cli.Command{
			{
				Name:    "g8-fs mount",
				Summary: "Mount the sandboxes of fs.toml and serve them until stopped (the systemd unit).",
				Details: mountDetails,
				Flags:   mountFlags,
				Run:     mount,
			},
			{
				Name:    "g8-fs build",
				Args:    "DIR",
				Summary: "Chunk DIR into a store and write its flist; prints blake3:<hash> for fs.toml.",
				Details: `Chunks are 1 MiB (--chunk-size), named by the BLAKE3-256 of the stored blob,
zstd-compressed when that saves space; the store only receives chunks it does
not have. For an HTTP store (e.g. https://AC/v1/store) uploads carry the admin
token read from --token-file. The flist itself is stored too.`,
				Flags: buildFlags,
				Run: func(args []string) error {
					args, err := interspersed("g8-fs build", buildFlags, args)
					if err != nil {
						return err
					}
					if len(args) != 1 {
						return cli.Usagef("want exactly one DIR")
					}
					b.Dir = args[0]
					err = sandbox.RunBuild(context.Background(), b, os.Stdout, os.Stderr)
					if errors.Is(err, sandbox.ErrConfig) {
						return cli.Exit(cli.ExitConfig, err)
					}
					return err
				},
			},
			{
				Name:    "g8-fs inspect",
				Args:    "FLIST",
				Summary: "Validate a flist and print its hash and contents summary.",
				Flags:   inspectFlags,
				Run: func(args []string) error {
					args, err := interspersed("g8-fs inspect", inspectFlags, args)
					if err != nil {
						return err
					}
					if len(args) != 1 {
						return cli.Usagef("want exactly one FLIST")
					}
					err = sandbox.Inspect(args[0], list, os.Stdout)
					if errors.Is(err, sandbox.ErrConfig) {
						return cli.Exit(cli.ExitConfig, err)
					}
					return err
				},
			},
		},
	})
}

// interspersed parses flags that follow positional arguments ("build DIR
// -o X"), which the flag package stops at.
func interspersed(name string, flags func(*flag.FlagSet), args []string) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, cli.Usagef("%v (see --help)", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
