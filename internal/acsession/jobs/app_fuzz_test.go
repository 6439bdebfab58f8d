package jobs

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/apps"
)

// FuzzAppInstallArgs: whatever app.install args a controller sends, the
// node either rejects them as the job's fault or turns them into exactly
// the unit the spec says: its argv as is (never expanded), its variables
// and no others, its restart policy, and the boundary (no new privileges,
// a dynamic user unless it asked for root, only the capabilities it named).
func FuzzAppInstallArgs(f *testing.F) {
	for _, s := range []string{
		`{"spec":{"name":"web","flist":"https://hub/web.flist","command":["/bin/httpd","-f","$HOME"],"restart":"always","restart_sec":"2s"}}`,
		`{"spec":{"name":"db","flist":"x","command":["/bin/db"],"restart":"no","env":{"A":"1","B":"x=y"},"memory_max":1048576,"cpu_quota":150}}`,
		`{"spec":{"name":"vpn","flist":"x","command":["/bin/vpn"],"restart":"on-failure","user":"root","capabilities":["CAP_NET_ADMIN"]}}`,
		`{"spec":{"name":"r","flist":"x","command":["/r"],"restart":"no","user":"root"},"hash":"abc"}`,
		`{"spec":{"name":"q","flist":"x","command":["/q"],"restart":"no","cpu_quota":9223372036854775807}}`,
		`{"spec":{"name":"../x","flist":"x","command":["/q"],"restart":"no"}}`,
		`{"spec":{}, "extra": 1}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	envKey := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	f.Fuzz(func(t *testing.T, data []byte) {
		job := &acapi.Job{ID: "j", Kind: acapi.JobAppInstall, Args: data}
		var a acapi.AppInstallArgs
		if err := DecodeArgs(job, &a); err != nil {
			if !isRejected(err) {
				t.Fatalf("decode error not the job's fault: %v", err)
			}
			return
		}
		s := &a.Spec
		if apps.CheckSpec(s) != nil {
			return
		}
		if !apps.ValidName(s.Name) {
			t.Fatalf("spec name %q accepted", s.Name)
		}
		ps, err := apps.UnitProperties(s, s.Hash(), apps.RootDir("/run/g8os/apps/"+s.Name), nil)
		if err != nil {
			t.Fatalf("a checked spec has no unit: %v", err)
		}
		got := map[string][]any{}
		for _, p := range ps {
			got[p.Name] = append(got[p.Name], p.Value.Value())
		}
		if _, plain := got["ExecStart"]; plain {
			t.Fatal("ExecStart set: systemd would expand $VAR in the argv")
		}
		if ex := got["ExecStartEx"]; len(ex) != 1 || reflect.ValueOf(ex[0]).Len() != 1 {
			t.Fatalf("ExecStartEx = %v", ex)
		} else if c := reflect.ValueOf(ex[0]).Index(0); c.Field(0).String() != s.Command[0] ||
			!reflect.DeepEqual(c.Field(1).Interface(), s.Command) || !reflect.DeepEqual(c.Field(2).Interface(), []string{"no-env-expand"}) {
			t.Fatalf("ExecStartEx = %v, want %q as is, no-env-expand", ex, s.Command)
		}
		var wantEnv []string
		for k, v := range s.Env {
			if !envKey.MatchString(k) {
				t.Fatalf("variable %q accepted", k)
			}
			wantEnv = append(wantEnv, k+"="+v)
		}
		sort.Strings(wantEnv)
		if len(wantEnv) == 0 && got["Environment"] != nil || len(wantEnv) > 0 && !reflect.DeepEqual(got["Environment"], []any{wantEnv}) {
			t.Fatalf("Environment = %v, want %v", got["Environment"], wantEnv)
		}
		if r := got["Restart"]; len(r) != 1 || r[0] != s.Restart {
			t.Fatalf("Restart = %v, want %s", r, s.Restart)
		}
		if u := got["RestartUSec"]; len(u) != 1 || u[0] != uint64(time.Duration(s.RestartSec)/time.Microsecond) {
			t.Fatalf("RestartUSec = %v for restart_sec %v", u, s.RestartSec)
		}
		if q := got["CPUQuotaPerSecUSec"]; s.CPUQuota > 0 && (len(q) != 1 || q[0].(uint64)/10000 != uint64(s.CPUQuota)) || s.CPUQuota == 0 && q != nil {
			t.Fatalf("CPUQuotaPerSecUSec = %v for cpu_quota %d%%", q, s.CPUQuota)
		}
		if nnp := got["NoNewPrivileges"]; len(nnp) != 1 || nnp[0] != true {
			t.Fatalf("NoNewPrivileges = %v", nnp)
		}
		dyn := got["DynamicUser"]
		if s.User == "root" && dyn != nil || s.User != "root" && (len(dyn) != 1 || dyn[0] != true) {
			t.Fatalf("user %q: DynamicUser = %v", s.User, dyn)
		}
		mask, _ := acapi.CapabilityMask(s.Capabilities)
		if bs := got["CapabilityBoundingSet"]; !(s.User == "root" && len(s.Capabilities) == 0) && (len(bs) != 1 || bs[0] != mask) {
			t.Fatalf("capabilities %v: CapabilityBoundingSet = %v, want %#x", s.Capabilities, bs, mask)
		}
		if !strings.HasPrefix(fmt.Sprint(got["Description"]), "[g8os grid app "+s.Name+" ") {
			t.Fatalf("Description = %v", got["Description"])
		}
	})
}
