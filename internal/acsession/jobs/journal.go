package jobs

import (
	"context"
	"regexp"
	"strconv"

	"github.com/g8os/boot/internal/acapi"
)

// unitName is a systemd unit name (systemd.unit(5)) without glob
// characters, so a job names exactly one unit and cannot smuggle an option
// into journalctl's argv.
var unitName = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]{1,255}$`)

const (
	defaultJournalLines = 100
	maxJournalLines     = 10000
)

// journal returns the last lines of one unit's journal.
func init() {
	Register(Kind{Name: acapi.KindJournal, Run: func(ctx context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
		var a acapi.JournalArgs
		if err := DecodeArgs(job, &a); err != nil {
			return err
		}
		if !unitName.MatchString(a.Unit) || a.Unit[0] == '-' {
			return Rejectf("journal args: unit: %q is not a unit name", a.Unit)
		}
		switch {
		case a.Lines < 0 || a.Lines > maxJournalLines:
			return Rejectf("journal args: lines: %d is not in 1..%d", a.Lines, maxJournalLines)
		case a.Lines == 0:
			a.Lines = defaultJournalLines
		}
		argv := []string{"journalctl", "--no-pager", "--quiet", "--output=short-iso",
			"--lines=" + strconv.Itoa(a.Lines), "--unit=" + a.Unit}
		return runProcess(ctx, process{argv: argv, maxOutput: acapi.MaxOutput}, res)
	}})
}
