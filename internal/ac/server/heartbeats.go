package server

import (
	"context"
	"sync"
	"time"

	"github.com/g8os/boot/internal/ac/store"
)

// heartbeats is a group commit for heartbeat writes: with thousands of
// nodes a transaction (and fsync) per heartbeat serialises every request
// on the store's write lock. Heartbeats that arrive while a write is under
// way go into the next one, one transaction for all of them; each request
// is answered once its heartbeat is stored, so the store is as current as
// before and a failed write is still reported to the node.
type heartbeats struct {
	s       *Server
	mu      sync.Mutex
	next    *heartbeatBatch
	writing bool
}

type heartbeatBatch struct {
	recs map[string]store.HeartbeatRecord
	done chan struct{}
	err  error // set before done is closed
}

func newHeartbeats(s *Server) *heartbeats { return &heartbeats{s: s} }

// add puts a heartbeat into the next write; wait on the batch's done.
func (h *heartbeats) add(r store.HeartbeatRecord) *heartbeatBatch {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := h.next
	if b == nil {
		b = &heartbeatBatch{recs: map[string]store.HeartbeatRecord{}, done: make(chan struct{})}
		h.next = b
	}
	// Two heartbeats of one node in one batch: the later one wins.
	b.recs[r.NodeID] = r
	if !h.writing {
		h.writing = true
		go h.write()
	}
	return b
}

// write stores batches until none is waiting.
func (h *heartbeats) write() {
	for {
		h.mu.Lock()
		b := h.next
		h.next = nil
		if b == nil {
			h.writing = false
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		recs := make([]store.HeartbeatRecord, 0, len(b.recs))
		for _, r := range b.recs {
			recs = append(recs, r)
		}
		// Not a request's context: the batch is many requests'.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		b.err = h.s.cfg.Store.RecordHeartbeats(ctx, recs)
		cancel()
		close(b.done)
	}
}
