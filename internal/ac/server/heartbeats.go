package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/g8os/boot/internal/ac/store"
)

// heartbeatBatch gathers the heartbeats that arrive within a short window
// and stores them in one commit: at fleet size the heartbeats are most of
// the controller's writes, and a commit (a sync to disk) for a handful of
// them each time is most of its CPU. A node that beats twice in a window
// is stored once, with its latest status. Each heartbeat is still answered
// only once stored, so what a node was told matches the store.
type heartbeatBatch struct {
	s       *Server
	mu      sync.Mutex
	recs    map[string]store.HeartbeatRecord
	waiters map[string][]chan error
	timer   *time.Timer
	flushMu sync.Mutex // batches are written in the order they closed
}

// maxHeartbeatBatch closes a batch early: one commit stays bounded.
const maxHeartbeatBatch = 4096

func newHeartbeatBatch(s *Server) *heartbeatBatch { return &heartbeatBatch{s: s} }

// add queues rec and returns where its outcome arrives.
func (b *heartbeatBatch) add(rec store.HeartbeatRecord) <-chan error {
	ch := make(chan error, 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.recs == nil {
		b.recs, b.waiters = map[string]store.HeartbeatRecord{}, map[string][]chan error{}
		b.timer = time.AfterFunc(b.s.cfg.HeartbeatBatch, b.flush)
	}
	b.recs[rec.ID] = rec
	b.waiters[rec.ID] = append(b.waiters[rec.ID], ch)
	if len(b.recs) >= maxHeartbeatBatch && b.timer.Stop() {
		go b.flush()
	}
	return ch
}

func (b *heartbeatBatch) flush() {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.mu.Lock()
	recs, waiters := b.recs, b.waiters
	b.recs, b.waiters = nil, nil
	b.mu.Unlock()
	if len(recs) == 0 {
		return
	}
	list := make([]store.HeartbeatRecord, 0, len(recs))
	for _, r := range recs {
		list = append(list, r)
	}
	// Not a request's context: the batch is everyone's.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	missing, err := b.s.cfg.Store.RecordHeartbeats(ctx, list)
	for id, chs := range waiters {
		e := err
		if e == nil && missing[id] {
			e = fmt.Errorf("node %s: %w", id, store.ErrNotFound)
		}
		for _, ch := range chs {
			ch <- e
		}
	}
}
