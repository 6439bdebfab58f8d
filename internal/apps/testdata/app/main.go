// Command app is the grid app of the real-systemd tests: "serve" prints a
// greeting from its environment and runs until SIGTERM; "crash" exits 3
// at once.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "crash" {
		os.Stderr.WriteString("app: crashing on purpose\n")
		os.Exit(3)
	}
	os.Stdout.WriteString("app: serving " + os.Getenv("APP_GREETING") + "\n")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
}
