package ac

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/cli"
)

// dbCmds are the store's operations: docs/controller.md, "Several
// controllers on PostgreSQL".
func dbCmds(stdout io.Writer) []*cli.Command {
	return []*cli.Command{dbCheckCmd(stdout), dbMigrateCmd(stdout), dbCopyCmd(stdout)}
}

// openOnlyArgs takes no positional argument and opens a's store without
// touching its schema; the caller closes it.
func (a *admin) openOnlyArgs(args []string) (*store.Store, error) {
	if _, err := a.argsN(args, 0, "no arguments"); err != nil {
		return nil, err
	}
	dsn, err := StoreDSN(a.data, a.database)
	if err != nil {
		return nil, cli.Exit(cli.ExitConfig, err)
	}
	if !store.IsPostgres(dsn) {
		if _, err := os.Stat(dsn); err != nil {
			return nil, cli.Exit(cli.ExitConfig, fmt.Errorf("%s: not a controller data directory (run `g8-ac init --data %s` first)", a.data, a.data))
		}
	}
	st, err := store.OpenOnly(dsn)
	if err != nil {
		return nil, cli.Exit(cli.ExitConfig, err)
	}
	return st, nil
}

func dbCheckCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	return &cli.Command{
		Name:    "g8-ac db check",
		Summary: "check that the store answers and its schema version matches this g8-ac",
		Details: `Connects to DIR's store (or --database) without changing it and prints the
engine, the database, the round-trip time and the schema version. Exit 0:
reachable and up to date; 1: unreachable; 3: schema older (run g8-ac db
migrate) or newer (upgrade this g8-ac) than this build.`,
		Flags: func(fs *cli.FlagSet) { a.flags(fs) },
		Run: func(args []string) error {
			st, err := a.openOnlyArgs(args)
			if err != nil {
				return err
			}
			defer st.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			t0 := time.Now()
			have, latest, err := st.Schema(ctx)
			if err != nil {
				return fmt.Errorf("%s store %s: unreachable: %w", st.Engine().Name(), st.Path(), err)
			}
			fmt.Fprintf(stdout, "engine: %s\ndatabase: %s\nround trip: %v\nschema: version %d (this g8-ac writes %d)\n",
				st.Engine().Name(), st.Path(), time.Since(t0).Round(time.Microsecond), have, latest)
			switch {
			case have < latest:
				return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: schema version %d is older than this g8-ac's %d: run g8-ac db migrate", st.Path(), have, latest))
			case have > latest:
				return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: schema version %d is newer than this g8-ac's %d: upgrade this g8-ac", st.Path(), have, latest))
			}
			fmt.Fprintln(stdout, "ok")
			return nil
		},
	}
}

func dbMigrateCmd(stdout io.Writer) *cli.Command {
	a := &admin{}
	return &cli.Command{
		Name:    "g8-ac db migrate",
		Summary: "bring the store's schema up to this g8-ac's version",
		Details: `Applies the missing schema versions in one transaction (serve does the same
at start; with several controllers on PostgreSQL an advisory lock makes
them migrate once). Prints the versions before and after.`,
		Flags: func(fs *cli.FlagSet) { a.flags(fs) },
		Run: func(args []string) error {
			st, err := a.openOnlyArgs(args)
			if err != nil {
				return err
			}
			defer st.Close()
			from, err := st.Migrate(context.Background())
			if err != nil {
				return fmt.Errorf("%s: %w", st.Path(), err)
			}
			_, latest, _ := st.Schema(context.Background())
			if from == latest {
				fmt.Fprintf(stdout, "%s: schema version %d, up to date\n", st.Path(), latest)
			} else {
				fmt.Fprintf(stdout, "%s: schema version %d -> %d\n", st.Path(), from, latest)
			}
			return nil
		},
	}
}

func dbCopyCmd(stdout io.Writer) *cli.Command {
	var fromDir, to string
	return &cli.Command{
		Name:    "g8-ac db copy",
		Summary: "copy a SQLite data directory's store into an empty PostgreSQL database",
		Details: `Copies every row of DIR/ac.db into the database at URL (which must hold no
controller's data yet) in one transaction, then writes URL to DIR/database
so that DIR's controller (and copies of DIR for more controllers) use it;
ac.db stays as it was, as a backup. Stop g8-ac serve on DIR first.`,
		Flags: func(fs *cli.FlagSet) {
			fs.StringVar(&fromDir, "from", DefaultDataDir, "controller data `DIR` whose ac.db is copied")
			fs.StringVar(&to, "to", "", "the PostgreSQL database `URL` (postgres://...; no password: use a pgpass file)")
		},
		Run: func(args []string) error {
			if err := exactly(args, 0, "no arguments"); err != nil {
				return err
			}
			if to == "" {
				return cli.Usagef("--to URL is required")
			}
			if err := checkDatabaseURL(to); err != nil {
				return cli.Usagef("--to: %v", err)
			}
			if _, err := os.Stat(filepath.Join(fromDir, DatabaseFile)); err == nil {
				return cli.Exit(cli.ExitConfig, fmt.Errorf("%s already uses a PostgreSQL database (%s)", fromDir, filepath.Join(fromDir, DatabaseFile)))
			}
			src := filepath.Join(fromDir, DBFile)
			if _, err := os.Stat(src); err != nil {
				return cli.Exit(cli.ExitConfig, fmt.Errorf("%s: not a controller data directory with a SQLite store", fromDir))
			}
			from, err := store.Open(src)
			if err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			defer from.Close()
			dst, err := store.Open(to)
			if err != nil {
				return err
			}
			defer dst.Close()
			counts, err := store.CopyFromSQLite(context.Background(), from, dst)
			if err != nil {
				return cli.Exit(cli.ExitConfig, err)
			}
			tables := make([]string, 0, len(counts))
			for t := range counts {
				tables = append(tables, t)
			}
			sort.Strings(tables)
			for _, t := range tables {
				fmt.Fprintf(stdout, "%s: %d rows\n", t, counts[t])
			}
			if err := os.WriteFile(filepath.Join(fromDir, DatabaseFile), []byte(to+"\n"), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s now uses %s (%s); %s is kept as it was\n", fromDir, dst.Path(), filepath.Join(fromDir, DatabaseFile), src)
			return nil
		},
	}
}
