// g8-unlock fetches the node's unlock key from the controller and mounts
// the encrypted config at /mnt/etc through a FUSE child. See docs/unlock.md.
package main

import (
	"context"
	"os/signal"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/internal/unlock"
)

func main() {
	cfg := unlock.Config{Waits: unlock.DefaultWaits}
	var debug bool
	cli.Main(&cli.Command{
		Name:    "g8-unlock",
		Summary: "Fetch the node's unlock key from the controller and mount the encrypted config.",
		Details: `Reads the controller from STATE-DIR/net.json (g8-netup) and POSTs the node's
MACs (every NIC and veth link, the one the controller was found through
first) to its /v1/unlock over HTTPS verified against --trust-anchor. It waits
as long as it takes: pending approval, denied (asks again slowly), network
errors (backs off). STATUS= says what it waits for.

With the key it mounts --private at --mount with encfs or gocryptfs running
as its child in the foreground; the key reaches the tool only on its stdin,
as 64 hex digits, never in argv, the environment, a file or a log. First
boot (empty --private): the directory is created and the node enrolls: TLS
key + CSR signed by the controller (ssl/{ca.pem,node.pem,node.key}), its own
SSH host key (ssh/ssh_host_ed25519_key), ssh/authorized_keys and the
controller-managed files. Later boots refresh those and renew the certificate
in the last third of its lifetime. READY=1 once the marker file .g8os-unlocked
reads back through the mount; unlock.json in STATE-DIR says what was done.
SIGTERM unmounts; if the FUSE child dies the command exits 12.`,
		ExitCodes: unlock.ExitCodes,
		Flags: func(fs *cli.FlagSet) {
			fs.StringVar(&cfg.StateDir, "state-dir", state.DefaultDir, "phase state files: net.json in, unlock.json and unlock.lock out")
			fs.StringVar(&cfg.Private, "private", unlock.DefaultPrivate, "encrypted config `DIR`")
			fs.StringVar(&cfg.RecoveryFile, "recovery", "", "key-recovery metadata `FILE` (public values; default PRIVATE.recovery.json)")
			fs.StringVar(&cfg.Mountpoint, "mount", unlock.DefaultMountpoint, "`DIR` the config is mounted at")
			fs.StringVar(&cfg.Backend, "backend", unlock.DefaultBackend, "FUSE backend: encfs or gocryptfs (recommended; see docs/unlock.md)")
			fs.StringVar(&cfg.TrustAnchor, "trust-anchor", unlock.DefaultTrustAnchor, "PEM `FILE` the controller's certificate is verified against")
			fs.StringVar(&cfg.IdentityDir, "identity-dir", unlock.DefaultIdentityDir, "`DIR` (0700) of the node identity key node.key (made at first boot; proven on every unlock)")
			fs.StringVar(&cfg.Tools.EncFS, "encfs", "encfs", "encfs binary")
			fs.StringVar(&cfg.Tools.Gocryptfs, "gocryptfs", "gocryptfs", "gocryptfs binary")
			fs.StringVar(&cfg.Tools.Fusermount, "fusermount", "fusermount3", "fusermount binary (unmounting)")
			fs.IntVar(&cfg.Tools.GocryptfsScryptN, "gocryptfs-scryptn", 0, "scrypt cost (log2 N) when creating a gocryptfs volume; 0 = the tool's default")
			fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "timeout of one HTTPS request")
			fs.DurationVar(&cfg.Waits.Denied, "denied-retry", unlock.DefaultWaits.Denied, "wait before asking again after the controller denied the node")
			fs.DurationVar(&cfg.RenewCheck, "renew-check", 6*time.Hour, "how often a running node checks whether its certificate needs renewal")
			fs.StringSliceVar(&cfg.StopFirst, "stop-first", nil, "`UNIT`s that use the mount, stopped (through systemd) before a stop of g8-unlock unmounts it; a restart keeps the mount (comma-separated)")
			fs.BoolVar(&debug, "debug", false, "log debug messages")
		},
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			if cfg.Timeout < time.Second {
				return cli.Usagef("--timeout %v: must be at least 1s", cfg.Timeout)
			}
			if cfg.Waits.Denied < time.Second {
				return cli.Usagef("--denied-retry %v: must be at least 1s", cfg.Waits.Denied)
			}
			if cfg.RenewCheck < time.Minute {
				return cli.Usagef("--renew-check %v: must be at least 1m", cfg.RenewCheck)
			}
			if n := cfg.Tools.GocryptfsScryptN; n != 0 && (n < 10 || n > 28) {
				return cli.Usagef("--gocryptfs-scryptn %d: 10..28, or 0 for the default", n)
			}
			cfg.Log = sd.NewLogger("unlock", debug)
			cfg.Notify = &sd.Notifier{}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err := unlock.Run(ctx, cfg)
			if err != nil {
				cfg.Log.Error("failed", sd.PhaseFailed.Attr(), "error", err)
			}
			return err
		},
	})
}
