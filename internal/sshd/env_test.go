package sshd

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParsePasswd(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\nbroken\nops:x:1000:100:Ops:/home/ops:/bin/sh\nbad:x:a:b::/:/bin/sh\n"
	got, err := parsePasswd(strings.NewReader(passwd), "/etc/passwd", "ops")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Account{Name: "ops", UID: 1000, GID: 100, Home: "/home/ops", Shell: "/bin/sh"}); got != want {
		t.Errorf("got %+v", got)
	}
	if _, err := parsePasswd(strings.NewReader(passwd), "/etc/passwd", "nobody"); err == nil || !strings.Contains(err.Error(), "/etc/passwd: no user nobody") {
		t.Errorf("missing user: %v", err)
	}
	if _, err := parsePasswd(strings.NewReader(passwd), "/etc/passwd", "bad"); err == nil {
		t.Error("bad uid accepted")
	}
}

func TestSessionEnv(t *testing.T) {
	orig := "scp -t /x"
	base := envRequest{
		Account: Account{Name: "root", Home: "/root"},
		Shell:   "/bin/sh",
		Remote:  &net.TCPAddr{IP: net.ParseIP("10.0.0.9"), Port: 5555},
		Local:   &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 22},
	}
	for _, tc := range []struct {
		name   string
		mod    func(*envRequest)
		want   map[string]string // must be present
		absent []string
	}{
		{"fixed", func(*envRequest) {}, map[string]string{
			"USER": "root", "LOGNAME": "root", "HOME": "/root", "SHELL": "/bin/sh", "PATH": defaultPath,
			"SSH_CLIENT": "10.0.0.9 5555 22", "SSH_CONNECTION": "10.0.0.9 5555 10.0.0.1 22",
		}, []string{"SSH_TTY", "TERM", "SSH_ORIGINAL_COMMAND"}},
		{"client allowlist", func(r *envRequest) {
			r.ClientEnv = []string{"LANG=de_DE.UTF-8", "LC_ALL=C", "LD_PRELOAD=/evil.so", "HOME=/tmp", "FOO=1", "TERM=vt100"}
		}, map[string]string{"LANG": "de_DE.UTF-8", "LC_ALL": "C", "HOME": "/root", "TERM": "vt100"}, []string{"LD_PRELOAD", "FOO"}},
		{"extra accept pattern", func(r *envRequest) {
			r.ClientEnv = []string{"FOO=1", "FOOBAR=2", "BAR=3"}
			r.Accept = []string{"FOO*"}
		}, map[string]string{"FOO": "1", "FOOBAR": "2"}, []string{"BAR"}},
		{"pty", func(r *envRequest) {
			r.Term, r.TTY = "xterm-256color", "/dev/pts/3"
			r.ClientEnv = []string{"TERM=dumb"}
		}, map[string]string{"TERM": "xterm-256color", "SSH_TTY": "/dev/pts/3"}, nil},
		{"key environment only when permitted", func(r *envRequest) {
			r.KeyEnv = []string{"DEPLOY=1"}
		}, nil, []string{"DEPLOY"}},
		{"key environment permitted, cannot override the login", func(r *envRequest) {
			r.KeyEnv = []string{"DEPLOY=1", "USER=admin", "PATH=/opt/bin"}
			r.PermitKey = true
		}, map[string]string{"DEPLOY": "1", "USER": "root", "PATH": "/opt/bin"}, nil},
		{"forced command", func(r *envRequest) { r.Original = &orig }, map[string]string{"SSH_ORIGINAL_COMMAND": "scp -t /x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			tc.mod(&r)
			got := map[string]string{}
			for _, kv := range sessionEnv(r) {
				k, v, _ := strings.Cut(kv, "=")
				if _, dup := got[k]; dup {
					t.Errorf("%s set twice", k)
				}
				got[k] = v
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s=%q, want %q", k, got[k], v)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s must not be set", k)
				}
			}
		})
	}
}

func TestAcceptEnvRejectsOddNames(t *testing.T) {
	for _, n := range []string{"", "LC_ALL=x", "LC_ ALL", "LC_\x00"} {
		if acceptEnv(n, []string{"*"}) {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestApplyModes(t *testing.T) {
	var tio unix.Termios
	tio.Lflag = unix.ECHO
	modes := []byte{
		3, 0, 0, 0, 0x7f, // VERASE = DEL
		53, 0, 0, 0, 0, // ECHO off
		51, 0, 0, 0, 1, // ICANON on
		36, 0, 0, 0, 1, // ICRNL on
		91, 0, 0, 0, 1, // CS8
		128, 0, 0, 0x96, 0, // ISPEED: ignored
		0,              // TTY_OP_END
		53, 0, 0, 0, 1, // after the end: ignored
	}
	applyModes(&tio, modes)
	if tio.Cc[unix.VERASE] != 0x7f || tio.Lflag&unix.ECHO != 0 || tio.Lflag&unix.ICANON == 0 ||
		tio.Iflag&unix.ICRNL == 0 || tio.Cflag&unix.CSIZE != unix.CS8 {
		t.Errorf("modes not applied: %+v", tio)
	}
	applyModes(&tio, []byte{53, 0, 0}) // truncated: no panic, no change
}

func TestLoadHostKeysErrors(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadHostKeys(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing dir: %v", err)
	}
	if _, _, err := LoadHostKeys(dir); err == nil || !strings.Contains(err.Error(), HostKeyFile) {
		t.Errorf("empty dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, HostKeyFile), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, skipped, err := LoadHostKeys(dir)
	if err == nil || len(skipped) != 1 || !strings.Contains(err.Error(), HostKeyFile) {
		t.Errorf("garbage key: %v %v", err, skipped)
	}
	if !reflect.DeepEqual(len(skipped), 1) {
		t.Fatal(skipped)
	}
}

// FuzzApplyModes: the client controls the encoded modes; any bytes must
// be applied or skipped without panicking, and CSIZE stays a valid size.
func FuzzApplyModes(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 0x7f, 53, 0, 0, 0, 0, 0})
	f.Add([]byte{91, 0, 0, 0, 1, 90, 0, 0, 0, 1})
	f.Add([]byte{159, 1, 2, 3, 4, 160, 1})
	f.Fuzz(func(t *testing.T, modes []byte) {
		var tio unix.Termios
		tio.Cflag = unix.CS8
		applyModes(&tio, modes)
		if cs := tio.Cflag & unix.CSIZE; cs != unix.CS7 && cs != unix.CS8 {
			t.Fatalf("CSIZE %#x", cs)
		}
	})
}
