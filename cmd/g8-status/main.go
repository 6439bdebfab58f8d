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
		Details: `Each phase's state combines its unit's state from systemd (D-Bus) with its
state file in --state-dir: ready, starting (STATUS= says what it waits
for), waiting (up, but lost its controller or session), restarting (with
the last error and the next try), degraded (a sandbox failed), failed,
not-started, unknown. The console lines and the heartbeat to the
controller say the same. Exit status 0 only when every phase is ready.`,
		ExitCodes: map[int]string{
			chain.ExitNotReady: "the chain is not ready yet: a phase is starting, waiting, restarting or not started",
			chain.ExitFailed:   "a phase failed or is degraded: a person must act (see the journal)",
		},
		Flags: func(fs *cli.FlagSet) {
			dirs(fs)
			fs.BoolVar(&o.JSON, "json", false, "print {ready, phases: [{phase, unit, state, active_state, sub_state, detail, last_error, next_retry, restarts}]}")
		},
		Run: func(args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			return chain.Show(o)
		},
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
