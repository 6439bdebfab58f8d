package acsession

import (
	"testing"
	"time"
)

func TestRenewDue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	week := 7 * 24 * time.Hour
	for _, c := range []struct {
		name string
		now  time.Time
		want bool
	}{
		{"fresh", t0.Add(time.Hour), false},
		{"just before half", t0.Add(week/2 - time.Second), false},
		{"past half", t0.Add(week/2 + time.Second), true},
		{"expired", t0.Add(2 * week), true},
	} {
		if got := RenewDue(t0, t0.Add(week), c.now); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if RenewDue(t0, time.Time{}, t0) || RenewDue(t0, t0, t0.Add(time.Hour)) {
		t.Error("a certificate without a lifetime is due")
	}
}
