// Command app is the grid app of the real-systemd tests: "serve" prints a
// greeting from its environment and runs until SIGTERM (answering HTTP on
// APP_HTTP when set); "crash" exits 3 at once; "report" prints, on one
// line, what the app sees of itself (argv, environment, identity,
// capabilities, what it may write and which devices it sees), then serves.
package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

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
