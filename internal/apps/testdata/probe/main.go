// Command probe is a health check for the chroot test: it succeeds when
// /ok exists in its root and APP_MODE is "healthy".
package main

import "os"

func main() {
	if _, err := os.Stat("/ok"); err != nil || os.Getenv("APP_MODE") != "healthy" {
		os.Stdout.WriteString("not ok\n")
		os.Exit(1)
	}
}
