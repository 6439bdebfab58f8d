// Package atomicfile replaces files so that a reader, or the next boot
// after a crash, sees either the old content or the new one, never a mix:
// a temp file in the same directory, written, synced, renamed over the
// target, then the directory synced so the rename itself is durable.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm, durably.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

// WriteUnsynced is Write without the fsyncs, for content that is verified
// when read back (content-addressed blobs), where a torn file after a power
// cut is detected and fetched again rather than trusted.
func WriteUnsynced(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

// WriteFuncUnsynced is WriteUnsynced for content that fill writes to the
// temporary file itself (streamed, or with attributes set on it). An error
// from fill leaves path as it was.
func WriteFuncUnsynced(path string, perm os.FileMode, fill func(f *os.File) error) error {
	return writeFunc(path, perm, false, fill)
}

// WriteFunc is Write for content that fill writes to the temporary file
// itself: the file is synced before it is renamed into place, so after a
// power cut path holds either the old content or all of the new.
func WriteFunc(path string, perm os.FileMode, fill func(f *os.File) error) error {
	return writeFunc(path, perm, true, fill)
}

func write(path string, data []byte, perm os.FileMode, durable bool) error {
	return writeFunc(path, perm, durable, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

func writeFunc(path string, perm os.FileMode, durable bool, fill func(f *os.File) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	fail := func(err error) error {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := fill(tmp); err != nil {
		return fail(err)
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return fail(err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if durable {
		if d, err := os.Open(dir); err == nil {
			err = d.Sync()
			d.Close()
			if err != nil {
				return fmt.Errorf("write %s: sync directory: %w", path, err)
			}
		}
	}
	return nil
}
