package hoststat

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The figures come from this machine's /proc: check them against what
// other interfaces say about the same machine.
func TestReadsThisMachine(t *testing.T) {
	bt, err := BootTime()
	if err != nil || !bt.Before(time.Now()) || bt.Before(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("boot time %v, %v", bt, err)
	}
	total, used, err := Memory()
	if err != nil || total == 0 || used == 0 || used > total {
		t.Fatalf("memory %d used of %d, %v", used, total, err)
	}
	if _, err := Load1(); err != nil {
		t.Fatal(err)
	}
	dt, du, err := DiskUsage(t.TempDir())
	if err != nil || dt == 0 || du > dt {
		t.Fatalf("disk %d used of %d, %v", du, dt, err)
	}
	if _, _, err := DiskUsage("/no/such/dir"); err == nil || !strings.Contains(err.Error(), "/no/such/dir") {
		t.Fatalf("a missing path: %v, want an error naming it", err)
	}
	models, cores, threads, err := CPUs()
	if err != nil || len(models) == 0 || cores == 0 || cores > threads || threads < runtime.NumCPU() {
		t.Fatalf("cpus %+v cores %d threads %d (NumCPU %d), %v", models, cores, threads, runtime.NumCPU(), err)
	}
	n := 0
	for _, m := range models {
		n += m.Count
	}
	if n != threads {
		t.Fatalf("models count %d logical CPUs, threads %d", n, threads)
	}
	if rel, mach := Kernel(); rel == "" || mach == "" {
		t.Fatalf("uname: %q %q", rel, mach)
	}
	disks, err := Disks()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if !strings.HasPrefix(d.Device, "/dev/") || d.Mountpoint == "" {
			t.Fatalf("not a block device mount: %+v", d)
		}
	}
	if _, err := os.Stat("/etc/os-release"); err == nil {
		if p, err := Platform(); err != nil || p == "" {
			t.Fatalf("platform %q, %v", p, err)
		}
	}
}

func TestParseOSRelease(t *testing.T) {
	for _, tc := range []struct{ in, id, ver string }{
		{"NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n", "debian", "12"},
		{"ID='arch'\nBUILD_ID=rolling\n", "arch", ""},
		{"ID=\"unterminated\nVERSION_ID=\"1\\\"2\"\n", "", "1\"2"},
		{"  ID=fedora  \n#VERSION_ID=9\nVERSION_ID=\"a\\x1b]52\"\n", "fedora", ""},
		{"", "", ""},
	} {
		id, ver := ParseOSRelease([]byte(tc.in))
		if id != tc.id || ver != tc.ver {
			t.Errorf("%q: got %q %q, want %q %q", tc.in, id, ver, tc.id, tc.ver)
		}
	}
}

// Whatever the file holds, the values are single printable lines.
func FuzzParseOSRelease(f *testing.F) {
	f.Add([]byte("ID=debian\nVERSION_ID=\"12\"\n"))
	f.Add([]byte("ID='x'\nVERSION_ID=\"\\n\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ver := ParseOSRelease(b)
		for _, v := range []string{id, ver} {
			if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				t.Fatalf("control character in %q", v)
			}
		}
	})
}
