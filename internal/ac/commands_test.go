package ac

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
)

// Flags go anywhere on the line (GNU style): before the command words,
// between them, after the positional arguments; "--" ends them.
func TestAdminFlagsAnywhere(t *testing.T) {
	f := newGridFixture(t)
	mac := f.nodes[0].MACs[0]
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Command(&out, &errb).Execute(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, args := range [][]string{
		{"node", "show", mac, "--data", f.data},
		{"--data", f.data, "node", "show", mac},
		{"node", "--data", f.data, "show", mac},
		{"node", "show", "--data=" + f.data, mac},
	} {
		code, out, errs := run(args...)
		if code != 0 || !strings.Contains(out, f.nodes[0].ID) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	// --help after the arguments shows help and changes nothing.
	code, out, _ := run("node", "revoke", mac, "--data", f.data, "--help")
	if n, err := f.st.Node(context.Background(), mac); code != 0 || !strings.Contains(out, "Usage: g8-ac node revoke") || err != nil || n.State != store.StateApproved {
		t.Errorf("revoke --help: exit %d, %q; node %v %v", code, out, n, err)
	}
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"node", "list", "--bogus", "--data", f.data}, cli.ExitUsage, "g8-ac node list: unknown flag: --bogus (see --help)"},
		{[]string{"node", "show", "--data"}, cli.ExitUsage, "flag needs an argument: --data"},
		{[]string{"node", "show", "--data", f.data, "--", "--data"}, ExitNotFound, "--data"},
		{[]string{"node", "shwo", "--data", f.data}, cli.ExitUsage, `g8-ac node: unknown command "shwo"`},
	} {
		code, _, errs := run(c.args...)
		if code != c.code || !strings.Contains(errs, c.err) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", c.args, code, errs, c.code, c.err)
		}
	}
}

func TestStatusSummary(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		n    store.Node
		want string
	}{
		{store.Node{}, "-"},
		{store.Node{LastUnlock: now.Add(-90 * time.Second)}, "unlock asked 1m ago"},
		{store.Node{Status: &acapi.Heartbeat{Uptime: acapi.Duration(2*time.Hour + 500*time.Millisecond), Load1: 1.5}}, "up 2h0m1s, load 1.50"},
		{store.Node{Status: &acapi.Heartbeat{MemUsed: 3, MemTotal: 4, Units: map[string]string{"b": "failed", "a": "activating", "c": "active"},
			Apps: []acapi.AppStatus{{Name: "web"}}}}, "up 0s, load 0.00, mem 75%, units 1/3 active (a=activating b=failed), apps 1"},
	} {
		if got := statusSummary(&c.n, now); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	for d, want := range map[time.Duration]string{0: "just now", 5 * time.Second: "5s ago", 3 * time.Hour: "3h00m ago", 72 * time.Hour: "2026-11-23"} {
		if got := ago(now.Add(-d), now); got != want {
			t.Errorf("ago(%v) = %q, want %q", d, got, want)
		}
	}
	if ago(time.Time{}, now) != "never" {
		t.Error("zero time is not never")
	}
}
