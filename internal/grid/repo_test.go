package grid

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// exampleRepo is the repository docs/grid.md shows.
var exampleRepo = map[string]string{
	"README.md": "not an object",
	"nodes/edge-1.toml": `
id = "node-0001"
[labels]
role = "edge"
dc = "ams"
`,
	"nodes/edge-2.toml": `
mac = "52:54:00:AA:BB:02"
labels = { role = "edge", dc = "bru" }
`,
	"nodes/db-1.toml": `
id = "node-0003"
labels = { role = "db" }
`,
	"apps/web.toml": `
flist = "web.flist"
command = ["/bin/httpd", "-f", "-p", "8080"]
restart = "always"
restart_sec = "2s"
[env]
PORT = "8080"
[health]
command = ["/bin/wget", "-q", "-O-", "http://127.0.0.1:8080/"]
interval = "5s"
[limits]
memory_max = "128M"
cpu_quota = "50%"
`,
	"apps/backup.toml": `
flist = "backup.flist"
command = ["/usr/bin/backupd"]
`,
	"links/web-on-edge.toml": `
app = "web"
selector = { role = "edge" }
`,
	"links/backup.toml": `
app = "backup"
nodes = ["db-1", "edge-1"]
`,
}

func writeRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func with(base map[string]string, changes map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range changes {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func TestLoadRepoExample(t *testing.T) {
	r, err := LoadRepo(writeRepo(t, exampleRepo))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Nodes["edge-2"].MAC; got != "52:54:00:aa:bb:02" {
		t.Errorf("mac not normalised: %q", got)
	}
	web := r.Apps["web"].Spec
	if web.Restart != "always" || time.Duration(web.RestartSec) != 2*time.Second ||
		web.MemoryMax != 128<<20 || web.CPUQuota != 50 || web.Env["PORT"] != "8080" {
		t.Errorf("web spec = %+v", web)
	}
	if web.Health == nil || time.Duration(web.Health.Interval) != 5*time.Second ||
		time.Duration(web.Health.Timeout) != DefaultHealthTimeout || web.Health.Retries != DefaultHealthRetries {
		t.Errorf("web health = %+v", web.Health)
	}
	backup := r.Apps["backup"].Spec
	if backup.Restart != DefaultRestart || time.Duration(backup.RestartSec) != DefaultRestartSec || backup.Health != nil {
		t.Errorf("backup defaults = %+v", backup)
	}

	got := map[string]string{}
	for node, apps := range r.Desired() {
		var names []string
		for a := range apps {
			names = append(names, a)
		}
		sort.Strings(names)
		got[node] = strings.Join(names, ",")
	}
	want := map[string]string{"edge-1": "backup,web", "edge-2": "web", "db-1": "backup"}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("desired on %s = %q, want %q", n, got[n], w)
		}
	}
}

func TestLoadRepoInvalid(t *testing.T) {
	for _, tc := range []struct {
		name    string
		changes map[string]string
		file    string
		field   string
		msg     string
	}{
		{"typo in a field", map[string]string{"apps/backup.toml": "flist = \"b\"\ncomand = [\"/x\"]\ncommand = [\"/x\"]\n"},
			"apps/backup.toml", "comand", "unknown field"},
		{"key in another case", map[string]string{"apps/backup.toml": "flist = \"b\"\nCommand = [\"/x\"]\n"},
			"apps/backup.toml", "Command", "case-sensitive"},
		{"nested key in another case", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[limits]\nMemory_Max = \"1G\"\n"},
			"apps/backup.toml", "limits.Memory_Max", "case-sensitive"},
		{"table in another case", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[Health]\ncommand = [\"/x\"]\n"},
			"apps/backup.toml", "Health", "case-sensitive"},
		{"bad user", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\nuser = \"admin\"\n"},
			"apps/backup.toml", "user", "dynamic user"},
		{"unknown capability", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\ncapabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_FLY\"]\n"},
			"apps/backup.toml", "capabilities", "CAP_FLY"},
		{"toml syntax", map[string]string{"apps/backup.toml": "flist = \"b\ncommand = 1\n"},
			"apps/backup.toml", "", "line"},
		{"no flist", map[string]string{"apps/backup.toml": "command = [\"/x\"]\n"},
			"apps/backup.toml", "flist", "missing"},
		{"relative command", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"backupd\"]\n"},
			"apps/backup.toml", "command[0]", "absolute path"},
		{"bad restart", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\nrestart = \"sometimes\"\n"},
			"apps/backup.toml", "restart", "one of"},
		{"bad duration", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\nrestart_sec = \"soon\"\n"},
			"apps/backup.toml", "", "duration"},
		{"bad memory", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[limits]\nmemory_max = \"lots\"\n"},
			"apps/backup.toml", "limits.memory_max", "size"},
		{"bad cpu", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[limits]\ncpu_quota = \"0.5\"\n"},
			"apps/backup.toml", "limits.cpu_quota", "percentage"},
		{"bad env name", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[env]\n\"A-B\" = \"1\"\n"},
			"apps/backup.toml", "env.A-B", "environment"},
		{"health without command", map[string]string{"apps/backup.toml": "flist = \"b\"\ncommand = [\"/x\"]\n[health]\ninterval = \"5s\"\n"},
			"apps/backup.toml", "health.command", "missing"},
		{"bad file name", map[string]string{"apps/Back_up.toml": "flist = \"b\"\ncommand = [\"/x\"]\n"},
			"apps/Back_up.toml", "", "file name"},
		{"node without identity", map[string]string{"nodes/db-1.toml": "labels = { role = \"db\" }\n"},
			"nodes/db-1.toml", "id", "needs id or mac"},
		{"node with both", map[string]string{"nodes/db-1.toml": "id = \"x\"\nmac = \"52:54:00:00:00:01\"\n"},
			"nodes/db-1.toml", "mac", "not both"},
		{"bad mac", map[string]string{"nodes/edge-2.toml": "mac = \"52:54:00\"\n"},
			"nodes/edge-2.toml", "mac", "not a MAC"},
		{"duplicate id", map[string]string{"nodes/db-1.toml": "id = \"node-0001\"\n"},
			"nodes/edge-1.toml", "id", "also the id of nodes/db-1.toml"},
		{"link to a missing app", map[string]string{"links/backup.toml": "app = \"backups\"\nnodes = [\"db-1\"]\n"},
			"links/backup.toml", "app", "apps/backups.toml"},
		{"link to a missing node", map[string]string{"links/backup.toml": "app = \"backup\"\nnodes = [\"db-1\", \"db-9\"]\n"},
			"links/backup.toml", "nodes[1]", "nodes/db-9.toml"},
		{"link to nothing", map[string]string{"links/backup.toml": "app = \"backup\"\n"},
			"links/backup.toml", "nodes", "needs nodes"},
		{"link without app", map[string]string{"links/backup.toml": "nodes = [\"db-1\"]\n"},
			"links/backup.toml", "app", "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := LoadRepo(writeRepo(t, with(exampleRepo, tc.changes)))
			if r != nil {
				t.Fatalf("an invalid repository loaded: %+v", r)
			}
			var re *RepoError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RepoError", err)
			}
			for _, fe := range re.Errors {
				if fe.File == tc.file && fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					if !strings.Contains(err.Error(), tc.file) || !strings.Contains(err.Error(), "nothing applied") {
						t.Errorf("message does not name the file: %v", err)
					}
					return
				}
			}
			t.Fatalf("want %s: %s: ...%s..., got\n%v", tc.file, tc.field, tc.msg, err)
		})
	}
}

func TestLoadRepoReportsEveryProblem(t *testing.T) {
	_, err := LoadRepo(writeRepo(t, with(exampleRepo, map[string]string{
		"apps/backup.toml": "flist = \"\"\ncommand = []\n",
		"nodes/db-1.toml":  "mac = \"zz\"\n",
	})))
	var re *RepoError
	if !errors.As(err, &re) || len(re.Errors) != 3 {
		t.Fatalf("want 3 problems (flist, command, mac), got %v", err)
	}
}

func TestLoadRepoBrokenAppNotReportedTwice(t *testing.T) {
	_, err := LoadRepo(writeRepo(t, with(exampleRepo, map[string]string{"apps/backup.toml": "flist = [\n"})))
	var re *RepoError
	if !errors.As(err, &re) || len(re.Errors) != 1 || re.Errors[0].File != "apps/backup.toml" {
		t.Fatalf("want only the syntax error of apps/backup.toml, got %v", err)
	}
}

func TestLoadRepoMissingDir(t *testing.T) {
	if _, err := LoadRepo(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadRepoEmptyIsValid(t *testing.T) {
	r, err := LoadRepo(t.TempDir())
	if err != nil || len(r.Nodes)+len(r.Apps)+len(r.Links) != 0 {
		t.Fatalf("empty repository: %v %+v", err, r)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{"1": 1, "512K": 512 << 10, "128M": 128 << 20, "2g": 2 << 30, "1T": 1 << 40} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1", "0", "1.5G", "99999999999T"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) accepted", in)
		}
	}
}

func FuzzParseRepo(f *testing.F) {
	for _, name := range []string{"apps/web.toml", "nodes/edge-1.toml", "links/web-on-edge.toml"} {
		f.Add(name, exampleRepo[name])
	}
	f.Add("apps/x.toml", "flist = 1\n[limits]\nmemory_max = \"9999999999999999T\"\n")
	f.Fuzz(func(t *testing.T, name, data string) {
		files := map[string][]byte{}
		for k, v := range exampleRepo {
			files[k] = []byte(v)
		}
		files[name] = []byte(data)
		r, err := ParseRepo("fuzz", files)
		if (r == nil) == (err == nil) {
			t.Fatalf("ParseRepo returned repo %v and error %v", r != nil, err)
		}
		if r != nil {
			for _, a := range r.Apps {
				if len(a.Spec.Command) == 0 || a.Spec.Flist == "" {
					t.Fatalf("valid repo with an app without command or flist: %+v", a.Spec)
				}
			}
			_ = r.Desired()
		}
	})
}
