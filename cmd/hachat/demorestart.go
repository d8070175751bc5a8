package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hachat/hachat/demo"
)

const demoRestartSummary = "NAME is a part of the demo's table (core-a, core-b, webapi, ...).\n" +
	"Start a part of a running demo again, as an operator would: the demo's supervisor\n" +
	"starts it with the flags it was first started with, records its new pid in the state\n" +
	"file, and this command exits 0 once the part answers its health check. A core killed\n" +
	"while it was primary comes back as backup of the core that took over.\n" +
	"A part that is running is left alone (exit status 1) unless --force: then it is stopped\n" +
	"as Ctrl-C stops it (SIGTERM, so a primary hands over to its backup first) and started again."

// runDemoRestart runs `hachat demo restart NAME [--state FILE] [--force]`.
func runDemoRestart(ctx context.Context, args []string, out, errw io.Writer) error {
	var opts struct {
		State   string        `yaml:"state"`
		Force   bool          `yaml:"force"`
		Timeout time.Duration `yaml:"timeout"`
	}
	opts.State = ".hachat/demo.json"
	opts.Timeout = time.Minute
	name, rest := splitName(args, "--state", "-state", "--timeout", "-timeout", "--config", "-config")
	err := parseFlags("demo restart", demoRestartSummary,
		rest, errw, &opts, func(fs *flag.FlagSet) {
			fs.StringVar(&opts.State, "state", opts.State, "state file of the running demo")
			fs.BoolVar(&opts.Force, "force", opts.Force, "restart the part even if it runs: stop it (SIGTERM) first")
			fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "how long to wait for the part to be ready")
		})
	if err != nil {
		return err
	}
	if name == "" {
		usageHint(errw, "hachat demo restart", "which part? usage: hachat demo restart NAME [--state FILE] (names: the state file's parts, e.g. core-a)")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	res, err := demo.RequestRestart(ctx, opts.State, name, demo.RestartOptions{Force: opts.Force})
	if err != nil {
		return err
	}
	was := ""
	if res.OldPID > 0 {
		was = fmt.Sprintf(" (was pid %d, %s)", res.OldPID, res.OldState)
	}
	fmt.Fprintf(out, "%s running again: pid %d%s, ready in %s\n", name, res.Part.PID, was, res.Took.Round(time.Millisecond))
	if res.Part.Kind == demo.KindCore {
		fmt.Fprintf(out, "roles now: hachat ctl status --state %s\n", opts.State)
	}
	return nil
}

const demoAddPairSummary = `Add a primary/backup pair of cores to the running demo.

  hachat demo add-pair [--state FILE] [--timeout DURATION]

The demo starts core-<P>a (primary) and core-<P>b (backup) of the next pair P:
they join the gossip, claim their pair's own epoch, and the control planes
start placing new chats on the pair (hachat ctl pairs shows it). Nothing else
restarts.`

// runDemoAddPair asks the running demo to start the next pair.
func runDemoAddPair(ctx context.Context, args []string, out, errw io.Writer) error {
	var opts struct {
		State   string        `yaml:"state"`
		Timeout time.Duration `yaml:"timeout"`
	}
	opts.State = ".hachat/demo.json"
	opts.Timeout = time.Minute
	err := parseFlags("demo add-pair", demoAddPairSummary, args, errw, &opts, func(fs *flag.FlagSet) {
		fs.StringVar(&opts.State, "state", opts.State, "state file of the running demo")
		fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "how long to wait for the pair's cores to be ready")
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	res, err := demo.RequestAddPair(ctx, opts.State)
	if err != nil {
		return err
	}
	for _, p := range res.Parts {
		fmt.Fprintf(out, "%s (pair %s, %s) running: pid %d\n", p.Name, p.Pair, p.Role, p.PID)
	}
	fmt.Fprintf(out, "pair %s joined in %s; placement: hachat ctl pairs --state %s\n", res.Pair, res.Took.Round(time.Millisecond), opts.State)
	return nil
}

// splitName takes the first argument that is neither a flag nor the value
// of one of valued (flags given as "--flag value") out of args.
func splitName(args []string, valued ...string) (name string, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			for _, v := range valued {
				if a == v && i+1 < len(args) {
					i++
					rest = append(rest, args[i])
				}
			}
			continue
		}
		if name == "" {
			name = a
			continue
		}
		rest = append(rest, a) // a second name: parseArgs reports it
	}
	return name, rest
}
