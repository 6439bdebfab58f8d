// Package backoff retries an operation with capped, jittered exponential
// waits, forever or until its context ends, and tells the caller what it is
// about to wait for so the phase can put it in STATUS= and the journal.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy shapes the waits. The zero value is not useful; use Default or fill
// every field.
type Policy struct {
	Initial time.Duration // first wait
	Max     time.Duration // cap on any wait
	Factor  float64       // growth per attempt, >= 1
	Jitter  float64       // 0..1: each wait is drawn from [d*(1-Jitter), d]
}

// Default suits a boot phase waiting on the network: 0.5 s, doubling, capped
// at 30 s, with jitter so a rack of nodes rebooting together does not hammer
// the controller in lockstep.
var Default = Policy{Initial: 500 * time.Millisecond, Max: 30 * time.Second, Factor: 2, Jitter: 0.2}

// Backoff is the state of one retry sequence.
type Backoff struct {
	Policy
	attempt int
	rand    func() float64
}

// New starts a sequence.
func New(p Policy) *Backoff { return &Backoff{Policy: p, rand: rand.Float64} }

// Attempt is the number of waits handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Reset starts over from Initial (after a success).
func (b *Backoff) Reset() { b.attempt = 0 }

// Next returns the next wait and advances the sequence.
func (b *Backoff) Next() time.Duration {
	d := float64(b.Initial)
	for i := 0; i < b.attempt && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	if d > float64(b.Max) {
		d = float64(b.Max)
	}
	b.attempt++
	if b.Jitter > 0 {
		d -= d * b.Jitter * b.rand()
	}
	return time.Duration(d)
}

// Sleep waits d or until ctx ends, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Retry calls op until it succeeds or ctx ends. Before each wait it calls
// wait (may be nil) with the attempt number, the wait, and op's error, so
// the caller can report "attempt 3 failed: ...; next in 2s".
func Retry(ctx context.Context, p Policy, op func(context.Context) error, wait func(attempt int, d time.Duration, err error)) error {
	b := New(p)
	for {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := b.Next()
		if wait != nil {
			wait(b.Attempt(), d, err)
		}
		if err := Sleep(ctx, d); err != nil {
			return err
		}
	}
}
