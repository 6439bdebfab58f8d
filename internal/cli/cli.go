// Package cli is the one command-line convention every g8 binary follows:
// GNU-style --flags, --help and --version on every command and subcommand,
// every path a flag, and exit codes listed in the help text.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

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

// Command is one binary or subcommand.
type Command struct {
	Name      string // "g8-netup" or "g8-ac node approve"
	Args      string // positional arguments, e.g. "ID"
	Summary   string // one line
	Details   string // paragraphs shown after the flags
	ExitCodes map[int]string
	Flags     func(fs *flag.FlagSet)
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

// Execute parses args, dispatches to subcommands and returns the exit code.
func (c *Command) Execute(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	help := fs.Bool("help", false, "show this help and exit")
	fs.BoolVar(help, "h", false, "show this help and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if c.Flags != nil {
		c.Flags(fs)
	}
	// Subcommands are dispatched before flag parsing so each has its own flags.
	if len(c.Sub) > 0 && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		for _, s := range c.Sub {
			if strings.HasSuffix(s.Name, " "+args[0]) {
				return s.Execute(args[1:], stdout, stderr)
			}
		}
		fmt.Fprintf(stderr, "%s: unknown command %q (see --help)\n", c.Name, args[0])
		return ExitUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(fs, stdout)
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v (see --help)\n", c.Name, err)
		return ExitUsage
	}
	switch {
	case *help:
		c.usage(fs, stdout)
		return ExitOK
	case *showVersion:
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

func (c *Command) usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: %s [flags] %s\n\n%s\n", c.Name, c.Args, c.Summary)
	if len(c.Sub) > 0 {
		fmt.Fprintf(w, "\nCommands:\n")
		for _, s := range c.Sub {
			fmt.Fprintf(w, "  %-22s %s\n", strings.TrimPrefix(s.Name, c.Name+" "), s.Summary)
		}
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "h" {
			return
		}
		name, use := flag.UnquoteUsage(f)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s %s\n      %s%s\n", f.Name, name, use, def)
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

// Set implements flag.Value.
func (s *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
