package cli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/version"
)

func testCommand(ran *[]string) *Command {
	var path string
	var verbose bool
	var out string
	return &Command{
		Name:      "g8-test",
		Summary:   "does a test",
		ExitCodes: map[int]string{10: "wrong key"},
		Flags: func(fs *FlagSet) {
			fs.StringVar(&path, "config", "/etc/g8os/x.toml", "config `file`")
			fs.BoolVar(&verbose, "verbose", false, "say more")
		},
		Run: func(args []string) error {
			*ran = append(*ran, fmt.Sprintf("root:%s:%s:%v", path, strings.Join(args, ","), verbose))
			switch path {
			case "bad":
				return Exit(10, errors.New("key rejected"))
			case "fail":
				return errors.New("boom")
			}
			return nil
		},
		Sub: []*Command{{
			Name:    "g8-test check",
			Summary: "validates",
			Flags: func(fs *FlagSet) {
				fs.StringVar(&path, "config", "/etc/g8os/x.toml", "config `file`")
				fs.StringVarP(&out, "output", "o", "", "write to `FILE`")
			},
			Run: func(args []string) error {
				*ran = append(*ran, fmt.Sprintf("check:%s:%s:%s", path, out, strings.Join(args, ",")))
				return nil
			},
		}},
	}
}

func TestExecute(t *testing.T) {
	cases := []struct {
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
		ran    string
	}{
		{args: nil, code: 0, ran: "root:/etc/g8os/x.toml::false"},
		{args: []string{"--config", "/tmp/a"}, code: 0, ran: "root:/tmp/a::false"},
		{args: []string{"--config=/tmp/a", "--verbose"}, code: 0, ran: "root:/tmp/a::true"},
		{args: []string{"--help"}, code: 0, stdout: "Exit codes:\n    0  success"},
		{args: []string{"-h"}, code: 0, stdout: "--config file"},
		{args: []string{"--version"}, code: 0, stdout: "g8-test " + version.Version},
		// GNU style: the flag is named as typed, never Go's "-bogus".
		{args: []string{"--bogus"}, code: ExitUsage, stderr: "g8-test: unknown flag: --bogus (see --help)"},
		{args: []string{"-bogus"}, code: ExitUsage, stderr: "g8-test: unknown flag: -bogus (long flags take two dashes: --bogus; an argument that begins with a dash goes after --) (see --help)"},
		{args: []string{"-config", "X", "check"}, code: ExitUsage, stderr: "g8-test: unknown flag: -config (long flags take two dashes: --config; an argument that begins with a dash goes after --)"},
		{args: []string{"-x"}, code: ExitUsage, stderr: "unknown shorthand flag: 'x' in -x"},
		{args: []string{"--config"}, code: ExitUsage, stderr: "flag needs an argument: --config"},
		{args: []string{"--verbose=maybe"}, code: ExitUsage, stderr: `invalid argument "maybe" for "--verbose"`},
		{args: []string{"--config", "bad"}, code: 10, stderr: "key rejected"},
		{args: []string{"--config", "fail"}, code: ExitFailure, stderr: "g8-test: boom"},
		{args: []string{"check"}, code: 0, ran: "check:/etc/g8os/x.toml::"},
		// Flags before the subcommand, after it, and after its arguments.
		{args: []string{"--config", "X", "check"}, code: 0, ran: "check:X::"},
		{args: []string{"--config=X", "check", "a"}, code: 0, ran: "check:X::a"},
		{args: []string{"check", "a", "--config", "X", "-o", "f", "b"}, code: 0, ran: "check:X:f:a,b"},
		{args: []string{"-o", "f", "check"}, code: 0, ran: "check:/etc/g8os/x.toml:f:"},
		{args: []string{"check", "--", "--config", "X"}, code: 0, ran: "check:/etc/g8os/x.toml::--config,X"},
		{args: []string{"check", "--help"}, code: 0, stdout: "-o, --output FILE"},
		{args: []string{"--verbose", "check"}, code: ExitUsage, stderr: "g8-test check: unknown flag: --verbose"},
		{args: []string{"chekc"}, code: ExitUsage, stderr: `unknown command "chekc"`},
		{args: []string{"--config", "check", "chekc"}, code: ExitUsage, stderr: `unknown command "chekc"`},
		{args: []string{"--", "check"}, code: 0, ran: "root:/etc/g8os/x.toml:check:false"},
	}
	for _, c := range cases {
		var ran []string
		var out, errb bytes.Buffer
		code := testCommand(&ran).Execute(c.args, &out, &errb)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, code, c.code, errb.String())
		}
		if !strings.Contains(out.String(), c.stdout) || !strings.Contains(errb.String(), c.stderr) {
			t.Errorf("%v: stdout %q stderr %q", c.args, out.String(), errb.String())
		}
		if c.ran != "" && (len(ran) != 1 || ran[0] != c.ran) {
			t.Errorf("%v: ran %v, want %q", c.args, ran, c.ran)
		}
	}
}

func TestHelpListsPhaseExitCodesAndSubcommands(t *testing.T) {
	var ran []string
	var out bytes.Buffer
	testCommand(&ran).Execute([]string{"--help"}, &out, &out)
	for _, want := range []string{"10  wrong key", "check", "validates", "(default /etc/g8os/x.toml)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStringList(t *testing.T) {
	var l StringList
	_ = l.Set("a, b")
	_ = l.Set("c")
	if l.String() != "a,b,c" {
		t.Fatalf("got %q", l.String())
	}
}
