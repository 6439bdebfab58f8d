// g8-acsession keeps the node's mutual-TLS session with the controller:
// heartbeats, jobs and the event queue. See docs/acsession.md.
package main

import (
	"context"
	"os/signal"
	"syscall"
	"time"

	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// ExitState: the session's own files under --data-dir are unusable.
const ExitState = 10

func main() {
	var (
		cfg   acsession.Config
		debug bool
	)
	cli.Main(&cli.Command{
		Name:    "g8-acsession",
		Summary: "Keep the node's mutual-TLS session with the controller: heartbeat, jobs, events.",
		Details: `Reads the controller URL from STATE-DIR/net.json (g8-netup) and the node
identity from CONFIG-ROOT/ssl/{ca.pem,node.pem,node.key} (enrollment); the
controller is verified against ssl/ca.pem, never skipped. READY=1 after the
first verified round trip; reconnects forever with capped backoff; follows
net.json when g8-netup finds another controller. Events wait on disk in
DATA-DIR/events until the controller acknowledges them, across reboots and
power cuts; its state is in STATE-DIR/acsession.json. Under systemd, WatchdogSec= must exceed
twice the request timeout (10s); the unit uses 30s. The session loop pings it
itself, so a hung step gets the unit restarted.`,
		ExitCodes: map[int]string{ExitState: "the session's queue or job records under --data-dir are unusable"},
		Flags: func(fs *cli.FlagSet) {
			fs.StringVar(&cfg.StateDir, "state-dir", state.DefaultDir, "phase state files: net.json and unlock.json in, acsession.json out")
			fs.StringVar(&cfg.DataDir, "data-dir", "", "event queue and job records; the unit puts them on disk (/var/lib/g8os/acsession) so they outlive reboots and power cuts (default STATE-DIR/acsession)")
			fs.StringVar(&cfg.ConfigRoot, "config-root", "/mnt/etc", "unlocked config holding ssl/ca.pem, ssl/node.pem, ssl/node.key")
			fs.DurationVar(&cfg.Heartbeat, "heartbeat", acsession.DefaultHeartbeat, "heartbeat interval")
			fs.IntVar(&cfg.QueueMax, "queue-max", acsession.DefaultQueueMax, "events kept on disk while the controller is unreachable")
			fs.DurationVar(&cfg.JobGrace, "job-grace", acsession.DefaultJobGrace, "on a restart (not a stop), how long running jobs may finish before they are killed")
			fs.DurationVar(&cfg.RefusedRetry, "refused-retry", acsession.DefaultRefusedRetry, "wait after the controller refused the node's certificate (revoked, unknown)")
			fs.BoolVar(&debug, "debug", false, "log debug messages")
		},
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			if cfg.Heartbeat < time.Second {
				return cli.Usagef("--heartbeat %v: must be at least 1s", cfg.Heartbeat)
			}
			if cfg.QueueMax < 1 {
				return cli.Usagef("--queue-max %d: must be at least 1", cfg.QueueMax)
			}
			if cfg.RefusedRetry < time.Second {
				return cli.Usagef("--refused-retry %v: must be at least 1s", cfg.RefusedRetry)
			}
			cfg.Log = sd.NewLogger("acsession", debug)
			cfg.Watchdog = sd.WatchdogInterval()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			s, err := acsession.New(cfg)
			if err != nil {
				cfg.Log.Error("cannot start", sd.PhaseFailed.Attr(), "error", err)
				return cli.Exit(ExitState, err)
			}
			return s.Run(ctx)
		},
	})
}
