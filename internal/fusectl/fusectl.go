// Package fusectl ends a FUSE connection through the kernel's fusectl file
// system. A FUSE daemon cannot always finish on its own: its mount may live
// on in another mount namespace (a container started while it was mounted)
// or one of its own threads may wait on its own mount while it exits. In
// both cases the connection outlives the unmount and the daemon's request
// loop never ends; aborting the connection fails every pending and future
// request (ENOTCONN) and lets the daemon go.
package fusectl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Dir is where systemd mounts fusectl.
const Dir = "/sys/fs/fuse/connections"

// Conn is the connection id of the FUSE file system whose device number is
// dev (a Stat_t.Dev, or the major:minor of a mountinfo line): its minor.
func Conn(dev uint64) int { return int(unix.Minor(dev)) }

// Abort ends connection conn.
func Abort(conn int) error {
	c := Dir + "/" + strconv.Itoa(conn)
	if _, err := os.Stat(c); errors.Is(err, fs.ErrNotExist) {
		// Not mounted where systemd would have put it: do what it does.
		_ = unix.Mount("fusectl", Dir, "fusectl", 0, "")
	}
	if err := os.WriteFile(c+"/abort", []byte("1"), 0); err != nil {
		return fmt.Errorf("fusectl: abort connection %d: %w", conn, err)
	}
	return nil
}
