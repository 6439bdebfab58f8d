package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/sd"
)

// jobs long-polls: it answers at once with the node's queued jobs (marking
// them running), or waits up to ?wait= for one to be queued. Jobs are queued
// by another process (the admin CLI), so the wait polls the store.
func (s *Server) jobs(w http.ResponseWriter, r *http.Request, n *store.Node) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("query wait=%.40q: not a non-negative duration", v), "", n.ID)
			return
		}
		wait = min(d, s.cfg.MaxWait)
	}
	var resumed []acapi.Job
	if r.URL.Query().Get("resume") == "1" {
		// The session is new: what it was handed before may never have
		// arrived. It runs each id once, so handing it again is safe.
		var err error
		if resumed, err = s.cfg.Store.RunningJobs(r.Context(), n.ID); err != nil {
			s.internalError(w, r, err)
			return
		}
		if len(resumed) > 0 {
			wait = 0
		}
	}
	// The server's WriteTimeout is shorter than a long-poll.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for first := true; ; first = false {
		select {
		case <-s.stopping:
			writeJSON(w, http.StatusOK, []acapi.Job{})
			return
		default:
		}
		// Woken because a node changed: a node revoked (or a certificate
		// superseded) while its poll was open ends it here, with nothing.
		if !first {
			if _, f := s.authNode(r); f != nil {
				s.refuse(w, r, f)
				return
			}
		}
		// Register before looking, so a job queued in between still wakes us.
		woken, cancel := s.queue.wait(n.ID)
		var jobs []acapi.Job
		var err error
		if s.queue.mayHaveJobs(n.ID) {
			jobs, err = s.cfg.Store.ClaimJobs(r.Context(), n.ID, s.cfg.Now())
		}
		if err != nil {
			cancel()
			if r.Context().Err() != nil {
				return
			}
			s.internalError(w, r, err)
			return
		}
		if len(jobs) > 0 || len(resumed) > 0 {
			cancel()
			for _, j := range jobs {
				s.cfg.Log.Info("job handed to node", sd.ACJobStarted.Attr(), "node", n.ID, "job", j.ID, "kind", j.Kind)
			}
			for _, j := range resumed {
				s.cfg.Log.Info("running job handed again to a new session", sd.ACJobStarted.Attr(), "node", n.ID, "job", j.ID, "kind", j.Kind)
			}
			writeJSON(w, http.StatusOK, append(resumed, jobs...))
			return
		}
		select {
		case <-woken:
			cancel()
			continue
		case <-deadline.C:
		case <-s.stopping:
		case <-r.Context().Done():
			cancel()
			return
		}
		cancel()
		writeJSON(w, http.StatusOK, []acapi.Job{})
		return
	}
}

func (s *Server) jobResult(w http.ResponseWriter, r *http.Request, n *store.Node) {
	id := r.PathValue("id")
	if id == "" || len(id) > maxJobIDLen {
		writeError(w, http.StatusBadRequest, "job id: empty or too long", "", n.ID)
		return
	}
	data, ok := readBody(w, r, acapi.MaxBody)
	if !ok {
		return
	}
	res, err := DecodeJobResult(data, id)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("result of job %.80q: %v", id, err), "", n.ID)
		return
	}
	err = s.cfg.Store.FinishJob(r.Context(), n.ID, res, s.cfg.Now())
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s: no such job for node %s", url.PathEscape(id), n.ID), "", n.ID)
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	s.cfg.Log.Info("job finished", sd.ACJobFinished.Attr(), "node", n.ID, "job", id, "state", res.State, "exit_code", res.ExitCode)
	writeJSON(w, http.StatusOK, struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}{id, res.State})
}

// eventsPerToken is the events one request-budget token pays for: the
// session's batch (internal/acsession, batchEvents).
const eventsPerToken = 256

func (s *Server) events(w http.ResponseWriter, r *http.Request, n *store.Node) {
	data, ok := readBody(w, r, acapi.MaxBody)
	if !ok {
		return
	}
	evs, err := DecodeEvents(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "events: "+err.Error(), "", n.ID)
		return
	}
	// A batch of the session's size costs the request's one token; more
	// events cost more, so the budget bounds rows written, not posts.
	if extra := (len(evs)+eventsPerToken-1)/eventsPerToken - 1; extra > 0 && !s.withinBudget(w, r, n, extra) {
		return
	}
	acked, err := s.cfg.Store.AddEvents(r.Context(), n.ID, evs, s.cfg.NodeEvents, s.cfg.Now())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, acapi.EventsReply{Acked: acked})
}
