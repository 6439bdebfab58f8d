package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestWriteReadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "g8os")
	in := &Net{Controller: "https://10.0.0.1:8443", Interface: "eth1", Method: "dhcp", Rounds: 2}
	if err := Write(dir, in); err != nil {
		t.Fatal(err)
	}
	var out Net
	if err := Read(dir, &out); err != nil {
		t.Fatal(err)
	}
	if out.Controller != in.Controller || out.Method != "dhcp" || out.Schema != SchemaVersion || out.Phase != "net" || out.PID != os.Getpid() {
		t.Fatalf("round trip: %+v", out)
	}
	for path, want := range map[string]os.FileMode{dir: 0o750 | os.ModeDir, Path(dir, in): 0o640} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
}

func TestReadMissingSaysPhaseHasNotRun(t *testing.T) {
	var u Unlock
	err := Read(t.TempDir(), &u)
	if !errors.Is(err, ErrNotRun) {
		t.Fatalf("got %v, want ErrNotRun", err)
	}
	if want := "unlock"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the phase", err)
	}
}

func TestReadRejectsForeignOrMalformedFiles(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"garbage":      "{not json",
		"other schema": `{"schema": 99, "phase": "net"}`,
		"other phase":  `{"schema": 1, "phase": "unlock"}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "net.json"), []byte(body), 0o640); err != nil {
				t.Fatal(err)
			}
			var n Net
			if err := Read(dir, &n); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// Readers racing concurrent writers must only ever see complete files.
func TestConcurrentWritersNeverExposeTornFiles(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, &ACSession{QueueDepth: -1}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				s := &ACSession{QueueDepth: w*1000 + i, LastError: fmt.Sprintf("%0*d", 2000+i, w)}
				if err := Write(dir, s); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var s ACSession
			if err := Read(dir, &s); err != nil {
				t.Errorf("reader saw a broken file: %v", err)
				return
			}
			if s.QueueDepth >= 0 && len(s.LastError) != 2000+s.QueueDepth%1000 {
				t.Errorf("torn file: depth %d, error length %d", s.QueueDepth, len(s.LastError))
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
}

func TestControllerList(t *testing.T) {
	for _, c := range []struct {
		n    Net
		want []string
	}{
		{Net{}, nil},
		{Net{Controller: "https://a"}, []string{"https://a"}},
		{Net{Controller: "https://b", Controllers: []string{"https://a", "https://b", "https://c"}}, []string{"https://b", "https://a", "https://c"}},
		{Net{Controllers: []string{"https://a", "", "https://a"}}, []string{"https://a"}},
	} {
		if got := c.n.ControllerList(); !slices.Equal(got, c.want) {
			t.Errorf("%+v: ControllerList() = %q, want %q", c.n, got, c.want)
		}
	}
}

func TestFailoverOrder(t *testing.T) {
	n := Net{Controller: "https://b", Controllers: []string{"https://a", "https://b", "https://c"}}
	for failed, want := range map[string][]string{
		"":          {"https://b", "https://a", "https://c"},
		"https://b": {"https://a", "https://c", "https://b"},
		"https://a": {"https://b", "https://c", "https://a"},
		"https://x": {"https://b", "https://a", "https://c"},
	} {
		if got := n.FailoverOrder(failed); !slices.Equal(got, want) {
			t.Errorf("FailoverOrder(%q) = %q, want %q", failed, got, want)
		}
	}
}
