// Command g8-status shows the g8os boot chain to an operator: a line per
// phase, the boot timeline, and the console lines the units write.
package main

import (
	"github.com/g8os/boot/internal/chain"
	"github.com/g8os/boot/internal/cli"
)

func main() {
	o := chain.Options{}
	dirs := func(fs *cli.FlagSet) {
		fs.StringVar(&o.StateDir, "state-dir", "/run/g8os", "directory of the phases' state files")
		fs.StringVar(&o.IssueDir, "issue-dir", "/run/issue.d", "directory of the login prompt's lines (agetty issue files)")
	}
	cli.Main(&cli.Command{
		Name:    "g8-status",
		Summary: "Show each g8os boot phase: what it decided, or why it is not ready.",
		Flags:   dirs,
		Run:     func([]string) error { return chain.Show(o) },
		Sub: []*cli.Command{
			{
				Name:    "g8-status timeline",
				Summary: "Print when each phase started and became ready, and what it decided.",
				Flags:   dirs,
				Run:     func([]string) error { return chain.PrintTimeline(o) },
			},
			{
				Name:    "g8-status issue",
				Args:    "PHASE",
				Summary: "Write a phase's line for the login prompt (run by the units).",
				Details: "Events: start (ExecStartPre=), ready (ExecStartPost=: the line says what the\n" +
					"phase decided, from its state file), stop (ExecStopPost=: reads SERVICE_RESULT,\n" +
					"EXIT_CODE and EXIT_STATUS from the environment systemd passes).",
				Flags: func(fs *cli.FlagSet) {
					dirs(fs)
					fs.StringVar(&o.Event, "event", "ready", "start | ready | stop")
				},
				Run: func(args []string) error { return chain.Issue(o, args) },
			},
			{
				Name:    "g8-status failed",
				Args:    "UNIT",
				Summary: "Report a failed phase on stdout, in the journal and at the login prompt (run by g8os-failed@.service).",
				Flags:   dirs,
				Run:     func(args []string) error { return chain.Failed(o, args) },
			},
		},
	})
}
