// Command app is the grid app of the real-systemd tests: "serve" prints a
// greeting from its environment and runs until SIGTERM (answering HTTP on
// APP_HTTP when set); "crash" exits 3 at once; "report" prints, on one
// line, what the app sees of itself (argv, environment, identity,
// capabilities, what it may write and which devices it sees), then serves;
// "read DIR" reads every file under DIR in a loop until SIGTERM, printing
// what it saw once a second (readLoop).
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/g8os/boot/internal/apps/testdata/appreport"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "crash" {
		os.Stderr.WriteString("app: crashing on purpose\n")
		os.Exit(3)
	}
	if len(os.Args) > 1 && os.Args[1] == "report" {
		report()
	}
	if len(os.Args) > 2 && os.Args[1] == "read" {
		readLoop(os.Args[2])
		return
	}
	os.Stdout.WriteString("app: serving " + os.Getenv("APP_GREETING") + "\n")
	if addr := os.Getenv("APP_HTTP"); addr != "" {
		greeting := os.Getenv("APP_GREETING")
		go http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte(greeting + "\n"))
		}))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
}

func report() {
	r := appreport.Report{Args: os.Args, Env: map[string]string{}, UID: os.Getuid(), Writable: map[string]bool{}}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		r.Env[k] = v
	}
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			k, v, _ := strings.Cut(l, ":")
			switch k {
			case "CapEff":
				r.CapEff = strings.TrimSpace(v)
			case "CapBnd":
				r.CapBnd = strings.TrimSpace(v)
			case "NoNewPrivs":
				r.NoNewPrv = strings.TrimSpace(v)
			}
		}
	}
	dirs := []string{"/", "/bin", "/etc", "/tmp", "/var", "/run", "/dev", "/dev/shm", "/proc/sys/kernel"}
	if sd := os.Getenv("STATE_DIRECTORY"); sd != "" {
		dirs = append(dirs, sd)
	}
	for _, d := range dirs {
		f, err := os.CreateTemp(d, ".probe")
		r.Writable[d] = err == nil
		if err == nil {
			f.Close()
			os.Remove(f.Name())
		}
	}
	ents, _ := os.ReadDir("/dev")
	for _, e := range ents {
		r.Devices = append(r.Devices, filepath.Join("/dev", e.Name()))
	}
	b, _ := json.Marshal(r)
	os.Stdout.WriteString(appreport.Prefix + base64.StdEncoding.EncodeToString(b) + "\n")
}

// readLoop is a workload that must not notice its file system being
// restarted under it: it walks dir, opens and reads every file and compares
// it with what the first walk read, and also preads the biggest file, which it keeps open
// for its whole life. Every read first drops the file from the page cache,
// so that each one is a request the file system must answer. Once a second it prints
// "app: reads=N errors=E max_ms=M" (M: the slowest walk so far); each error
// is printed too (the first 100).
func readLoop(dir string) {
	want := map[string][]byte{}
	biggest := ""
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			want[p], err = os.ReadFile(p)
			if len(want[p]) > len(want[biggest]) {
				biggest = p
			}
		}
		return err
	})
	if err != nil || biggest == "" {
		fmt.Printf("app: first read of %s: %v (or no data)\n", dir, err)
		os.Exit(4)
	}
	heldData := want[biggest]
	held, err := os.Open(biggest)
	if err != nil {
		fmt.Printf("app: %v\n", err)
		os.Exit(4)
	}
	fmt.Printf("app: reading %d files in %s\n", len(want), dir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	var reads, errs int
	var maxWalk time.Duration
	fail := func(format string, a ...any) {
		errs++
		if errs <= 100 {
			fmt.Printf("app: read error: "+format+"\n", a...)
		}
	}
	buf := make([]byte, len(heldData))
	report := time.NewTicker(time.Second)
	for {
		select {
		case <-sig:
			fmt.Printf("app: reads=%d errors=%d max_ms=%d (stopping)\n", reads, errs, maxWalk.Milliseconds())
			return
		case <-report.C:
			fmt.Printf("app: reads=%d errors=%d max_ms=%d\n", reads, errs, maxWalk.Milliseconds())
		default:
		}
		start := time.Now()
		seen := 0
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			seen++
			got, err := readUncached(p)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, want[p]) {
				return fmt.Errorf("%s: %d bytes differ from the %d first read", p, len(got), len(want[p]))
			}
			return nil
		})
		if err != nil {
			fail("%v", err)
		} else if seen != len(want) {
			fail("%s: %d files, first walk saw %d", dir, seen, len(want))
		}
		_ = unix.Fadvise(int(held.Fd()), 0, 0, unix.FADV_DONTNEED)
		if n, err := held.ReadAt(buf, 0); err != nil || !bytes.Equal(buf[:n], heldData) {
			fail("pread of the file kept open: %d bytes, %v", n, err)
		}
		reads++
		maxWalk = max(maxWalk, time.Since(start))
		time.Sleep(50 * time.Millisecond)
	}
}

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
