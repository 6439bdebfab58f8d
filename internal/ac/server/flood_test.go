package server

import (
	"testing"
	"time"
)

// One LAN host holds a whole IPv6 /64: it counts as one source.
func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":                   "10.1.2.3",
		"::ffff:10.1.2.3":            "10.1.2.3",
		"2001:db8:1:2:aaaa::1":       "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff:ffff:0:9": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":            "2001:db8:1:3::/64",
		"fe80::1%eth0":               "fe80::/64",
		"not an address":             "not an address",
	} {
		if got := SourceKey(in); got != want {
			t.Errorf("SourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// A cost larger than what is left is refused with the wait until it is
// there; it never spends tokens it does not get.
func TestKeyedLimiterCosts(t *testing.T) {
	l := newKeyedLimiter(10, 20)
	now := time.Unix(1000, 0)
	if ok, _ := l.allowN("n", 15, now); !ok {
		t.Fatal("15 of a burst of 20 refused")
	}
	ok, wait := l.allowN("n", 10, now)
	if ok || wait != time.Second {
		t.Fatalf("10 more with 5 left: ok %v, wait %v; want a refusal for 1s", ok, wait)
	}
	if ok, _ := l.allowN("n", 5, now); !ok {
		t.Fatal("the 5 left refused: a refusal spent tokens")
	}
	if ok, _ := l.allowN("other", 20, now); !ok {
		t.Fatal("another key shares the bucket")
	}
}
