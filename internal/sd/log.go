package sd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
)

// NewLogger is the one logger setup for every g8 binary. Under systemd
// (stderr is the journal stream) records go to the journal natively with
// their attributes as fields: MESSAGE_ID from Msg, G_PHASE from phase, and
// every other attribute k as G_<K> (so "iface" becomes G_IFACE). Elsewhere
// they go to stderr as text.
func NewLogger(phase string, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	if journalStream() && journal.Enabled() {
		return slog.New(&journalHandler{phase: phase, ident: filepath.Base(os.Args[0]), level: level})
	}
	return NewTextLogger(os.Stderr, phase, level)
}

// NewTextLogger logs as text to w; tests use it to capture output.
func NewTextLogger(w io.Writer, phase string, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("phase", phase)
}

// journalStream reports whether stderr is the journal, per the JOURNAL_STREAM
// protocol in systemd.exec(5): compare device and inode, because a child may
// inherit the variable with its stderr redirected elsewhere.
func journalStream() bool {
	var dev, ino uint64
	if _, err := fmt.Sscanf(os.Getenv("JOURNAL_STREAM"), "%d:%d", &dev, &ino); err != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

type journalHandler struct {
	phase  string
	ident  string // SYSLOG_IDENTIFIER: the binary's name, so journalctl -t g8-netup finds it
	level  slog.Level
	attrs  []slog.Attr
	prefix string // group prefix for field names
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *journalHandler) Handle(_ context.Context, r slog.Record) error {
	vars := map[string]string{"G_PHASE": h.phase, "SYSLOG_IDENTIFIER": h.ident}
	add := func(a slog.Attr) { addField(vars, h.prefix, a) }
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	msg := r.Message
	// Keep the human line self-contained for `journalctl -o short`.
	var extra []string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != msgIDKey {
			extra = append(extra, a.Key+"="+a.Value.String())
		}
		return true
	})
	if len(extra) > 0 {
		msg += " (" + strings.Join(extra, " ") + ")"
	}
	return journal.Send(msg, priority(r.Level), vars)
}

func addField(vars map[string]string, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Value.Kind() == slog.KindGroup {
		for _, g := range a.Value.Group() {
			addField(vars, prefix+a.Key+"_", g)
		}
		return
	}
	if a.Key == msgIDKey {
		vars["MESSAGE_ID"] = a.Value.String()
		return
	}
	vars[fieldName(prefix+a.Key)] = a.Value.String()
}

// fieldName maps an attribute key to a valid journal field name: upper case
// letters, digits and underscores, not starting with an underscore.
func fieldName(k string) string {
	var b strings.Builder
	// No digit: journalctl -x substitutes the catalog's @FIELD@ references
	// only for names of upper-case letters and underscores (systemd's
	// replace-var.c), so "G8_IFACE" would print as written.
	b.WriteString("G_")
	for _, r := range strings.ToUpper(k) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &n
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.prefix = h.prefix + name + "_"
	return &n
}
