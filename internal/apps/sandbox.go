package apps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/g8os/boot/internal/atomicfile"
	"github.com/g8os/boot/internal/state"
)

// FSConfig mounts app sandboxes through the running g8-fs: it adds or
// removes the app's [[sandbox]] entry in g8-fs's config, asks g8-fs to
// reload (g8-fs mounts what is new and unmounts what is gone, leaving the
// other sandboxes alone), and waits until g8-fs's state file says so.
// Entries it owns are named app-<name>; it never touches the others.
type FSConfig struct {
	Config    string                          // g8-fs's config (/mnt/etc/g8os/fs.toml)
	MountRoot string                          // app sandboxes are mounted at MountRoot/app-<name>
	StateDir  string                          // where g8-fs writes fs.json (/run/g8os)
	Reload    func(ctx context.Context) error // `systemctl reload g8-fs.service`
	Timeout   time.Duration                   // how long g8-fs may take to (un)mount
}

// Mount implements Sandboxes.
func (c *FSConfig) Mount(ctx context.Context, name, flist string) (string, error) {
	mp := filepath.Join(c.MountRoot, name)
	changed, err := c.edit(func(boxes []map[string]any) []map[string]any {
		for _, b := range boxes {
			if b["name"] == name {
				if b["flist"] == flist && b["mountpoint"] == mp {
					return boxes
				}
				b["flist"], b["mountpoint"] = flist, mp
				return boxes
			}
		}
		return append(boxes, map[string]any{"name": name, "flist": flist, "mountpoint": mp})
	})
	if err != nil {
		return "", err
	}
	if !changed {
		if sb := c.sandbox(name); sb != nil && sb.State == "mounted" && sb.Flist == flist {
			return mp, nil
		}
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", fmt.Errorf("sandbox %s: %w", name, err)
	}
	if err := c.Reload(ctx); err != nil {
		return "", fmt.Errorf("sandbox %s: reload g8-fs: %w", name, err)
	}
	err = c.waitFor(ctx, name, true, func(sb *state.Sandbox) (bool, error) {
		switch {
		case sb == nil || sb.Flist != flist:
			return false, nil
		case sb.State == "mounted":
			return true, nil
		case sb.State == "failed":
			return false, fmt.Errorf("g8-fs could not mount %s: %s", flist, sb.Error)
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("sandbox %s: %w", name, err)
	}
	return mp, nil
}

// Unmount implements Sandboxes.
func (c *FSConfig) Unmount(ctx context.Context, name string) error {
	changed, err := c.edit(func(boxes []map[string]any) []map[string]any {
		out := boxes[:0]
		for _, b := range boxes {
			if b["name"] != name {
				out = append(out, b)
			}
		}
		return out
	})
	if err != nil {
		return err
	}
	if changed {
		if err := c.Reload(ctx); err != nil {
			return fmt.Errorf("sandbox %s: reload g8-fs: %w", name, err)
		}
	}
	if err := c.waitFor(ctx, name, changed, func(sb *state.Sandbox) (bool, error) {
		return sb == nil || sb.State != "mounted", nil
	}); err != nil {
		return err
	}
	// Mount made the mountpoint; once g8-fs has let go of it, nothing is
	// left in it. os.Remove never removes a directory with anything in it
	// (or one still mounted: EBUSY).
	if err := os.Remove(filepath.Join(c.MountRoot, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sandbox %s: %w", name, err)
	}
	return nil
}

// edit rewrites the config's [[sandbox]] list through f, keeping every
// other key, atomically. It reports whether anything changed. Comments in
// the file are not kept: the controller and the grid generate it.
func (c *FSConfig) edit(f func([]map[string]any) []map[string]any) (bool, error) {
	doc := map[string]any{}
	mode := os.FileMode(0o600)
	data, err := os.ReadFile(c.Config)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return false, fmt.Errorf("sandbox config: %w", err)
	default:
		if _, err := toml.Decode(string(data), &doc); err != nil {
			return false, fmt.Errorf("sandbox config %s: %w", c.Config, err)
		}
		if st, err := os.Stat(c.Config); err == nil {
			mode = st.Mode().Perm()
		}
	}
	var boxes []map[string]any
	if raw, ok := doc["sandbox"]; ok {
		list, ok := raw.([]map[string]any)
		if !ok {
			return false, fmt.Errorf("sandbox config %s: sandbox: not an array of tables", c.Config)
		}
		boxes = list
	}
	before := encode(doc)
	next := f(boxes)
	if len(next) == 0 {
		delete(doc, "sandbox")
	} else {
		doc["sandbox"] = next
	}
	after := encode(doc)
	if bytes.Equal(before, after) {
		return false, nil
	}
	if err := writeAtomic(c.Config, after, mode); err != nil {
		return false, fmt.Errorf("sandbox config: %w", err)
	}
	return true, nil
}

func encode(doc map[string]any) []byte {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(doc); err != nil {
		return nil
	}
	return b.Bytes()
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, mode)
}

func (c *FSConfig) sandbox(name string) *state.Sandbox {
	var st state.FS
	if err := state.Read(c.StateDir, &st); err != nil {
		return nil
	}
	for i := range st.Sandboxes {
		if st.Sandboxes[i].Name == name {
			return &st.Sandboxes[i]
		}
	}
	return nil
}

// waitFor polls g8-fs's state file until done says so. With resignal it
// asks g8-fs to reload again every few seconds: a g8-fs that was starting
// when the config changed may have read the old one (early in boot, when
// the node restores its apps).
func (c *FSConfig) waitFor(ctx context.Context, name string, resignal bool, done func(*state.Sandbox) (bool, error)) error {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastSignal := time.Now()
	for {
		if resignal && time.Since(lastSignal) > 3*time.Second {
			_ = c.Reload(ctx)
			lastSignal = time.Now()
		}
		ok, err := done(c.sandbox(name))
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			why := ""
			if sb := c.sandbox(name); sb != nil && sb.Error != "" {
				why = " (" + sb.State + ": " + sb.Error + ")"
			}
			return fmt.Errorf("g8-fs did not report sandbox %s done in %s within %s%s", name, state.Path(c.StateDir, &state.FS{}), timeout, why)
		case <-tick.C:
		}
	}
}
