// fsrestartbench measures how long a g8-fs restart leaves a reader of a
// sandbox blocked: a reader reads the sandbox's files in a loop, each
// after dropping it from the page cache (so each read is a FUSE request
// the daemon must answer), while g8-fs is
// killed and started again with its FUSE connection from the fd store, as
// systemd does (testenv.FDStore plays systemd's side). The figure is the
// slowest read in the window around the restart; the baseline is the
// slowest read of the same reader over a window of the same length without
// a restart, just before. Each run is one baseline window and one restart;
// medians over --runs are printed as markdown rows:
// | benchmark | g8 | baseline | ratio | target |
//
// Two restarts per run, both the kill -9 path (the old process gets no
// say): one with the new process started at once, as `systemctl restart`
// starts it, and a crash, with the new process started after --restart-sec
// (bench/fsrestart.sh passes g8-fs.service's RestartSec=), as Restart=always
// does.
//
// Usage: fsrestartbench --g8-fs PATH [--runs 5] [--window 2s] [--restart-sec D]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/tests/testenv"
)

func main() {
	bin := flag.String("g8-fs", "", "the g8-fs binary")
	runs := flag.Int("runs", 5, "baseline windows and restarts, alternated")
	window := flag.Duration("window", 2*time.Second, "length of the baseline window")
	restartSec := flag.Duration("restart-sec", 0, "the unit's RestartSec=: how long after a crash systemd starts g8-fs again")
	flag.Parse()
	if *bin == "" || *runs < 1 {
		fmt.Fprintln(os.Stderr, "usage: fsrestartbench --g8-fs PATH [--runs N] [--window D] [--restart-sec D]")
		os.Exit(2)
	}
	s := testenv.NewScript("fsrestartbench")
	defer s.Close()
	b := setup(s, *bin)
	var base, restart, ready, crash []time.Duration
	for i := 0; i < *runs; i++ {
		base = append(base, b.reader.maxIn(*window))
		r, took := b.restart(s, 0)
		restart, ready = append(restart, r), append(ready, took)
		c, _ := b.restart(s, *restartSec)
		crash = append(crash, c)
		fmt.Fprintf(os.Stderr, "run %d: slowest read %v without a restart, %v across one (new g8-fs ready %v after the kill), %v across a crash\n",
			i+1, base[i], r, took, c)
	}
	if n := b.reader.failures(); n != 0 {
		s.Fatalf("%d reads failed during the restarts: %s", n, b.reader.firstErr())
	}
	mb, mr, my, mc := median(base), median(restart), median(ready), median(crash)
	ratio := func(d time.Duration) string {
		return fmt.Sprintf("%.1fx", float64(d)/float64(max(mb, time.Microsecond)))
	}
	fmt.Printf("| g8-fs restart: slowest read of a reader in a loop (median of %d) | %s | %s (same reader, no restart) | %s | no read fails |\n",
		*runs, ms(mr), ms(mb), ratio(mr))
	fmt.Printf("| g8-fs restart: kill to READY of the new g8-fs (median of %d) | %s | | | |\n", *runs, ms(my))
	fmt.Printf("| g8-fs kill -9, started again after RestartSec=%v: slowest read (median of %d) | %s | %s (same reader, no restart) | %s | no read fails |\n",
		*restartSec, *runs, ms(mc), ms(mb), ratio(mc))
	fmt.Fprintf(os.Stderr, "%d reads, none failed\n", b.reader.count())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

type bench struct {
	bin    string
	args   []string
	store  *testenv.FDStore
	cmd    *exec.Cmd
	done   chan struct{}
	ready  int // READY=1 seen so far
	reader *reader
}

// setup builds a sandbox of 200 small files into a local store, mounts it
// with g8-fs under the fd store and starts the reader.
func setup(s *testenv.Script, bin string) *bench {
	tmp := s.TempDir()
	src := filepath.Join(tmp, "src")
	var files []string
	want := map[string][]byte{}
	for i := 0; i < 200; i++ {
		rel := fmt.Sprintf("d%d/f%03d", i%10, i)
		data := bytes.Repeat([]byte(fmt.Sprintf("file %d\n", i)), 1+i*7)
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(rel)), 0o755); err != nil {
			s.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, rel), data, 0o644); err != nil {
			s.Fatal(err)
		}
		files, want[rel] = append(files, rel), data
	}
	store, flist := filepath.Join(tmp, "store"), filepath.Join(tmp, "app.flist")
	if out, err := exec.Command(bin, "build", "--store", store, "-o", flist, src).CombinedOutput(); err != nil {
		s.Fatalf("g8-fs build: %v: %s", err, out)
	}
	mnt := filepath.Join(tmp, "mnt")
	conf := filepath.Join(tmp, "fs.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[[sandbox]]\nname = \"app\"\nflist = %q\nmountpoint = %q\n", flist, mnt)), 0o644); err != nil {
		s.Fatal(err)
	}
	b := &bench{bin: bin, store: testenv.NewFDStore(s), args: []string{"mount", "--config", conf, "--cache", filepath.Join(tmp, "cache"),
		"--state-dir", filepath.Join(tmp, "run"), "--store", store, "--config-root", filepath.Join(tmp, "etc")}}
	s.Cleanup(func() {
		if b.cmd != nil {
			b.cmd.Process.Kill()
			<-b.done
		}
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	})
	b.start(s)
	b.reader = startReader(s, mnt, files, want)
	return b
}

// start starts g8-fs with what the fd store holds and waits for READY=1.
func (b *bench) start(s *testenv.Script) {
	cmd := b.store.Command(b.bin, b.args...)
	var out testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		s.Fatal(err)
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(b.done)
	b.ready++
	b.store.WaitCount(s, "READY=1", b.ready, 30*time.Second)
	if !slices.Equal(b.store.Names(), []string{"fuse-app"}) {
		s.Fatalf("fd store holds %v, want fuse-app\n%s", b.store.Names(), out.String())
	}
}

// restart kills g8-fs, starts the next one after delay and returns the
// slowest read from the kill until the reader has read every file again,
// and how long the new g8-fs took to be ready.
func (b *bench) restart(s *testenv.Script, delay time.Duration) (slowest, ready time.Duration) {
	from := time.Now()
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	time.Sleep(delay)
	b.start(s)
	ready = time.Since(from)
	n := b.reader.count()
	for b.reader.count() < n+2*len(b.reader.files) {
		time.Sleep(10 * time.Millisecond)
	}
	return b.reader.slowestSince(from), ready
}

// reader reads files in turn, uncached, recording each read's start and
// duration.
type reader struct {
	files []string
	mu    sync.Mutex
	reads []sample
	fails int
	first error
}

type sample struct {
	start time.Time
	took  time.Duration
}

func startReader(s *testenv.Script, mnt string, files []string, want map[string][]byte) *reader {
	r := &reader{files: files}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rel := files[i%len(files)]
			start := time.Now()
			got, err := readUncached(filepath.Join(mnt, rel))
			took := time.Since(start)
			if err == nil && !bytes.Equal(got, want[rel]) {
				err = fmt.Errorf("%s: wrong bytes", rel)
			}
			r.mu.Lock()
			r.reads = append(r.reads, sample{start, took})
			if err != nil {
				r.fails++
				if r.first == nil {
					r.first = err
				}
			}
			r.mu.Unlock()
		}
	}()
	s.Cleanup(func() { close(stop); wg.Wait() })
	// Warm: every file read once (chunks cached) before anything is timed.
	for n := r.count(); r.count() < n+len(files); {
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// readUncached reads a file after dropping its pages from the page cache,
// so that the read is a request g8-fs must answer (a cached read goes on
// through a restart and would measure nothing).
func readUncached(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

func (r *reader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reads)
}

func (r *reader) failures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fails
}

func (r *reader) firstErr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first == nil {
		return ""
	}
	return strings.TrimSpace(r.first.Error())
}

// slowestSince is the longest read that ended after t.
func (r *reader) slowestSince(t time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m time.Duration
	for _, x := range r.reads {
		if x.start.Add(x.took).After(t) {
			m = max(m, x.took)
		}
	}
	return m
}

// maxIn waits d and returns the slowest read that ended within it.
func (r *reader) maxIn(d time.Duration) time.Duration {
	from := time.Now()
	time.Sleep(d)
	return r.slowestSince(from)
}
