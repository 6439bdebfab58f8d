package ac

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/cli"
)

// recoveryAdmin is an admin command that also needs the KEK file.
type recoveryAdmin struct {
	admin
	kek string
}

func (a *recoveryAdmin) flags(fs *cli.FlagSet) {
	a.admin.flags(fs)
	fs.StringVar(&a.kek, "recovery-kek", "", "recovery key-encryption key `FILE` (default DIR/recovery.kek)")
}

func (a *recoveryAdmin) kekPath() string {
	if a.kek != "" {
		return a.kek
	}
	return filepath.Join(a.data, RecoveryKEKFile)
}

func recoveryKeyCmds(stdout io.Writer) []*cli.Command {
	list, rotate, remove := &admin{}, &recoveryAdmin{}, &admin{}
	var asJSON, force bool
	return []*cli.Command{
		listCmd("g8-ac recovery-key list", "list the recovery keys, newest (current) first, with how many nodes still recover through each",
			list, &asJSON, func(st *store.Store) (any, func(), error) {
				keys, err := st.RecoveryKeys(context.Background())
				type row struct {
					KID       string    `json:"kid"`
					Current   bool      `json:"current"`
					CreatedAt time.Time `json:"created_at"`
					Nodes     int       `json:"nodes"`
				}
				rows := make([]row, len(keys))
				for i, k := range keys {
					rows[i] = row{k.KID, i == 0, k.CreatedAt.UTC(), k.Nodes}
				}
				return rows, func() {
					tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "KID\tCURRENT\tCREATED\tNODES")
					for _, r := range rows {
						cur := ""
						if r.Current {
							cur = "yes"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", r.KID, cur, r.CreatedAt.Format(time.RFC3339), r.Nodes)
					}
					tw.Flush()
				}, err
			}, stdout),
		{
			Name:    "g8-ac recovery-key rotate",
			Summary: "make a new current recovery key; older ones keep answering until removed",
			Details: `Nodes enrol with the current key and re-wrap their disk key to it on their
next boot (the disk itself is not re-encrypted). g8-ac recovery-key list
shows how many nodes still recover through each older key; remove one
once it has none. Needs the recovery key-encryption key (--recovery-kek).`,
			Flags: rotate.flags,
			Run: func(args []string) error {
				st, _, err := rotate.openArgs(args, 0, "no arguments")
				if err != nil {
					return err
				}
				defer st.Close()
				ctx := context.Background()
				rk, err := OpenRecoveryKeys(ctx, st, rotate.kekPath(), false, time.Now())
				if err != nil {
					return cli.Exit(cli.ExitConfig, err)
				}
				m, err := rk.Rotate(ctx, time.Now())
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "recovery key %s is now current\n", m.KID)
				return nil
			},
		},
		{
			Name:    "g8-ac recovery-key remove",
			Args:    "KID",
			Summary: "remove an old recovery key that no node recovers through any more",
			Details: `Refuses the only key, and a key through which a node last recovered (it has
not booted since the rotation). --force removes it anyway: such a node can
then not recover its disk key from this controller. A key id may begin with a
dash: put -- before it (g8-ac recovery-key remove -- KID).`,
			Flags: func(fs *cli.FlagSet) {
				remove.flags(fs)
				fs.BoolVar(&force, "force", false, "remove even if nodes still recover through it")
			},
			Run: func(args []string) error {
				st, rest, err := remove.openArgs(args, 1, "the key id (g8-ac recovery-key list)")
				if err != nil {
					return err
				}
				defer st.Close()
				if err := st.RemoveRecoveryKey(context.Background(), rest[0], force); err != nil {
					if e := notFound(err); e != err {
						return e
					}
					return cli.Exit(cli.ExitConfig, err)
				}
				fmt.Fprintf(stdout, "recovery key %s removed\n", rest[0])
				return nil
			},
		},
	}
}
