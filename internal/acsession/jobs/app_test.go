package jobs

import (
	"context"
	"strings"
	"testing"

	"github.com/g8os/boot/internal/acapi"
)

// The app kinds refuse bad args before touching systemd; internal/apps
// tests the runner they wrap, the e2e harness the whole path on systemd.
func TestAppJobsRejectBadArgs(t *testing.T) {
	cases := []struct {
		name string
		job  acapi.Job
		want string
	}{
		{"install without spec", job("a1", acapi.JobAppInstall, `{}`, 0), "name"},
		{"install relative command", job("a2", acapi.JobAppInstall,
			`{"spec": {"name": "web", "flist": "w", "command": ["httpd"], "restart": "no"}}`, 0), "command"},
		{"install bad restart", job("a3", acapi.JobAppInstall,
			`{"spec": {"name": "web", "flist": "w", "command": ["/httpd"], "restart": "maybe"}}`, 0), "restart"},
		{"start path name", job("a4", acapi.JobAppStart, `{"name": "../../etc"}`, 0), "not an app name"},
		{"remove unknown field", job("a5", acapi.JobAppRemove, `{"name": "web", "force": true}`, 0), `unknown field "force"`},
		{"logs option smuggling", job("a6", acapi.JobAppLogs, `{"name": "--since=x"}`, 0), "not an app name"},
		{"show option smuggling", job("a8", acapi.JobAppShow, `{"name": "--offline=true"}`, 0), "not an app name"},
		{"install unknown capability", job("a9", acapi.JobAppInstall,
			`{"spec": {"name": "web", "flist": "w", "command": ["/httpd"], "restart": "no", "capabilities": ["CAP_ALL"]}}`, 0), "CAP_ALL"},
		{"install user other than root", job("a10", acapi.JobAppInstall,
			`{"spec": {"name": "web", "flist": "w", "command": ["/httpd"], "restart": "no", "user": "admin"}}`, 0), "user"},
		{"logs too many lines", job("a7", acapi.JobAppLogs, `{"name": "web", "lines": 1000000}`, 0), "lines"},
	}
	e := newExecutor(t, t.TempDir())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _ = e.Submit(context.Background(), c.job)
			r := result(t, e, c.job.ID)
			if r.State != acapi.JobRejected || !strings.Contains(r.Error, c.want) {
				t.Fatalf("got %s %q, want rejected mentioning %q", r.State, r.Error, c.want)
			}
		})
	}
}
