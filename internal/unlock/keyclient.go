package unlock

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/backoff"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
)

// KeySize is the length of an unlock key: 32 random bytes from the
// controller.
const KeySize = 32

// Waits shape how often the node asks again. The controller's Retry-After
// wins when it asks for longer.
type Waits struct {
	Pending time.Duration  // 202 without Retry-After
	Denied  time.Duration  // 403: slow, an operator may approve later
	Errors  backoff.Policy // network errors, 5xx, garbage, 429 without Retry-After
	Max     time.Duration  // cap on any Retry-After
}

// DefaultWaits suit a rack of nodes booting together.
var DefaultWaits = Waits{Pending: 5 * time.Second, Denied: time.Minute, Errors: backoff.Default, Max: 5 * time.Minute}

// Verdict is what to do after a failed unlock request.
type Verdict struct {
	Wait   time.Duration
	Status string // STATUS= line
	Msg    sd.MessageID
	Reason string // the controller's or the transport's words
	// Controller and MAC are who was asked about what, for the journal.
	Controller, MAC string
}

// Decide turns a failed unlock request into the next wait and what the
// operator sees meanwhile. It never gives up: a node has nothing better to
// do than to keep asking. errs advances only on errors, so a pending node
// is not slowed down by an earlier network hiccup.
//
// fingerprint is the node's identity key's: a pending node shows it, so
// the operator approves this machine and no other.
func Decide(err error, errs *backoff.Backoff, w Waits, mac, fingerprint, controller string) Verdict {
	var se *acapi.StatusError
	if errors.As(err, &se) {
		reason := se.Body.Error
		if reason == "" {
			reason = http.StatusText(se.Code)
		}
		switch se.Code {
		case http.StatusAccepted:
			errs.Reset()
			d := clamp(orElse(se.RetryAfter, w.Pending), time.Second, w.Max)
			return Verdict{Wait: d, Msg: sd.UnlockPending, Reason: reason,
				Status: fmt.Sprintf("waiting for approval of node %s at %s (g8-ac node approve --fingerprint %s); asking again in %v", mac, controller, fingerprint, d)}
		case http.StatusForbidden:
			errs.Reset()
			d := clamp(max(se.RetryAfter, w.Denied), time.Second, w.Max)
			return Verdict{Wait: d, Msg: sd.UnlockDenied, Reason: reason,
				Status: fmt.Sprintf("denied by %s for node %s (%s); asking again in %v", controller, mac, reason, d)}
		case http.StatusTooManyRequests:
			d := clamp(max(se.RetryAfter, errs.Next()), 0, w.Max)
			return Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: reason,
				Status: fmt.Sprintf("rate limited by %s; asking again in %v", controller, d)}
		}
	}
	d := errs.Next()
	return Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: err.Error(),
		Status: fmt.Sprintf("no unlock key from %s yet: %v; next attempt in %v", controller, err, d.Round(time.Millisecond))}
}

func orElse(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func clamp(d, lo, hi time.Duration) time.Duration { return min(max(d, lo), hi) }

// KeyClient fetches the unlock key from the controller g8-netup found.
type KeyClient struct {
	StateDir string         // where net.json is
	Roots    *x509.CertPool // trust anchor for the controller
	NodeKey  *NodeKey       // proven on every request (TLS client certificate)
	Timeout  time.Duration  // per request
	Waits    Waits
	Links    func() ([]Link, error)
	Log      *slog.Logger
	Notify   *sd.Notifier
	// Prepare adds to each request what the caller needs besides the
	// MACs, hostname and CSR (the recovery exchanges); nil adds nothing.
	Prepare func(*acapi.UnlockRequest)

	client *acapi.Client // for the controller asked last
	failed string        // the controller that last did not answer
}

// Answer is an unlock answer with what it was asked with.
type Answer struct {
	*acapi.UnlockResponse
	Controller string
	MACs       []string
}

// Fetch asks until a controller hands out the key and the answer passes
// Validate, or ctx ends. csr may be empty. net.json is read before every
// attempt, so a controller g8-netup switched to is followed; within an
// attempt the controllers it lists are asked in turn until one answers.
func (k *KeyClient) Fetch(ctx context.Context, csr string, id *Identity) (*Answer, error) {
	errs := backoff.New(k.Waits.Errors)
	hostname, _ := os.Hostname()
	for attempt := 1; ; attempt++ {
		ans, verdict, err := k.try(ctx, hostname, csr, id, errs)
		if err == nil {
			return ans, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		k.Notify.Status("%s", verdict.Status)
		level := slog.LevelWarn
		if verdict.Msg == sd.UnlockPending {
			level = slog.LevelInfo
		}
		k.Log.Log(ctx, level, "no unlock key yet", verdict.Msg.Attr(), "controller", verdict.Controller, "mac", verdict.MAC,
			"attempt", attempt, "wait", verdict.Wait, "error", verdict.Reason)
		if err := backoff.Sleep(ctx, verdict.Wait); err != nil {
			return nil, err
		}
	}
}

// netPoll caps the wait for net.json.
const netPoll = 2 * time.Second

// errNoNet is a wait for g8-netup rather than a controller failure.
var errNoNet = errors.New("no controller found yet")

func (k *KeyClient) try(ctx context.Context, hostname, csr string, id *Identity, errs *backoff.Backoff) (*Answer, Verdict, error) {
	var net state.Net
	if err := state.Read(k.StateDir, &net); err != nil || net.Controller == "" {
		if err == nil {
			err = fmt.Errorf("%s: %w", state.Path(k.StateDir, &net), errNoNet)
		}
		// net.json appears when g8-netup finds a controller: look often.
		d := min(errs.Next(), netPoll)
		return nil, Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: err.Error(),
			Status: fmt.Sprintf("waiting for g8-netup to find a controller (%v); next look in %v", err, d.Round(time.Millisecond))}, err
	}
	links, err := k.Links()
	if err != nil {
		d := errs.Next()
		return nil, Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: err.Error(), Status: "unlock: " + err.Error()}, err
	}
	macs := NodeMACs(links, net.MAC)
	if len(macs) == 0 {
		err := errors.New("no Ethernet link with a MAC address to identify the node by")
		d := errs.Next()
		return nil, Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: err.Error(), Status: "unlock: " + err.Error()}, err
	}
	// Every controller of net.json's list serves the same fleet: one that
	// does not answer (or fails inside) is skipped for the next at once. A
	// verdict (pending, denied, rate limited) is the fleet's and ends the
	// round.
	var v Verdict
	list := net.FailoverOrder(k.failed)
	for _, ctrl := range list {
		ans, verdict, err := k.ask(ctx, ctrl, &acapi.UnlockRequest{MACs: macs, Hostname: hostname, CSR: csr}, id, errs)
		if err == nil {
			return ans, Verdict{}, nil
		}
		v = verdict
		if !unanswered(err) || ctx.Err() != nil {
			return nil, v, err
		}
		k.Log.Warn("controller did not answer; trying the next one listed", sd.UnlockControllerError.Attr(), "controller", ctrl, "error", err)
		k.failed = ctrl
	}
	if len(list) > 1 {
		v.Status = fmt.Sprintf("none of the %d controllers in net.json answered; last: %s", len(list), v.Status)
	}
	return nil, v, errors.New(v.Reason)
}

// unanswered reports whether err means the controller did not give a
// verdict: no connection, a timeout, a 5xx or an unusable answer.
func unanswered(err error) bool {
	var se *acapi.StatusError
	if errors.As(err, &se) {
		return se.Code >= 500
	}
	return true
}

// ask makes one unlock request to ctrl.
func (k *KeyClient) ask(ctx context.Context, ctrl string, req *acapi.UnlockRequest, id *Identity, errs *backoff.Backoff) (*Answer, Verdict, error) {
	if k.client == nil || k.client.BaseURL != ctrl {
		if k.client != nil {
			k.client.HTTP.CloseIdleConnections()
		}
		c, err := acapi.NewClient(ctrl, acapi.TLSConfig(k.Roots, k.NodeKey.Cert), k.Timeout)
		if err != nil {
			d := errs.Next()
			return nil, Verdict{Wait: d, Msg: sd.UnlockControllerError, Reason: err.Error(), Controller: ctrl,
				Status: fmt.Sprintf("net.json names an unusable controller: %v", err)}, err
		}
		k.client = c
	}
	if k.Prepare != nil {
		k.Prepare(req) // afresh for each controller asked
	}
	resp, err := k.client.Unlock(ctx, req)
	if err == nil {
		if err = Validate(resp, id); err != nil {
			wipeKey(resp)
			err = fmt.Errorf("controller %s: unusable unlock answer: %w", ctrl, err)
		}
	}
	if err != nil {
		v := Decide(err, errs, k.Waits, req.MACs[0], k.NodeKey.Fingerprint, ctrl)
		v.Controller, v.MAC = ctrl, req.MACs[0]
		return nil, v, err
	}
	return &Answer{UnlockResponse: resp, Controller: ctrl, MACs: req.MACs}, Verdict{}, nil
}
