// Package unlock is the second boot phase: fetch the node's unlock key
// from the controller g8-netup found, mount the encrypted config
// (/etc/g8os/private at /mnt/etc) with it through a FUSE child, enroll the
// node on first boot, and keep the mount until stopped.
package unlock

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/cli"
	"github.com/g8os/boot/internal/sd"
	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/internal/unlock/backend"
)

// Exit codes of g8-unlock beside the common ones. 10 and 11 are not worth
// a restart (the unit lists them in RestartPreventExitStatus=): the same
// key and directory fail the same way every time.
const (
	ExitWrongKey = 10 // the controller's key does not open the private dir
	ExitCorrupt  = 11 // the private dir is neither empty nor a volume of the backend
	ExitFUSEDied = 12 // the FUSE child exited while mounted
)

// ExitCodes documents them for --help.
var ExitCodes = map[int]string{
	ExitWrongKey: "the key from the controller does not open the private dir (re-keyed node, or another node's dir); nothing changed; not restarted",
	ExitCorrupt:  "the private dir is corrupt or holds another backend's volume; not restarted",
	ExitFUSEDied: "the FUSE process (encfs/gocryptfs) exited while the config was mounted",
}

// Config is g8-unlock's command line.
type Config struct {
	StateDir string // /run/g8os: net.json in, unlock.json out
	Private  string // encrypted directory
	// RecoveryFile holds the node's key-recovery metadata (public values
	// only), beside Private; "" is RecoveryPath(Private).
	RecoveryFile string
	Mountpoint   string
	Backend      string // encfs | gocryptfs
	TrustAnchor  string
	IdentityDir  string // the node identity key, outside the encrypted config
	Tools        backend.Tools
	Timeout      time.Duration // per HTTPS request
	RenewCheck   time.Duration // how often a running node checks its certificate
	Waits        Waits
	// StopFirst are the units that use the mount: a stop (not a restart)
	// of g8-unlock stops them before it unmounts.
	StopFirst []string

	Log    *slog.Logger
	Notify *sd.Notifier
}

// Defaults for the flags.
const (
	DefaultPrivate     = "/etc/g8os/private"
	DefaultMountpoint  = "/mnt/etc"
	DefaultTrustAnchor = "/etc/g8os/ac-ca.pem"
	DefaultBackend     = "encfs"
)

// Run does the phase and returns when ctx ends (after unmounting) or on a
// failure; its error carries the exit code.
func Run(ctx context.Context, cfg Config) error {
	u := &unlocker{Config: cfg, started: time.Now()}
	return u.run(ctx)
}

type unlocker struct {
	Config
	started time.Time
	be      backend.Backend
	kc      *KeyClient
	mount   *backend.Mount
	st      state.Unlock
	// readyStatus is restored after a renewal's waits changed STATUS=.
	readyStatus string
}

func (u *unlocker) run(ctx context.Context) error {
	u.Log.Info("starting", sd.PhaseStarted.Attr(), "backend", u.Backend, "private", u.Private, "mountpoint", u.Mountpoint, "identity_dir", u.IdentityDir)
	if err := u.check(); err != nil {
		return err
	}
	lock, err := lockPhase(u.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()

	dir, err := backend.Inspect(u.be, u.Private)
	if err != nil {
		u.Log.Error("private dir unusable", sd.UnlockCorrupt.Attr(), "private", u.Private, "error", err)
		return cli.Exit(ExitCorrupt, fmt.Errorf("unlock: %w", err))
	}
	if m, prev := u.adoptable(dir); m != nil {
		return u.adopted(ctx, m, prev)
	}
	if err := u.prepareMountpoint(); err != nil {
		return err
	}
	firstBoot := dir == backend.DirEmpty
	var id *Identity
	hostname, _ := os.Hostname()
	if firstBoot {
		if id, err = NewIdentity(hostname); err != nil {
			return err
		}
	}

	p, err := loadPins(u.RecoveryFile)
	if err != nil {
		u.Log.Error("recovery metadata unusable", sd.UnlockCorrupt.Attr(), "private", u.Private, "error", err)
		return cli.Exit(ExitCorrupt, fmt.Errorf("unlock: %w", err))
	}
	u.Notify.Status("asking the controller for the unlock key (identity %s)", u.kc.NodeKey.Fingerprint)
	u.kc.Prepare = p.request
	ans, err := u.kc.Fetch(ctx, csrOf(id), id)
	u.kc.Prepare = nil
	if err != nil {
		return u.stoppedEarly(ctx, err)
	}
	log := u.Log.With("node_id", ans.NodeID, "controller", ans.Controller)
	log.Info("unlock key received", sd.UnlockKeyReceived.Attr(), "mac", ans.MACs[0], "cert", ans.Cert != "")
	dk, err := u.planKey(p, ans, firstBoot)
	wipeKey(ans.UnlockResponse)
	if err != nil {
		return u.stoppedEarly(ctx, err)
	}
	defer dk.wipe()

	if err := u.mountWith(ctx, log, ans, dk, p, firstBoot); err != nil {
		if info, _ := backend.MountAt(u.Mountpoint); info != nil && ctx.Err() != nil {
			_ = backend.Unmount(u.Tools.Fusermount, u.Mountpoint)
		}
		return u.stoppedEarly(ctx, err)
	}
	// From here on every failure unmounts first: a half-done phase leaves
	// no mount behind for the next start to trip over.
	if err := u.enroll(ctx, log, ans, id, hostname, firstBoot); err != nil {
		u.unmount(log)
		return u.stoppedEarly(ctx, err)
	}
	u.st = state.Unlock{NodeID: ans.NodeID, Controller: ans.Controller, Backend: u.be.Name(), Private: u.Private,
		Mountpoint: u.Mountpoint, FUSEPID: u.mount.PID(), Enrolled: firstBoot, MACs: ans.MACs, CertExpiry: u.st.CertExpiry, SkippedFiles: u.st.SkippedFiles,
		StartedAt: u.started.UTC(), ReadyAt: time.Now().UTC()}
	if err := state.Write(u.StateDir, &u.st); err != nil {
		u.unmount(log)
		return err
	}
	log.Info("ready", sd.PhaseReady.Attr(), "backend", u.be.Name(), "mountpoint", u.Mountpoint, "fuse_pid", u.mount.PID(),
		"took", time.Since(u.started).Round(time.Millisecond))
	u.readyStatus = fmt.Sprintf("%s unlocked at %s (node %s, %s, pid %d)", u.Private, u.Mountpoint, ans.NodeID, u.be.Name(), u.mount.PID())
	u.Notify.Ready(u.readyStatus)
	return u.serve(ctx, log)
}

func (u *unlocker) check() error {
	paths := map[string]string{"--private": u.Private, "--mount": u.Mountpoint, "--state-dir": u.StateDir, "--identity-dir": u.IdentityDir}
	if u.RecoveryFile != "" {
		paths["--recovery"] = u.RecoveryFile
	}
	for flag, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: %s %q: want a clean absolute path", flag, p))
		}
	}
	if u.Private == u.Mountpoint || strings.HasPrefix(u.Mountpoint+"/", u.Private+"/") || strings.HasPrefix(u.Private+"/", u.Mountpoint+"/") {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --private %s and --mount %s must not contain each other", u.Private, u.Mountpoint))
	}
	if u.RecoveryFile == "" {
		u.RecoveryFile = RecoveryPath(u.Private)
	}
	if strings.HasPrefix(u.RecoveryFile, u.Private+"/") || strings.HasPrefix(u.RecoveryFile, u.Mountpoint+"/") {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --recovery %s must be outside --private and --mount (it is read before the mount)", u.RecoveryFile))
	}
	be, err := backend.New(u.Backend, u.Tools)
	if err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --backend: %w", err))
	}
	if err := be.Check(); err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: backend %s: %w", be.Name(), err))
	}
	fm := orFusermount(u.Tools.Fusermount)
	if _, err := exec.LookPath(fm); err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --fusermount %s: %w", fm, err))
	}
	roots, err := acapi.LoadPool(u.TrustAnchor)
	if err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --trust-anchor: %w", err))
	}
	if strings.HasPrefix(u.IdentityDir+"/", u.Mountpoint+"/") || strings.HasPrefix(u.IdentityDir+"/", u.Private+"/") {
		// It is what unlocks the config, so it cannot live inside it.
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: --identity-dir %s must be outside --private and --mount", u.IdentityDir))
	}
	nk, err := LoadOrCreateNodeKey(u.IdentityDir)
	if err != nil {
		return cli.Exit(cli.ExitConfig, fmt.Errorf("unlock: %w", err))
	}
	if nk.Created {
		u.Log.Info("node identity key created", sd.UnlockIdentityCreated.Attr(), "key", nk.Path, "fingerprint", nk.Fingerprint)
	}
	u.be = be
	u.kc = &KeyClient{StateDir: u.StateDir, Roots: roots, NodeKey: nk, Timeout: u.Timeout, Waits: u.Waits, Links: SystemLinks, Log: u.Log, Notify: u.Notify}
	return nil
}

// stoppedEarly: SIGTERM before READY (waiting for approval, during the
// mount) is a clean stop, not a failure; nothing stays mounted.
func (u *unlocker) stoppedEarly(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		u.Notify.Stopping()
		u.Log.Info("stopping before the config was unlocked", sd.PhaseStopping.Attr(), "interrupted", err)
		return nil
	}
	return err
}

// Password derives the text the FUSE tool gets on stdin from the 32-byte
// key: its lower-case hex form, 64 characters. Deterministic, so an
// operator holding the key can mount the directory by hand; free of bytes
// (newline, NUL) that the tools' line readers would cut at.
func Password(key []byte) []byte {
	pw := make([]byte, hex.EncodedLen(len(key)))
	hex.Encode(pw, key)
	return pw
}

func (u *unlocker) mountWith(ctx context.Context, log *slog.Logger, ans *Answer, dk *diskKey, p *pins, firstBoot bool) error {
	pw := Password(dk.key)
	defer clear(pw)
	// Again: the wait for the key may have been long.
	if err := u.prepareMountpoint(); err != nil {
		return err
	}
	if firstBoot {
		u.Notify.Status("creating the encrypted config %s (%s)", u.Private, u.be.Name())
		// The metadata first: a volume must never exist without the way to
		// its key.
		_ = os.Remove(pending(p.path))
		if err := writeMetadata(p.path, dk.beforeInit); err != nil {
			return err
		}
		if err := u.be.Init(ctx, u.Private, pw); err != nil {
			emptyDir(u.Private) // it was empty: leave it so, and the next start enrolls again
			_ = os.Remove(p.path)
			return fmt.Errorf("unlock: first boot: %w", err)
		}
		log.Info("created encrypted config", "private", u.Private, "backend", u.be.Name(), "recovery", p.path)
	} else if err := u.moveOver(ctx, log, p, dk); err != nil {
		return err
	}
	u.Notify.Status("mounting %s at %s (%s)", u.Private, u.Mountpoint, u.be.Name())
	mount := u.be.Mount
	if enc, ok := u.be.(*backend.EncFS); ok && !firstBoot {
		if authed, err := enc.Authenticated(u.Private); err == nil && !authed {
			// The seed made EncFS volumes without block MACs; they still
			// mount, loudly, until the node is enrolled again.
			log.Warn("the private dir has no block MACs: its ciphertext is not authenticated; move it away to enroll again with an authenticated volume",
				sd.UnlockUnauthenticated.Attr(), "private", u.Private)
			mount = enc.MountLegacy
		}
	}
	m, err := mount(ctx, u.Private, u.Mountpoint, pw)
	switch {
	case errors.Is(err, backend.ErrWrongKey):
		log.Error("the key does not open the private dir", sd.UnlockWrongKey.Attr(), "private", u.Private, "error", err)
		return cli.Exit(ExitWrongKey, fmt.Errorf("unlock: node %s (MAC %s): the key from %s does not open %s: it was re-keyed or belongs to another node; nothing in it was changed: %w",
			ans.NodeID, ans.MACs[0], ans.Controller, u.Private, err))
	case errors.Is(err, backend.ErrCorrupt):
		log.Error("private dir unusable", sd.UnlockCorrupt.Attr(), "private", u.Private, "error", err)
		return cli.Exit(ExitCorrupt, fmt.Errorf("unlock: %w", err))
	case err != nil:
		return fmt.Errorf("unlock: mount %s at %s: %w", u.Private, u.Mountpoint, err)
	}
	u.mount = m
	if dk.afterMount != nil {
		// Only now: the key that goes into the new pin opened the volume.
		if err := writeMetadata(p.path, dk.afterMount); err != nil {
			log.Warn("could not re-wrap to the controller's current recovery key; the old key keeps working", sd.UnlockRecoveryRewrap.Attr(), "error", err)
		} else {
			log.Info("disk key re-wrapped to the controller's current recovery key", sd.UnlockRecoveryRewrap.Attr(),
				"kid", dk.afterMount.Pins[0].KID, "recovery", p.path)
		}
	}
	return nil
}

// enroll brings the identity in the unlocked config up to date and checks
// the marker reads back: the proof that the mount serves this node's
// config.
func (u *unlocker) enroll(ctx context.Context, log *slog.Logger, ans *Answer, id *Identity, hostname string, firstBoot bool) error {
	root, err := os.OpenRoot(u.Mountpoint)
	if err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	defer root.Close()
	enr := InspectEnrollment(root, time.Now())
	if enr.NodeID != "" && enr.NodeID != ans.NodeID {
		log.Error("the private dir belongs to another node", sd.UnlockWrongKey.Attr(), "private", u.Private, "marker_node", enr.NodeID)
		return cli.Exit(ExitWrongKey, fmt.Errorf("unlock: %s was enrolled as node %s, but %s says this is node %s (MAC %s)",
			u.Private, enr.NodeID, ans.Controller, ans.NodeID, ans.MACs[0]))
	}
	resp := ans.UnlockResponse
	if id == nil && enr.Need != "" {
		// A later boot whose certificate nears expiry (or whose first
		// enrollment was cut short): ask again with a CSR.
		log.Info("requesting a new certificate", "reason", enr.Need)
		fresh, err := u.renew(ctx, hostname, enr)
		if err != nil && enr.CertExpiry.IsZero() {
			return err
		}
		if err != nil {
			log.Warn("certificate renewal failed; keeping the current one", sd.UnlockControllerError.Attr(), "error", err, "cert_expiry", enr.CertExpiry)
		} else {
			resp, id = fresh.UnlockResponse, fresh.id
		}
	}
	applied, err := Apply(root, resp, id)
	if err != nil {
		return fmt.Errorf("unlock: %s: %w", u.Mountpoint, err)
	}
	u.reportSkipped(log, applied)
	u.st.CertExpiry = enr.CertExpiry
	if !applied.CertExpiry.IsZero() {
		u.st.CertExpiry = applied.CertExpiry
		msg, text := sd.UnlockCertRenewed, "certificate renewed"
		if firstBoot || enr.NodeID == "" {
			msg, text = sd.UnlockEnrolled, "enrolled"
		}
		log.Info(text, msg.Attr(), "cert_expiry", applied.CertExpiry.UTC(), "host_key_created", applied.HostKeyCreated)
	}
	log.Debug("config refreshed", "files", strings.Join(applied.Wrote, ","))
	b, err := root.ReadFile(MarkerFile)
	if err != nil || markerNode(b) != ans.NodeID {
		return fmt.Errorf("unlock: mount %s: marker %s does not read back (%v)", u.Mountpoint, MarkerFile, err)
	}
	log.Info("encrypted config mounted", sd.UnlockMounted.Attr(), "private", u.Private, "mountpoint", u.Mountpoint,
		"backend", u.be.Name(), "fuse_pid", u.mount.PID())
	return nil
}

// reportSkipped logs each managed file Apply skipped and lists them in
// the state file.
func (u *unlocker) reportSkipped(log *slog.Logger, a *Applied) {
	u.st.SkippedFiles = nil
	for _, f := range a.Skipped {
		log.Warn("controller-managed file skipped", sd.UnlockConfigSkipped.Attr(), "path", f.Path, "error", f.Err)
		u.st.SkippedFiles = append(u.st.SkippedFiles, f.Path+": "+f.Err.Error())
	}
}

type renewed struct {
	*acapi.UnlockResponse
	id *Identity
}

// renew fetches a certificate for a fresh key. While the current one is
// still valid it tries for a bounded time only; without one it waits as
// long as it takes, because the node cannot talk to the controller
// without it.
func (u *unlocker) renew(ctx context.Context, hostname string, enr Enrollment) (*renewed, error) {
	id, err := NewIdentity(hostname)
	if err != nil {
		return nil, err
	}
	if !enr.CertExpiry.IsZero() && time.Now().Before(enr.CertExpiry) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*u.Timeout)
		defer cancel()
	}
	ans, err := u.kc.Fetch(ctx, id.CSR, id)
	if err != nil {
		return nil, fmt.Errorf("unlock: certificate renewal: %w", err)
	}
	wipeKey(ans.UnlockResponse)
	return &renewed{UnlockResponse: ans.UnlockResponse, id: id}, nil
}

// serve keeps the mount until ctx ends or the FUSE child dies, renewing
// the certificate when it nears expiry.
func (u *unlocker) serve(ctx context.Context, log *slog.Logger) error {
	tick := time.NewTicker(u.RenewCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			u.Notify.Stopping()
			if restart, job, why := sd.AskRestarting(); restart {
				// The FUSE tool keeps serving; the next g8-unlock adopts it.
				log.Info("exiting with the config mounted for the next g8-unlock", sd.UnlockDetached.Attr(),
					"mountpoint", u.Mountpoint, "fuse_pid", u.mount.PID(), "job", job, "reason", why)
				return nil
			}
			log.Info("stopping", sd.PhaseStopping.Attr())
			u.stopUsers(log)
			_ = state.Remove(u.StateDir, &u.st)
			return u.unmount(log)
		case <-u.mount.Done():
			err := u.mount.Err()
			log.Error("FUSE process exited", sd.UnlockFUSEDied.Attr(), "fuse_pid", u.mount.PID(), "error", err)
			_ = state.Remove(u.StateDir, &u.st)
			if info, _ := backend.MountAt(u.Mountpoint); info != nil {
				if uerr := backend.Unmount(u.Tools.Fusermount, u.Mountpoint); uerr != nil {
					log.Error("cannot clean the dead mount", "mountpoint", u.Mountpoint, "error", uerr)
				}
			}
			return cli.Exit(ExitFUSEDied, fmt.Errorf("unlock: %s serving %s at %s (pid %d) exited: %w",
				u.be.Name(), u.Private, u.Mountpoint, u.mount.PID(), err))
		case <-tick.C:
			u.renewWhileRunning(ctx, log)
			u.Notify.Status("%s", u.readyStatus)
		}
	}
}

func (u *unlocker) renewWhileRunning(ctx context.Context, log *slog.Logger) {
	root, err := os.OpenRoot(u.Mountpoint)
	if err != nil {
		log.Warn("certificate check", "error", err)
		return
	}
	defer root.Close()
	enr := InspectEnrollment(root, time.Now())
	if enr.Need == "" {
		return
	}
	hostname, _ := os.Hostname()
	fresh, err := u.renew(ctx, hostname, enr)
	if err != nil {
		log.Warn("certificate renewal failed; trying again later", sd.UnlockControllerError.Attr(), "error", err, "cert_expiry", enr.CertExpiry)
		return
	}
	applied, err := Apply(root, fresh.UnlockResponse, fresh.id)
	if err != nil {
		log.Error("certificate renewal: writing", "error", err)
		return
	}
	u.reportSkipped(log, applied)
	u.st.CertExpiry = applied.CertExpiry
	log.Info("certificate renewed", sd.UnlockCertRenewed.Attr(), "cert_expiry", applied.CertExpiry.UTC())
	if err := state.Write(u.StateDir, &u.st); err != nil {
		log.Warn("state", "error", err)
	}
}

// unmount detaches the config and waits for the FUSE child to exit.
func (u *unlocker) unmount(log *slog.Logger) error {
	if u.mount == nil {
		return nil
	}
	err := backend.Unmount(u.Tools.Fusermount, u.Mountpoint)
	if err != nil {
		// Busy (a process still has a file open there): detach lazily so
		// the unit stops; the kernel finishes once the last user leaves.
		log.Warn("unmount busy, detaching lazily", "mountpoint", u.Mountpoint, "error", err)
		if out, lerr := exec.Command(orFusermount(u.Tools.Fusermount), "-u", "-z", u.Mountpoint).CombinedOutput(); lerr != nil {
			err = fmt.Errorf("unlock: unmount %s: %v; lazy: %v: %s", u.Mountpoint, err, lerr, out)
		} else {
			err = nil
		}
	}
	select {
	case <-u.mount.Done():
	case <-time.After(10 * time.Second):
		_ = u.mount.Signal(syscall.SIGTERM)
		select {
		case <-u.mount.Done():
		case <-time.After(5 * time.Second):
			_ = u.mount.Signal(syscall.SIGKILL)
			<-u.mount.Done()
		}
	}
	if err == nil {
		log.Info("unmounted", sd.UnlockUnmounted.Attr(), "mountpoint", u.Mountpoint)
	}
	return err
}

// prepareMountpoint makes sure nothing is mounted at the mountpoint: a
// stale FUSE mount (its daemon died) is removed, a healthy mount of this
// config left by an earlier run is unmounted so it is remounted under this
// process (never mounted twice), and anything else is ErrBusy.
func (u *unlocker) prepareMountpoint() error {
	for range 4 {
		info, err := backend.MountAt(u.Mountpoint)
		if err != nil {
			return fmt.Errorf("unlock: %w", err)
		}
		if info == nil {
			break
		}
		ours := info.FSType == u.be.FSType() && (u.be.Name() == "encfs" || info.Source == u.Private)
		stale := backend.Stale(u.Mountpoint)
		if !stale && !ours {
			return fmt.Errorf("unlock: %s: %w: %s from %s is mounted there", u.Mountpoint, backend.ErrBusy, info.FSType, info.Source)
		}
		what := "dead FUSE mount (transport endpoint is not connected)"
		if !stale {
			what = "mount of the config left by an earlier run"
		}
		u.Log.Warn("removing old mount before mounting", sd.UnlockStaleMount.Attr(), "mountpoint", u.Mountpoint, "what", what, "fstype", info.FSType)
		if err := backend.Unmount(u.Tools.Fusermount, u.Mountpoint); err != nil {
			return fmt.Errorf("unlock: %s: %w: cannot remove the %s: %v", u.Mountpoint, backend.ErrBusy, what, err)
		}
	}
	if info, _ := backend.MountAt(u.Mountpoint); info != nil {
		return fmt.Errorf("unlock: %s: %w: still mounted (%s) after unmounting", u.Mountpoint, backend.ErrBusy, info.FSType)
	}
	// Only now: on a dead mount, mkdir and readdir fail with ENOTCONN.
	if err := os.MkdirAll(u.Mountpoint, 0o755); err != nil {
		return fmt.Errorf("unlock: mountpoint: %w", err)
	}
	entries, err := os.ReadDir(u.Mountpoint)
	if err != nil {
		return fmt.Errorf("unlock: mountpoint: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("unlock: %s: %w: not empty (holds %s); the config would hide it", u.Mountpoint, backend.ErrBusy, entries[0].Name())
	}
	return nil
}

// lockPhase makes a second g8-unlock fail instead of fighting the first
// over the mount.
type phaseLock struct{ f *os.File }

func (l *phaseLock) Close() error { return l.f.Close() }

func lockPhase(stateDir string) (*phaseLock, error) {
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return nil, fmt.Errorf("unlock: %w", err)
	}
	p := filepath.Join(stateDir, "unlock.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("unlock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		return nil, fmt.Errorf("unlock: another g8-unlock (pid %s) holds %s", strings.TrimSpace(string(b[:n])), p)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &phaseLock{f: f}, nil
}

func csrOf(id *Identity) string {
	if id == nil {
		return ""
	}
	return id.CSR
}

// emptyDir removes what a failed first boot left in dir.
func emptyDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

func orFusermount(p string) string {
	if p == "" {
		return "fusermount3"
	}
	return p
}
