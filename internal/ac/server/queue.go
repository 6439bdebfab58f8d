package server

import (
	"context"
	"sync"
	"time"

	"github.com/g8os/boot/internal/sd"
)

// queueWatch wakes long-polls when jobs are queued for their node. Jobs are
// queued by other processes (the admin CLI), so it polls the store, but
// once per interval for all waiting nodes: a data_version check, and only
// when something was committed, one query for the nodes with queued jobs.
type queueWatch struct {
	s       *Server
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]bool
	running bool
}

func newQueueWatch(s *Server) *queueWatch {
	return &queueWatch{s: s, waiters: map[string]map[chan struct{}]bool{}}
}

// wait registers a waiter for node; the channel is closed when the node may
// have queued jobs. cancel must be called when done.
func (q *queueWatch) wait(node string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	q.mu.Lock()
	if q.waiters[node] == nil {
		q.waiters[node] = map[chan struct{}]bool{}
	}
	q.waiters[node][ch] = true
	if !q.running {
		q.running = true
		go q.loop()
	}
	q.mu.Unlock()
	return ch, func() {
		q.mu.Lock()
		if ws := q.waiters[node]; ws != nil && ws[ch] {
			delete(ws, ch)
			if len(ws) == 0 {
				delete(q.waiters, node)
			}
		}
		q.mu.Unlock()
	}
}

// loop runs while anyone waits.
func (q *queueWatch) loop() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-q.s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	w, err := q.s.cfg.Store.NewChangeWatch(ctx)
	if err != nil {
		q.fail(err)
		return
	}
	defer w.Close()
	t := time.NewTicker(q.s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			q.stop()
			return
		case <-t.C:
		}
		q.mu.Lock()
		if len(q.waiters) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		changed, err := w.Changed(ctx)
		if err != nil {
			q.fail(err)
			return
		}
		if !changed {
			continue
		}
		nodes, err := q.s.cfg.Store.NodesWithQueuedJobs(ctx)
		if err != nil {
			q.fail(err)
			return
		}
		q.mu.Lock()
		for n := range nodes {
			for ch := range q.waiters[n] {
				close(ch)
			}
			delete(q.waiters, n)
		}
		q.mu.Unlock()
	}
}

// fail wakes everyone so each poll looks at the store itself (and reports
// the error) instead of hanging until its deadline.
func (q *queueWatch) fail(err error) {
	if q.s.cfg.Log != nil {
		select {
		case <-q.s.stopping:
		default:
			q.s.cfg.Log.Error("watching the job queue failed", sd.ACRequestFailed.Attr(), "error", err)
		}
	}
	// Bounds the retry rate while the store is failing.
	time.Sleep(q.s.cfg.PollInterval)
	q.stop()
}

func (q *queueWatch) stop() {
	q.mu.Lock()
	for n, ws := range q.waiters {
		for ch := range ws {
			close(ch)
		}
		delete(q.waiters, n)
	}
	q.running = false
	q.mu.Unlock()
}
