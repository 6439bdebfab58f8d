package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// The server runs, each database is its own, and nothing is left behind.
func TestServer(t *testing.T) {
	var dir string
	t.Run("run", func(t *testing.T) {
		srv := Start(t)
		dir = srv.Dir
		a, b := srv.NewDatabase(t), srv.NewDatabase(t)
		if a == b {
			t.Fatalf("two databases with one URL %s", a)
		}
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var v string
		if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil || v[:2] != "15" {
			t.Fatalf("server_version %q, %v", v, err)
		}
		var tcp string
		if err := conn.QueryRow(ctx, "SHOW listen_addresses").Scan(&tcp); err != nil || tcp != "" {
			t.Fatalf("listen_addresses %q (%v): the test server must not listen on TCP", tcp, err)
		}
	})
	if dir == "" {
		return // skipped
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the test: %v", dir, err)
	}
}
