package sshd

import (
	"net"
	"testing"
)

func TestParseMaxStartups(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Startups
		err  bool
	}{
		{in: "10:30:100", want: Startups{10, 30, 100, 8}},
		{in: "3", want: Startups{3, 100, 3, 8}},
		{in: "0", want: Startups{0, 100, 0, 8}},
		{in: "5:0:5", want: Startups{5, 0, 5, 8}},
		{in: "", err: true},
		{in: "10:30", err: true},
		{in: "10:130:100", err: true},
		{in: "100:30:10", err: true},
		{in: "-1", err: true},
		{in: "a:b:c", err: true},
		{in: "1:2:3:4", err: true},
	} {
		s := DefaultStartups
		err := s.ParseMaxStartups(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && s != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.in, s, tc.want)
		}
	}
}

func TestAdmit(t *testing.T) {
	s := Startups{Start: 10, Rate: 30, Full: 100, PerSource: 8}
	for _, tc := range []struct {
		total, source, roll int
		refused             bool
	}{
		{total: 0, source: 0, roll: 0},
		{total: 9, source: 7, roll: 0},                  // below start: always in
		{total: 9, source: 8, refused: true},            // per-source cap first
		{total: 10, source: 0, roll: 29, refused: true}, // 30% at start
		{total: 10, source: 0, roll: 30},
		{total: 55, source: 0, roll: 64, refused: true}, // halfway: 30+70/2 = 65%
		{total: 55, source: 0, roll: 65},
		{total: 99, source: 0, roll: 98, refused: true},
		{total: 99, source: 0, roll: 99},
		{total: 100, source: 0, roll: 99, refused: true}, // full: all refused
		{total: 500, source: 0, roll: 99, refused: true},
	} {
		why := s.Admit(tc.total, tc.source, tc.roll)
		if (why != "") != tc.refused {
			t.Errorf("total %d source %d roll %d: %q, want refused=%v", tc.total, tc.source, tc.roll, why, tc.refused)
		}
	}
	// A single number is a hard limit without random drops, and no limit
	// at all when 0.
	hard := Startups{Start: 3, Rate: 100, Full: 3}
	if hard.Admit(2, 2, 0) != "" || hard.Admit(3, 0, 99) == "" {
		t.Error("max-startups 3 is not a hard limit of 3")
	}
	if (Startups{}).Admit(1000, 1000, 0) != "" {
		t.Error("max-startups 0 limits")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":                "10.1.2.3",
		"::ffff:10.1.2.3":         "10.1.2.3",
		"2001:db8:1:2:aaaa::1":    "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::ffff": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":         "2001:db8:1:3::/64",
	} {
		if got := SourceKey(net.ParseIP(in)); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func FuzzParseMaxStartups(f *testing.F) {
	for _, s := range []string{"10:30:100", "3", "0:0:0", "1:101:2", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var s Startups
		if s.ParseMaxStartups(in) != nil {
			return
		}
		if s.Start > s.Full || s.Rate > 100 || s.Start < 0 || s.Rate < 0 {
			t.Fatalf("%q accepted as %+v", in, s)
		}
		for total := 0; total <= s.Full+1; total++ {
			_ = s.Admit(total, 0, 50) // no division by zero, no panic
		}
		var back Startups
		if err := back.ParseMaxStartups(s.String()); err != nil || back.Start != s.Start || back.Full != s.Full {
			t.Fatalf("%q: String() %q does not read back: %v", in, s.String(), err)
		}
	})
}
