// Package units holds the systemd units of the boot chain; its test lints
// them with systemd itself and checks them against the unit graph of
// DESIGN.md (docs/units.md).
package units

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/chain"
	"github.com/g8os/boot/internal/netup"
	"github.com/g8os/boot/tests/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var phases = []string{"g8-netup.service", "g8-unlock.service", "g8-acsession.service", "g8-sshd.service", "g8-fs.service"}

// The unit graph (DESIGN.md, docs/units.md). Each list must be present; a
// unit may carry more only where listed in extra.
var graph = map[string]struct{ requires, after, wants, before []string }{
	"g8-netup.service": {after: []string{"network-pre.target"}, before: []string{"network.target"}},
	// No Requires= between phases: each restarts alone (docs/units.md).
	"g8-unlock.service":    {wants: []string{"g8-netup.service"}, after: []string{"g8-netup.service"}},
	"g8-acsession.service": {wants: []string{"g8-unlock.service"}, after: []string{"g8-unlock.service"}},
	// After=g8-unlock too: keeps the order when g8-acsession is masked.
	"g8-sshd.service": {after: []string{"g8-acsession.service", "g8-unlock.service"}, wants: []string{"g8-acsession.service", "g8-unlock.service"}},
	"g8-fs.service":   {wants: []string{"g8-unlock.service"}, after: []string{"g8-unlock.service", "g8-netup.service"}},
	"g8os.target":     {},
}

type unit map[string][]string // "Section.Key" -> values in order

func parse(t *testing.T, path string) unit {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	sec := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			sec = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: not key=value: %q", path, l)
			}
			u[sec+"."+k] = append(u[sec+"."+k], v)
		}
	}
	return u
}

// words splits every value of a list-valued key.
func (u unit) words(key string) []string {
	var w []string
	for _, v := range u[key] {
		w = append(w, strings.Fields(v)...)
	}
	return w
}

func (u unit) one(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

func TestGraphMatchesDesign(t *testing.T) {
	for name, want := range graph {
		u := parse(t, name)
		for _, c := range []struct {
			key  string
			want []string
		}{{"Unit.Requires", want.requires}, {"Unit.After", want.after}, {"Unit.Wants", want.wants}, {"Unit.Before", want.before}} {
			got := u.words(c.key)
			for _, w := range c.want {
				if !slices.Contains(got, w) {
					t.Errorf("%s: %s=%v lacks %s", name, c.key, got, w)
				}
			}
			// Nothing in the chain may pull in more than the table says.
			for _, g := range got {
				if strings.HasPrefix(g, "g8") && !slices.Contains(c.want, g) {
					t.Errorf("%s: %s has %s, which the unit graph does not", name, c.key, g)
				}
			}
		}
	}
	// sshd must keep serving when the session is down: Wants, never Requires.
	if u := parse(t, "g8-sshd.service"); slices.Contains(u.words("Unit.Requires"), "g8-acsession.service") ||
		slices.Contains(u.words("Unit.BindsTo"), "g8-acsession.service") {
		t.Error("g8-sshd.service requires g8-acsession.service; SSH must not depend on the session")
	}
	if got := parse(t, "g8os.target").words("Install.WantedBy"); !slices.Equal(got, []string{"multi-user.target"}) {
		t.Errorf("g8os.target WantedBy=%v, want multi-user.target", got)
	}
}

// Every phase is wanted by g8os.target through its own [Install] section,
// so an operator can take one out with systemctl disable; enabling the
// target enables them all. Checked with systemctl itself on a scratch root.
func TestEveryPhaseCanBeDisabled(t *testing.T) {
	for _, name := range phases {
		if got := parse(t, name).words("Install.WantedBy"); !slices.Equal(got, []string{"g8os.target"}) {
			t.Errorf("%s: WantedBy=%v, want g8os.target", name, got)
		}
	}
	if got := parse(t, "g8os.target").words("Install.Also"); !slices.Equal(got, phases) {
		t.Errorf("g8os.target Also=%v, want %v", got, phases)
	}
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("skipped: no systemctl to enable the units with")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{"g8os.target", "g8os-failed@.service"}, phases...) {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	systemctl := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("systemctl", append([]string{"--root=" + root}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("systemctl %v: %v\n%s", args, err, out)
		}
	}
	wanted := func() []string {
		es, _ := os.ReadDir(filepath.Join(root, "etc/systemd/system/g8os.target.wants"))
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		slices.Sort(names)
		return names
	}
	systemctl("enable", "g8os.target")
	all := slices.Sorted(slices.Values(phases))
	if got := wanted(); !slices.Equal(got, all) {
		t.Errorf("after systemctl enable g8os.target, g8os.target.wants/ holds %v, want %v", got, all)
	}
	systemctl("disable", "g8-fs.service")
	if got := wanted(); slices.Contains(got, "g8-fs.service") || len(got) != len(phases)-1 {
		t.Errorf("after systemctl disable g8-fs.service, g8os.target.wants/ holds %v", got)
	}
}

func TestEveryPhaseIsASupervisedNotifyService(t *testing.T) {
	for _, name := range phases {
		u := parse(t, name)
		if got := u.one("Service.Type"); got != "notify" {
			t.Errorf("%s: Type=%s, want notify", name, got)
		}
		if got := u.one("Service.Restart"); got != "always" && got != "on-failure" {
			t.Errorf("%s: Restart=%q", name, got)
		}
		if u.one("Service.RestartSec") == "" {
			t.Errorf("%s: no RestartSec", name)
		}
		if got := u.one("Unit.OnFailure"); got != "g8os-failed@%n.service" {
			t.Errorf("%s: OnFailure=%q, want g8os-failed@%%n.service", name, got)
		}
		if u.one("Service.RuntimeDirectory") != "" {
			t.Errorf("%s: RuntimeDirectory= removes /run/g8os when this unit stops; tmpfiles.d makes it", name)
		}
		for _, ev := range []string{"ExecStartPre", "ExecStartPost", "ExecStopPost"} {
			if v := u.one("Service." + ev); !strings.HasPrefix(v, "-/usr/bin/g8-status issue") {
				t.Errorf("%s: %s=%q does not write the console line (or may fail the unit)", name, ev, v)
			}
		}
	}
	for _, name := range []string{"g8-acsession.service", "g8-netup.service"} {
		if got := parse(t, name).one("Service.WatchdogSec"); got == "" {
			t.Errorf("%s: no WatchdogSec, though it pings the watchdog", name)
		}
	}
	// g8-netup writes resolv.conf in /run/g8os (linked from /etc by
	// tmpfiles.d): it has no business writing /etc.
	for _, p := range parse(t, "g8-netup.service").words("Service.ReadWritePaths") {
		if p := strings.TrimPrefix(p, "-"); p == "/etc" || strings.HasPrefix(p, "/etc/") {
			t.Errorf("g8-netup.service: ReadWritePaths=%s", p)
		}
	}
	for _, name := range []string{"g8-sshd.service", "g8-fs.service"} {
		if !strings.Contains(parse(t, name).one("Service.ExecReload"), "-HUP $MAINPID") {
			t.Errorf("%s: ExecReload does not send SIGHUP", name)
		}
	}
	// A mount namespace of its own would hide the FUSE mounts from the rest
	// of the system.
	for _, name := range []string{"g8-unlock.service", "g8-fs.service"} {
		u := parse(t, name)
		for _, k := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
			"ProtectKernelModules", "ProtectControlGroups", "ProtectProc", "ReadWritePaths", "ReadOnlyPaths", "TemporaryFileSystem", "MountFlags"} {
			if u.one("Service."+k) != "" {
				t.Errorf("%s: %s= gives the unit its own mount namespace; its FUSE mounts would be invisible", name, k)
			}
		}
	}
}

var execBin = regexp.MustCompile(`^[-@:+!]*(/usr/bin/(g8-[a-z]+))(.*)$`)

// verifyRoot is a scratch root with the host's units (the targets ours
// refer to), ours, and the binaries they run: systemd-analyze needs the
// ExecStart= binaries to exist under --root. It returns our units' paths.
func verifyRoot(t *testing.T) (root string, paths []string) {
	root = t.TempDir()
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	for _, d := range []string{unitDir, filepath.Join(root, "usr/bin"), filepath.Join(root, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system/.", unitDir+"/").CombinedOutput(); err != nil {
		if out, err = exec.Command("cp", "-a", "/lib/systemd/system/.", unitDir+"/").CombinedOutput(); err != nil {
			t.Fatalf("copy the host's units: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("cp", "-L", "/bin/sh", filepath.Join(root, "bin/sh")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	files, _ := filepath.Glob("g8*")
	for _, f := range files {
		if !strings.HasSuffix(f, ".service") && !strings.HasSuffix(f, ".target") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(unitDir, f)
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, dst)
		for _, bin := range binaries(t, f) {
			installBinary(t, root, bin)
		}
	}
	return root, paths
}

func lookAnalyze(t *testing.T) string {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("skipped: systemd-analyze not installed (make deps installs systemd-container)")
	}
	return analyze
}

// Any stderr at all is a failure: unknown keys only warn.
func TestSystemdAnalyzeVerifyIsSilent(t *testing.T) {
	analyze := lookAnalyze(t)
	root, paths := verifyRoot(t)
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no", "--root=" + root}, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, stderr.String())
	}
}

// maxExposure is each unit's `systemd-analyze security` score as recorded
// in docs/units.md (lower is better). Hardening may only get better; the
// reasons for the high ones are in the unit files and the doc.
var maxExposure = map[string]float64{
	"g8-netup.service":     2.5,
	"g8-unlock.service":    4.7,
	"g8-acsession.service": 9.3,
	"g8-sshd.service":      9.4,
	"g8-fs.service":        4.7,
}

var exposureRe = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

func TestSecurityExposureDoesNotGrow(t *testing.T) {
	analyze := lookAnalyze(t)
	root, paths := verifyRoot(t)
	for _, p := range paths {
		name := filepath.Base(p)
		limit, ok := maxExposure[name]
		if !ok {
			continue
		}
		out, err := exec.Command(analyze, "security", "--offline=true", "--root="+root, p).CombinedOutput()
		m := exposureRe.FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
		}
		got, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		if got > limit {
			t.Errorf("%s: exposure %.1f, was %.1f (docs/units.md); hardening got worse", name, got, limit)
		} else if got < limit {
			t.Logf("%s: exposure %.1f, better than the recorded %.1f: update docs/units.md and maxExposure", name, got, limit)
		}
	}
}

// binaries lists the project binaries a unit file runs.
func binaries(t *testing.T, file string) []string {
	var bins []string
	for k, vs := range parse(t, file) {
		if !strings.HasPrefix(k, "Service.Exec") {
			continue
		}
		for _, v := range vs {
			if m := execBin.FindStringSubmatch(v); m != nil && !slices.Contains(bins, m[2]) {
				bins = append(bins, m[2])
			}
		}
	}
	return bins
}

// installBinary puts the real binary into root when it exists on this
// branch; a phase not built yet gets a placeholder so verify can still lint
// the unit (TestExecStartFlagsExist names it).
func installBinary(t *testing.T, root, name string) {
	dst := filepath.Join(root, "usr/bin", name)
	if _, err := os.Stat(filepath.Join("..", "cmd", name)); err == nil {
		data, err := os.ReadFile(testenv.Bin(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.WriteFile(dst, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

var flagRe = regexp.MustCompile(`(?:^|\s)(--[a-z][a-z0-9-]*)`)

// Every flag a unit passes must be one the binary documents in --help, so a
// renamed flag breaks this test, not a boot.
func TestExecStartFlagsExist(t *testing.T) {
	files, _ := filepath.Glob("g8*.service")
	for _, f := range files {
		for k, vs := range parse(t, f) {
			if !strings.HasPrefix(k, "Service.Exec") {
				continue
			}
			for _, v := range vs {
				m := execBin.FindStringSubmatch(v)
				if m == nil {
					continue
				}
				bin, args := m[2], m[3]
				t.Run(f+"/"+strings.TrimPrefix(k, "Service."), func(t *testing.T) {
					if _, err := os.Stat(filepath.Join("..", "cmd", bin)); err != nil {
						t.Skipf("skipped: cmd/%s is not on this branch yet", bin)
					}
					cmd := exec.Command(testenv.Bin(t, bin), strings.Fields(args)[:0]...)
					cmd.Args = append(cmd.Args, helpArgs(args)...)
					out, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("%s %s: %v\n%s", bin, strings.Join(cmd.Args[1:], " "), err, out)
					}
					for _, fm := range flagRe.FindAllStringSubmatch(args, -1) {
						if !strings.Contains(string(out), "  "+fm[1]+" ") && !strings.Contains(string(out), "  "+fm[1]+"\n") {
							t.Errorf("%s: %s passes %s, which `%s --help` does not list:\n%s", f, bin, fm[1], bin, out)
						}
					}
				})
			}
		}
	}
}

// helpArgs keeps the subcommand words before the first flag and asks for
// their help ("issue --event start net" -> "issue --help").
func helpArgs(args string) []string {
	var sub []string
	for _, w := range strings.Fields(args) {
		if strings.HasPrefix(w, "-") || strings.Contains(w, "%") || strings.Contains(w, "/") {
			break
		}
		sub = append(sub, w)
	}
	return append(sub, "--help")
}

// The tmpfiles.d line is applied by systemd-tmpfiles itself into a scratch
// root: /run/g8os, /run/issue.d and the login prompt links.
func TestTmpfilesCreatesRuntimeDirs(t *testing.T) {
	tmpfiles, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		t.Skip("skipped: systemd-tmpfiles not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: systemd-tmpfiles --root needs root to chown; CI runs it as root")
	}
	root := t.TempDir()
	// The distribution's own resolv.conf, which the link replaces.
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := filepath.Abs("g8os.tmpfiles")
	var stderr bytes.Buffer
	cmd := exec.Command(tmpfiles, "--create", "--root="+root, cfg)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, stderr.String())
	}
	st, err := os.Stat(filepath.Join(root, "run/g8os"))
	if err != nil || st.Mode() != os.ModeDir|0o751 {
		t.Errorf("/run/g8os: %v %v, want 0751 (others reach resolv.conf, list nothing)", st, err)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc/resolv.conf")); err != nil || target != netup.DefaultResolvConf {
		t.Errorf("/etc/resolv.conf -> %q (%v), want a link to %s, g8-netup's default", target, err, netup.DefaultResolvConf)
	}
	if st, err := os.Stat(filepath.Join(root, "run/issue.d")); err != nil || !st.IsDir() {
		t.Errorf("/run/issue.d: %v", err)
	}
	// agetty reads /run/issue.d only without /etc/issue (Debian and Arch
	// have one), so each phase's line is linked from /etc/issue.d.
	for i, p := range chain.Phases {
		link := filepath.Join(root, "etc/issue.d", fmt.Sprintf("%d-%s", 41+i, p.Issue))
		target, err := os.Readlink(link)
		if err != nil || target != "/run/issue.d/"+p.Issue {
			t.Errorf("%s -> %q (%v)", link, target, err)
		}
	}
}
