// Command g8-sshd is the node's SSH daemon: root logins by public key with
// the host keys and authorized_keys from the unlocked config.
package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/sshd"
)

func main() {
	cfg := sshd.DefaultConfig()
	var listen, users, acceptEnv cli.StringList
	cli.Main(&cli.Command{
		Name:    "g8-sshd",
		Summary: "Serve SSH for operators: public-key logins (root by default) with the keys in --ssh-dir.",
		Details: `Host keys: ssh_host_ed25519_key and every other ssh_host_*_key in --ssh-dir
(OpenSSH private key format). Without one g8-sshd refuses to start; it never
generates a key. Authorized keys: <ssh-dir>/authorized_keys in OpenSSH format
with the options command=, from=, no-pty, no-port-forwarding,
no-agent-forwarding, no-X11-forwarding, restrict, environment=, permitopen=,
permitlisten=, expiry-time=, and cert-authority with principals= for user
certificates; ssh_host_*_key-cert.pub beside a host key is offered as its host
certificate. It is re-read on SIGHUP and when it changes;
open sessions are kept. Every connection runs in its own process (g8-sshd
connection), so SIGTERM ends only the listener, and open connections go on,
unless --stop-sessions says otherwise: with auto (the default) a stop of the
unit by systemd (not a restart) also ends them, letting sessions finish within
--shutdown-grace. Only public key authentication is offered.
See /usr/share/doc/g8os/sshd.md.`,
		ExitCodes: map[int]string{
			sshd.ExitNoHostKey: "--ssh-dir missing or unreadable, or no usable host key in it",
			sshd.ExitListen:    "a --listen address could not be bound",
		},
		Flags: func(fs *cli.FlagSet) {
			fs.StringVar(&cfg.SSHDir, "ssh-dir", cfg.SSHDir, "directory with ssh_host_*_key and authorized_keys")
			fs.Var(&listen, "listen", "address to listen on, repeatable (default :22)")
			fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory of the phases' state files (writes sshd.json)")
			fs.Var(&users, "users", "users who may log in, repeatable (default root)")
			fs.StringVar(&cfg.Shell, "shell", "", "shell for sessions (default: the user's login shell from /etc/passwd, else /bin/sh)")
			fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "close a connection with no session data either way for this long (0: never)")
			fs.DurationVar(&cfg.KeepaliveInterval, "keepalive-interval", cfg.KeepaliveInterval, "probe the client this often (0: never)")
			fs.IntVar(&cfg.KeepaliveCountMax, "keepalive-count", cfg.KeepaliveCountMax, "unanswered probes before the client counts as gone")
			fs.DurationVar(&cfg.LoginGraceTime, "login-grace-time", cfg.LoginGraceTime, "a client must authenticate within this")
			fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "when connections are ended, how long open sessions may continue")
			fs.Func("stop-sessions", "which SIGTERM also ends open connections: auto (a systemd stop, not a restart), always, never (default auto)", func(v string) (err error) {
				cfg.StopSessions, err = sshd.ParseStopSessions(v)
				return err
			})
			fs.DurationVar(&cfg.ReloadInterval, "reload-interval", cfg.ReloadInterval, "how often authorized_keys is checked for changes (0: only on SIGHUP)")
			fs.Func("max-startups", "unauthenticated connections: start:rate:full refuses rate% from start on, rising to all at full; N is a hard limit; 0 none (default "+cfg.Startups.String()+")", cfg.Startups.ParseMaxStartups)
			fs.IntVar(&cfg.Startups.PerSource, "per-source-max-startups", cfg.Startups.PerSource, "unauthenticated connections from one IPv4 address or IPv6 /64 (0: no cap)")
			fs.DurationVar(&cfg.BannerTimeout, "banner-timeout", cfg.BannerTimeout, "a client must send its SSH version string within this (0: only --login-grace-time)")
			fs.IntVar(&cfg.MaxAuthTries, "max-auth-tries", cfg.MaxAuthTries, "authentication attempts per connection")
			fs.Var(&acceptEnv, "accept-env", "client environment variable (pattern) to accept beyond LANG, LC_*, TERM; repeatable")
			fs.BoolVar(&cfg.PermitUserEnvironment, "permit-user-environment", false, "honour environment= options in authorized_keys")
			fs.BoolVar(&cfg.AllowTCPForwarding, "allow-tcp-forwarding", false, "allow local and remote TCP port forwarding")
			fs.BoolVar(&cfg.AllowAgentForwarding, "allow-agent-forwarding", false, "allow ssh-agent forwarding")
			fs.BoolVar(&cfg.Debug, "debug", false, "log debug messages")
		},
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			if len(listen) > 0 {
				cfg.Listen = listen
			}
			if len(users) > 0 {
				cfg.Users = users
			}
			cfg.AcceptEnv = acceptEnv
			log := sd.NewLogger("sshd", cfg.Debug)
			log.Info("starting", sd.PhaseStarted.Attr(), "ssh_dir", cfg.SSHDir)
			err := sshd.Run(context.Background(), cfg, log, &sd.Notifier{})
			if err != nil {
				log.Error(err.Error(), sd.PhaseFailed.Attr())
			}
			return err
		},
		Sub: []*cli.Command{{
			Name:    "g8-sshd " + sshd.ConnectionArg,
			Summary: "Serve one inherited connection (g8-sshd runs this for every connection it accepts).",
			Run: func(args []string) error {
				newLog := func(debug bool) *slog.Logger { return sd.NewLogger("sshd", debug) }
				if err := sshd.ServeConnection(newLog); err != nil {
					newLog(false).Error(err.Error(), sd.SSHDConnDropped.Attr())
					return err
				}
				return nil
			},
		}, {
			Name:    "g8-sshd " + sshd.SFTPServerArg,
			Summary: "Serve SFTP on stdin/stdout (g8-sshd runs this for users other than its own).",
			Run: func(args []string) error {
				if len(args) > 0 {
					return cli.Usagef("unexpected argument %q", args[0])
				}
				if err := sshd.ServeSFTP(); err != nil {
					return fmt.Errorf("sftp-server: %w", err)
				}
				return nil
			},
		}},
	})
}
