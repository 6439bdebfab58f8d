package sshd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
)

// Account is the passwd(5) entry a session runs as.
type Account struct {
	Name  string
	UID   uint32
	GID   uint32
	Home  string
	Shell string
}

// lookupAccount reads /etc/passwd directly: the binary is static, and the
// shell field is not in os/user.
func lookupAccount(passwd, name string) (Account, error) {
	f, err := os.Open(passwd)
	if err != nil {
		return Account{}, err
	}
	defer f.Close()
	return parsePasswd(f, passwd, name)
}

func parsePasswd(r io.Reader, file, name string) (Account, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return Account{}, fmt.Errorf("%s: user %s: bad uid or gid", file, name)
		}
		return Account{Name: name, UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]}, nil
	}
	if err := sc.Err(); err != nil {
		return Account{}, fmt.Errorf("%s: %w", file, err)
	}
	return Account{}, fmt.Errorf("%s: no user %s", file, name)
}

// defaultPath is what OpenSSH's Debian build gives every user.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// baseAccept is the client environment OpenSSH distributions accept by
// default (AcceptEnv LANG LC_*), plus TERM for clients that send it by SetEnv.
var baseAccept = []string{"LANG", "LC_*", "TERM"}

// envRequest is what the session knows when it builds the environment.
type envRequest struct {
	Account   Account
	Shell     string
	Remote    net.Addr
	Local     net.Addr
	Term      string   // from pty-req
	TTY       string   // the slave device when a PTY is allocated
	ClientEnv []string // NAME=value sent by the client, in order
	Accept    []string // extra patterns (--accept-env)
	KeyEnv    []string // environment= of the key line
	PermitKey bool     // --permit-user-environment
	Original  *string  // SSH_ORIGINAL_COMMAND when a command is forced
	AuthSock  string
}

// sessionEnv builds a session's environment the way sshd does: fixed
// variables first, then accepted client variables, then the key's
// environment= when permitted; the variables that describe the login
// (USER, HOME, SSH_*) can be overridden by nobody.
func sessionEnv(r envRequest) []string {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", defaultPath)
	for _, kv := range r.ClientEnv {
		k, v, ok := strings.Cut(kv, "=")
		if ok && acceptEnv(k, append(append([]string{}, baseAccept...), r.Accept...)) {
			set(k, v)
		}
	}
	if r.PermitKey {
		for _, kv := range r.KeyEnv {
			if k, v, ok := strings.Cut(kv, "="); ok {
				set(k, v)
			}
		}
	}
	if r.Term != "" {
		set("TERM", r.Term)
	}
	set("USER", r.Account.Name)
	set("LOGNAME", r.Account.Name)
	set("HOME", r.Account.Home)
	set("SHELL", r.Shell)
	set("MAIL", "/var/mail/"+r.Account.Name)
	rh, rp := splitAddr(r.Remote)
	lh, lp := splitAddr(r.Local)
	set("SSH_CLIENT", fmt.Sprintf("%s %s %s", rh, rp, lp))
	set("SSH_CONNECTION", fmt.Sprintf("%s %s %s %s", rh, rp, lh, lp))
	if r.TTY != "" {
		set("SSH_TTY", r.TTY)
	}
	if r.Original != nil {
		set("SSH_ORIGINAL_COMMAND", *r.Original)
	}
	if r.AuthSock != "" {
		set("SSH_AUTH_SOCK", r.AuthSock)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// acceptEnv matches a variable name against AcceptEnv-style patterns.
// Names are restricted so a client cannot smuggle "LD_PRELOAD" in under a
// broad pattern with odd characters.
func acceptEnv(name string, patterns []string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if !(c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	for _, p := range patterns {
		if matchWildcard(p, name) {
			return true
		}
	}
	return false
}

func splitAddr(a net.Addr) (string, string) {
	if a == nil {
		return "", ""
	}
	h, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), ""
	}
	return h, p
}
