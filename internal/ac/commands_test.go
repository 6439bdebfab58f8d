package ac

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
)

func TestAdminArgsInterspersed(t *testing.T) {
	for _, c := range []struct {
		in, pos, data string
	}{
		{"ID", "ID", "/var/lib/g8-ac"},
		{"ID --data /d", "ID", "/d"},
		{"--data /d ID", "ID", "/d"},
		{"A --data=/d B", "A B", "/d"},
		{"NODE -- echo --data x", "NODE echo --data x", "/var/lib/g8-ac"},
		{"NODE --data /d -- ls -l", "NODE ls -l", "/d"},
	} {
		a := &admin{}
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		a.flags(fs)
		pos, err := a.args(strings.Fields(c.in))
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if strings.Join(pos, " ") != c.pos || a.data != c.data {
			t.Errorf("%q: positional %q data %q, want %q %q", c.in, pos, a.data, c.pos, c.data)
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
