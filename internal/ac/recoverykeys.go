package ac

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/g8os/boot/internal/ac/store"
	"github.com/g8os/boot/internal/recovery"
)

// RecoveryKEKFile is the controller's key-encryption key for its recovery
// master keys: 32 random bytes in hex, 0600 in the data directory. It never
// enters the database. Controllers that share one database each need a copy
// of the same file (docs/unlock.md).
const RecoveryKEKFile = "recovery.kek"

// ErrNoKEK: the database holds recovery keys but this controller has no
// key-encryption key to open them.
var ErrNoKEK = errors.New("recovery key-encryption key missing")

// RecoveryKeys are the controller's recovery master keys: wrapped in the
// store, opened with the KEK file. Opened keys are cached by id; the store
// is asked for the current one on each use, so a rotation by the admin CLI
// takes effect at once in a running server.
type RecoveryKeys struct {
	st  *store.Store
	kek []byte

	mu    sync.Mutex
	cache map[string]*recovery.MasterKey
}

// OpenRecoveryKeys reads the KEK at kekPath. With create, a missing KEK is
// made, but only while the store holds no recovery key yet (a new or
// upgraded controller); and a store without keys gets its first one.
func OpenRecoveryKeys(ctx context.Context, st *store.Store, kekPath string, create bool, now time.Time) (*RecoveryKeys, error) {
	keys, err := st.RecoveryKeys(ctx)
	if err != nil {
		return nil, err
	}
	kek, err := readKEK(kekPath)
	if errors.Is(err, fs.ErrNotExist) && create && len(keys) == 0 {
		kek, err = createKEK(kekPath)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist, and the database holds %d recovery key(s): copy %s from the controller that made them (every controller sharing a database needs the same file)",
			ErrNoKEK, kekPath, len(keys), RecoveryKEKFile)
	}
	if err != nil {
		return nil, err
	}
	r := &RecoveryKeys{st: st, kek: kek, cache: map[string]*recovery.MasterKey{}}
	for _, k := range keys {
		if _, err := r.open(k); err != nil {
			return nil, err
		}
	}
	if len(keys) == 0 && create {
		if _, err := r.Rotate(ctx, now); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func readKEK(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %o lets others read it; chmod 600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kek := make([]byte, 32)
	if n, err := hex.Decode(kek, trimNewline(b)); err != nil || n != 32 {
		return nil, fmt.Errorf("%s: not 64 hex digits (a recovery key-encryption key)", path)
	}
	return kek, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func createKEK(path string) ([]byte, error) {
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("recovery key-encryption key: %w", err)
	}
	_, err = f.WriteString(hex.EncodeToString(kek) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("recovery key-encryption key %s: %w", path, err)
	}
	return kek, nil
}

func (r *RecoveryKeys) aead() (cipher.AEAD, error) {
	block, err := aes.NewCipher(r.kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// The key id is the authenticated data: a wrapped key copied to another
// row does not open.
func wrapAD(kid string) []byte { return []byte("g8os recovery master key v1\x00" + kid) }

func (r *RecoveryKeys) wrap(m *recovery.MasterKey) ([]byte, error) {
	aead, err := r.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	seed := m.Bytes()
	defer clear(seed)
	return aead.Seal(nonce, nonce, seed, wrapAD(m.KID)), nil
}

func (r *RecoveryKeys) open(k store.RecoveryKey) (*recovery.MasterKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.cache[k.KID]; m != nil {
		return m, nil
	}
	aead, err := r.aead()
	if err != nil {
		return nil, err
	}
	if len(k.Wrapped) < aead.NonceSize() {
		return nil, fmt.Errorf("recovery key %s: wrapped value too short", k.KID)
	}
	seed, err := aead.Open(nil, k.Wrapped[:aead.NonceSize()], k.Wrapped[aead.NonceSize():], wrapAD(k.KID))
	if err != nil {
		return nil, fmt.Errorf("recovery key %s: does not open with this controller's %s (another controller's file?)", k.KID, RecoveryKEKFile)
	}
	defer clear(seed)
	m, err := recovery.MasterKeyFromBytes(seed)
	if err != nil {
		return nil, err
	}
	if m.KID != k.KID {
		return nil, fmt.Errorf("recovery key %s: opens to key %s", k.KID, m.KID)
	}
	r.cache[k.KID] = m
	return m, nil
}

// Rotate makes a new current key. Older keys keep answering until removed.
func (r *RecoveryKeys) Rotate(ctx context.Context, now time.Time) (*recovery.MasterKey, error) {
	m, err := recovery.NewMasterKey()
	if err != nil {
		return nil, err
	}
	w, err := r.wrap(m)
	if err != nil {
		return nil, err
	}
	if err := r.st.AddRecoveryKey(ctx, m.KID, w, now); err != nil {
		return nil, err
	}
	return m, nil
}

// Current is the newest key: the one nodes enrol and re-wrap to.
func (r *RecoveryKeys) Current(ctx context.Context) (*recovery.MasterKey, error) {
	keys, err := r.st.RecoveryKeys(ctx)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no recovery key (g8-ac recovery-key rotate)")
	}
	return r.open(keys[0])
}

// Get is the key kid, or store.ErrNotFound when it was removed or never
// existed here.
func (r *RecoveryKeys) Get(ctx context.Context, kid string) (*recovery.MasterKey, error) {
	r.mu.Lock()
	m := r.cache[kid]
	r.mu.Unlock()
	keys, err := r.st.RecoveryKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k.KID == kid {
			if m != nil {
				return m, nil
			}
			return r.open(k)
		}
	}
	return nil, fmt.Errorf("recovery key %s: %w", kid, store.ErrNotFound)
}
