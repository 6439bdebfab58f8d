// Command g8-ac is the reference g8os agent controller; see internal/ac and
// docs/controller.md.
package main

import (
	"os"

	"github.com/g8os/boot/internal/ac"
	"github.com/g8os/boot/internal/cli"
)

func main() { cli.Main(ac.Command(os.Stdout, os.Stderr)) }
