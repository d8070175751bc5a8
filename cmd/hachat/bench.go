package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/bench/chatbench"
	"github.com/hachat/hachat/bench/failoverbench"
	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/clusterctl"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/telemetry"
)

const benchSummary = `Benchmarks; each starts its own cluster of real processes on free loopback
ports (in a temporary directory) unless told to use a running one.

  hachat bench chat      N sessions, messages/s, send-to-deliver p50/p99, memory per session
  hachat bench failover  kill -9 failover gap and switchover pause, p50/p99/max over --trials
  hachat bench proxy     added latency and throughput: direct vs hachat sidecar vs HAProxy
  hachat bench soak      whole cluster under steady chat load for --duration, then a drain:
                         every part's RSS, Go heap, goroutines and fds over time (CSV, PNG)`

func runBench(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(errw, benchSummary)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	switch args[0] {
	case "chat":
		return runBenchChat(ctx, args[1:], out, errw)
	case "failover":
		return runBenchFailover(ctx, args[1:], out, errw)
	case "proxy":
		return runBenchProxy(ctx, args[1:], out, errw)
	case "soak":
		return runBenchSoak(ctx, args[1:], out, errw)
	case "echo-server": // hidden: an upstream stand-in of bench proxy
		return runBenchEchoServer(ctx, args[1:], out, errw)
	case "proxy-sidecar": // hidden: the sidecar under test of bench proxy
		return runBenchProxySidecar(ctx, args[1:], out, errw)
	default:
		return benchMore(ctx, args, out, errw)
	}
}

func runBenchChat(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Sessions     int    `yaml:"sessions"`
		Messages     int    `yaml:"messages"`
		Concurrency  int    `yaml:"concurrency"`
		Pair         bool   `yaml:"pair"`
		Core         string `yaml:"core"`
		ServiceToken string `yaml:"service-token"`
		AutoSave     int    `yaml:"transcript-auto-save"`
	}
	o.Sessions, o.Messages, o.Concurrency, o.Pair, o.AutoSave = 1000, 20000, 64, true, 1
	err := parseFlags("bench chat", "Measure one chat core pair: messages/s, send-to-deliver latency, memory per session.", args, errw, &o, func(fs *flag.FlagSet) {
		fs.IntVar(&o.Sessions, "sessions", o.Sessions, "live sessions")
		fs.IntVar(&o.Messages, "messages", o.Messages, "customer messages to send in all")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent senders")
		fs.BoolVar(&o.Pair, "pair", o.Pair, "run a primary and a backup (synchronous replication); false: one core")
		fs.StringVar(&o.Core, "core", o.Core, "bench a running cluster at these gRPC addresses instead of starting one")
		fs.StringVar(&o.ServiceToken, "service-token", o.ServiceToken, "service token of the running cluster (with --core)")
		fs.IntVar(&o.AutoSave, "transcript-auto-save", o.AutoSave, "transcript-auto-save of the started cores")
	})
	if err != nil {
		return err
	}
	targets := strings.Split(o.Core, ",")
	var mem chatbench.MemoryProbe
	if o.Core == "" {
		stage := demo.StageSingle
		if o.Pair {
			stage = demo.StagePair
		}
		cl, err := benchcluster.Start(ctx, stage, errw, "--transcript-auto-save="+strconv.Itoa(o.AutoSave),
			fmt.Sprintf("--max-sessions=%d", o.Sessions+100), "--send-rate=100000", "--send-burst=100000")
		if err != nil {
			return err
		}
		defer cl.Stop()
		o.ServiceToken = benchcluster.ServiceToken
		targets = []string{cl.Layout.Addrs.CoreAGRPC}
		if o.Pair {
			targets = append(targets, cl.Layout.Addrs.CoreBGRPC)
		}
		pid, err := cl.PID("core-a")
		if err != nil {
			return err
		}
		mem = chatbench.ProcessRSS(pid)
	}
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = targets
	cl, err := chatclient.New(ccfg, telemetry.Discard())
	if err != nil {
		return err
	}
	defer cl.Close()
	rep, err := chatbench.Run(ctx, cl, chatbench.Options{Sessions: o.Sessions, Messages: o.Messages,
		Concurrency: o.Concurrency, ServiceToken: o.ServiceToken}, mem, errw)
	if err != nil {
		return err
	}
	mode := "one core"
	if o.Pair {
		mode = "primary + backup, synchronous replication"
	}
	fmt.Fprintf(out, "hachat bench chat: %s, transcript-auto-save=%d\n%s\n", mode, o.AutoSave, rep)
	return nil
}

func runBenchFailover(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Trials         int  `yaml:"trials"`
		SkipSwitchover bool `yaml:"skip-switchover"`
		Sidecar        bool `yaml:"sidecar"`
		Silent         bool `yaml:"silent"`
		TLS            bool `yaml:"tls"`
	}
	o.Trials = 5
	err := parseFlags("bench failover", "Measure the kill -9 failover gap and the switchover pause of a primary/backup pair.", args, errw, &o, func(fs *flag.FlagSet) {
		fs.IntVar(&o.Trials, "trials", o.Trials, "trials of each kind")
		fs.BoolVar(&o.SkipSwitchover, "skip-switchover", o.SkipSwitchover, "measure kill -9 only")
		fs.BoolVar(&o.Silent, "silent", o.Silent, "also SIGSTOP the primary (detected by gossip), then SIGCONT it")
		fs.BoolVar(&o.Sidecar, "sidecar", o.Sidecar, "go through a sidecar steered by the xDS control plane (the client knows no core)")
		fs.BoolVar(&o.TLS, "tls", o.TLS, "mTLS on every hop (the gap then includes a handshake with the new primary)")
	})
	if err != nil {
		return err
	}
	// The customer sends every few milliseconds: lift the per-participant rate limit.
	stage, path := demo.StagePair, "clients given both cores"
	if o.Sidecar {
		stage, path = demo.StageMesh, "through a sidecar steered by xDS"
	}
	bc, err := benchcluster.StartWith(ctx, stage, benchcluster.Options{TLS: o.TLS}, errw, "--send-rate=100000", "--send-burst=100000")
	if err != nil {
		return err
	}
	defer bc.Stop()
	layout := bc.Layout
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = []string{layout.Addrs.CoreAGRPC, layout.Addrs.CoreBGRPC}
	if o.Sidecar {
		ccfg.Targets = []string{layout.Addrs.SidecarWebAPIListen}
	}
	creds, err := bc.ClientCreds()
	if err != nil {
		return err
	}
	cl, err := chatclient.New(ccfg, telemetry.Discard(), grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer cl.Close()
	rep, err := failoverbench.Run(ctx, cl, bc, failoverbench.Options{
		Trials: o.Trials, AdminToken: benchcluster.AdminToken, ServiceToken: benchcluster.ServiceToken, SkipSwitchover: o.SkipSwitchover, Silent: o.Silent,
		Cores: map[string]string{"core-a": layout.Addrs.CoreAGRPC, "core-b": layout.Addrs.CoreBGRPC},
		Ctl:   clusterctl.Ctl{Creds: creds},
	}, errw)
	security := "plaintext"
	if o.TLS {
		security = "mTLS"
	}
	fmt.Fprintf(out, "hachat bench failover: primary + backup, %s, %s\n%s", path, security, rep)
	return err
}

// benchMore reports an unknown benchmark.
func benchMore(_ context.Context, args []string, _, errw io.Writer) error {
	fmt.Fprintf(errw, "hachat bench: unknown benchmark %q\n\n%s\n", args[0], benchSummary)
	return errUsage
}
