// Package cli is the one command-line convention every g8 binary follows:
// GNU-style --flags, --help and --version on every command and subcommand,
// every path a flag, and exit codes listed in the help text.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/g8os/boot/internal/version"
)

// Exit codes shared by all binaries. A phase may add its own from 10 up and
// must list them in its Command.ExitCodes.
const (
	ExitOK       = 0
	ExitFailure  = 1 // the phase failed at run time; the journal says why
	ExitUsage    = 2 // bad flags or arguments
	ExitConfig   = 3 // a config file or input is invalid
	ExitInternal = 4 // a bug: an invariant did not hold
)

// ExitCode lets an error choose the process's exit status.
type ExitCode interface{ ExitCode() int }

// Exit wraps err so that Main exits with code.
func Exit(code int, err error) error { return &exitError{code: code, err: err} }

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }

// Usagef reports a command-line mistake (exit 2).
func Usagef(format string, a ...any) error { return Exit(ExitUsage, fmt.Errorf(format, a...)) }

// FlagSet is the flag set a Command's Flags fills: spf13/pflag, so every
// binary speaks GNU style (--name VALUE, --name=VALUE, -o VALUE for the few
// one-letter shorthands) and its errors name flags as "--name".
type FlagSet = pflag.FlagSet

// Command is one binary or subcommand.
type Command struct {
	Name      string // "g8-netup" or "g8-ac node approve"
	Args      string // positional arguments, e.g. "ID"
	Summary   string // one line
	Details   string // paragraphs shown after the flags
	ExitCodes map[int]string
	Flags     func(fs *FlagSet)
	Run       func(args []string) error
	Sub       []*Command // subcommands; Run may be nil when Sub is set
}

var baseExitCodes = map[int]string{
	ExitOK:       "success",
	ExitFailure:  "failure at run time (see the journal or stderr)",
	ExitUsage:    "bad command line",
	ExitConfig:   "invalid configuration or input",
	ExitInternal: "internal error",
}

// Main runs cmd with os.Args and exits. It never returns.
func Main(cmd *Command) {
	os.Exit(cmd.Execute(os.Args[1:], os.Stdout, os.Stderr))
}

// flagSet is c's flags plus --help and --version. Registering binds each
// flag's variable to its default, so the set that parses is made last.
func (c *Command) flagSet() *FlagSet {
	fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	if c.Flags != nil {
		c.Flags(fs)
	}
	fs.BoolP("help", "h", false, "show this help and exit")
	fs.Bool("version", false, "print the version and exit")
	return fs
}

// Execute parses args, dispatches to subcommands and returns the exit code.
// Flags may come before or after positional arguments and subcommand names
// ("g8-netup --config X check", "g8-ac node approve ID --data D"); only
// "--" ends them.
func (c *Command) Execute(args []string, stdout, stderr io.Writer) int {
	if len(c.Sub) > 0 {
		if i := c.subcommandIndex(args); i >= 0 {
			for _, s := range c.Sub {
				if strings.HasSuffix(s.Name, " "+args[i]) {
					rest := append(append([]string{}, args[:i]...), args[i+1:]...)
					return s.Execute(rest, stdout, stderr)
				}
			}
			fmt.Fprintf(stderr, "%s: unknown command %q (see --help)\n", c.Name, args[i])
			return ExitUsage
		}
	}
	fs := c.flagSet()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			c.usage(fs, stdout)
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %s (see --help)\n", c.Name, parseError(err))
		return ExitUsage
	}
	help, _ := fs.GetBool("help")
	showVersion, _ := fs.GetBool("version")
	switch {
	case help:
		c.usage(fs, stdout)
		return ExitOK
	case showVersion:
		fmt.Fprintf(stdout, "%s %s\n", strings.Fields(c.Name)[0], version.Version)
		return ExitOK
	case c.Run == nil:
		c.usage(fs, stderr)
		return ExitUsage
	}
	err := c.Run(fs.Args())
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", c.Name, err)
	var ec ExitCode
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return ExitFailure
}

// subcommandIndex finds the first positional argument of args (the
// subcommand's name), or -1. Whether a flag takes the next argument as its
// value is looked up in c's flags and in every subcommand's, so the flags
// of a subcommand may come before its name.
func (c *Command) subcommandIndex(args []string) int {
	sets := []*FlagSet{c.flagSet()}
	for _, s := range c.Sub {
		sets = append(sets, s.flagSet())
	}
	takesValue := func(f func(*FlagSet) *pflag.Flag) bool {
		for _, fs := range sets {
			if fl := f(fs); fl != nil {
				return fl.NoOptDefVal == ""
			}
		}
		return false
	}
	known := func(f func(*FlagSet) *pflag.Flag) bool {
		for _, fs := range sets {
			if f(fs) != nil {
				return true
			}
		}
		return false
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return -1
		case strings.HasPrefix(a, "--"):
			name := a[2:]
			if !strings.Contains(name, "=") && takesValue(func(fs *FlagSet) *pflag.Flag { return fs.Lookup(name) }) {
				i++
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			// -abc: a value may follow only the last shorthand, and only
			// in the next argument when it is alone.
			// An unknown letter (Go's "-config") stops the search, so the
			// parse reports the flag rather than "unknown command".
			for _, l := range a[1:] {
				if !known(func(fs *FlagSet) *pflag.Flag { return fs.ShorthandLookup(string(l)) }) {
					return -1
				}
			}
			last := a[len(a)-1:]
			if len(a) == 2 && takesValue(func(fs *FlagSet) *pflag.Flag { return fs.ShorthandLookup(last) }) {
				i++
			}
		default:
			return i
		}
	}
	return -1
}

// parseError words pflag's errors for people used to Go's one-dash long
// flags: "-bogus" is not five shorthands but a mistyped --bogus.
func parseError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "' in -"); strings.HasPrefix(msg, "unknown shorthand flag: ") && i > 0 {
		if arg := msg[i+len("' in "):]; len(arg) > 2 {
			return fmt.Sprintf("unknown flag: %s (long flags take two dashes: -%s; an argument that begins with a dash goes after --)", arg, arg)
		}
	}
	return msg
}

func (c *Command) usage(fs *FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: %s [flags] %s\n\n%s\n", c.Name, c.Args, c.Summary)
	if len(c.Sub) > 0 {
		fmt.Fprintf(w, "\nCommands:\n")
		for _, s := range c.Sub {
			fmt.Fprintf(w, "  %-22s %s\n", strings.TrimPrefix(s.Name, c.Name+" "), s.Summary)
		}
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.VisitAll(func(f *pflag.Flag) {
		name, use := pflag.UnquoteUsage(f)
		if f.NoOptDefVal != "" {
			name = ""
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		short := ""
		if f.Shorthand != "" {
			short = "-" + f.Shorthand + ", "
		}
		if name != "" {
			name = " " + name
		}
		fmt.Fprintf(w, "  %s--%s%s\n      %s%s\n", short, f.Name, name, use, def)
	})
	if c.Details != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Details))
	}
	fmt.Fprintf(w, "\nExit codes:\n")
	codes := map[int]string{}
	for k, v := range baseExitCodes {
		codes[k] = v
	}
	for k, v := range c.ExitCodes {
		codes[k] = v
	}
	for k := 0; k < 256; k++ {
		if v, ok := codes[k]; ok {
			fmt.Fprintf(w, "  %3d  %s\n", k, v)
		}
	}
}

// StringList is a repeatable flag (--listen A --listen B) that also accepts
// comma-separated values.
type StringList []string

func (s *StringList) String() string { return strings.Join(*s, ",") }

// Type implements pflag.Value: the word --help shows for the value.
func (s *StringList) Type() string { return "list" }

// Set implements pflag.Value.
func (s *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
