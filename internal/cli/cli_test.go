package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/version"
)

func testCommand(ran *[]string) *Command {
	var path string
	return &Command{
		Name:      "g8-test",
		Summary:   "does a test",
		ExitCodes: map[int]string{10: "wrong key"},
		Flags:     func(fs *flag.FlagSet) { fs.StringVar(&path, "config", "/etc/g8os/x.toml", "config `file`") },
		Run: func(args []string) error {
			*ran = append(*ran, "root:"+path+":"+strings.Join(args, ","))
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
			Run:     func(args []string) error { *ran = append(*ran, "check"); return nil },
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
		{args: nil, code: 0, ran: "root:/etc/g8os/x.toml:"},
		{args: []string{"--config", "/tmp/a", "x"}, code: 0, ran: "root:/tmp/a:x"},
		{args: []string{"--help"}, code: 0, stdout: "Exit codes:\n    0  success"},
		{args: []string{"-h"}, code: 0, stdout: "--config file"},
		{args: []string{"--version"}, code: 0, stdout: "g8-test " + version.Version},
		{args: []string{"--nope"}, code: ExitUsage, stderr: "flag provided but not defined"},
		{args: []string{"--config", "bad"}, code: 10, stderr: "key rejected"},
		{args: []string{"--config", "fail"}, code: ExitFailure, stderr: "g8-test: boom"},
		{args: []string{"check"}, code: 0, ran: "check"},
		{args: []string{"chekc"}, code: ExitUsage, stderr: `unknown command "chekc"`},
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
