package chatbench

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/telemetry"
)

// ClusterOptions shape the cluster RunCluster starts.
type ClusterOptions struct {
	// Pair runs a primary and a backup (synchronous replication); false: one core.
	Pair bool
	// AutoSave is the cores' transcript-auto-save (0, 1 or 2).
	AutoSave int
	// Pairs, when set, runs that many pairs of cores behind the mesh's
	// control planes (xds and xds-b) and sends every call through the
	// per-pair routing: a proxyless grpc-go client driven only by xDS, new
	// chats placed by the weighted route, every later call routed by the
	// chat's pair (x-hachat-pair, from the chat id). Pair is then implied.
	Pairs int
}

// RunCluster starts a bench cluster of real processes (one core, or a pair),
// runs the bench against it with a chat client given the cores' addresses,
// measures the primary's memory, and stops the cluster.
func RunCluster(ctx context.Context, copts ClusterOptions, opts Options, progress io.Writer) (Report, error) {
	opts.defaults()
	if copts.Pairs > 0 {
		return runPairs(ctx, copts, opts, progress)
	}
	stage := demo.StageSingle
	if copts.Pair {
		stage = demo.StagePair
	}
	bc, err := benchcluster.Start(ctx, stage, progress, "--transcript-auto-save="+strconv.Itoa(copts.AutoSave),
		fmt.Sprintf("--max-sessions=%d", opts.Sessions+100), "--send-rate=100000", "--send-burst=100000")
	if err != nil {
		return Report{}, err
	}
	defer bc.Stop()
	opts.ServiceToken = benchcluster.ServiceToken
	targets := []string{bc.Layout.Addrs.CoreAGRPC}
	if copts.Pair {
		targets = append(targets, bc.Layout.Addrs.CoreBGRPC)
	}
	pid, err := bc.PID("core-a")
	if err != nil {
		return Report{}, err
	}
	pids := []int{pid}
	if copts.Pair {
		b, err := bc.PID("core-b")
		if err != nil {
			return Report{}, err
		}
		pids = append(pids, b)
	}
	// CPU per message: the cores' and this load generator's, which the
	// machine's other load disturbs less than messages/s.
	if opts.CPU == nil {
		opts.CPU, opts.ClientCPU = ProcessesCPU(pids...), SelfCPU
	}
	// UCS's CPU is the transcript saves' cost (asynchronous, so not in
	// the cores' figure), on the same cores.
	if opts.StoreCPU == nil {
		if u, err := bc.PID("ucs"); err == nil {
			opts.StoreCPU = ProcessesCPU(u)
		}
	}
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = targets
	cl, err := chatclient.New(ccfg, telemetry.Discard())
	if err != nil {
		return Report{}, fmt.Errorf("chat client: %w", err)
	}
	defer cl.Close()
	return Run(ctx, cl, opts, ProcessRSS(pid), progress)
}
