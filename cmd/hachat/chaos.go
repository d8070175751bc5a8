package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hachat/hachat/chaos"
)

const chaosSummary = "Usage: hachat chaos [--state FILE] [--duration 10m] [--faults kill,stop,partition,ucs,restart] [--count N] [--seed N]\n\n" +
	"A nemesis in the spirit of Jepsen. It runs a workload of concurrent chats (customers through\n" +
	"the customer entrypoint, agents through interaction, the supervisor monitoring every chat)\n" +
	"against a demo cluster while it injects random faults into any part of the state file (cores,\n" +
	"ucs, etcd members, control planes, sidecars, webapi, interaction, edges: whatever it lists),\n" +
	"one at a time (--concurrency), and restarts what it killed:\n" +
	"  kill       kill -9, restarted (hachat demo restart) after a random hold\n" +
	"  stop       SIGSTOP, SIGCONT after the hold\n" +
	"  partition  iptables rules (chain HACHAT-CHAOS-<pid>) drop every packet to and from the\n" +
	"             part's ports on loopback for the hold; removed on exit, Ctrl-C included (root)\n" +
	"  ucs        every ucs instance killed for the hold, then restarted\n" +
	"  restart    graceful: SIGTERM, then started again\n" +
	"The same --seed draws the same faults. Without --state it starts a demo itself\n" +
	"(hachat demo --free-ports, its logs in <out>/demo) and stops it at the end; with --state\n" +
	"it attaches to a running demo. At the end it proves every acknowledged message exactly\n" +
	"once, in order, at its index, in every view (customer, agent, supervisor) and in UCS, and\n" +
	"at most one primary per epoch (every core's /status and /metrics sampled every 100ms);\n" +
	"it writes the report (chaos-report.txt, .json) and the latency plot (chaos-report.svg)\n" +
	"into --out, and exits 1 on any violation. Progress: a line per fault, a status line\n" +
	"every 10s. docs/chaos.md has the details."

// runChaos runs `hachat chaos`.
func runChaos(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		State       string        `yaml:"state"`
		Duration    time.Duration `yaml:"duration"`
		Faults      string        `yaml:"faults"`
		Count       int           `yaml:"count"`
		Seed        uint64        `yaml:"seed"`
		Concurrency int           `yaml:"concurrency"`
		Chats       int           `yaml:"chats"`
		ChatMsgs    int           `yaml:"chat-messages"`
		Interval    time.Duration `yaml:"interval"`
		GapMin      time.Duration `yaml:"gap-min"`
		GapMax      time.Duration `yaml:"gap-max"`
		HoldMin     time.Duration `yaml:"hold-min"`
		HoldMax     time.Duration `yaml:"hold-max"`
		Settle      time.Duration `yaml:"settle"`
		Status      time.Duration `yaml:"status"`
		Out         string        `yaml:"out"`
		JSON        bool          `yaml:"json"`
		Targets     string        `yaml:"targets"`
	}
	t := chaos.DefaultTiming()
	o.Duration, o.Faults, o.Concurrency, o.Chats, o.ChatMsgs, o.Interval = 10*time.Minute, "kill,stop,partition,ucs,restart", 1, 4, 300, 100*time.Millisecond
	o.GapMin, o.GapMax, o.HoldMin, o.HoldMax, o.Settle, o.Status = t.GapMin, t.GapMax, t.HoldMin, t.HoldMax, 5*time.Second, 10*time.Second
	o.Seed = uint64(time.Now().UnixNano() % 1_000_000)
	err := parseFlags("chaos", chaosSummary, args, errw, &o, func(fs *flag.FlagSet) {
		fs.StringVar(&o.State, "state", o.State, "state file of a running demo to attach to (default: start a demo on free ports)")
		fs.DurationVar(&o.Duration, "duration", o.Duration, "how long faults are injected (0: until --count faults)")
		fs.StringVar(&o.Faults, "faults", o.Faults, "kinds of faults (comma-separated, or all); a number N means all kinds and --count N")
		fs.IntVar(&o.Count, "count", o.Count, "stop after N faults (0: no limit but --duration)")
		fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the fault schedule (default: random, printed)")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "faults under way at once")
		fs.IntVar(&o.Chats, "chats", o.Chats, "chats at once (each: a customer and an agent sending, the supervisor monitoring)")
		fs.IntVar(&o.ChatMsgs, "chat-messages", o.ChatMsgs, "messages of each side in one chat; then the customer leaves and a new chat starts (-1: one chat for the whole run)")
		fs.DurationVar(&o.Interval, "interval", o.Interval, "pause between one side's messages")
		fs.DurationVar(&o.GapMin, "gap-min", o.GapMin, "shortest quiet time before a fault")
		fs.DurationVar(&o.GapMax, "gap-max", o.GapMax, "longest quiet time before a fault")
		fs.DurationVar(&o.HoldMin, "hold-min", o.HoldMin, "shortest fault (a part down, stopped or cut off)")
		fs.DurationVar(&o.HoldMax, "hold-max", o.HoldMax, "longest fault")
		fs.DurationVar(&o.Settle, "settle", o.Settle, "workload time after the last fault is repaired, before the check")
		fs.DurationVar(&o.Status, "status", o.Status, "period of the status line")
		fs.StringVar(&o.Out, "out", o.Out, "directory of the report and the plot (default .hachat-chaos/seed-N)")
		fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON instead of text")
		fs.StringVar(&o.Targets, "targets", o.Targets, "fault only these parts: names or kinds, comma-separated (default: every part)")
	})
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(o.Faults); err == nil {
		o.Faults, o.Count = "all", n
	}
	kinds, err := chaos.ParseKinds(o.Faults)
	if err != nil {
		usageHint(errw, "hachat chaos", err.Error())
		return errUsage
	}
	if o.Duration <= 0 && o.Count <= 0 {
		usageHint(errw, "hachat chaos", "give --duration or --count")
		return errUsage
	}
	if o.State != "" {
		if _, err := chaos.ReadState(o.State); err != nil {
			return err // before anything is made
		}
	}
	if o.Out == "" {
		o.Out = filepath.Join(".hachat-chaos", fmt.Sprintf("seed-%d", o.Seed))
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	state := o.State
	if state == "" {
		bin, err := os.Executable()
		if err != nil {
			return err
		}
		fmt.Fprintf(errw, "chaos: starting a demo on free ports (logs in %s)\n", filepath.Join(o.Out, "demo"))
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		d, err := chaos.StartDemo(sctx, bin, filepath.Join(o.Out, "demo"))
		cancel()
		if err != nil {
			return err
		}
		defer d.Stop()
		state = d.StatePath
	}
	fmt.Fprintf(errw, "chaos: seed %d (reproduce: --seed %d)\n", o.Seed, o.Seed)
	rep, err := chaos.Run(ctx, chaos.Config{
		StatePath: state, Duration: o.Duration, Count: o.Count, Kinds: kinds, Seed: o.Seed, Concurrency: o.Concurrency,
		Timing: chaos.Timing{GapMin: o.GapMin, GapMax: o.GapMax, HoldMin: o.HoldMin, HoldMax: o.HoldMax},
		Chats:  o.Chats, ChatMessages: o.ChatMsgs, Interval: o.Interval, Settle: o.Settle, Status: o.Status, Targets: splitList(o.Targets),
	}, errw)
	if err != nil {
		return err
	}
	if err := rep.WriteFiles(o.Out); err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := rep.WriteText(out); err != nil {
		return err
	}
	fmt.Fprintf(errw, "chaos: report and plot in %s\n", o.Out)
	if !rep.OK() {
		return chaos.ErrViolations
	}
	return nil
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
