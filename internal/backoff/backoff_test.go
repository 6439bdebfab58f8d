package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNextGrowsAndIsCapped(t *testing.T) {
	b := New(Policy{Initial: 100 * time.Millisecond, Max: time.Second, Factor: 2})
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Errorf("wait %d = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Errorf("after reset: %v", got)
	}
}

func TestJitterStaysWithinBounds(t *testing.T) {
	p := Policy{Initial: time.Second, Max: 8 * time.Second, Factor: 2, Jitter: 0.5}
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := New(p)
		b.rand = func() float64 { return r }
		for i := 0; i < 50; i++ {
			d := b.Next()
			ceil := min(time.Second<<min(i, 3), 8*time.Second)
			if d > ceil || d < ceil/2 {
				t.Fatalf("rand=%v attempt %d: %v outside [%v, %v]", r, i, d, ceil/2, ceil)
			}
		}
	}
}

// Many attempts must neither overflow nor exceed the cap.
func TestNoOverflowAfterManyAttempts(t *testing.T) {
	b := New(Policy{Initial: time.Millisecond, Max: time.Minute, Factor: 10})
	for i := 0; i < 10000; i++ {
		if d := b.Next(); d <= 0 || d > time.Minute {
			t.Fatalf("attempt %d: %v", i, d)
		}
	}
}

func TestRetryReportsEachWaitAndStopsOnSuccess(t *testing.T) {
	calls := 0
	var waits []int
	err := Retry(context.Background(), Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond, Factor: 2},
		func(context.Context) error {
			calls++
			if calls < 4 {
				return errors.New("not yet")
			}
			return nil
		},
		func(attempt int, d time.Duration, err error) {
			if err == nil || d <= 0 {
				t.Errorf("wait %d: d=%v err=%v", attempt, d, err)
			}
			waits = append(waits, attempt)
		})
	if err != nil || calls != 4 || len(waits) != 3 || waits[2] != 3 {
		t.Fatalf("err=%v calls=%d waits=%v", err, calls, waits)
	}
}

func TestRetryEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := Retry(ctx, Policy{Initial: 10 * time.Millisecond, Max: time.Hour, Factor: 2},
		func(context.Context) error { return errors.New("never") }, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}
