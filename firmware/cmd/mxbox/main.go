// Command mxbox is the single binary of the mxbox appliance; like busybox it
// picks a subcommand from its arguments. main only parses and wires: the work
// lives in the firmware packages.
package main

import (
	"fmt"
	"os"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: mxbox <command> [arguments]

commands:
  serve [-config FILE]         run the daemon (no -config: embedded development defaults)
  config check FILE            validate a config file (exit 1 with the errors)
  config default               print the default config with a comment per key
  queue list [-config FILE] [--json]
                               list queued mail (through the daemon, or from the spool when it is stopped)
  version                      print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	args := os.Args[2:]
	var code int
	switch os.Args[1] {
	case "serve":
		code = cmdServe(args)
	case "config":
		code = cmdConfig(args)
	case "queue":
		code = cmdQueue(args)
	case "version", "-version", "--version":
		fmt.Println("mxbox", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "mxbox: unknown command %q\n\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}
