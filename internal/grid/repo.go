// Package grid is the controller's grid manager (the "AYS robot"): a
// declarative repository of nodes, apps and links, a pure reconcile that
// turns the repository and what the nodes report into actions, and the
// loop that applies those actions as jobs.
package grid

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/g8os/boot/internal/acapi"
)

// The repository is a directory (a git checkout works as is) with one TOML
// file per object, named after it:
//
//	nodes/<node>.toml   id or mac, labels
//	apps/<app>.toml     flist, command, env, restart, health, limits
//	links/<link>.toml   app, nodes and/or a label selector
//
// Anything else (README, .git, files not ending in .toml) is ignored.
const (
	NodesDir = "nodes"
	AppsDir  = "apps"
	LinksDir = "links"
)

// Defaults applied to apps that leave a field out.
const (
	DefaultRestart        = "on-failure"
	DefaultRestartSec     = time.Second
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = 5 * time.Second
	DefaultHealthRetries  = 3
	// DefaultMaxParallel instances of an app roll to a new spec at once.
	DefaultMaxParallel = 1
	// DefaultMinHealthyTime an instance runs the new spec before it
	// counts as rolled and the next may go.
	DefaultMinHealthyTime = 10 * time.Second
	// DefaultHealthyDeadline: an instance not running and healthy this
	// long after its roll fails its batch.
	DefaultHealthyDeadline = 5 * time.Minute
)

// Repo is a loaded and fully validated repository.
type Repo struct {
	Dir   string
	Nodes map[string]*Node // by name
	Apps  map[string]*App  // by name
	Links map[string]*Link // by name
}

// Node is a machine the grid manages, matched to the controller's nodes
// by node id or by one of its MAC addresses.
type Node struct {
	Name   string            `toml:"-"`
	File   string            `toml:"-"`
	ID     string            `toml:"id"`
	MAC    string            `toml:"mac"`
	Labels map[string]string `toml:"labels"`
}

// App is one program to run in its own sandbox on the nodes it is linked to.
type App struct {
	Name string `toml:"-"`
	File string `toml:"-"`

	Flist      string            `toml:"flist"`
	Command    []string          `toml:"command"`
	Env        map[string]string `toml:"env"`
	Restart    string            `toml:"restart"`
	RestartSec *duration         `toml:"restart_sec"`
	Health     *struct {
		Command  []string  `toml:"command"`
		Interval *duration `toml:"interval"`
		Timeout  *duration `toml:"timeout"`
		Retries  *int      `toml:"retries"`
	} `toml:"health"`
	Limits struct {
		MemoryMax string `toml:"memory_max"` // 512M, 2G, or bytes
		CPUQuota  string `toml:"cpu_quota"`  // 50%, 200% = two CPUs
	} `toml:"limits"`
	// How a new spec rolls across the nodes (docs/grid.md "Rolling updates").
	Update struct {
		MaxParallel     *int      `toml:"max_parallel"`
		MinHealthyTime  *duration `toml:"min_healthy_time"`
		HealthyDeadline *duration `toml:"healthy_deadline"`
		Canary          *int      `toml:"canary"`
		AutoRevert      bool      `toml:"auto_revert"`
	} `toml:"update"`
	// Update's values, defaults applied by validation.
	MaxParallel     int           `toml:"-"`
	MinHealthyTime  time.Duration `toml:"-"`
	HealthyDeadline time.Duration `toml:"-"`
	Canary          int           `toml:"-"`
	AutoRevert      bool          `toml:"-"`
	// The boundary's opt-outs (docs/grid.md "Boundary").
	User         string   `toml:"user"`         // "root"; default a dynamic user
	Capabilities []string `toml:"capabilities"` // CAP_NET_BIND_SERVICE ...
	State        bool     `toml:"state"`        // a writable state directory

	// Spec is what the node receives and Hash its acapi.AppSpec.Hash,
	// both set by validation.
	Spec acapi.AppSpec `toml:"-"`
	Hash string        `toml:"-"`
}

// Link places an app on nodes: those named, plus those whose labels
// contain every pair of the selector.
type Link struct {
	Name     string            `toml:"-"`
	File     string            `toml:"-"`
	App      string            `toml:"app"`
	Nodes    []string          `toml:"nodes"`
	Selector map[string]string `toml:"selector"`
}

// duration decodes "1.5s" style strings.
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration like \"2s\" or \"1m30s\": %q", b)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// FieldError is one problem in the repository: the file, the field
// (dotted TOML path, empty for the file as a whole) and what is wrong.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return e.File + ": " + e.Msg
	}
	return e.File + ": " + e.Field + ": " + e.Msg
}

// RepoError lists every problem found, so one run shows them all.
type RepoError struct {
	Dir    string
	Errors []FieldError
}

func (e *RepoError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "grid: repository %s is invalid (%d problem", e.Dir, len(e.Errors))
	if len(e.Errors) != 1 {
		b.WriteString("s")
	}
	b.WriteString("), nothing applied")
	for _, fe := range e.Errors {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// nameRE keeps names usable as systemd unit names (g8-app-<name>.service),
// file names and mountpoints.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// LoadRepo reads and validates the repository at dir. On any problem it
// returns a *RepoError listing all of them and no Repo: callers apply a
// repository whole or not at all.
func LoadRepo(dir string) (*Repo, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("grid: repository: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("grid: repository %s: not a directory", dir)
	}
	files := map[string][]byte{}
	var readErrs []FieldError
	for _, kind := range []string{NodesDir, AppsDir, LinksDir} {
		names, err := tomlFiles(filepath.Join(dir, kind))
		if err != nil {
			readErrs = append(readErrs, FieldError{File: kind, Msg: err.Error()})
			continue
		}
		for _, f := range names {
			data, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				readErrs = append(readErrs, FieldError{File: f, Msg: err.Error()})
				continue
			}
			files[f] = data
		}
	}
	r, err := ParseRepo(dir, files)
	if len(readErrs) > 0 {
		var re *RepoError
		if !errors.As(err, &re) {
			re = &RepoError{Dir: dir}
		}
		re.Errors = append(readErrs, re.Errors...)
		return nil, re
	}
	return r, err
}

// ParseRepo validates a repository given as file contents by path relative
// to its root ("apps/web.toml"); paths outside nodes/, apps/ and links/ are
// ignored. dir only names the repository in errors.
func ParseRepo(dir string, files map[string][]byte) (*Repo, error) {
	r := &Repo{Dir: dir, Nodes: map[string]*Node{}, Apps: map[string]*App{}, Links: map[string]*Link{}}
	v := &validator{}
	for _, f := range sortedKeys(files) {
		data := files[f]
		kind, base := filepath.Split(f)
		kind = strings.TrimSuffix(kind, "/")
		if !strings.HasSuffix(base, ".toml") {
			continue
		}
		name := strings.TrimSuffix(base, ".toml")
		if kind != NodesDir && kind != AppsDir && kind != LinksDir {
			continue
		}
		if !nameRE.MatchString(name) {
			v.add(f, "", fmt.Sprintf("file name %q: names are lower-case letters, digits and '-', at most 63", name))
			continue
		}
		switch kind {
		case NodesDir:
			n := &Node{Name: name, File: f}
			if v.decode(f, data, n) {
				r.Nodes[name] = n
			}
		case AppsDir:
			a := &App{Name: name, File: f}
			if v.decode(f, data, a) {
				r.Apps[name] = a
			}
		case LinksDir:
			l := &Link{Name: name, File: f}
			if v.decode(f, data, l) {
				r.Links[name] = l
			}
		}
	}
	r.validate(v)
	if len(v.errs) > 0 {
		return nil, &RepoError{Dir: dir, Errors: v.errs}
	}
	return r, nil
}

func tomlFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".toml") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		out = append(out, filepath.Join(filepath.Base(dir), e.Name()))
	}
	sort.Strings(out)
	return out, nil
}

type validator struct {
	errs   []FieldError
	broken map[string]bool // "apps/web.toml" that failed to parse: links to them need no second error
}

func (v *validator) markBroken(file string) {
	if v.broken == nil {
		v.broken = map[string]bool{}
	}
	v.broken[file] = true
}

func (v *validator) add(file, field, msg string) {
	v.errs = append(v.errs, FieldError{File: file, Field: field, Msg: msg})
}

// decode parses one file strictly: a key the schema does not know is an
// error, because a typo ("comand") must not silently fall back to a default.
func (v *validator) decode(file string, data []byte, into any) bool {
	md, err := toml.Decode(string(data), into)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			v.add(file, "", fmt.Sprintf("line %d: %s", pe.Position.Line, pe.Message))
		} else {
			v.add(file, "", err.Error())
		}
		v.markBroken(file)
		return false
	}
	ok := true
	for _, k := range md.Undecoded() {
		v.add(file, k.String(), "unknown field")
		ok = false
	}
	// BurntSushi/toml falls back to a case-insensitive match ("Command"
	// fills command), so Undecoded misses a miscased key: check every key
	// against the schema's exact names.
	for _, k := range md.Keys() {
		if !exactKey(reflect.TypeOf(into), k) {
			v.add(file, k.String(), "unknown field (keys are case-sensitive)")
			ok = false
		}
	}
	if !ok {
		v.markBroken(file)
	}
	return ok
}

// exactKey reports whether every part of key names a field of t by its
// toml tag exactly, or a key of a map.
func exactKey(t reflect.Type, key toml.Key) bool {
	for _, part := range key {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem()
			continue
		case reflect.Struct:
		default:
			return true // a value's own structure (an array of strings)
		}
		found := false
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("toml"), ","); name == part {
				t, found = f.Type, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (r *Repo) validate(v *validator) {
	byID := map[string]string{}
	byMAC := map[string]string{}
	for _, name := range sortedKeys(r.Nodes) {
		n := r.Nodes[name]
		switch {
		case n.ID == "" && n.MAC == "":
			v.add(n.File, "id", "a node needs id or mac")
		case n.ID != "" && n.MAC != "":
			v.add(n.File, "mac", "give id or mac, not both")
		case n.MAC != "":
			hw, err := net.ParseMAC(n.MAC)
			if err != nil || len(hw) != 6 {
				v.add(n.File, "mac", fmt.Sprintf("%q is not a MAC address like 52:54:00:12:34:56", n.MAC))
				break
			}
			n.MAC = hw.String()
			if other, dup := byMAC[n.MAC]; dup {
				v.add(n.File, "mac", fmt.Sprintf("%s is also the mac of %s", n.MAC, other))
			}
			byMAC[n.MAC] = n.File
		default:
			if strings.TrimSpace(n.ID) != n.ID {
				v.add(n.File, "id", "has leading or trailing spaces")
			}
			if other, dup := byID[n.ID]; dup {
				v.add(n.File, "id", fmt.Sprintf("%q is also the id of %s", n.ID, other))
			}
			byID[n.ID] = n.File
		}
		for _, k := range sortedKeys(n.Labels) {
			if !labelRE.MatchString(k) {
				v.add(n.File, "labels."+k, "label names are letters, digits, '-', '_', '.', '/'")
			}
			if n.Labels[k] == "" {
				v.add(n.File, "labels."+k, "empty value")
			}
		}
	}
	for _, name := range sortedKeys(r.Apps) {
		r.Apps[name].validate(v)
	}
	for _, name := range sortedKeys(r.Links) {
		l := r.Links[name]
		if l.App == "" {
			v.add(l.File, "app", "missing: which app does this link place?")
		} else if _, ok := r.Apps[l.App]; !ok && !v.broken[filepath.Join(AppsDir, l.App+".toml")] {
			v.add(l.File, "app", fmt.Sprintf("no app %q (expected %s)", l.App, filepath.Join(AppsDir, l.App+".toml")))
		}
		if len(l.Nodes) == 0 && len(l.Selector) == 0 {
			v.add(l.File, "nodes", "a link needs nodes, a selector, or both")
		}
		for i, n := range l.Nodes {
			if _, ok := r.Nodes[n]; !ok && !v.broken[filepath.Join(NodesDir, n+".toml")] {
				v.add(l.File, fmt.Sprintf("nodes[%d]", i), fmt.Sprintf("no node %q (expected %s)", n, filepath.Join(NodesDir, n+".toml")))
			}
		}
		for _, k := range sortedKeys(l.Selector) {
			if !labelRE.MatchString(k) || l.Selector[k] == "" {
				v.add(l.File, "selector."+k, "a selector is label = \"value\" pairs")
			}
		}
	}
}

var labelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)

func (a *App) validate(v *validator) {
	s := acapi.AppSpec{Name: a.Name, Flist: a.Flist, Env: a.Env}
	if a.Flist == "" {
		v.add(a.File, "flist", "missing: the app's sandbox")
	} else if strings.ContainsAny(a.Flist, "\n\"") {
		v.add(a.File, "flist", "contains a newline or quote")
	}
	if len(a.Command) == 0 {
		v.add(a.File, "command", "missing: the argv to run, e.g. [\"/bin/app\", \"--flag\"]")
	} else if !strings.HasPrefix(a.Command[0], "/") {
		v.add(a.File, "command[0]", fmt.Sprintf("%q: must be an absolute path inside the sandbox", a.Command[0]))
	}
	s.Command = a.Command
	for _, k := range sortedKeys(a.Env) {
		if !envKeyRE.MatchString(k) {
			v.add(a.File, "env."+k, "not a valid environment variable name")
		}
		if strings.ContainsRune(a.Env[k], 0) {
			v.add(a.File, "env."+k, "contains a NUL byte")
		}
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	s.Restart = a.Restart
	switch a.Restart {
	case "":
		s.Restart = DefaultRestart
	case "always", "on-failure", "no":
	default:
		v.add(a.File, "restart", fmt.Sprintf("%q: one of always, on-failure, no", a.Restart))
	}
	s.RestartSec = acapi.Duration(DefaultRestartSec)
	if a.RestartSec != nil {
		s.RestartSec = acapi.Duration(a.RestartSec.Duration)
	}
	if h := a.Health; h != nil {
		hs := &acapi.AppHealth{Command: h.Command, Interval: acapi.Duration(DefaultHealthInterval),
			Timeout: acapi.Duration(DefaultHealthTimeout), Retries: DefaultHealthRetries}
		if len(h.Command) == 0 {
			v.add(a.File, "health.command", "missing: the check to run inside the sandbox")
		} else if !strings.HasPrefix(h.Command[0], "/") {
			v.add(a.File, "health.command[0]", fmt.Sprintf("%q: must be an absolute path inside the sandbox", h.Command[0]))
		}
		if h.Interval != nil {
			if h.Interval.Duration < time.Second {
				v.add(a.File, "health.interval", "at least 1s")
			}
			hs.Interval = acapi.Duration(h.Interval.Duration)
		}
		if h.Timeout != nil {
			if h.Timeout.Duration <= 0 {
				v.add(a.File, "health.timeout", "must be positive")
			}
			hs.Timeout = acapi.Duration(h.Timeout.Duration)
		}
		if h.Retries != nil {
			if *h.Retries < 1 {
				v.add(a.File, "health.retries", "at least 1")
			}
			hs.Retries = *h.Retries
		}
		s.Health = hs
	}
	if a.Limits.MemoryMax != "" {
		n, err := parseBytes(a.Limits.MemoryMax)
		if err != nil {
			v.add(a.File, "limits.memory_max", err.Error())
		}
		s.MemoryMax = n
	}
	if a.Limits.CPUQuota != "" {
		p, err := parsePercent(a.Limits.CPUQuota)
		if err != nil {
			v.add(a.File, "limits.cpu_quota", err.Error())
		}
		s.CPUQuota = p
	}
	switch a.User {
	case "", "root":
		s.User = a.User
	default:
		v.add(a.File, "user", fmt.Sprintf("%q: \"root\", or leave it out for a dynamic user", a.User))
	}
	if _, err := acapi.CapabilityMask(a.Capabilities); err != nil {
		v.add(a.File, "capabilities", strings.TrimPrefix(err.Error(), "capabilities: "))
	}
	if len(a.Capabilities) > 0 {
		s.Capabilities = a.Capabilities
	}
	s.State = a.State
	a.MaxParallel, a.MinHealthyTime = DefaultMaxParallel, DefaultMinHealthyTime
	if p := a.Update.MaxParallel; p != nil {
		if *p < 1 {
			v.add(a.File, "update.max_parallel", "at least 1")
		}
		a.MaxParallel = *p
	}
	if d := a.Update.MinHealthyTime; d != nil {
		a.MinHealthyTime = d.Duration
	}
	a.HealthyDeadline = DefaultHealthyDeadline
	if d := a.Update.HealthyDeadline; d != nil {
		a.HealthyDeadline = d.Duration
	}
	if a.HealthyDeadline <= a.MinHealthyTime {
		v.add(a.File, "update.healthy_deadline", fmt.Sprintf("%s: longer than min_healthy_time (%s)", a.HealthyDeadline, a.MinHealthyTime))
	}
	if c := a.Update.Canary; c != nil {
		if *c < 0 {
			v.add(a.File, "update.canary", "0 (none) or more")
		}
		a.Canary = *c
	}
	a.AutoRevert = a.Update.AutoRevert
	a.Spec = s
	a.Hash = s.Hash()
}

// parseBytes reads systemd-style sizes: a number with an optional K, M, G
// or T suffix (powers of 1024).
func parseBytes(s string) (uint64, error) {
	mult := uint64(1)
	num := strings.TrimSpace(s)
	if num != "" {
		switch strings.ToUpper(num[len(num)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult > 1 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q: a size like 512M or 2G", s)
	}
	return n * mult, nil
}

func parsePercent(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(s), "%"))
	if err != nil || !strings.HasSuffix(s, "%") || n < 1 || n > acapi.MaxCPUQuota {
		return 0, fmt.Errorf("%q: a percentage of one CPU like 50%% or 200%%", s)
	}
	return n, nil
}

// Matches reports whether the link places its app on node n.
func (l *Link) Matches(n *Node) bool {
	for _, name := range l.Nodes {
		if name == n.Name {
			return true
		}
	}
	if len(l.Selector) == 0 {
		return false
	}
	for k, want := range l.Selector {
		if n.Labels[k] != want {
			return false
		}
	}
	return true
}

// Desired is, per node name, the apps the repository places on it.
func (r *Repo) Desired() map[string]map[string]*App {
	out := make(map[string]map[string]*App, len(r.Nodes))
	// Index nodes by label pair so a selector looks at the nodes that
	// carry its first pair, not at the whole fleet.
	byLabel := map[[2]string][]*Node{}
	for name, n := range r.Nodes {
		out[name] = map[string]*App{}
		for k, v := range n.Labels {
			byLabel[[2]string{k, v}] = append(byLabel[[2]string{k, v}], n)
		}
	}
	for _, l := range r.Links {
		app := r.Apps[l.App]
		for _, name := range l.Nodes {
			out[name][l.App] = app
		}
		for k, v := range l.Selector {
			for _, n := range byLabel[[2]string{k, v}] {
				if l.Matches(n) {
					out[n.Name][l.App] = app
				}
			}
			break
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
