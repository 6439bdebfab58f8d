package server

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/sd"
)

// storeWatch follows the store for changes made by any process (the admin
// CLI writes the same file): it keeps the node identity cache honest and
// wakes long-polls when jobs are queued for their node. One loop serves
// every request: it waits for a commit elsewhere the store engine's way
// (SQLite: a data_version check each interval; PostgreSQL: a NOTIFY from
// the schema's triggers, at once), and only then reads the change counters
// the triggers keep; only when those moved, a query.
type storeWatch struct {
	s       *Server
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]bool
	started bool
	// queued holds the nodes that had queued jobs at the last look
	// (queuedOK: the watch is following the store, so the set is
	// current). A long-poll of any other node waits without asking the
	// store: at fleet size, idle polls are most of the requests.
	queued   map[string]bool
	queuedOK bool

	// Node identities (cert CN -> what authNode needs). A node's entry is
	// dropped when its state or certificate changes; a lookup then reads
	// the store, and fills the entry only if that node was not dropped
	// while it read (tombs keeps, while lookups are reading, the drop
	// number of each node dropped meanwhile). Only that node's drop
	// counts: while a fleet comes up some node changes at every moment,
	// and "no node dropped meanwhile" kept nearly every lookup from
	// filling the cache. epoch moves when the whole cache is dropped; 0
	// means the watch has no baseline yet (nothing is cached).
	cmu     sync.Mutex
	nodes   map[string]authEntry
	tombs   map[string]uint64
	drops   uint64
	reading int
	epoch   uint64
	hook    func() // tests: runs between a lookup's store read and its fill
}

// authEntry is a node's cache entry.
type authEntry struct{ state, serial, pending string }

func newStoreWatch(s *Server) *storeWatch {
	return &storeWatch{s: s, waiters: map[string]map[chan struct{}]bool{}, nodes: map[string]authEntry{}, tombs: map[string]uint64{}}
}

func (q *storeWatch) start() {
	q.mu.Lock()
	if !q.started {
		q.started = true
		go q.loop()
	}
	q.mu.Unlock()
}

// node looks up a node's identity, from the cache when it can.
func (q *storeWatch) node(ctx context.Context, id string) (*store.Node, error) {
	q.start()
	q.cmu.Lock()
	if e, ok := q.nodes[id]; ok {
		q.cmu.Unlock()
		return &store.Node{ID: id, State: e.state, CertSerial: e.serial, CertPending: e.pending}, nil
	}
	q.reading++
	drops, epoch := q.drops, q.epoch
	q.cmu.Unlock()
	n, err := q.s.cfg.Store.NodeAuth(ctx, id)
	if err == nil && q.hook != nil {
		q.hook()
	}
	q.cmu.Lock()
	defer q.cmu.Unlock()
	if d, dropped := q.tombs[id]; err == nil && epoch != 0 && epoch == q.epoch && (!dropped || d <= drops) {
		q.nodes[id] = authEntry{state: n.State, serial: n.CertSerial, pending: n.CertPending}
	}
	if q.reading--; q.reading == 0 {
		clear(q.tombs)
	}
	return n, err
}

// dropNodes empties the cache; ready says whether it may fill again.
func (q *storeWatch) dropNodes(ready bool) {
	q.cmu.Lock()
	clear(q.nodes)
	if ready {
		q.epoch++
	} else {
		q.epoch = 0
	}
	q.cmu.Unlock()
}

// forget drops the entries of nodes that changed.
func (q *storeWatch) forget(ids ...string) {
	q.cmu.Lock()
	for _, id := range ids {
		delete(q.nodes, id)
		if q.reading > 0 {
			q.drops++
			q.tombs[id] = q.drops
		}
	}
	q.cmu.Unlock()
}

// wait registers a waiter for node; the channel is closed when the node may
// have queued jobs. cancel must be called when done.
func (q *storeWatch) wait(node string) (<-chan struct{}, func()) {
	q.start()
	ch := make(chan struct{})
	q.mu.Lock()
	if q.waiters[node] == nil {
		q.waiters[node] = map[chan struct{}]bool{}
	}
	q.waiters[node][ch] = true
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

// mayHaveJobs reports whether node's poll must look in the store: it had
// queued jobs at the watch's last look, or the watch is not following the
// store. A job queued later wakes the poll's waiter, registered first.
func (q *storeWatch) mayHaveJobs(node string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return !q.queuedOK || q.queued[node]
}

// setQueued records the nodes with queued jobs; nil: unknown.
func (q *storeWatch) setQueued(queued map[string]bool) {
	q.mu.Lock()
	q.queued, q.queuedOK = queued, queued != nil
	q.mu.Unlock()
}

// loop runs until the server stops, restarting its watch after errors.
func (q *storeWatch) loop() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-q.s.stopping
		cancel()
	}()
	for ctx.Err() == nil {
		err := q.watch(ctx)
		q.dropNodes(false)
		q.setQueued(nil)
		q.wakeAll()
		if ctx.Err() != nil {
			return
		}
		q.s.cfg.Log.Error("watching the store failed", sd.ACRequestFailed.Attr(), "error", err)
		// Bounds the retry rate while the store is failing.
		select {
		case <-ctx.Done():
		case <-time.After(q.s.cfg.PollInterval):
		}
	}
}

func (q *storeWatch) watch(ctx context.Context) error {
	w, err := q.s.cfg.Store.NewChangeWatch(ctx)
	if err != nil {
		return err
	}
	defer w.Close()
	nodes, jobs, err := w.Counters(ctx)
	if err != nil {
		return err
	}
	// Entries read before this baseline could be stale: start over.
	q.dropNodes(true)
	queued, err := q.s.cfg.Store.NodesWithQueuedJobs(ctx)
	if err != nil {
		return err
	}
	q.setQueued(queued)
	q.wakeAll()
	for {
		changed, err := w.Wait(ctx, q.s.cfg.PollInterval)
		if err != nil {
			return err
		}
		if !changed {
			continue
		}
		n, j, err := w.Counters(ctx)
		if err != nil {
			return err
		}
		if n != nodes {
			ids, err := w.ChangedNodes(ctx, nodes)
			if err != nil {
				return err
			}
			nodes = n
			q.forget(ids...)
			// A long-poll of a node that was revoked (or whose
			// certificate was superseded) must end now, not at its
			// deadline: its poll looks at its node again. Only
			// the changed nodes' polls: waking the whole fleet's
			// for each node's change costs N times N.
			q.wake(ids)
		}
		if j == jobs {
			continue
		}
		jobs = j
		queued, err := q.s.cfg.Store.NodesWithQueuedJobs(ctx)
		if err != nil {
			return err
		}
		q.mu.Lock()
		q.queued = queued
		q.mu.Unlock()
		q.wake(slices.Collect(maps.Keys(queued)))
	}
}

// wake wakes the polls of nodes.
func (q *storeWatch) wake(nodes []string) {
	q.mu.Lock()
	for _, n := range nodes {
		for ch := range q.waiters[n] {
			close(ch)
		}
		delete(q.waiters, n)
	}
	q.mu.Unlock()
}

// wakeAll wakes everyone so each poll looks at the store itself (and
// reports any error) instead of hanging until its deadline.
func (q *storeWatch) wakeAll() {
	q.mu.Lock()
	for n, ws := range q.waiters {
		for ch := range ws {
			close(ch)
		}
		delete(q.waiters, n)
	}
	q.mu.Unlock()
}
