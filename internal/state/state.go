// Package state holds the typed files through which the boot phases meet:
// one JSON file per phase under the state directory (/run/g8os by default),
// written atomically, carrying what the phase decided and when, and never a
// secret. A phase reads another phase's decisions only from here.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/g8os/boot/internal/atomicfile"
)

// DefaultDir is where the phases keep their state at run time.
const DefaultDir = "/run/g8os"

// SchemaVersion is bumped when a change to a state struct is not backward
// compatible; readers refuse files of another schema.
const SchemaVersion = 1

const (
	dirMode  = 0o750
	fileMode = 0o640
)

// Header starts every state file.
type Header struct {
	Schema    int       `json:"schema"`
	Phase     string    `json:"phase"`
	UpdatedAt time.Time `json:"updated_at"`
	PID       int       `json:"pid"`
}

// File is implemented by each phase's state struct.
type File interface {
	header() *Header
	// PhaseName is the phase this file belongs to ("net", "unlock", ...);
	// the file is <PhaseName>.json.
	PhaseName() string
}

// ErrNotRun is returned (wrapped) when a phase's state file does not exist.
var ErrNotRun = errors.New("phase has not run")

// Path returns the file a phase's state lives in.
func Path(dir string, f File) string { return filepath.Join(dir, f.PhaseName()+".json") }

// Write stores f atomically: a reader sees the old file or the new one,
// never a mix, and a crash leaves one of the two (temp file, fsync, rename,
// fsync of the directory).
func Write(dir string, f File) error {
	h := f.header()
	h.Schema = SchemaVersion
	h.Phase = f.PhaseName()
	h.UpdatedAt = time.Now().UTC()
	h.PID = os.Getpid()
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("state: encode %s: %w", f.PhaseName(), err)
	}
	data = append(data, '\n')
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := atomicfile.Write(Path(dir, f), data, fileMode); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// Read loads a phase's state into f. A missing file is an error wrapping
// ErrNotRun that names the phase and path.
func Read(dir string, f File) error {
	path := Path(dir, f)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state: %s (%s): %w", f.PhaseName(), path, ErrNotRun)
	}
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := json.Unmarshal(data, f); err != nil {
		return fmt.Errorf("state: %s: malformed: %w", path, err)
	}
	h := f.header()
	if h.Schema != SchemaVersion {
		return fmt.Errorf("state: %s: schema %d, this build reads %d", path, h.Schema, SchemaVersion)
	}
	if h.Phase != f.PhaseName() {
		return fmt.Errorf("state: %s: holds phase %q, want %q", path, h.Phase, f.PhaseName())
	}
	return nil
}

// Remove deletes a phase's state file (a phase that stops for good says so
// by removing it); a missing file is not an error.
func Remove(dir string, f File) error {
	err := os.Remove(Path(dir, f))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
