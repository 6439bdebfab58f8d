// Package fs_test runs g8-fs against the real controller: chunks uploaded
// with the admin token, the flist fetched by hash and the chunks read with
// the node's mTLS identity, the controller found through net.json.
package fs_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/state"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sandboxState(t *testing.T, dir, name string) (string, string) {
	var st state.FS
	if err := state.Read(dir, &st); err != nil {
		return "", ""
	}
	for _, s := range st.Sandboxes {
		if s.Name == name {
			return s.State, s.Error
		}
	}
	return "", ""
}

func waitState(t *testing.T, dir, name, want string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, msg := sandboxState(t, dir, name)
		if got == want {
			return msg
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: state %q (%s), want %q", name, got, msg, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSandboxFromController(t *testing.T) {
	testenv.RequireRoot(t, "fusermount3", "diff")
	fsBin := testenv.Bin(t, "g8-fs")
	ac := testenv.StartController(t, nil, testenv.ControllerOptions{})
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	big := make([]byte, 3<<20+77)
	for i := range big {
		big[i] = byte(i * 7 / 3)
	}
	writeFile(t, filepath.Join(src, "bin/tool"), []byte("#!/bin/sh\necho ok\n"))
	writeFile(t, filepath.Join(src, "share/big.dat"), big)
	writeFile(t, filepath.Join(src, "etc/empty"), nil)
	if err := os.Symlink("../bin/tool", filepath.Join(src, "etc/tool")); err != nil {
		t.Fatal(err)
	}
	store := ac.URL + "/v1/store"
	// The builder verifies the controller with its CA.
	builderRoot := filepath.Join(tmp, "builder")
	ca, err := os.ReadFile(ac.TrustAnchor)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(builderRoot, "ssl/ca.pem"), ca)

	// Without the admin token the controller refuses the upload.
	out, err := exec.Command(fsBin, "build", src, "-o", filepath.Join(tmp, "x.flist"), "--store", store, "--config-root", builderRoot).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("build without a token: %v\n%s", err, out)
	}
	flist := filepath.Join(tmp, "tree.flist")
	// (--ca: the controller's trust anchor as `g8-ac ca` prints it.)
	out, err = exec.Command(fsBin, "build", src, "-o", flist, "--store", store, "--token-file", ac.AdminToken, "--ca", ac.TrustAnchor).CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ref := regexp.MustCompile(`blake3:[0-9a-f]{64}`).FindString(string(out))
	if ref == "" {
		t.Fatalf("build printed no reference:\n%s", out)
	}

	// The node: identity from enrollment, controller from net.json, the
	// store URL left out of fs.toml.
	node := testenv.EnrollNode(t, ac, nil, "02:00:00:00:f5:01")
	stateDir := filepath.Join(tmp, "run")
	if err := state.Write(stateDir, &state.Net{Controller: ac.URL, Interface: "lo", Method: "static"}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(tmp, "mnt/tools")
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	conf := filepath.Join(tmp, "fs.toml")
	writeFile(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"tools\"\nflist = %q\nmountpoint = %q\n", ref, mnt)))
	p := testenv.StartLocal(t, fsBin, "mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"),
		"--state-dir", stateDir, "--config-root", node.ConfigRoot)
	waitState(t, stateDir, "tools", "mounted")
	if out, err := exec.Command("diff", "-r", "--no-dereference", src, mnt).CombinedOutput(); err != nil {
		t.Fatalf("diff -r: %v\n%s\ng8-fs:\n%s", err, out, p.Output())
	}
	p.Stop() // SIGTERM: unmounts and writes the final fs.json
	var st state.FS
	state.Read(stateDir, &st)
	if st.Store != store || st.Fetches == 0 || st.Failures != 0 {
		b, _ := json.Marshal(st)
		t.Errorf("fs.json: %s", b)
	}

	// Without a client certificate the controller does not serve the
	// store: the sandbox fails and says why.
	noID := filepath.Join(tmp, "no-identity")
	writeFile(t, filepath.Join(noID, "ssl/ca.pem"), ca)
	mnt2 := filepath.Join(tmp, "mnt/other")
	writeFile(t, conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"other\"\nflist = %q\nmountpoint = %q\n", ref, mnt2)))
	p2 := testenv.StartLocal(t, fsBin, "mount", "--config", conf, "--cache", filepath.Join(tmp, "cache2"),
		"--state-dir", stateDir, "--config-root", noID)
	msg := waitState(t, stateDir, "other", "failed")
	if !strings.Contains(msg, "401") {
		t.Errorf("failed without identity, but the error does not say 401: %s", msg)
	}
	if _, err := os.Stat(filepath.Join(mnt2, "bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something is mounted at %s: %v", mnt2, err)
	}
	p2.Stop()
}
