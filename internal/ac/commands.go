package ac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/g8os/boot/internal/ac/pki"
	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
)

// Exit codes of g8-ac besides the common ones.
const (
	ExitNotFound   = 10 // the node, job or file named does not exist
	ExitJobFailed  = 11 // job run --wait: the job ended failed, timeout or rejected
	ExitJobPending = 12 // job run --wait: no result before --wait-timeout
)

var exitCodes = map[int]string{
	ExitNotFound:   "the node, job or file named does not exist",
	ExitJobFailed:  "job run/exec --wait: the job failed, timed out or was rejected",
	ExitJobPending: "job run/exec --wait: no result within --wait-timeout (the job stays queued)",
}

// Command is the g8-ac command tree; cmd/g8-ac only runs it.
func Command(stdout, stderr io.Writer) *cli.Command {
	root := &cli.Command{
		Name:    "g8-ac",
		Summary: "The reference g8os agent controller: unlocks nodes, signs their certificates, queues jobs and serves the content store.",
		Details: `Start with: g8-ac init --data DIR --name HOST,IP; then g8-ac serve --data DIR.
Every admin command works on DIR's store while serve runs.
Manual: docs/controller.md; API: docs/api.md.`,
		ExitCodes: exitCodes,
		Sub: []*cli.Command{
			initCmd(stdout), caCmd(stdout), sshCACmd(stdout), serverCertCmd(stdout), serveCmd(),
			{Name: "g8-ac node", Summary: "list, add, approve, deny and revoke nodes", ExitCodes: exitCodes, Sub: nodeCmds(stdout)},
			{Name: "g8-ac ssh-key", Summary: "SSH keys authorized on every node", ExitCodes: exitCodes, Sub: sshKeyCmds(stdout)},
			{Name: "g8-ac config", Summary: "config files the controller manages on every node", ExitCodes: exitCodes, Sub: configCmds(stdout)},
			{Name: "g8-ac job", Summary: "queue jobs for nodes and read their results", ExitCodes: exitCodes, Sub: jobCmds(stdout, stderr)},
			{Name: "g8-ac recovery-key", Summary: "the keys that let nodes recover their disk keys (list, rotate, remove)", ExitCodes: exitCodes, Sub: recoveryKeyCmds(stdout)},
			eventsCmd(stdout), pruneCmd(stdout),
			{Name: "g8-ac db", Summary: "check, migrate and copy the store (SQLite or PostgreSQL)", ExitCodes: exitCodes, Sub: dbCmds(stdout)},
			gridCmd(stdout), appCmd(stdout, stderr),
		},
	}
	withExitCodes(root)
	return root
}

// withExitCodes gives every command that lists none the g8-ac codes, so
// each --help names the codes that command can return.
func withExitCodes(c *cli.Command) {
	if c.ExitCodes == nil {
		c.ExitCodes = exitCodes
	}
	for _, s := range c.Sub {
		withExitCodes(s)
	}
}

// admin is the shared shape of commands that work on the data directory.
type admin struct {
	data     string
	database string
}

func (a *admin) flags(fs *cli.FlagSet) {
	fs.StringVar(&a.data, "data", DefaultDataDir, "controller data `DIR`")
	fs.StringVar(&a.database, "database", "", "store in the PostgreSQL database at `URL` (postgres://...; no password: use a pgpass file) instead of DIR's (DIR/database, else DIR/ac.db)")
}

func (a *admin) open() (*store.Store, error) {
	st, err := OpenStore(a.data, a.database)
	if err != nil {
		return nil, cli.Exit(cli.ExitConfig, err)
	}
	return st, nil
}

// argsN takes exactly n positional arguments (what names them in the
// error).
func (a *admin) argsN(args []string, n int, what string) ([]string, error) {
	if err := exactly(args, n, what); err != nil {
		return nil, err
	}
	return args, nil
}

// openArgs takes exactly n positional arguments (what names them in the
// error) and opens the store; the caller closes it.
func (a *admin) openArgs(args []string, n int, what string) (*store.Store, []string, error) {
	rest, err := a.argsN(args, n, what)
	if err != nil {
		return nil, nil, err
	}
	st, err := a.open()
	if err != nil {
		return nil, nil, err
	}
	return st, rest, nil
}

func exactly(args []string, n int, what string) error {
	if len(args) != n {
		return cli.Usagef("want %s, got %d argument(s)", what, len(args))
	}
	return nil
}

// notFound maps store.ErrNotFound to its exit code.
func notFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return cli.Exit(ExitNotFound, err)
	}
	return err
}

func initCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	var names cli.StringList
	return &cli.Command{
		Name:    "g8-ac init",
		Summary: "create a controller data directory: CAs, server certificate, admin token, store",
		Details: `--name lists every host name and IP address nodes may use to reach the
controller (the server certificate is valid for exactly those), e.g.
--name ac.example.net,10.254.254.254. The first is the controller's name.
Creates DIR (mode 0700) with server-ca.pem (the trust anchor, see g8-ac ca),
server.pem/.key, node-ca.pem/.key, admin.token and recovery.kek (mode 0600),
ac.db (holding the first recovery key, wrapped under recovery.kek) and store/.
With --database URL the store is that PostgreSQL database instead of ac.db
(its URL is kept in DIR/database, so later commands need no --database);
the database must not belong to another controller yet. Refuses to touch
an existing data directory.`,
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.Var(&names, "name", "`HOST[,IP...]` the server certificate is for (repeatable)")
		},
		Run: func(args []string) error {
			_, err := a.argsN(args, 0, "no arguments")
			if err != nil {
				return err
			}
			if len(names) == 0 {
				return cli.Usagef("--name is required")
			}
			if err := Init(a.data, names, a.database); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "controller %s initialized in %s\ntrust anchor for node images: g8-ac ca --data %s > /etc/g8os/ac-ca.pem\n", names[0], a.data, a.data)
			return nil
		},
	}
}

func caCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	return &cli.Command{
		Name:    "g8-ac ca",
		Summary: "print the trust anchor (PEM) node images ship as /etc/g8os/ac-ca.pem",
		Flags:   a.flags,
		Run: func(args []string) error {
			if err := exactly(args, 0, "no arguments"); err != nil {
				return err
			}
			b, err := TrustAnchor(a.data)
			if err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			_, err = stdout.Write(b)
			return err
		},
	}
}

func sshCACmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	pattern := "*"
	return &cli.Command{
		Name:    "g8-ac ssh-ca",
		Summary: "print the known_hosts line that trusts the SSH host key of every node this controller enrolled",
		Details: `Append the line to ~/.ssh/known_hosts (or /etc/ssh/ssh_known_hosts). Nodes' host
certificates name the node id and the address the node reached the controller
from; --pattern limits which host names the CA is trusted for (known_hosts
pattern syntax, e.g. "10.20.*,*.nodes.example.net"). The CA key is
DIR/ssh-host-ca (made by init, or by the first serve of an older directory);
controllers sharing a fleet must share that file like the other CA keys.`,
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.StringVar(&pattern, "pattern", pattern, "host name pattern the CA is trusted for")
		},
		Run: func(args []string) error {
			if err := exactly(args, 0, "no arguments"); err != nil {
				return err
			}
			if pattern == "" || strings.ContainsAny(pattern, " \t\n") {
				return cli.Usagef("--pattern %q: want a known_hosts pattern list without spaces", pattern)
			}
			if _, err := os.Stat(filepath.Join(a.data, pki.NodeCAKey)); err != nil {
				return cli.Exit(cli.ExitConfig, fmt.Errorf("ssh-ca: %w (run `g8-ac init` first)", err))
			}
			ca, _, err := pki.LoadOrCreateSSHHostCA(a.data)
			if err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			_, err = fmt.Fprintln(stdout, ca.KnownHostsLine(pattern))
			return err
		},
	}
}

func pruneCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	var older time.Duration
	return &cli.Command{
		Name:    "g8-ac prune",
		Summary: "delete finished jobs and events older than --older-than",
		Details: "serve does the same hourly with its --retention. Queued and running jobs are never deleted; nodes keep their event seq.",
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.DurationVar(&older, "older-than", 30*24*time.Hour, "age of what to delete")
		},
		Run: func(args []string) error {
			_, err := a.argsN(args, 0, "no arguments")
			if err != nil {
				return err
			}
			if older < 0 {
				return cli.Usagef("--older-than must not be negative")
			}
			st, err := a.open()
			if err != nil {
				return err
			}
			defer st.Close()
			j, e, err := st.Prune(context.Background(), time.Now().Add(-older))
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%d job(s) and %d event(s) deleted\n", j, e)
			return nil
		},
	}
}

func serverCertCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	var names cli.StringList
	return &cli.Command{
		Name:    "g8-ac server-cert",
		Summary: "re-issue the HTTPS certificate for other names (the trust anchor stays)",
		Details: `Replaces server.pem/server.key with a certificate for exactly the --name
values, signed by the existing server CA, so node images keep their
ac-ca.pem. Restart serve to use it.`,
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.Var(&names, "name", "`HOST[,IP...]` the server certificate is for (repeatable)")
		},
		Run: func(args []string) error {
			_, err := a.argsN(args, 0, "no arguments")
			if err != nil {
				return err
			}
			if len(names) == 0 {
				return cli.Usagef("--name is required")
			}
			if _, err := TrustAnchor(a.data); err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			if err := pki.ReissueServer(a.data, names); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "server certificate for %s written; restart g8-ac serve\n", strings.Join(names, ","))
			return nil
		},
	}
}

func serveCmd() *cli.Command {
	a := &admin{}
	var listen cli.StringList
	opts := ServeOptions{}
	var gridOpts gridServe
	var debug bool
	return &cli.Command{
		Name:    "g8-ac serve",
		Summary: "serve the controller API over HTTPS until SIGTERM",
		Details: `Serves API v1 (docs/api.md) on every --listen address (default :8443), TLS
only. Sends READY=1 to systemd once all addresses are bound; SIGTERM or
SIGINT answers pending long-polls, lets requests in flight finish (10 s at
most) and exits 0. SIGHUP reloads the server certificate (after g8-ac
server-cert) without dropping connections. Admin commands may run beside
it on the same --data.`,
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.Var(&listen, "listen", "`ADDR` to serve on, host:port (repeatable; default :8443)")
			fs.StringVar(&opts.RecoveryKEK, "recovery-kek", "", "recovery key-encryption key `FILE` (default DIR/recovery.kek; made with the first recovery key)")
			fs.DurationVar(&opts.RetryAfter, "retry-after", 5*time.Second, "Retry-After told to pending nodes")
			fs.Float64Var(&opts.UnlockRate, "unlock-rate", 1, "unlock requests per second allowed per source address")
			fs.IntVar(&opts.UnlockBurst, "unlock-burst", 10, "unlock requests allowed in a burst per source address")
			fs.Float64Var(&opts.NewNodeRate, "new-node-rate", 2, "new pending nodes per second, from all sources together")
			fs.IntVar(&opts.NewNodeBurst, "new-node-burst", 100, "new pending nodes allowed in a burst")
			fs.IntVar(&opts.MaxPending, "max-pending", 1000, "nodes waiting for approval at most; unknown nodes beyond it get 429")
			fs.DurationVar(&opts.PendingExpiry, "pending-expiry", 72*time.Hour, "delete pending nodes never approved after this (0 keeps them)")
			fs.Float64Var(&opts.NodeRate, "node-rate", 10, "requests per second allowed per node on the mTLS endpoints (an events post costs one per 256 events)")
			fs.IntVar(&opts.NodeBurst, "node-burst", 100, "requests allowed in a burst per node")
			fs.IntVar(&opts.NodeEvents, "node-events", 10000, "events stored per node at most; beyond it the oldest go (min 16)")
			fs.DurationVar(&opts.JobGrace, "job-grace", 30*time.Second, "how long past its timeout a running job may go without a result")
			fs.IntVar(&opts.MaxHandshakes, "max-handshakes", DefaultMaxHandshakes, "TLS handshakes under way at most; more connections wait in the accept queue")
			fs.DurationVar(&opts.NodeCertLifetime, "node-cert-lifetime", pki.DefaultNodeValidity, "validity of the node certificates issued (10m..8760h); sessions renew at half of it")
			fs.DurationVar(&opts.Retention, "retention", 30*24*time.Hour, "delete finished jobs and events older than this (checked hourly; 0 keeps everything)")
			fs.BoolVar(&debug, "debug", false, "log debug messages")
			gridServeFlags(fs, &gridOpts)
		},
		Run: func(args []string) error {
			_, err := a.argsN(args, 0, "no arguments")
			if err != nil {
				return err
			}
			if len(listen) == 0 {
				listen = cli.StringList{DefaultListen}
			}
			log := sd.NewLogger("ac", debug)
			var n sd.Notifier
			opts.DataDir, opts.Database, opts.Listen, opts.Log, opts.Notifier = a.data, a.database, listen, log, &n
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			opts.Reload = hup
			c, err := Open(opts)
			if err != nil {
				log.Error("cannot start", sd.PhaseFailed.Attr(), "error", err)
				return cli.Exit(cli.ExitConfig, err)
			}
			lns, err := Listen(listen)
			if err != nil {
				log.Error("cannot start", sd.PhaseFailed.Attr(), "error", err)
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			gridOpts.start(ctx, c, log)
			go func() {
				<-ctx.Done()
				n.Stopping()
				log.Info("stopping", sd.PhaseStopping.Attr())
			}()

			return c.Serve(ctx, lns, func() {
				addrs := make([]string, len(lns))
				for i, l := range lns {
					addrs[i] = l.Addr().String()
				}
				n.Ready("serving on " + strings.Join(addrs, ", "))
				log.Info("serving", sd.PhaseReady.Attr(), "addrs", strings.Join(addrs, ","))
			})
		},
	}
}

func nodeCmds(stdout io.Writer) []*cli.Command {
	list := &admin{}
	var asJSON bool
	add := &admin{}
	var macs cli.StringList
	var approve bool
	show := &admin{}
	cmds := []*cli.Command{
		listCmd("g8-ac node list", "list nodes: id, state, MACs, last seen, address, status", list, &asJSON,
			func(st *store.Store) (any, func(), error) {
				nodes, err := st.Nodes(context.Background())
				return nodeViews(nodes), func() { printNodes(stdout, nodes, time.Now()) }, err
			}, stdout),
		{
			Name:    "g8-ac node show",
			Args:    "ID|MAC",
			Summary: "print one node and its last reported status as JSON",
			Flags:   show.flags,
			Run: func(args []string) error {
				st, rest, err := show.openArgs(args, 1, "a node id or MAC")
				if err != nil {
					return err
				}
				defer st.Close()
				n, err := st.Node(context.Background(), rest[0])
				if err != nil {
					return notFound(err)
				}
				return printJSON(stdout, nodeViews([]*store.Node{n})[0])
			},
		},
		{
			Name:    "g8-ac node add",
			Summary: "register a node by its MACs before its first boot",
			Details: "Prints the node id and state. A MAC already bound to a node fails (exit 3, naming that node): forget it there first (g8-ac node forget-mac).",
			Flags: func(fs *cli.FlagSet) {
				add.flags(fs)
				fs.Var(&macs, "mac", "`MAC` of the node (repeatable or comma-separated)")
				fs.BoolVar(&approve, "approve", false, "approve it at once")
			},
			Run: func(args []string) error {
				_, err := add.argsN(args, 0, "no arguments")
				if err != nil {
					return err
				}
				if len(macs) == 0 {
					return cli.Usagef("--mac is required")
				}
				st, err := add.open()
				if err != nil {
					return err
				}
				defer st.Close()
				n, err := st.AddNode(context.Background(), macs, approve, time.Now())
				if err != nil {
					if errors.Is(err, store.ErrConflict) {
						return cli.Exit(cli.ExitConfig, err)
					}
					if strings.Contains(err.Error(), "MAC") {
						return cli.Usagef("%v", err)
					}
					return err
				}
				fmt.Fprintf(stdout, "%s %s\n", n.ID, n.State)
				return nil
			},
		},
	}
	forget := &admin{}
	cmds = append(cmds, &cli.Command{
		Name:    "g8-ac node forget-mac",
		Args:    "MAC",
		Summary: "detach a MAC from its node (a NIC moved to another machine)",
		Flags:   forget.flags,
		Run: func(args []string) error {
			rest, err := forget.argsN(args, 1, "a MAC")
			if err != nil {
				return err
			}
			if _, err := store.NormalizeMAC(rest[0]); err != nil {
				return cli.Usagef("%v", err)
			}
			st, err := forget.open()
			if err != nil {
				return err
			}
			defer st.Close()
			n, err := st.ForgetMAC(context.Background(), rest[0])
			if err != nil {
				if errors.Is(err, store.ErrNotFound) {
					return notFound(err)
				}
				return cli.Exit(cli.ExitConfig, err)
			}
			fmt.Fprintf(stdout, "%s %s %s\n", n.ID, n.State, strings.Join(n.MACs, ","))
			return nil
		},
	})
	approveMAC := &admin{}
	cmds = append(cmds, &cli.Command{
		Name:    "g8-ac node approve-mac",
		Args:    "ID|MAC MAC",
		Summary: "bind MAC to a node (one it reported, see node show, or a new NIC)",
		Details: `A node's MACs change only by an operator: MACs a node reports beyond its
own are recorded (node show: reported_macs) and bound only by this command.
A MAC bound to another node fails (forget it there first); a node has at
most 16 MACs.`,
		Flags: approveMAC.flags,
		Run: func(args []string) error {
			rest, err := approveMAC.argsN(args, 2, "a node id or MAC, and the MAC to bind")
			if err != nil {
				return err
			}
			if _, err := store.NormalizeMAC(rest[1]); err != nil {
				return cli.Usagef("%v", err)
			}
			st, err := approveMAC.open()
			if err != nil {
				return err
			}
			defer st.Close()
			n, err := st.ApproveMAC(context.Background(), rest[0], rest[1], time.Now())
			if errors.Is(err, store.ErrConflict) {
				return cli.Exit(cli.ExitConfig, err)
			}
			if err != nil {
				return notFound(err)
			}
			fmt.Fprintf(stdout, "%s %s %s\n", n.ID, n.State, strings.Join(n.MACs, ","))
			return nil
		},
	})
	rekey := &admin{}
	cmds = append(cmds, &cli.Command{
		Name:    "g8-ac node rekey",
		Args:    "ID|MAC",
		Summary: "forget a node's identity key and certificates: a replaced machine enrols again",
		Details: `The node becomes pending with no identity key; the first key a machine with
its MACs presents is recorded, and the node unlocks only after
g8-ac node approve (compare the fingerprint with the machine's console).
Its certificates are refused from now on; its unlock key stays, so its
old disk still opens in the new machine.`,
		Flags: rekey.flags,
		Run: func(args []string) error {
			st, rest, err := rekey.openArgs(args, 1, "a node id or MAC")
			if err != nil {
				return err
			}
			defer st.Close()
			n, err := st.Rekey(context.Background(), rest[0], time.Now())
			if err != nil {
				return notFound(err)
			}
			fmt.Fprintf(stdout, "%s %s\n", n.ID, n.State)
			return nil
		},
	})
	for _, sc := range []struct{ verb, state, summary string }{
		{"approve", store.StateApproved, "let a node unlock (makes its key on first approval)"},
		{"deny", store.StateDenied, "refuse a pending node"},
		{"revoke", store.StateRevoked, "refuse an approved node from now on: its unlocks, certificates, job polls and queued jobs"},
	} {
		a := &admin{}
		var fingerprint string
		c := &cli.Command{
			Name:    "g8-ac node " + sc.verb,
			Args:    "ID|MAC",
			Summary: sc.summary,
			Flags:   a.flags,
			Run: func(args []string) error {
				st, rest, err := a.openArgs(args, 1, "a node id or MAC")
				if err != nil {
					return err
				}
				defer st.Close()
				ctx := context.Background()
				if fingerprint != "" {
					n, err := st.Node(ctx, rest[0])
					if err != nil {
						return notFound(err)
					}
					if n.Fingerprint != fingerprint {
						return cli.Exit(cli.ExitConfig, fmt.Errorf("node %s has identity key %q, not %s: not approved", n.ID, n.Fingerprint, fingerprint))
					}
				}
				n, err := st.SetState(ctx, rest[0], sc.state, time.Now())
				if err != nil {
					return notFound(err)
				}
				fp := n.Fingerprint
				if fp == "" {
					fp = "-"
				}
				fmt.Fprintf(stdout, "%s %s %s\n", n.ID, n.State, fp)
				return nil
			},
		}
		if sc.verb == "approve" {
			c.Details = `Prints the node id, its state and the fingerprint of its identity key: it
must be the one the node's console shows (trust on first approval, like an
SSH host key). --fingerprint approves only if it is. A node without an
identity key yet (added by MAC before its first boot) takes the first key
it presents.`
			c.Flags = func(fs *cli.FlagSet) {
				a.flags(fs)
				fs.StringVar(&fingerprint, "fingerprint", "", "approve only if the node's identity key has this `SHA256:...` fingerprint")
			}
		}
		cmds = append(cmds, c)
	}
	return cmds
}

func sshKeyCmds(stdout io.Writer) []*cli.Command {
	add, list, rm := &admin{}, &admin{}, &admin{}
	return []*cli.Command{
		{
			Name:    "g8-ac ssh-key add",
			Args:    "FILE",
			Summary: "authorize the public keys in FILE (authorized_keys format) on every node",
			Details: "Nodes receive the keys with their next unlock (at boot).",
			Flags:   add.flags,
			Run: func(args []string) error {
				rest, err := add.argsN(args, 1, "a public key file")
				if err != nil {
					return err
				}
				text, err := os.ReadFile(rest[0])
				if err != nil {
					return cli.Exit(cli.ExitConfig, err)
				}
				st, err := add.open()
				if err != nil {
					return err
				}
				defer st.Close()
				n, err := st.AddSSHKeys(context.Background(), text, time.Now())
				if err != nil {
					return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: %w", rest[0], err))
				}
				fmt.Fprintf(stdout, "%d key(s) added\n", n)
				return nil
			},
		},
		{
			Name:    "g8-ac ssh-key list",
			Summary: "print the authorized keys",
			Flags:   list.flags,
			Run: func(args []string) error {
				st, _, err := list.openArgs(args, 0, "no arguments")
				if err != nil {
					return err
				}
				defer st.Close()
				keys, err := st.AuthorizedKeys(context.Background())
				if err != nil {
					return err
				}
				_, err = io.WriteString(stdout, keys)
				return err
			},
		},
		{
			Name:    "g8-ac ssh-key remove",
			Args:    "TEXT",
			Summary: "remove every authorized key whose line contains TEXT (e.g. its comment)",
			Flags:   rm.flags,
			Run: func(args []string) error {
				st, rest, err := rm.openArgs(args, 1, "the text to match")
				if err != nil {
					return err
				}
				defer st.Close()
				n, err := st.RemoveSSHKey(context.Background(), rest[0])
				if err != nil {
					return err
				}
				if n == 0 {
					return cli.Exit(ExitNotFound, fmt.Errorf("no key contains %q", rest[0]))
				}
				fmt.Fprintf(stdout, "%d key(s) removed\n", n)
				return nil
			},
		},
	}
}

func configCmds(stdout io.Writer) []*cli.Command {
	set, list, rm := &admin{}, &admin{}, &admin{}
	return []*cli.Command{
		{
			Name:    "g8-ac config set",
			Args:    "RELPATH FILE",
			Summary: "manage FILE as /mnt/etc/RELPATH on every node (e.g. g8os/fs.toml)",
			Details: "Nodes receive managed files in the unlock answer (field files) and write them at every boot.",
			Flags:   set.flags,
			Run: func(args []string) error {
				rest, err := set.argsN(args, 2, "RELPATH and FILE")
				if err != nil {
					return err
				}
				if err := acapi.CheckConfigPath(rest[0]); err != nil {
					return cli.Usagef("config %v", err)
				}
				content, err := os.ReadFile(rest[1])
				if err != nil {
					return cli.Exit(cli.ExitConfig, err)
				}
				if !utf8.Valid(content) {
					// The unlock answer carries files as JSON strings.
					return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: not UTF-8 text; managed files are config", rest[1]))
				}
				if len(content) > acapi.MaxBody/4 {
					return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: %d bytes; managed files are config, at most %d", rest[1], len(content), acapi.MaxBody/4))
				}
				st, err := set.open()
				if err != nil {
					return err
				}
				defer st.Close()
				if err := st.SetConfigFile(context.Background(), rest[0], content, time.Now()); err != nil {
					if errors.Is(err, store.ErrConflict) {
						return cli.Exit(cli.ExitConfig, err)
					}
					return err
				}
				fmt.Fprintf(stdout, "%s set (%d bytes)\n", rest[0], len(content))
				return nil
			},
		},
		{
			Name:    "g8-ac config list",
			Summary: "list the managed files",
			Flags:   list.flags,
			Run: func(args []string) error {
				st, _, err := list.openArgs(args, 0, "no arguments")
				if err != nil {
					return err
				}
				defer st.Close()
				files, err := st.ConfigFiles(context.Background())
				if err != nil {
					return err
				}
				for _, p := range sortedKeys(files) {
					fmt.Fprintf(stdout, "%s\t%d bytes\n", p, len(files[p]))
				}
				return nil
			},
		},
		{
			Name:    "g8-ac config remove",
			Args:    "RELPATH",
			Summary: "stop managing a file (nodes keep their last copy)",
			Flags:   rm.flags,
			Run: func(args []string) error {
				st, rest, err := rm.openArgs(args, 1, "RELPATH")
				if err != nil {
					return err
				}
				defer st.Close()
				return notFound(st.RemoveConfigFile(context.Background(), rest[0]))
			},
		},
	}
}

// listCmd is a command that lists something from the store, as a table or
// with --json as JSON: list returns the JSON value and the table printer.
func listCmd(name, summary string, a *admin, asJSON *bool, list func(*store.Store) (any, func(), error), stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:    name,
		Summary: summary,
		Flags: func(fs *cli.FlagSet) {
			a.flags(fs)
			fs.BoolVar(asJSON, "json", false, "print JSON instead of a table")
		},
		Run: func(args []string) error {
			st, _, err := a.openArgs(args, 0, "no arguments")
			if err != nil {
				return err
			}
			defer st.Close()
			v, table, err := list(st)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(stdout, v)
			}
			table()
			return nil
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
