package store

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Of several controllers on one database exactly one leads; when it stops
// (or dies: its connection or file handle goes away) another takes over
// within the retry interval.
func TestOneLeaderAndTakeover(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newDB func() string) {
		dsn := newDB()
		var leading atomic.Int32
		var most atomic.Int32
		type ctrl struct {
			cancel context.CancelFunc
			taken  chan struct{}
			done   chan struct{}
		}
		start := func() *ctrl {
			s := open(t, dsn)
			ctx, cancel := context.WithCancel(context.Background())
			c := &ctrl{cancel: cancel, taken: make(chan struct{}), done: make(chan struct{})}
			var once sync.Once
			go func() {
				defer close(c.done)
				s.Lead(ctx, "grid", 50*time.Millisecond, func(ctx context.Context) {
					n := leading.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					once.Do(func() { close(c.taken) })
					<-ctx.Done()
					leading.Add(-1)
				}, nil)
			}()
			return c
		}
		ctrls := []*ctrl{start(), start(), start()}
		first := -1
		deadline := time.After(10 * time.Second)
		for first < 0 {
			for i, c := range ctrls {
				select {
				case <-c.taken:
					first = i
				default:
				}
			}
			select {
			case <-deadline:
				t.Fatal("nobody leads after 10s")
			case <-time.After(10 * time.Millisecond):
			}
		}
		time.Sleep(300 * time.Millisecond) // the others keep trying meanwhile
		ctrls[first].cancel()
		<-ctrls[first].done
		stopped := time.Now()
		next := -1
		for next < 0 {
			for i, c := range ctrls {
				if i == first {
					continue
				}
				select {
				case <-c.taken:
					next = i
				default:
				}
			}
			if time.Since(stopped) > 5*time.Second {
				t.Fatal("no takeover within 5s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("controller %d took over %v after %d stopped", next, time.Since(stopped).Round(time.Millisecond), first)
		for _, c := range ctrls {
			c.cancel()
			<-c.done
		}
		if m := most.Load(); m != 1 {
			t.Fatalf("%d leaders at once", m)
		}
	})
}
