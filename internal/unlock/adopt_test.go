package unlock

import (
	"strings"
	"testing"
)

func TestPlanAdopt(t *testing.T) {
	live := adoptFacts{Mounted: true, Ours: true, Record: true, Serving: true}
	for _, c := range []struct {
		name  string
		facts adoptFacts
		adopt bool
		why   string
	}{
		{"live mount, recorded process serving it", live, true, "live mount"},
		{"nothing mounted (first start of the boot)", adoptFacts{}, false, "nothing mounted"},
		{"someone else's mount", adoptFacts{Mounted: true, Record: true, Serving: true}, false, "not this config"},
		{"dead mount (FUSE process gone)", adoptFacts{Mounted: true, Ours: true, Stale: true, Record: true}, false, "gone"},
		{"mounted by hand, no unlock.json", adoptFacts{Mounted: true, Ours: true}, false, "no unlock.json"},
		{"unlock.json names another process", adoptFacts{Mounted: true, Ours: true, Record: true}, false, "does not serve it"},
	} {
		adopt, why := planAdopt(c.facts)
		if adopt != c.adopt || !strings.Contains(why, c.why) {
			t.Errorf("%s: planAdopt = %v %q, want %v ~%q", c.name, adopt, why, c.adopt, c.why)
		}
	}
}
