// Command catalog prints the journal catalog of every g8 MESSAGE_ID
// (`make catalog` writes it to packaging/g8os.catalog).
package main

import (
	"fmt"

	"github.com/g8os/boot/internal/sd"
)

func main() { fmt.Print(sd.Catalog()) }
