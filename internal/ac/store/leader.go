package store

import (
	"context"
	"time"
)

// Lead runs f while this process is the leader for name among every
// process on the database (several controllers: one runs the grid), and
// keeps trying every retry otherwise. f's context ends when leadership is
// lost or ctx ends; after a loss Lead tries again. onChange (may be nil)
// hears every change: true when taken, false when lost or given up.
func (s *Store) Lead(ctx context.Context, name string, retry time.Duration, f func(ctx context.Context), onChange func(leading bool, err error)) {
	if onChange == nil {
		onChange = func(bool, error) {}
	}
	for ctx.Err() == nil {
		ok, lost, release, err := s.eng.TryLeader(ctx, s.db, s.dsn, name)
		if err != nil || !ok {
			if err != nil {
				onChange(false, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		onChange(true, nil)
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); f(lctx) }()
		select {
		case <-lost:
		case <-done:
		case <-ctx.Done():
		}
		cancel()
		<-done
		release()
		onChange(false, nil)
		select { // f returned by itself: not at once again
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}
