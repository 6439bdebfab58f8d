// Command g8-fs mounts the node's sandboxes: read-only trees described by
// flists whose contents are fetched lazily from a content store, verified
// and cached (see docs/fs.md). It also builds and inspects flists.
package main

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sandbox"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

func main() {
	o := sandbox.Options{Passthrough: sandbox.PassthroughAuto}
	cacheSize := sandbox.ByteSize(sandbox.DefaultCacheSize)
	debug := false
	mountFlags := func(fs *cli.FlagSet) {
		fs.StringVar(&o.Config, "config", sandbox.DefaultConfig, "sandboxes to mount (TOML)")
		fs.StringVar(&o.CacheDir, "cache", sandbox.DefaultCacheDir, "chunk and flist cache directory")
		fs.Var(&cacheSize, "cache-size", "cache limit in bytes (K, M, G, T suffixes); least recently used chunks are evicted")
		fs.StringVar(&o.StateDir, "state-dir", state.DefaultDir, "state directory (reads net.json, writes fs.json)")
		fs.StringVar(&o.ConfigRoot, "config-root", sandbox.DefaultConfigRoot, "unlocked config; its ssl/ holds the node's TLS identity for the store")
		fs.StringVar(&o.Store, "store", "", "content store URL or directory (overrides fs.toml and the controller from net.json)")
		fs.DurationVar(&o.FetchTimeout, "fetch-timeout", 30*time.Second, "longest wait for an uncached chunk before the read fails with EIO")
		fs.IntVar(&o.Readahead, "readahead", 4, "chunks first fetched ahead of a sequential reader; the window doubles up to 8 while it stays sequential (0: none)")
		fs.Var(&o.Passthrough, "passthrough", "FUSE passthrough: the kernel reads files whole in the cache itself (kernel 6.9+), at the cost of an OPEN round trip per open; auto: for sandboxes whose files average 1 MiB (a chunk) or more, off: no-open mode everywhere")
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
	buildFlags := func(fs *cli.FlagSet) {
		fs.StringVarP(&b.Output, "output", "o", "", "flist `FILE` to write")
		fs.StringVar(&b.Store, "store", "", "store URL (https://AC/v1/store) or directory")
		fs.StringVar(&b.TokenFile, "token-file", "", "`FILE` holding the admin bearer token for uploads (e.g. DATA/admin.token)")
		fs.StringVar(&b.ConfigRoot, "config-root", sandbox.DefaultConfigRoot, "directory whose ssl/ca.pem verifies an https store")
		fs.StringVar(&b.CA, "ca", "", "CA certificate `FILE` that verifies an https store (e.g. from g8-ac ca), instead of --config-root")
		fs.Var(&b.ChunkSize, "chunk-size", "chunk size, a power of two from 4K to 64M")
	}
	inspectFlags := func(fs *cli.FlagSet) {
		fs.BoolVar(&list, "list", false, "also list every entry (inode, mode, owner, size, path)")
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
					if len(args) != 1 {
						return cli.Usagef("want exactly one DIR")
					}
					b.Dir = args[0]
					err := sandbox.RunBuild(context.Background(), b, os.Stdout, os.Stderr)
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
					if len(args) != 1 {
						return cli.Usagef("want exactly one FLIST")
					}
					err := sandbox.Inspect(args[0], list, os.Stdout)
					if errors.Is(err, sandbox.ErrConfig) {
						return cli.Exit(cli.ExitConfig, err)
					}
					return err
				},
			},
		},
	})
}
