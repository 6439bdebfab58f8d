package ac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
)

type jobFlags struct {
	admin
	timeout     time.Duration
	wait        bool
	waitTimeout time.Duration
}

func (j *jobFlags) flags(fs *cli.FlagSet, withWait bool) {
	j.admin.flags(fs)
	fs.DurationVar(&j.timeout, "timeout", acapi.DefaultJobTimeout, "how long the node may run the job (at most 24h)")
	if withWait {
		fs.BoolVar(&j.wait, "wait", false, "wait for the result, print it, and exit non-zero unless the job ended ok")
	}
	fs.DurationVar(&j.waitTimeout, "wait-timeout", 0, "with --wait: give up after this long; 0 means --timeout plus 40s")
}

// waitJob polls the store until the job finishes. The server runs in
// another process and writes results to the same store, and no engine
// signals a finished job, so the poll is short: one lookup by key every
// 50 ms costs little, and a ping's round trip is tens of milliseconds.
func waitJob(ctx context.Context, st *store.Store, id string, limit time.Duration) (*store.Job, error) {
	deadline := time.Now().Add(limit)
	for {
		j, err := st.Job(ctx, id)
		if err != nil {
			return nil, err
		}
		if j.Finished() {
			return j, nil
		}
		if time.Now().After(deadline) {
			return j, cli.Exit(ExitJobPending, fmt.Errorf("job %s still %s after %v", id, j.State, limit))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (j *jobFlags) limit() time.Duration {
	if j.waitTimeout > 0 {
		return j.waitTimeout
	}
	return j.timeout + 40*time.Second
}

func jobCmds(stdout, stderr io.Writer) []*cli.Command {
	run, exec := &jobFlags{}, &jobFlags{}
	var execEnv cli.StringList
	var execDir, execStdin string
	list, show, cancel := &admin{}, &admin{}, &admin{}
	return []*cli.Command{
		{
			Name:    "g8-ac job run",
			Args:    "NODE KIND [ARGS-JSON]",
			Summary: "queue a job of KIND with JSON arguments for NODE (id or MAC)",
			Details: `Prints the job id. The node's session takes it with its next long-poll.
Kinds are the node's business (ping, exec, ...); the controller stores them
as given. With --wait, prints the result as JSON instead and exits 0 only
when the job ended ok.`,
			Flags: func(fs *cli.FlagSet) { run.flags(fs, true) },
			Run: func(args []string) error {
				rest := args
				if len(rest) < 2 || len(rest) > 3 {
					return cli.Usagef("want NODE KIND [ARGS-JSON], got %d argument(s)", len(rest))
				}
				var jargs json.RawMessage
				if len(rest) == 3 {
					if !json.Valid([]byte(rest[2])) {
						return cli.Usagef("ARGS-JSON %q: not valid JSON", rest[2])
					}
					jargs = json.RawMessage(rest[2])
				}
				return submit(stdout, stderr, run, rest[0], rest[1], jargs, false)
			},
		},
		{
			Name:    "g8-ac job exec",
			Args:    "NODE -- ARGV...",
			Summary: "run a command on NODE and print its output (a job of kind exec)",
			Details: `Queues {"argv": ARGV} as kind exec, waits for the result, copies the
command's stdout and stderr to ours and exits 0 when it ended ok.`,
			Flags: func(fs *cli.FlagSet) {
				exec.flags(fs, false)
				fs.Var(&execEnv, "env", "`KEY=VALUE` added to the command's minimal environment (repeatable)")
				fs.StringVar(&execDir, "dir", "", "working `DIR` on the node (default /)")
				fs.StringVar(&execStdin, "stdin", "", "`FILE` whose content is the command's stdin")
			},
			Run: func(args []string) error {
				rest := args
				if len(rest) < 2 {
					return cli.Usagef("want NODE -- ARGV...")
				}
				ea := acapi.ExecArgs{Argv: rest[1:], Env: execEnv, Dir: execDir}
				for _, e := range execEnv {
					if !strings.Contains(e, "=") {
						return cli.Usagef("--env %q: want KEY=VALUE", e)
					}
				}
				if execStdin != "" {
					var err error
					if ea.Stdin, err = os.ReadFile(execStdin); err != nil {
						return cli.Exit(cli.ExitConfig, err)
					}
				}
				jargs, err := json.Marshal(ea)
				if err != nil {
					return err
				}
				exec.wait = true
				return submit(stdout, stderr, exec, rest[0], acapi.KindExec, jargs, true)
			},
		},
		{
			Name:    "g8-ac job list",
			Args:    "[NODE]",
			Summary: "list jobs, of one node or of all",
			Flags:   list.flags,
			Run: func(args []string) error {
				rest := args
				if len(rest) > 1 {
					return cli.Usagef("want at most one NODE")
				}
				st, err := list.open()
				if err != nil {
					return err
				}
				defer st.Close()
				ref := ""
				if len(rest) == 1 {
					ref = rest[0]
				}
				jobs, err := st.Jobs(context.Background(), ref)
				if err != nil {
					return notFound(err)
				}
				tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNODE\tKIND\tSTATE\tCREATED\tTOOK")
				for _, j := range jobs {
					took := "-"
					if !j.FinishedAt.IsZero() && !j.StartedAt.IsZero() {
						took = j.FinishedAt.Sub(j.StartedAt).Round(time.Millisecond).String()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.NodeID, j.Kind, j.State, j.CreatedAt.Local().Format(time.DateTime), took)
				}
				return tw.Flush()
			},
		},
		{
			Name:    "g8-ac job cancel",
			Args:    "ID",
			Summary: "withdraw a job the node has not taken yet (it ends rejected)",
			Flags:   cancel.flags,
			Run: func(args []string) error {
				st, rest, err := cancel.openArgs(args, 1, "a job id")
				if err != nil {
					return err
				}
				defer st.Close()
				j, err := st.CancelJob(context.Background(), rest[0], time.Now())
				if errors.Is(err, store.ErrConflict) {
					return cli.Exit(cli.ExitFailure, err)
				}
				if err != nil {
					return notFound(err)
				}
				fmt.Fprintf(stdout, "%s %s\n", j.ID, j.State)
				return nil
			},
		},
		{
			Name:    "g8-ac job show",
			Args:    "ID",
			Summary: "print a job and its result as JSON",
			Flags:   show.flags,
			Run: func(args []string) error {
				st, rest, err := show.openArgs(args, 1, "a job id")
				if err != nil {
					return err
				}
				defer st.Close()
				j, err := st.Job(context.Background(), rest[0])
				if err != nil {
					return notFound(err)
				}
				return printJSON(stdout, jobView(j))
			},
		},
	}
}

func submit(stdout, stderr io.Writer, f *jobFlags, node, kind string, args json.RawMessage, raw bool) error {
	if f.timeout <= 0 || f.timeout > acapi.MaxJobTimeout {
		return cli.Usagef("--timeout %v: must be positive and at most %v", f.timeout, acapi.MaxJobTimeout)
	}
	st, err := f.open()
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := context.Background()
	j, err := st.CreateJob(ctx, node, kind, args, f.timeout, time.Now())
	if err != nil {
		return notFound(err)
	}
	if !f.wait {
		fmt.Fprintln(stdout, j.ID)
		return nil
	}
	j, err = waitJob(ctx, st, j.ID, f.limit())
	if err != nil {
		return err
	}
	if raw {
		if j.Result != nil {
			_, _ = stdout.Write(j.Result.Stdout)
			_, _ = stderr.Write(j.Result.Stderr)
		}
	} else if err := printJSON(stdout, jobView(j)); err != nil {
		return err
	}
	if j.State != acapi.JobOK {
		msg := ""
		if j.Result != nil {
			msg = j.Result.Error
			if msg == "" && j.Result.ExitCode != 0 {
				msg = fmt.Sprintf("exit code %d", j.Result.ExitCode)
			}
		}
		return cli.Exit(ExitJobFailed, fmt.Errorf("job %s on %s: %s %s", j.ID, j.NodeID, j.State, acapi.QuoteText(msg)))
	}
	return nil
}

// JobView is the JSON form of a job for job show and job run --wait.
type JobView struct {
	ID         string           `json:"id"`
	Node       string           `json:"node"`
	Kind       string           `json:"kind"`
	Args       json.RawMessage  `json:"args,omitempty"`
	Timeout    acapi.Duration   `json:"timeout"`
	State      string           `json:"state"`
	CreatedAt  time.Time        `json:"created_at"`
	StartedAt  *time.Time       `json:"started_at,omitempty"`
	FinishedAt *time.Time       `json:"finished_at,omitempty"`
	Result     *acapi.JobResult `json:"result,omitempty"`
	ResultBy   string           `json:"result_by,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func jobView(j *store.Job) JobView {
	return JobView{ID: j.ID, Node: j.NodeID, Kind: j.Kind, Args: j.Args, Timeout: j.Timeout, State: j.State,
		CreatedAt: j.CreatedAt.UTC(), StartedAt: timePtr(j.StartedAt), FinishedAt: timePtr(j.FinishedAt),
		Result: j.Result, ResultBy: j.ResultBy}
}

func eventsCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	var asJSON bool
	return &cli.Command{
		Name:    "g8-ac events",
		Args:    "NODE",
		Summary: "list the events a node delivered, in order",
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.BoolVar(&asJSON, "json", false, "print one JSON object per line")
		},
		Run: func(args []string) error {
			st, rest, err := a.openArgs(args, 1, "a node id or MAC")
			if err != nil {
				return err
			}
			defer st.Close()
			evs, err := st.Events(context.Background(), rest[0])
			if err != nil {
				return notFound(err)
			}
			enc := json.NewEncoder(stdout)
			for _, e := range evs {
				if asJSON {
					if err := enc.Encode(e.Event); err != nil {
						return err
					}
					continue
				}
				data := string(e.Data)
				if data == "" {
					data = "-"
				}
				fmt.Fprintf(stdout, "%d\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339Nano), acapi.QuoteText(e.Kind), acapi.QuoteText(data))
			}
			return nil
		},
	}
}

// NodeView is the JSON form of a node for node list --json and node show.
// It never carries the unlock key.
type NodeView struct {
	ID          string           `json:"id"`
	State       string           `json:"state"`
	MACs        []string         `json:"macs"`
	Hostname    string           `json:"hostname,omitempty"`
	CreatedAt   time.Time        `json:"created_at"`
	UpdatedAt   time.Time        `json:"updated_at"`
	FirstAddr   string           `json:"first_addr,omitempty"`
	LastUnlock  *time.Time       `json:"last_unlock,omitempty"`
	LastSeen    *time.Time       `json:"last_seen,omitempty"`
	LastAddr    string           `json:"last_addr,omitempty"`
	BootID      string           `json:"boot_id,omitempty"`
	EventsAcked uint64           `json:"events_acked"`
	Status      *acapi.Heartbeat `json:"status,omitempty"`
	// Fingerprint of the node's identity key: approve a node only when
	// its console shows the same.
	Fingerprint  string            `json:"fingerprint,omitempty"`
	CertSerial   string            `json:"cert_serial,omitempty"`
	CertPending  string            `json:"cert_pending,omitempty"`
	CertExpiry   *time.Time        `json:"cert_expiry,omitempty"`
	ReportedMACs []ReportedMACView `json:"reported_macs,omitempty"`
}

// ReportedMACView is a MAC the node reported that no operator bound to it
// (g8-ac node approve-mac binds it).
type ReportedMACView struct {
	MAC       string    `json:"mac"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	LastAddr  string    `json:"last_addr,omitempty"`
}

func nodeViews(ns []*store.Node) []NodeView {
	out := make([]NodeView, 0, len(ns))
	for _, n := range ns {
		out = append(out, NodeView{ID: n.ID, State: n.State, MACs: n.MACs, Hostname: n.Hostname,
			CreatedAt: n.CreatedAt.UTC(), UpdatedAt: n.UpdatedAt.UTC(), FirstAddr: n.FirstAddr,
			LastUnlock: timePtr(n.LastUnlock), LastSeen: timePtr(n.LastSeen), LastAddr: n.LastAddr,
			BootID: n.BootID, EventsAcked: n.EventsAck, Status: n.Status,
			Fingerprint: n.Fingerprint, CertPending: n.CertPending, CertExpiry: timePtr(n.CertExpiry)})
		v := &out[len(out)-1]
		if n.CertSerial != store.CertNone {
			v.CertSerial = n.CertSerial
		}
		for _, r := range n.Reported {
			v.ReportedMACs = append(v.ReportedMACs, ReportedMACView{MAC: r.MAC, FirstSeen: r.FirstSeen.UTC(), LastSeen: r.LastSeen.UTC(), LastAddr: r.LastAddr})
		}
	}
	return out
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return t.Local().Format(time.DateOnly)
}

// statusSummary condenses the last heartbeat into one table cell.
func statusSummary(n *store.Node, now time.Time) string {
	hb := n.Status
	if hb == nil {
		if !n.LastUnlock.IsZero() {
			return "unlock asked " + ago(n.LastUnlock, now)
		}
		return "-"
	}
	parts := []string{"up " + time.Duration(hb.Uptime).Round(time.Second).String(), fmt.Sprintf("load %.2f", hb.Load1)}
	if hb.MemTotal > 0 {
		parts = append(parts, fmt.Sprintf("mem %d%%", hb.MemUsed*100/hb.MemTotal))
	}
	if len(hb.Units) > 0 {
		active := 0
		var bad []string
		for u, s := range hb.Units {
			if s == "active" {
				active++
			} else {
				bad = append(bad, u+"="+s)
			}
		}
		sort.Strings(bad)
		p := fmt.Sprintf("units %d/%d active", active, len(hb.Units))
		if len(bad) > 0 {
			p += " (" + strings.Join(bad, " ") + ")"
		}
		parts = append(parts, p)
	}
	if len(hb.Apps) > 0 {
		parts = append(parts, fmt.Sprintf("apps %d", len(hb.Apps)))
	}
	return strings.Join(parts, ", ")
}

func printNodes(w io.Writer, nodes []*store.Node, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tIDENTITY\tMACS\tHOSTNAME\tLAST SEEN\tADDRESS\tSTATUS")
	for _, n := range nodes {
		host, addr := n.Hostname, n.LastAddr
		if host == "" {
			host = "-"
		}
		if addr == "" {
			addr = "-"
		}
		fp := n.Fingerprint
		if fp == "" {
			fp = "-"
		}
		macs := strings.Join(n.MACs, ",")
		if len(n.Reported) > 0 {
			macs += fmt.Sprintf(" (+%d reported)", len(n.Reported))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", acapi.QuoteText(n.ID), acapi.QuoteText(n.State), fp, acapi.QuoteText(macs),
			acapi.QuoteText(host), ago(n.LastSeen, now), acapi.QuoteText(addr), acapi.QuoteText(statusSummary(n, now)))
	}
	tw.Flush()
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
