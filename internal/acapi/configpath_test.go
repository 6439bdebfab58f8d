package acapi

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfigPath(t *testing.T) {
	for _, c := range []struct{ path, want string }{
		{"g8os/fs.toml", ""},
		{"ssh/sshd_config.d/10-site.conf", ""},
		{"ssl/site-ca.pem", ""},
		{"a..b", ""},
		{"", "empty"},
		{".", "empty"},
		{"/etc/shadow", "absolute"},
		{"../etc/passwd", "leaves"},
		{"..", "leaves"},
		{"a/../b", "not clean"},
		{"a//b", "not clean"},
		{"a/", "not clean"},
		{"a\\b", "backslash"},
		{"a\x00b", "control"},
		{"a\x1b[31mb", "control"},
		{strings.Repeat("a", MaxConfigPath+1), "at most"},
		{"ssl/node.key", "written by the node"},
		{"ssl/node.pem", "written by the node"},
		{"ssl/ca.pem", "written by the node"},
		{".g8os-unlocked", "written by the node"},
		{"ssh/authorized_keys", "written by the node"},
		{"ssh/ssh_host_ed25519_key", "written by the node"},
		{"ssh/ssh_host_ed25519_key.pub", "written by the node"},
		{"ssh", "a directory of the node's own files"},
		{"ssl", "a directory of the node's own files"},
		{"ssl/node.key/x", "below ssl/node.key"},
		{".g8os-unlocked/x", "below"},
		{"g8os/.fs.toml.g8-unlock.tmp", "g8-unlock writes"},
	} {
		err := CheckConfigPath(c.path)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckConfigPath(%q) = %v, want %q", c.path, err, c.want)
		}
	}
}

// FuzzCheckConfigPath: whatever a controller sends, an accepted path stays
// inside the mount and neither is, holds nor lies below a file the node
// owns.
func FuzzCheckConfigPath(f *testing.F) {
	for _, s := range []string{"g8os/fs.toml", "../x", "/etc/passwd", "a/../../b", "a/./b", ".g8os-unlocked", "ssl/../ssl/node.key", "...", "ssh", "ssl/node.key/x"} {
		f.Add(s)
	}
	const root = "/mnt/etc"
	f.Fuzz(func(t *testing.T, p string) {
		if CheckConfigPath(p) != nil {
			return
		}
		full := filepath.Join(root, p)
		if !strings.HasPrefix(full, root+"/") || !filepath.IsLocal(p) || filepath.Clean(p) != p {
			t.Fatalf("accepted %q, which resolves to %s", p, full)
		}
		for _, own := range nodeOwnedFiles {
			if p == own || strings.HasPrefix(own, p+"/") || strings.HasPrefix(p, own+"/") {
				t.Fatalf("accepted %q, which overlaps the node's %s", p, own)
			}
		}
	})
}
