// Command g8-netup is the first boot phase: it brings the network up until
// an agent controller answers, and keeps it up. See docs/netup.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/netup"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

func main() {
	var o netup.Options
	var ifaces cli.StringList
	var debug bool
	common := func(fs *cli.FlagSet) {
		fs.StringVar(&o.Config, "config", netup.DefaultConfig, "network and controller configuration (TOML)")
		fs.StringVar(&o.TrustAnchor, "trust-anchor", "", "PEM file the controller's certificate must chain to (default: net.toml's trust_anchor, else "+netup.DefaultTrustAnchor+")")
		fs.Var(&ifaces, "interfaces", "only these links may be touched (comma-separated or repeated; default: every link net.toml lists)")
	}
	check := &cli.Command{
		Name:    "g8-netup check",
		Summary: "Validate a net.toml and print the plan (what would be applied and tried, in order) without touching anything.",
		Flags:   common,
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			o.Interfaces = ifaces
			if err := netup.Check(os.Stdout, o); err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			return nil
		},
	}
	cmd := &cli.Command{
		Name:    "g8-netup",
		Summary: "Bring the network up until an agent controller answers GET /v1/health over verified TLS; stay up (renew, defend, re-check).",
		Details: `Each round: net.toml as written, then DHCP on each interface in config
order, then a random address on the fallback subnet (10.254.254.0/24 by
default, ARP-probed per RFC 5227 on a scaled schedule) with the controller at
10.254.254.254. READY=1 once a controller answers; STATUS= always says what
was tried and what is next. SIGTERM leaves the configuration in place.
See docs/netup.md.`,
		Flags: func(fs *cli.FlagSet) {
			common(fs)
			fs.StringVar(&o.StateDir, "state-dir", state.DefaultDir, "directory of the phase state files (net.json)")
			fs.StringVar(&o.ResolvConf, "resolv-conf", netup.DefaultResolvConf, "resolv.conf to write name servers into")
			fs.BoolVar(&debug, "debug", false, "log debug messages")
		},
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			o.Interfaces = ifaces
			o.Log = sd.NewLogger("net", debug)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return netup.Run(ctx, o)
		},
		Sub: []*cli.Command{check},
	}
	cli.Main(cmd)
}
