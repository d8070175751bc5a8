// Command hachat runs every part of a hachat cluster: one subcommand per part,
// plus demo (the whole cluster on this machine), ctl (status, switchover) and
// bench. main only parses flags and wires packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one hachat subcommand.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, out io.Writer, errw io.Writer) error
}

func commands() []command {
	return []command{
		{"core", "run a chat core (primary or backup)", runCore},
		{"ucs", "run ucsmock, the UCS stand-in that stores transcripts", runUCS},
		{"webapi", "run the Web API Server (customer chat API, Chat HA web sample)", runWebAPI},
		{"interaction", "run the Interaction Server (agent queue, agent desktop)", runInteraction},
		{"xds", "run the xDS control plane (or: xds envoy-bootstrap)", runXDS},
		{"proxy", "run a sidecar proxy steered by the xDS control plane", runProxy},
		{"witness", "run a membership witness (a gossip member that only votes)", runWitness},
		{"coord", "run a member of the coordination cluster (embedded etcd: epochs, leases)", runCoord},
		{"accounts", "manage the Interaction Server's built-in accounts: add, remove, list", runAccounts},
		{"demo", "run the whole cluster on this machine, each part its own process", runDemo},
		{"ctl", "cluster control: status, switchover", runCtl},
		{"certs", "workload certificates for mTLS: init, issue, list", runCerts},
		{"bench", "benchmarks: chat, failover, proxy, soak", runBench},
		{"chaos", "a nemesis: chats under random faults of every part, checked at the end", runChaos},
		{"version", "print the version, commit and Go version (also: hachat --version)", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "hachat: a high-availability chat server for contact centres.\n\nUsage: hachat <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nEvery command takes --help, and --config FILE (YAML, keys as the flag names;\nchat core options keep their Genesys names, e.g. transcript-auto-save).\n")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, out, errw io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(out)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = []string{"version"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], out, errw)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(errw, "hachat %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(errw, "hachat: unknown command %q\n\n", args[0])
	usage(errw)
	return 2
}
