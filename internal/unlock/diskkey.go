package unlock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/recovery"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/unlock/backend"
)

// RecoveryPath is where a node keeps its key-recovery metadata by default:
// beside the encrypted directory, never inside it (it must be readable
// before the mount). It holds only public values.
func RecoveryPath(private string) string { return private + ".recovery.json" }

// pending is the metadata of a re-wrap from a controller-held key that is
// not finished yet (see moveOver).
func pending(path string) string { return path + ".new" }

// pins are the node's stored recovery metadata and the exchanges started
// for this boot.
type pins struct {
	path    string
	md      *recovery.Metadata // RecoveryPath: the volume opens with its key
	next    *recovery.Metadata // pending(): a move-over in progress
	blinded []*recovery.Blinded
}

func readMetadata(path string) (*recovery.Metadata, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	md, err := recovery.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return md, nil
}

// loadPins reads the metadata and blinds one exchange per pin, the current
// metadata's first.
func loadPins(path string) (*pins, error) {
	p := &pins{path: path}
	var err error
	if p.md, err = readMetadata(path); err != nil {
		return nil, err
	}
	if p.next, err = readMetadata(pending(path)); err != nil {
		return nil, err
	}
	for _, md := range []*recovery.Metadata{p.md, p.next} {
		if md == nil {
			continue
		}
		for _, pin := range md.Pins {
			b, err := pin.Blind()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			p.blinded = append(p.blinded, b)
		}
	}
	if len(p.blinded) > recovery.MaxExchanges {
		return nil, fmt.Errorf("%s: %d pins, at most %d", path, len(p.blinded), recovery.MaxExchanges)
	}
	return p, nil
}

func (p *pins) exchanges() []recovery.Exchange {
	xs := make([]recovery.Exchange, len(p.blinded))
	for i, b := range p.blinded {
		xs[i] = b.Exchange
	}
	return xs
}

// recoverKey unblinds the replies to md's pins (which start at offset in
// the request) and combines the shares.
func (p *pins) recoverKey(md *recovery.Metadata, offset int, replies []recovery.Reply) ([]byte, error) {
	shares := map[int][]byte{}
	var firstErr error
	for i, pin := range md.Pins {
		share, err := p.blinded[offset+i].Unblind(replies[offset+i])
		if err != nil {
			firstErr = err
			continue
		}
		shares[pin.Index] = share
	}
	key, err := md.Combine(shares)
	for _, s := range shares {
		clear(s)
	}
	if err != nil && firstErr != nil {
		return nil, firstErr
	}
	return key, err
}

// diskKey is what opens the volume this boot, and what to do about the
// metadata around the mount.
type diskKey struct {
	key []byte
	// beforeInit is written before a first boot creates the volume.
	beforeInit *recovery.Metadata
	// afterMount replaces the metadata once the volume opened with key (a
	// re-wrap to the controller's current recovery key).
	afterMount *recovery.Metadata
	// legacy is a controller-held key the volume still opens with: the
	// password is moved over to key before mounting (moveOver).
	legacy []byte
	// moved names a finished move-over (the pending metadata is in place).
	moved bool
}

func (d *diskKey) wipe() {
	clear(d.key)
	clear(d.legacy)
}

// errNoRecovery: the answer cannot give this node a disk key.
var errNoRecovery = errors.New("no way to the disk key")

// planKey works out the disk key from the controller's answer.
func (u *unlocker) planKey(p *pins, ans *Answer, firstBoot bool) (*diskKey, error) {
	controller := ans.Controller
	if len(ans.Recovery) != len(p.blinded) {
		return nil, fmt.Errorf("unlock: %s answered %d of %d recovery exchanges", controller, len(ans.Recovery), len(p.blinded))
	}
	switch {
	case firstBoot:
		if ans.RecoveryKey == nil {
			return nil, fmt.Errorf("%w: %s sent no recovery_key to enrol with", errNoRecovery, controller)
		}
		key, md, err := recovery.Enrol(*ans.RecoveryKey, controller)
		if err != nil {
			return nil, err
		}
		return &diskKey{key: key, beforeInit: md}, nil
	case p.md != nil:
		key, err := p.recoverKey(p.md, 0, ans.Recovery)
		if err != nil {
			return nil, cli.Exit(ExitWrongKey, fmt.Errorf("unlock: node %s (MAC %s): the recovery answer of %s does not open %s (%w): the node was enrolled again, or the disk belongs to another node; nothing was changed",
				ans.NodeID, ans.MACs[0], controller, p.path, err))
		}
		d := &diskKey{key: key}
		if cur := ans.RecoveryKey; cur != nil && p.md.Threshold == 1 && len(p.md.Pins) == 1 && p.md.Pins[0].KID != cur.KID {
			// The controller rotated its key: wrap the same disk key to the
			// new one; the volume is not touched.
			pin, err := recovery.Wrap(*cur, controller, p.md.Pins[0].Index, key)
			if err != nil {
				return nil, err
			}
			d.afterMount = &recovery.Metadata{Schema: recovery.Schema, Threshold: 1, Pins: []recovery.Pin{pin}}
		}
		return d, nil
	case len(ans.Key) == KeySize && ans.RecoveryKey != nil:
		// Enrolled before key recovery: move the volume's password from the
		// controller-held key to a recovered one.
		d := &diskKey{legacy: append([]byte(nil), ans.Key...)}
		if p.next != nil {
			key, err := p.recoverKey(p.next, 0, ans.Recovery)
			if err != nil {
				return nil, fmt.Errorf("unlock: %s: %w", pending(p.path), err)
			}
			d.key = key
			return d, nil
		}
		key, md, err := recovery.Enrol(*ans.RecoveryKey, controller)
		if err != nil {
			return nil, err
		}
		if err := writeMetadata(pending(p.path), md); err != nil {
			clear(key)
			return nil, err
		}
		d.key = key
		return d, nil
	case len(ans.Key) == KeySize:
		// A controller from before key recovery.
		return &diskKey{key: append([]byte(nil), ans.Key...)}, nil
	}
	return nil, cli.Exit(ExitWrongKey, fmt.Errorf("unlock: node %s: %w: no recovery metadata at %s and %s holds no key for this node; restore the file, or move %s away so the node enrolls afresh",
		ans.NodeID, errNoRecovery, p.path, controller, u.Private))
}

// moveOver changes the volume's password from the controller-held key to
// the recovered one, then puts the pending metadata in place. Crash-safe in
// every order: the pending file is written before the password changes, and
// a boot that finds it and a volume that no longer takes the old key goes
// on with the pending key.
func (u *unlocker) moveOver(ctx context.Context, log *slog.Logger, p *pins, d *diskKey) error {
	if d.legacy == nil {
		return nil
	}
	oldPW, newPW := Password(d.legacy), Password(d.key)
	defer clear(oldPW)
	defer clear(newPW)
	u.Notify.Status("moving %s from the controller-held key to key recovery", u.Private)
	err := u.be.Passwd(ctx, u.Private, oldPW, newPW)
	if err != nil && !errors.Is(err, backend.ErrWrongKey) {
		return fmt.Errorf("unlock: re-wrapping %s: %w", u.Private, err)
	}
	// ErrWrongKey: the password moved on an earlier boot that stopped
	// before the rename; the mount that follows checks the new key.
	if err := os.Rename(pending(p.path), p.path); err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	d.moved = true
	log.Info("volume re-wrapped to a recovered key; the controller drops its copy of the old key on the next boot",
		sd.UnlockRewrapped.Attr(), "private", u.Private, "recovery", p.path)
	return nil
}

func writeMetadata(path string, md *recovery.Metadata) error {
	b, err := md.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		return fmt.Errorf("unlock: recovery metadata: %w", err)
	}
	return nil
}

// request sets what the key request carries for recovery.
func (p *pins) request(req *acapi.UnlockRequest) {
	req.Recovery = p.exchanges()
	// The volume opens with the recovered key: the controller may forget a
	// key it still holds for this node.
	req.KeyRewrapped = p.md != nil
}
