package main

// A simulated node: what one g8-acsession sends over the wire (one TLS
// connection with its enrolled client certificate, HTTP/2, a heartbeat
// every interval, a jobs long-poll always open, a result and an event per
// job, reconnects with the session's own jittered backoff), written
// against the HTTP/2 framer directly so that 100,000 of them cost one
// goroutine and a few KiB each: the bench then measures the controller,
// not the nodes. The framing (RFC 9113) is the few frames a client needs;
// header blocks go through hpack.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/acsession"
	"github.com/g8os/boot/internal/backoff"
)

// fleet is what every simulated node shares: the controller's address, the
// timings and the counters the bench reads.
type fleet struct {
	addr      string // host:port of the controller
	host      string // what the URL names (TLS server name, :authority)
	heartbeat time.Duration
	longPoll  time.Duration
	timeout   time.Duration // per request, as acsession.DefaultRequestTimeout
	retry     backoff.Policy

	connected   atomic.Int64 // nodes whose last heartbeat was answered 200 on the current connection
	handshakes  atomic.Int64
	resumed     atomic.Int64 // handshakes that resumed a TLS session
	failures    atomic.Int64 // connects or requests that failed
	unavailable atomic.Int64 // 503/429 answers (admission control)
	lastErr     atomic.Pointer[error]

	mu      sync.Mutex
	jobT0   map[int]time.Time // node index -> when its job was queued
	jobDone chan jobSample
}

func (f *fleet) lastError() error {
	if e := f.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

type jobSample struct {
	node int
	rtt  time.Duration
}

// simNode is one node. Its goroutine connects and reads; heartbeats are
// sent from a timer; everything else is a continuation of a read.
type simNode struct {
	f     *fleet
	idx   int
	id    string
	tls   *tls.Config
	local *net.TCPAddr
	hb    []byte // the heartbeat body, encoded once
	timer *time.Timer

	wmu      sync.Mutex
	conn     *tls.Conn
	wbuf     *bytes.Buffer // the batch being written (pooled)
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	nextID   uint32
	pending  map[uint32]*simReq
	up       bool // the first heartbeat of this connection was answered
	eventSeq uint64
	recvd    int64         // DATA bytes since the last connection WINDOW_UPDATE
	retryIn  time.Duration // a Retry-After to honour on the next wait
}

type simReq struct {
	kind   int
	start  time.Time
	status int
	body   []byte
	retry  time.Duration
}

const (
	reqHeartbeat = iota
	reqPoll
	reqResult
	reqEvents
)

// HTTP/2 frame types and flags used here (RFC 9113, section 6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// frame appends one frame to the batch.
func (n *simNode) frame(typ, flags byte, stream uint32, payload []byte) {
	var h [9]byte
	h[0], h[1], h[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	h[3], h[4] = typ, flags
	binary.BigEndian.PutUint32(h[5:], stream&(1<<31-1))
	n.wbuf.Write(h[:])
	n.wbuf.Write(payload)
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// run is the node's life: connect, serve the connection, wait, again.
func (n *simNode) run(ctx context.Context, delay time.Duration) {
	b := backoff.New(n.f.retry)
	wait := delay
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := n.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		n.f.failures.Add(1)
		n.wmu.Lock()
		if n.up {
			b.Reset() // a session that was up starts its backoff afresh
		}
		wait = b.Next()
		if n.retryIn > wait {
			wait = n.retryIn
		}
		n.retryIn, n.up = 0, false
		n.wmu.Unlock()
		n.f.lastErr.Store(&err)
	}
}

// serve holds one connection until it fails.
func (n *simNode) serve(ctx context.Context) error {
	d := net.Dialer{Timeout: n.f.timeout, LocalAddr: n.local}
	raw, err := d.DialContext(ctx, "tcp", n.f.addr)
	if err != nil {
		return err
	}
	c := tls.Client(raw, n.tls)
	hctx, cancel := context.WithTimeout(ctx, n.f.timeout)
	err = c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		return err
	}
	n.f.handshakes.Add(1)
	st := c.ConnectionState()
	if st.DidResume {
		n.f.resumed.Add(1)
	}
	if st.NegotiatedProtocol != "h2" {
		c.Close()
		return fmt.Errorf("controller did not negotiate h2 (%q)", st.NegotiatedProtocol)
	}
	n.wmu.Lock()
	n.conn, n.nextID, n.pending, n.up, n.recvd = c, 1, map[uint32]*simReq{}, false, 0
	n.henc = hpack.NewEncoder(&n.hbuf)
	err = n.write(func() error {
		n.wbuf.WriteString(clientPreface)
		// What Go's HTTP/2 client announces: no push, 4 MiB stream
		// windows, 10 MiB header lists, and a 1 GiB connection window.
		var set []byte
		for _, kv := range [][2]uint32{{0x2, 0}, {0x4, 4 << 20}, {0x6, 10 << 20}} {
			set = binary.BigEndian.AppendUint16(set, uint16(kv[0]))
			set = binary.BigEndian.AppendUint32(set, kv[1])
		}
		n.frame(frameSettings, 0, 0, set)
		n.frame(frameWindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, 1<<30))
		return n.request(reqHeartbeat, http.MethodPost, acapi.PathHeartbeat, n.hb)
	})
	n.wmu.Unlock()
	if err != nil {
		c.Close()
		return err
	}
	// The node's one goroutine reads; a timer or the bench ends the
	// connection by closing it under the read.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err = n.read(c)
	stop()
	c.Close()
	n.wmu.Lock()
	if n.up {
		n.f.connected.Add(-1)
	}
	n.conn = nil
	n.wmu.Unlock()
	return err
}

// write runs f with the framer pointed at a pooled buffer and sends what
// it wrote in one TLS write. Callers hold wmu.
func (n *simNode) write(f func() error) error {
	n.wbuf = bufPool.Get().(*bytes.Buffer)
	n.wbuf.Reset()
	defer func() { bufPool.Put(n.wbuf); n.wbuf = nil }()
	if err := f(); err != nil {
		return err
	}
	_ = n.conn.SetWriteDeadline(time.Now().Add(n.f.timeout))
	_, err := n.conn.Write(n.wbuf.Bytes())
	return err
}

// request writes one request's frames. Callers hold wmu, inside write.
func (n *simNode) request(kind int, method, path string, body []byte) error {
	id := n.nextID
	n.nextID += 2
	n.hbuf.Reset()
	for _, h := range [][2]string{{":authority", n.f.host}, {":method", method}, {":path", path}, {":scheme", "https"}} {
		_ = n.henc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	if body != nil {
		_ = n.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/json"})
		_ = n.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	}
	_ = n.henc.WriteField(hpack.HeaderField{Name: "accept-encoding", Value: "gzip"})
	_ = n.henc.WriteField(hpack.HeaderField{Name: "user-agent", Value: "Go-http-client/2.0"})
	flags := byte(flagEndHeaders)
	if body == nil {
		flags |= flagEndStream
	}
	n.frame(frameHeaders, flags, id, n.hbuf.Bytes())
	if body != nil {
		n.frame(frameData, flagEndStream, id, body)
	}
	n.pending[id] = &simReq{kind: kind, start: time.Now()}
	return nil
}

// send writes one request now, from outside a read (timers, the bench).
func (n *simNode) send(kind int, method, path string, body []byte) {
	n.wmu.Lock()
	defer n.wmu.Unlock()
	if n.conn == nil {
		return
	}
	if err := n.write(func() error { return n.request(kind, method, path, body) }); err != nil {
		n.fail(err)
	}
}

// fail ends the connection; serve returns. Callers hold wmu.
func (n *simNode) fail(err error) {
	n.f.lastErr.Store(&err)
	n.conn.Close()
}

// beat is the heartbeat timer: the session sends one per interval, and
// gives up a connection whose heartbeat or long-poll is overdue.
func (n *simNode) beat() {
	n.wmu.Lock()
	if n.conn != nil && n.up {
		now := time.Now()
		for _, r := range n.pending {
			limit := n.f.timeout
			if r.kind == reqPoll {
				limit += n.f.longPoll
			}
			if now.Sub(r.start) > limit {
				n.fail(errors.New("request overdue"))
				n.wmu.Unlock()
				return
			}
		}
		if err := n.write(func() error { return n.request(reqHeartbeat, http.MethodPost, acapi.PathHeartbeat, n.hb) }); err != nil {
			n.fail(err)
		}
	}
	n.wmu.Unlock()
}

// read serves the connection's frames until it fails.
func (n *simNode) read(c *tls.Conn) error {
	dec := hpack.NewDecoder(4096, nil)
	var hdr [9]byte
	var buf, block []byte
	var blockStream uint32
	var blockEnd bool
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		size := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags, stream := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:])&(1<<31-1)
		if size > 1<<20 {
			return fmt.Errorf("frame of %d bytes", size)
		}
		if cap(buf) < size {
			buf = make([]byte, size)
		}
		p := buf[:size]
		if _, err := io.ReadFull(c, p); err != nil {
			return err
		}
		if flags&flagPadded != 0 && (typ == frameData || typ == frameHeaders) {
			if len(p) < 1 || int(p[0]) >= len(p) {
				return errors.New("bad padding")
			}
			p = p[1 : len(p)-int(p[0])]
		}
		var err error
		n.wmu.Lock()
		switch typ {
		case frameSettings:
			if flags&flagAck == 0 {
				err = n.write(func() error { n.frame(frameSettings, flagAck, 0, nil); return nil })
			}
		case framePing:
			if flags&flagAck == 0 {
				err = n.write(func() error { n.frame(framePing, flagAck, 0, p); return nil })
			}
		case frameGoAway:
			// The controller is stopping: it answers what it holds
			// (long-polls get []), then closes; the read error follows.
		case frameRSTStream:
			delete(n.pending, stream)
			err = fmt.Errorf("stream %d reset", stream)
		case frameHeaders, frameContinuation:
			if typ == frameHeaders {
				if flags&flagPriority != 0 {
					if len(p) < 5 {
						err = errors.New("short HEADERS")
						break
					}
					p = p[5:]
				}
				block, blockStream, blockEnd = append(block[:0], p...), stream, flags&flagEndStream != 0
			} else {
				block = append(block, p...)
			}
			if flags&flagEndHeaders == 0 {
				break
			}
			fields, derr := dec.DecodeFull(block)
			if derr != nil {
				err = derr
				break
			}
			if r := n.pending[blockStream]; r != nil {
				for _, h := range fields {
					switch h.Name {
					case ":status":
						r.status, _ = strconv.Atoi(h.Value)
					case "retry-after":
						if s, err := strconv.Atoi(h.Value); err == nil {
							r.retry = time.Duration(s) * time.Second
						}
					}
				}
				if blockEnd {
					err = n.done(blockStream, r)
				}
			}
		case frameData:
			n.recvd += int64(size)
			if r := n.pending[stream]; r != nil {
				if r.kind == reqPoll || r.kind == reqEvents {
					if len(r.body)+len(p) > acapi.MaxBody {
						err = errors.New("answer larger than MaxBody")
						break
					}
					r.body = append(r.body, p...)
				}
				if flags&flagEndStream != 0 {
					err = n.done(stream, r)
				}
			}
			if err == nil && n.recvd > 1<<28 {
				err = n.write(func() error {
					n.frame(frameWindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, uint32(n.recvd)))
					return nil
				})
				n.recvd = 0
			}
		}
		n.wmu.Unlock()
		if err != nil {
			return err
		}
	}
}

// done handles a complete answer as the session would. Callers hold wmu.
func (n *simNode) done(id uint32, r *simReq) error {
	delete(n.pending, id)
	if r.status == http.StatusServiceUnavailable || r.status == http.StatusTooManyRequests {
		n.f.unavailable.Add(1)
		n.retryIn = r.retry
		return fmt.Errorf("controller busy (%d)", r.status)
	}
	if r.status != http.StatusOK {
		return fmt.Errorf("request kind %d: status %d", r.kind, r.status)
	}
	switch r.kind {
	case reqHeartbeat:
		if !n.up {
			// Connected: as the session, learn the event mark and open
			// the long-poll.
			n.up = true
			n.f.connected.Add(1)
			return n.write(func() error {
				if err := n.request(reqEvents, http.MethodPost, acapi.PathEvents, []byte("[]")); err != nil {
					return err
				}
				return n.poll()
			})
		}
	case reqEvents:
		var rep acapi.EventsReply
		if err := json.Unmarshal(r.body, &rep); err != nil {
			return fmt.Errorf("events answer: %w", err)
		}
		n.eventSeq = max(n.eventSeq, rep.Acked)
	case reqPoll:
		var jobs []acapi.Job
		if err := json.Unmarshal(r.body, &jobs); err != nil {
			return fmt.Errorf("jobs answer: %w", err)
		}
		return n.write(func() error {
			for _, j := range jobs {
				if err := n.finish(j); err != nil {
					return err
				}
			}
			return n.poll()
		})
	case reqResult:
		n.f.mu.Lock()
		if t0, ok := n.f.jobT0[n.idx]; ok {
			delete(n.f.jobT0, n.idx)
			n.f.jobDone <- jobSample{n.idx, time.Since(t0)}
		}
		n.f.mu.Unlock()
	}
	return nil
}

func (n *simNode) poll() error {
	return n.request(reqPoll, http.MethodGet, acapi.PathJobs+"?wait="+n.f.longPoll.String(), nil)
}

// finish runs job j (a ping: nothing to do) and posts its result and the
// job.finished event, as the session does.
func (n *simNode) finish(j acapi.Job) error {
	now := time.Now().UTC()
	res, _ := json.Marshal(acapi.JobResult{ID: j.ID, State: acapi.JobOK, StartedAt: now, FinishedAt: now})
	if err := n.request(reqResult, http.MethodPost, acapi.PathJobs+"/"+j.ID+"/result", res); err != nil {
		return err
	}
	n.eventSeq++
	data, _ := json.Marshal(acapi.JobFinishedData{ID: j.ID, Kind: j.Kind, State: acapi.JobOK})
	evs, _ := json.Marshal([]acapi.Event{{Seq: n.eventSeq, Time: now, Kind: acapi.EventJobFinished, Data: data}})
	return n.request(reqEvents, http.MethodPost, acapi.PathEvents, evs)
}

// heartbeatBody is a node's heartbeat as a booted node sends it: host
// figures, its units and its phases' summaries (about 1 KiB).
func heartbeatBody(id string, i int) []byte {
	hb := acapi.Heartbeat{NodeID: id, BootID: fmt.Sprintf("%032x", i), Hostname: "node-" + id,
		Uptime: acapi.Duration(time.Duration(i) * time.Second), Addresses: []string{fmt.Sprintf("10.%d.%d.%d/16", i>>16&255, i>>8&255, i&255)},
		Units: map[string]string{}, Phases: map[string]string{},
		Load1: 0.42, MemUsed: 1 << 30, MemTotal: 8 << 30, DiskUsed: 20 << 30, DiskTotal: 100 << 30}
	for _, u := range []string{"g8-netup", "g8-unlock", "g8-acsession", "g8-sshd", "g8-fs"} {
		hb.Units[u+".service"] = "active"
		hb.Phases[u[3:]] = "ready since 2026-12-07T06:00:00Z"
	}
	b, _ := json.Marshal(hb)
	return b
}

// the session's own retry policy: simulated nodes back off like real ones.
var sessionRetry = acsession.DefaultRetry
