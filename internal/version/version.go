// Package version holds the build's version, stamped by the linker
// (-ldflags "-X github.com/g8os/boot/internal/version.Version=...").
package version

// Version is the release or `git describe` of this build.
var Version = "dev"
