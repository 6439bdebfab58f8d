package sshd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// maxAuthorizedKeysSize bounds how much of authorized_keys is read: a file
// that large is a mistake, and reading it must not exhaust memory.
const maxAuthorizedKeysSize = 4 << 20

// KeyOptions are the sshd(8) AUTHORIZED_KEYS FILE FORMAT options of one
// line that this server honours. The zero value is an unrestricted key.
type KeyOptions struct {
	Command           *string  // command="..." forces this command (nil: none)
	From              []string // from="pattern-list" on the client address
	Environment       []string // environment="NAME=value", used only when permitted
	PermitOpen        []string // permitopen="host:port" limits local forwarding
	PermitListen      []string // permitlisten="[host:]port" limits remote forwarding
	NoPTY             bool
	NoPortForwarding  bool
	NoAgentForwarding bool
	NoX11Forwarding   bool
	NoTouchRequired   bool      // FIDO keys: accept signatures without user presence
	ExpiryTime        time.Time // expiry-time="YYYYMMDD[HHMM[SS]]"; zero: never
	CertAuthority     bool      // the key is a CA: it admits user certificates it signed, not itself
	Principals        []string  // principals="a,b": a certificate must name one of these (else the user)
}

// AuthorizedKey is one usable line of authorized_keys.
type AuthorizedKey struct {
	Key         gossh.PublicKey
	Fingerprint string // SHA256:..., as ssh-keygen -l prints it
	Comment     string
	Options     KeyOptions
	Line        int

	// Cert is the user certificate that logged in through a cert-authority
	// line; Options then are the line's merged with the certificate's.
	Cert *gossh.Certificate
}

// LineError is a line of authorized_keys that was skipped.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// KeySet is a parsed authorized_keys file. It is immutable once built, so
// a reload swaps the whole set and sessions keep the key they logged in with.
type KeySet struct {
	File    string
	Keys    []AuthorizedKey
	Skipped []*LineError
	byBlob  map[string][]int // marshalled key -> indexes in Keys, file order
	byCA    map[string][]int // the same for cert-authority lines
}

// ParseAuthorizedKeys reads an OpenSSH authorized_keys file. A malformed
// line never spoils the others: it is recorded in Skipped with its line
// number and the rest of the file still counts, as sshd(8) does.
func ParseAuthorizedKeys(r io.Reader, file string) (*KeySet, error) {
	ks := &KeySet{File: file, byBlob: map[string][]int{}, byCA: map[string][]int{}}
	br := bufio.NewReaderSize(io.LimitReader(r, maxAuthorizedKeysSize+1), 64<<10)
	var total int
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		total += len(line)
		if total > maxAuthorizedKeysSize {
			return nil, fmt.Errorf("%s: larger than %d bytes", file, maxAuthorizedKeysSize)
		}
		if len(line) > 0 {
			ks.addLine(n, line)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return ks, nil
}

// LoadAuthorizedKeys parses the file at path.
func LoadAuthorizedKeys(path string) (*KeySet, error) {
	b, err := readAuthorizedKeys(path)
	if err != nil {
		return nil, err
	}
	return ParseAuthorizedKeys(bytes.NewReader(b), path)
}

// readAuthorizedKeys reads the file whole, up to maxAuthorizedKeysSize.
func readAuthorizedKeys(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAuthorizedKeysSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxAuthorizedKeysSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxAuthorizedKeysSize)
	}
	return b, nil
}

func (ks *KeySet) addLine(n int, line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] == '#' {
		return
	}
	ak, err := parseAuthorizedLine(line)
	if err != nil {
		ks.Skipped = append(ks.Skipped, &LineError{File: ks.File, Line: n, Err: err})
		return
	}
	ak.Line = n
	blob := string(ak.Key.Marshal())
	if ak.Options.CertAuthority {
		ks.byCA[blob] = append(ks.byCA[blob], len(ks.Keys))
	} else {
		ks.byBlob[blob] = append(ks.byBlob[blob], len(ks.Keys))
	}
	ks.Keys = append(ks.Keys, ak)
}

func parseAuthorizedLine(line []byte) (AuthorizedKey, error) {
	if bytes.IndexByte(line, 0) >= 0 {
		return AuthorizedKey{}, errors.New("NUL byte in line")
	}
	key, comment, opts, rest, err := gossh.ParseAuthorizedKey(line)
	if err != nil {
		return AuthorizedKey{}, fmt.Errorf("not a public key: %w", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return AuthorizedKey{}, errors.New("trailing data after the key")
	}
	ko, err := parseKeyOptions(opts)
	if err != nil {
		return AuthorizedKey{}, err
	}
	if _, isCert := key.(*gossh.Certificate); isCert {
		return AuthorizedKey{}, errors.New("a certificate is not a key to list: list its CA with cert-authority")
	}
	if len(ko.Principals) > 0 && !ko.CertAuthority {
		return AuthorizedKey{}, errors.New("option principals: only with cert-authority")
	}
	return AuthorizedKey{Key: key, Fingerprint: gossh.FingerprintSHA256(key), Comment: comment, Options: ko}, nil
}

// parseKeyOptions applies the options in order, as sshd does: "restrict"
// first switches everything off, and a later "pty" switches the PTY back on.
func parseKeyOptions(opts []string) (KeyOptions, error) {
	var ko KeyOptions
	for _, o := range opts {
		name, value, hasValue := strings.Cut(o, "=")
		name = strings.ToLower(name)
		if hasValue {
			v, err := unquoteOption(value)
			if err != nil {
				return ko, fmt.Errorf("option %s: %w", name, err)
			}
			value = v
		}
		flag := func() error {
			if hasValue {
				return fmt.Errorf("option %s takes no value", name)
			}
			return nil
		}
		need := func() error {
			if !hasValue {
				return fmt.Errorf("option %s needs a value", name)
			}
			return nil
		}
		var err error
		switch name {
		case "restrict":
			err = flag()
			ko.NoPTY, ko.NoPortForwarding, ko.NoAgentForwarding, ko.NoX11Forwarding = true, true, true, true
		case "no-pty":
			err = flag()
			ko.NoPTY = true
		case "pty":
			err = flag()
			ko.NoPTY = false
		case "no-port-forwarding":
			err = flag()
			ko.NoPortForwarding = true
		case "port-forwarding":
			err = flag()
			ko.NoPortForwarding = false
		case "no-agent-forwarding":
			err = flag()
			ko.NoAgentForwarding = true
		case "agent-forwarding":
			err = flag()
			ko.NoAgentForwarding = false
		case "no-x11-forwarding":
			err = flag()
			ko.NoX11Forwarding = true
		case "x11-forwarding":
			err = flag()
			ko.NoX11Forwarding = false
		case "no-user-rc", "user-rc":
			// This server never runs ~/.ssh/rc, so both are already true.
			err = flag()
		case "no-touch-required":
			err = flag()
			ko.NoTouchRequired = true
		case "command":
			if err = need(); err == nil {
				c := value
				ko.Command = &c
			}
		case "from":
			if err = need(); err == nil {
				ko.From, err = parsePatternList(value)
			}
		case "environment":
			if err = need(); err == nil {
				k, _, ok := strings.Cut(value, "=")
				if !ok || k == "" || strings.ContainsAny(k, " \t") {
					err = fmt.Errorf("option environment: %q is not NAME=value", value)
				}
				ko.Environment = append(ko.Environment, value)
			}
		case "permitopen":
			if err = need(); err == nil {
				err = checkHostPort(value, false)
				ko.PermitOpen = append(ko.PermitOpen, value)
			}
		case "permitlisten":
			if err = need(); err == nil {
				err = checkHostPort(value, true)
				ko.PermitListen = append(ko.PermitListen, value)
			}
		case "expiry-time":
			if err = need(); err == nil {
				ko.ExpiryTime, err = parseExpiry(value)
			}
		case "tunnel":
			// tun(4) forwarding is never offered, so the device choice is moot.
			err = need()
		case "cert-authority":
			err = flag()
			ko.CertAuthority = true
		case "principals":
			if err = need(); err == nil {
				ko.Principals = nil
				for _, p := range strings.Split(value, ",") {
					if p = strings.TrimSpace(p); p == "" {
						err = fmt.Errorf("option principals: empty name in %q", value)
						break
					}
					ko.Principals = append(ko.Principals, p)
				}
			}
		case "verify-required":
			err = errors.New("option verify-required: FIDO user verification is not supported here")
		default:
			err = fmt.Errorf("unknown option %q", name)
		}
		if err != nil {
			return ko, err
		}
	}
	return ko, nil
}

// unquoteOption undoes the quoting of an option value. sshd only unescapes
// \" inside the quotes; every other backslash is literal.
func unquoteOption(v string) (string, error) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", fmt.Errorf("value %q is not in double quotes", v)
	}
	v = v[1 : len(v)-1]
	return strings.ReplaceAll(v, `\"`, `"`), nil
}

func parsePatternList(v string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		bare := strings.TrimPrefix(p, "!")
		if bare == "" {
			return nil, fmt.Errorf("option from: empty pattern in %q", v)
		}
		if strings.Contains(bare, "/") {
			if _, _, err := net.ParseCIDR(bare); err != nil {
				return nil, fmt.Errorf("option from: %q is not a CIDR network", bare)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

func checkHostPort(v string, listen bool) error {
	host, port := "", v
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		host, port = v[:i], v[i+1:]
	} else if !listen {
		return fmt.Errorf("%q is not host:port", v)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if (host == "" && !listen) || port == "" {
		return fmt.Errorf("%q is not host:port", v)
	}
	if port == "*" {
		return nil
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 || fmt.Sprint(p) != port {
		return fmt.Errorf("%q: bad port %q", v, port)
	}
	return nil
}

func parseExpiry(v string) (time.Time, error) {
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(v) == len(layout) {
			if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
				return t, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("option expiry-time: %q is not YYYYMMDD[HHMM[SS]]", v)
}

// Authorize finds the line that lets key in as user from ip at now. Like
// sshd, a line whose from= or expiry-time= does not fit is passed over and
// a later line with the same key may still match. A user certificate is
// matched against the cert-authority lines of its CA (and never against a
// plain line). The error says why each candidate line was refused.
func (ks *KeySet) Authorize(key gossh.PublicKey, user string, ip net.IP, now time.Time) (*AuthorizedKey, error) {
	if ks == nil {
		return nil, errors.New("no authorized_keys loaded")
	}
	cert, isCert := key.(*gossh.Certificate)
	var idx []int
	if isCert {
		idx = ks.byCA[string(cert.SignatureKey.Marshal())]
		if len(idx) == 0 {
			return nil, fmt.Errorf("certificate signed by CA %s, which no cert-authority line lists", gossh.FingerprintSHA256(cert.SignatureKey))
		}
	} else if idx = ks.byBlob[string(key.Marshal())]; len(idx) == 0 {
		return nil, errors.New("key not in authorized_keys")
	}
	var why []string
	for _, i := range idx {
		ak := &ks.Keys[i]
		if len(ak.Options.From) > 0 && !matchFrom(ak.Options.From, ip) {
			why = append(why, fmt.Sprintf("%s:%d: from= does not match %s", ks.File, ak.Line, ip))
			continue
		}
		if !ak.Options.ExpiryTime.IsZero() && now.After(ak.Options.ExpiryTime) {
			why = append(why, fmt.Sprintf("%s:%d: key expired at %s", ks.File, ak.Line, ak.Options.ExpiryTime.Format(time.RFC3339)))
			continue
		}
		if !isCert {
			return ak, nil
		}
		merged, err := authorizeCert(ak, cert, user, ip, now)
		if err != nil {
			why = append(why, fmt.Sprintf("%s:%d: certificate %q serial %d: %v", ks.File, ak.Line, cert.KeyId, cert.Serial, err))
			continue
		}
		return merged, nil
	}
	return nil, errors.New(strings.Join(why, "; "))
}

// Critical options of user certificates (PROTOCOL.certkeys). Any other
// critical option refuses the certificate, as OpenSSH does: the CA meant
// to restrict the key in a way this server would not enforce.
const (
	certForceCommand  = "force-command"
	certSourceAddress = "source-address"
)

// authorizeCert checks a user certificate against the cert-authority line
// ak that names its CA, as sshd(8) does: a user certificate, signed by the
// CA, within its validity window, naming the user (or one of principals=),
// with only critical options this server enforces and these fulfilled. It
// returns the line with the certificate's restrictions merged in.
func authorizeCert(ak *AuthorizedKey, cert *gossh.Certificate, user string, ip net.IP, now time.Time) (*AuthorizedKey, error) {
	if cert.CertType != gossh.UserCert {
		return nil, errors.New("a host certificate, not a user certificate")
	}
	if len(cert.ValidPrincipals) == 0 {
		// x/crypto would take an empty list as "anybody"; OpenSSH refuses.
		return nil, errors.New("names no principal")
	}
	want := []string{user}
	if len(ak.Options.Principals) > 0 {
		want = ak.Options.Principals
	}
	principal := ""
	for _, p := range cert.ValidPrincipals {
		if slices.Contains(want, p) {
			principal = p
			break
		}
	}
	if principal == "" {
		return nil, fmt.Errorf("principals %q include none of %q", cert.ValidPrincipals, want)
	}
	checker := gossh.CertChecker{
		SupportedCriticalOptions: []string{certForceCommand, certSourceAddress},
		Clock:                    func() time.Time { return now },
	}
	// Signature by the CA, validity window, and critical options other
	// than source-address (which is ours to check, below).
	if err := checker.CheckCert(principal, cert); err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "ssh: "))
	}
	merged := *ak
	merged.Cert = cert
	merged.Fingerprint = gossh.FingerprintSHA256(cert.Key)
	o := &merged.Options
	if v, ok := cert.CriticalOptions[certSourceAddress]; ok {
		okAddr, err := matchSourceAddress(v, ip)
		if err != nil {
			return nil, err
		}
		if !okAddr {
			return nil, fmt.Errorf("source-address %q does not match %s", v, ip)
		}
	}
	if fc, ok := cert.CriticalOptions[certForceCommand]; ok {
		if o.Command != nil && *o.Command != fc {
			return nil, errors.New("force-command differs from the line's command=")
		}
		o.Command = &fc
	}
	// Permissions are the intersection of the line's and the extensions
	// (sshauthopt_merge).
	has := func(ext string) bool { _, ok := cert.Extensions[ext]; return ok }
	o.NoPTY = o.NoPTY || !has("permit-pty")
	o.NoPortForwarding = o.NoPortForwarding || !has("permit-port-forwarding")
	o.NoAgentForwarding = o.NoAgentForwarding || !has("permit-agent-forwarding")
	o.NoX11Forwarding = o.NoX11Forwarding || !has("permit-X11-forwarding")
	o.NoTouchRequired = o.NoTouchRequired && has("no-touch-required")
	return &merged, nil
}

// matchSourceAddress checks the source-address critical option: a comma
// list of addresses and CIDR networks. A malformed list refuses.
func matchSourceAddress(list string, ip net.IP) (bool, error) {
	if ip == nil {
		return false, nil
	}
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if strings.Contains(a, "/") {
			_, n, err := net.ParseCIDR(a)
			if err != nil {
				return false, fmt.Errorf("source-address: %q is not a CIDR network", a)
			}
			if n.Contains(ip) {
				return true, nil
			}
			continue
		}
		addr := net.ParseIP(a)
		if addr == nil {
			return false, fmt.Errorf("source-address: %q is not an address", a)
		}
		if addr.Equal(ip) {
			return true, nil
		}
	}
	return false, nil
}

// matchFrom implements sshd's match_host_and_ip without DNS (UseDNS no):
// any matching negated pattern refuses, otherwise any positive match admits.
func matchFrom(patterns []string, ip net.IP) bool {
	if ip == nil {
		return false
	}
	s := ip.String()
	if v4 := ip.To4(); v4 != nil {
		s = v4.String()
	}
	ok := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var m bool
		if strings.Contains(p, "/") {
			if _, n, err := net.ParseCIDR(p); err == nil {
				m = n.Contains(ip)
			}
		} else {
			m = matchWildcard(strings.ToLower(p), s)
		}
		if m && neg {
			return false
		}
		ok = ok || m
	}
	return ok
}

// matchWildcard is sshd's match_pattern: '*' is any run, '?' one byte,
// nothing else is special.
func matchWildcard(p, s string) bool {
	// Iterative with one backtrack point, so hostile patterns stay linear.
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
