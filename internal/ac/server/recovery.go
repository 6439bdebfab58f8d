package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/recovery"
)

// RecoveryKeys are the controller's recovery master keys (ac.RecoveryKeys).
type RecoveryKeys interface {
	// Current is the key nodes enrol and re-wrap to.
	Current(ctx context.Context) (*recovery.MasterKey, error)
	// Get is the key kid, or store.ErrNotFound.
	Get(ctx context.Context, kid string) (*recovery.MasterKey, error)
}

// errUnknownRecoveryKey: a node asked with a key this controller no longer
// (or never) held.
var errUnknownRecoveryKey = errors.New("unknown recovery key")

// recover answers an approved node's blinded exchanges with the private-key
// operation of the key each names, derived for this node, and advertises
// the current key for enrolment and re-wrapping. The caller has checked the
// node's approval (and, with issue 12's identity proof, who it is): this is
// the step that gives a node back its disk key.
func (s *Server) recover(ctx context.Context, n *store.Node, xs []recovery.Exchange) ([]recovery.Reply, *recovery.PublicKey, error) {
	cur, err := s.cfg.Recovery.Current(ctx)
	if err != nil {
		return nil, nil, err
	}
	pub, err := cur.Public(n.ID)
	if err != nil {
		return nil, nil, err
	}
	replies := make([]recovery.Reply, 0, len(xs))
	for i, x := range xs {
		m, err := s.cfg.Recovery.Get(ctx, x.KID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, fmt.Errorf("field recovery[%d].kid: %s: %w (removed with g8-ac recovery-key remove --force, or another controller's)", i, x.KID, errUnknownRecoveryKey)
		}
		if err != nil {
			return nil, nil, err
		}
		y, err := m.Answer(n.ID, x.X)
		if err != nil {
			return nil, nil, fmt.Errorf("field recovery[%d]: %w", i, err)
		}
		replies = append(replies, recovery.Reply{KID: x.KID, Y: y})
		if err := s.cfg.Store.NoteRecovery(ctx, n.ID, x.KID); err != nil {
			return nil, nil, err
		}
	}
	return replies, &pub, nil
}
