package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/bench/anchor"

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
                         (--pairs N: through N pairs and the per-pair routing, CPU per message)
  hachat bench failover  kill -9 failover gap and switchover pause, p50/p99/max over --trials
  hachat bench proxy     added latency and throughput: direct vs hachat sidecar vs HAProxy
  hachat bench soak      whole cluster under steady chat load for --duration, then a drain:
                         every part's RSS, Go heap, goroutines and fds over time (CSV, PNG)
  hachat bench web       customers through webapi (SSE) and agents through interaction at N chats,
                         and the same load on a bare net/http floor (--floor)
  hachat bench scale     model of many pairs: placement balance, cost of a lost pair, xDS snapshot
                         size and push to many sidecars (real placement, snapshot and xDS code)

Every benchmark takes --json; bench chat --anchor bench/jetstream compares with JetStream.`

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
	case "web":
		return runBenchWeb(ctx, args[1:], out, errw)
	case "soak":
		return runBenchSoak(ctx, args[1:], out, errw)
	case "scale":
		return runBenchScale(ctx, args[1:], out, errw)
	case "scale-sidecars": // hidden: the sidecar process of bench scale
		return runBenchScaleSidecars(ctx, args[1:], out, errw)
	case "echo-server": // hidden: an upstream stand-in of bench proxy
		return runBenchEchoServer(ctx, args[1:], out, errw)
	case "proxy-sidecar": // hidden: the sidecar under test of bench proxy
		return runBenchProxySidecar(ctx, args[1:], out, errw)
	case "web-floor-server": // hidden: the floor server of bench web
		return runBenchWebFloorServer(ctx, args[1:], out, errw)
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
		Anchor       string `yaml:"anchor"`
		Rounds       int    `yaml:"rounds"`
		Pairs        int    `yaml:"pairs"`
		JSON         bool   `yaml:"json"`
		CPUProfile   string `yaml:"cpuprofile"`
	}
	o.Sessions, o.Messages, o.Concurrency, o.Pair, o.AutoSave, o.Rounds = 1000, 20000, 64, true, 1, 1
	err := parseFlags("bench chat", "Measure one chat core pair: messages/s, send-to-deliver latency, memory per session.\n"+
		"With --anchor, also run the JetStream anchor (bench/jetstream) on the same load in the same run,\n"+
		"alternating --rounds times, and report medians and the ratios.", args, errw, &o, func(fs *flag.FlagSet) {
		fs.IntVar(&o.Sessions, "sessions", o.Sessions, "live sessions (the anchor's subjects)")
		fs.IntVar(&o.Messages, "messages", o.Messages, "customer messages to send in all")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent senders (the anchor's publishers)")
		fs.BoolVar(&o.Pair, "pair", o.Pair, "run a primary and a backup (synchronous replication); false: one core")
		fs.StringVar(&o.Core, "core", o.Core, "bench a running cluster at these gRPC addresses instead of starting one")
		fs.StringVar(&o.ServiceToken, "service-token", o.ServiceToken, "service token of the running cluster (with --core)")
		fs.IntVar(&o.AutoSave, "transcript-auto-save", o.AutoSave, "transcript-auto-save of the started cores")
		fs.StringVar(&o.Anchor, "anchor", o.Anchor, "JetStream anchor: its module directory (e.g. bench/jetstream, built once with go) or a prebuilt binary")
		fs.IntVar(&o.Rounds, "rounds", o.Rounds, "alternating rounds of hachat and the anchor (a fresh cluster each); medians are reported")
		fs.IntVar(&o.Pairs, "pairs", o.Pairs, "run N pairs behind the xDS control planes and send every call through the per-pair routing\n"+
			"(a proxyless grpc-go client: new chats placed by the weighted route, later calls by the chat's pair); 0: off")
		fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON")
		fs.StringVar(&o.CPUProfile, "cpuprofile", o.CPUProfile, "write the load generator's own CPU profile (the whole run) to this file\n"+
			"(the started parts serve theirs with HACHAT_PPROF=127.0.0.1:0)")
	})
	if err != nil {
		return err
	}
	if o.CPUProfile != "" {
		stop, err := startCPUProfile(o.CPUProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	opts := chatbench.Options{Sessions: o.Sessions, Messages: o.Messages, Concurrency: o.Concurrency}
	if o.Pairs != 0 {
		return benchChatPairs(ctx, o.Pairs, o.Anchor != "" || o.Core != "", o.AutoSave, opts, out, errw, o.JSON)
	}
	copts := chatbench.ClusterOptions{Pair: o.Pair, AutoSave: o.AutoSave}
	mode := "one core"
	if o.Pair {
		mode = "primary + backup, synchronous replication"
	}
	if o.Anchor != "" {
		if o.Core != "" {
			return usageError(errw, "--anchor starts its own clusters; it cannot be used with --core")
		}
		work, err := os.MkdirTemp("", "hachat-anchor-")
		if err != nil {
			return fmt.Errorf("temp dir: %w", err)
		}
		defer os.RemoveAll(work)
		prog, err := anchor.Prepare(ctx, o.Anchor, work)
		if err != nil {
			return err
		}
		cmp, err := anchor.Compare(ctx, o.Rounds,
			func(ctx context.Context) (chatbench.Report, error) {
				return chatbench.RunCluster(ctx, copts, opts, errw)
			},
			func(ctx context.Context) (anchor.Report, error) {
				return prog.Run(ctx, anchor.Options{Publishers: o.Concurrency, Subjects: o.Sessions, Messages: o.Messages})
			}, errw)
		if err != nil {
			return err
		}
		if o.JSON {
			return writeJSON(out, struct {
				Mode     string `json:"mode"`
				AutoSave int    `json:"transcript_auto_save"`
				anchor.Comparison
			}{mode, o.AutoSave, cmp})
		}
		fmt.Fprintf(out, "hachat bench chat: %s, transcript-auto-save=%d\n", mode, o.AutoSave)
		cmp.WriteText(out)
		return nil
	}
	var rep chatbench.Report
	if o.Core == "" {
		rep, err = chatbench.RunCluster(ctx, copts, opts, errw)
	} else {
		ccfg := chatclient.DefaultConfig()
		ccfg.Targets = strings.Split(o.Core, ",")
		cl, cerr := chatclient.New(ccfg, telemetry.Discard())
		if cerr != nil {
			return cerr
		}
		defer cl.Close()
		opts.ServiceToken = o.ServiceToken
		rep, err = chatbench.Run(ctx, cl, opts, nil, errw)
	}
	if err != nil {
		return err
	}
	if o.JSON {
		return writeJSON(out, struct {
			Mode     string `json:"mode"`
			AutoSave int    `json:"transcript_auto_save"`
			chatbench.Report
		}{mode, o.AutoSave, rep})
	}
	fmt.Fprintf(out, "hachat bench chat: %s, transcript-auto-save=%d\n%s\n", mode, o.AutoSave, rep)
	return nil
}

// startCPUProfile profiles this process into path until the returned stop
// is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeJSON prints v as indented JSON: the --json report of a bench.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func runBenchFailover(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Trials         int    `yaml:"trials"`
		SkipSwitchover bool   `yaml:"skip-switchover"`
		Sidecar        bool   `yaml:"sidecar"`
		Silent         bool   `yaml:"silent"`
		TLS            bool   `yaml:"tls"`
		JSON           bool   `yaml:"json"`
		CoordMembers   int    `yaml:"coord-members"`
		Sessions       int    `yaml:"sessions"`
		EtcdDataDir    string `yaml:"etcd-data-dir"`
	}
	o.Trials = 5
	o.CoordMembers = 3
	err := parseFlags("bench failover", "Measure the kill -9 failover gap and the switchover pause of a primary/backup pair.", args, errw, &o, func(fs *flag.FlagSet) {
		fs.IntVar(&o.Trials, "trials", o.Trials, "trials of each kind")
		fs.BoolVar(&o.SkipSwitchover, "skip-switchover", o.SkipSwitchover, "measure kill -9 only")
		fs.BoolVar(&o.Silent, "silent", o.Silent, "also SIGSTOP the primary (detected by gossip), then SIGCONT it")
		fs.BoolVar(&o.Sidecar, "sidecar", o.Sidecar, "go through a sidecar steered by the xDS control plane (the client knows no core)")
		fs.BoolVar(&o.TLS, "tls", o.TLS, "mTLS on every hop (the gap then includes a handshake with the new primary)")
		fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON")
		fs.IntVar(&o.CoordMembers, "coord-members", o.CoordMembers, "coordination members (embedded etcd) holding the epochs; 0: epochs at UCS")
		fs.IntVar(&o.Sessions, "sessions", o.Sessions, "extra live sessions opened before the trials (customer, agent, one message each) and kept\n"+
			"open through all of them, so every resync after a failover or switchover carries them; 0: none\n"+
			"(the cores' flex-disconnect-timeout is then lifted to 1h so the idle customers stay)")
		fs.StringVar(&o.EtcdDataDir, "etcd-data-dir", o.EtcdDataDir, "keep the coordination members' write-ahead logs in a fresh directory under DIR (removed\n"+
			"at the end) instead of the cluster's temporary directory, e.g. /dev/shm to take etcd's fsyncs off the\n"+
			"disk ucs and the logs write to; default: beside the logs")
	})
	if err != nil {
		return err
	}
	fopts := failoverbench.Options{
		Trials: o.Trials, AdminToken: benchcluster.AdminToken, ServiceToken: benchcluster.ServiceToken, SkipSwitchover: o.SkipSwitchover, Silent: o.Silent,
		Sessions: o.Sessions,
	}
	if err := fopts.Validate(); err != nil {
		return usageError(errw, "--%v", err)
	}
	if o.EtcdDataDir != "" && o.CoordMembers == 0 {
		return usageError(errw, "--etcd-data-dir needs coordination members (--coord-members > 0)")
	}
	// The customer sends every few milliseconds: lift the per-participant rate limit.
	coreArgs := []string{"--send-rate=100000", "--send-burst=100000"}
	if o.Sessions > 0 {
		coreArgs = append(coreArgs, "--flex-disconnect-timeout=1h")
	}
	stage, path := demo.StagePair, "clients given both cores"
	if o.Sidecar {
		stage, path = demo.StageMesh, "through a sidecar steered by xDS"
	}
	bc, err := benchcluster.StartWith(ctx, stage, benchcluster.Options{TLS: o.TLS, CoordMembers: o.CoordMembers, CoordDataDir: o.EtcdDataDir}, errw, coreArgs...)
	if err != nil {
		return err
	}
	defer bc.Stop()
	fmt.Fprintf(errw, "cluster logs in %s\n", bc.Dir())
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
	fopts.Cores = map[string]string{"core-a": layout.Addrs.CoreAGRPC, "core-b": layout.Addrs.CoreBGRPC}
	fopts.Ctl = clusterctl.Ctl{Creds: creds}
	rep, err := failoverbench.Run(ctx, cl, bc, fopts, errw)
	security := "plaintext"
	if o.TLS {
		security = "mTLS"
	}
	fencing := "epochs at UCS"
	if o.CoordMembers > 0 {
		fencing = fmt.Sprintf("epochs from etcd (%d members)", o.CoordMembers)
		if o.EtcdDataDir != "" {
			fencing = fmt.Sprintf("epochs from etcd (%d members, data under %s)", o.CoordMembers, o.EtcdDataDir)
		}
	}
	if o.JSON {
		if jerr := writeJSON(out, struct {
			Path     string               `json:"path"`
			Security string               `json:"security"`
			Fencing  string               `json:"fencing"`
			Sessions int                  `json:"sessions"`
			Setup    time.Duration        `json:"sessions_setup_ns,omitempty"`
			Live     uint64               `json:"live_sessions_after,omitempty"`
			Gaps     failoverbench.Report `json:"gaps"`
		}{path, security, fencing, rep.Sessions, rep.SetupTime, rep.LiveAfter, rep}); jerr != nil && err == nil {
			err = jerr
		}
		return err
	}
	fmt.Fprintf(out, "hachat bench failover: primary + backup, %s, %s, %s\n%s", path, security, fencing, rep)
	return err
}

// benchMore reports an unknown benchmark.
func benchMore(_ context.Context, args []string, _, errw io.Writer) error {
	fmt.Fprintf(errw, "hachat bench: unknown benchmark %q\n\n%s\n", args[0], benchSummary)
	return errUsage
}
