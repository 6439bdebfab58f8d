package acapi

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text a node reports and an operator's CLI prints (heartbeat fields,
// phase summaries, app errors) must be printable: valid UTF-8 without
// control characters, so an ESC or OSC sequence (e.g. OSC 52, which sets
// the terminal's clipboard) from a node never reaches a terminal. The
// controller refuses anything else (CheckText), the node cleans what it
// sends (CleanText), and the CLI quotes anything it did not check
// (QuoteText), e.g. rows stored before the rule.

// IsText reports whether s is valid UTF-8 made only of printable runes
// (unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the
// ASCII space; no C0/C1 controls, no DEL, no other spaces or format runes).
func IsText(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// CheckText returns an error naming field and the first offending rune and
// its byte offset, or nil when s IsText.
func CheckText(field, s string) error {
	for i, r := range s {
		if r == utf8.RuneError {
			return fmt.Errorf("field %s: not UTF-8 at byte %d", field, i)
		}
		if !unicode.IsPrint(r) {
			return fmt.Errorf("field %s: control or non-printable character %U at byte %d; only printable text is accepted", field, r, i)
		}
	}
	return nil
}

// CleanText makes s printable for sending: every non-printable rune is
// written as its Go escape (\x1b, \n, \u009b), so nothing is lost and
// nothing is run.
func CleanText(s string) string {
	if IsText(s) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r != utf8.RuneError && unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		if r == utf8.RuneError { // a byte that is not UTF-8 (QuoteRune would print it)
			b.WriteString(`\ufffd`)
			continue
		}
		q := strconv.QuoteRune(r) // '\x1b'
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// QuoteText is s for a terminal: as is when it IsText, else Go-quoted
// ("\x1b]52;c;...") so the operator sees the escapes instead of their
// effect.
func QuoteText(s string) string {
	if IsText(s) {
		return s
	}
	return strconv.Quote(s)
}

// textFields calls f on every free-text field of the heartbeat with its
// name and stores what f returns; map keys are texts too.
func (hb *Heartbeat) textFields(f func(field, s string) string) {
	hb.Hostname = f("hostname", hb.Hostname)
	hb.BootID = f("boot_id", hb.BootID)
	for i := range hb.Addresses {
		hb.Addresses[i] = f(fmt.Sprintf("addresses[%d]", i), hb.Addresses[i])
	}
	hb.Units = textMap("units", hb.Units, f)
	hb.Phases = textMap("phases", hb.Phases, f)
	for i := range hb.Apps {
		a := &hb.Apps[i]
		p := fmt.Sprintf("apps[%d].", i)
		a.Name = f(p+"name", a.Name)
		a.State = f(p+"state", a.State)
		a.Error = f(p+"error", a.Error)
		a.Spec = f(p+"spec", a.Spec)
	}
}

func textMap(name string, m map[string]string, f func(field, s string) string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		key := f(name+" key "+strconv.Quote(CleanText(k)), k)
		out[key] = f(name+"["+strconv.Quote(CleanText(k))+"]", v)
	}
	return out
}

// CheckText returns the first field of the heartbeat that is not
// printable text (see IsText), named as in its JSON.
func (hb *Heartbeat) CheckText() error {
	var first error
	hb.textFields(func(field, s string) string {
		if first == nil {
			first = CheckText(field, s)
		}
		return s
	})
	return first
}

// CleanText makes every free-text field printable (see CleanText) before
// a node sends it.
func (hb *Heartbeat) CleanText() {
	hb.textFields(func(_, s string) string { return CleanText(s) })
}
