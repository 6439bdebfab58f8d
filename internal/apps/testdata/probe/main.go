// Command probe is a health check for the chroot test: it succeeds when
// /ok exists in its root and APP_MODE is "healthy"; with APP_MODE=uid-N,
// when it runs as user N.
package main

import (
	"os"
	"strconv"
	"strings"
)

func main() {
	if uid, ok := strings.CutPrefix(os.Getenv("APP_MODE"), "uid-"); ok {
		if uid != strconv.Itoa(os.Getuid()) {
			os.Stdout.WriteString("runs as " + strconv.Itoa(os.Getuid()) + "\n")
			os.Exit(1)
		}
		return
	}
	if _, err := os.Stat("/ok"); err != nil || os.Getenv("APP_MODE") != "healthy" {
		os.Stdout.WriteString("not ok\n")
		os.Exit(1)
	}
}
