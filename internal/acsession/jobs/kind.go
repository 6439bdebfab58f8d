// Package jobs runs the jobs the controller sends to a node. Each kind is
// one small file that registers itself (ping.go, exec.go, ...); the
// Executor around them validates, de-duplicates, times out, records and
// reports. A new kind needs only its file: a Kind with a name and a Run.
package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/g8os/boot/internal/acapi"
)

// Kind is one kind of job.
type Kind struct {
	Name string
	// Run does the job and fills res (ExitCode, Stdout, Stderr, Truncated,
	// Output). ctx ends at the job's timeout. An error wrapped by Reject
	// makes the result "rejected" (bad args); any other error "failed".
	// The executor sets ID, State, Error and the times.
	Run func(ctx context.Context, env *Env, job *acapi.Job, res *acapi.JobResult) error
}

// Env is what a kind may use from the session.
type Env struct {
	NodeID   string
	StateDir string // the session's state directory (/run/g8os)
	Log      *slog.Logger
}

var (
	kindsMu sync.RWMutex
	kinds   = map[string]Kind{}
)

// Register adds a kind; each kind's file calls it from init. Registering a
// name twice is a bug.
func Register(k Kind) {
	kindsMu.Lock()
	defer kindsMu.Unlock()
	if k.Name == "" || k.Run == nil {
		panic("jobs: kind without name or Run")
	}
	if _, dup := kinds[k.Name]; dup {
		panic("jobs: kind " + k.Name + " registered twice")
	}
	kinds[k.Name] = k
}

func lookup(name string) (Kind, bool) {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	k, ok := kinds[name]
	return k, ok
}

// Kinds lists the registered kind names, sorted.
func Kinds() []string {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

type rejectedError struct{ err error }

func (r *rejectedError) Error() string { return r.err.Error() }
func (r *rejectedError) Unwrap() error { return r.err }

// Reject marks err as the job's fault (malformed args), not the node's.
func Reject(err error) error { return &rejectedError{err} }

// Rejectf is Reject(fmt.Errorf(...)).
func Rejectf(format string, a ...any) error { return Reject(fmt.Errorf(format, a...)) }

func isRejected(err error) bool {
	var r *rejectedError
	return errors.As(err, &r)
}

// DecodeArgs decodes a job's args strictly into v: unknown fields and
// trailing data are rejected with the field named, so a typo in a job
// never silently runs something else. Empty args decode as {}.
func DecodeArgs(job *acapi.Job, v any) error {
	data := bytes.TrimSpace(job.Args)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		data = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Rejectf("%s args: %w", job.Kind, err)
	}
	if dec.More() {
		return Rejectf("%s args: trailing data after the JSON object", job.Kind)
	}
	return nil
}
