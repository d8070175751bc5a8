package chatbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// PairsReport is a run of RunCluster with ClusterOptions.Pairs: the bench
// report and where the chats went.
type PairsReport struct {
	Report
	Pairs int `json:"pairs"`
	// PerPair is how many of the sessions each pair's core started.
	PerPair map[string]int `json:"sessions_per_pair"`
	// MaxOverMean is the busiest pair's sessions over the mean.
	MaxOverMean float64 `json:"max_over_mean"`
}

// placedClient counts the pair of every chat it starts (from the id the
// core minted).
type placedClient struct {
	chatpb.ChatClient
	mu      sync.Mutex
	perPair map[string]int
}

func (c *placedClient) StartSession(ctx context.Context, in *chatpb.StartSessionRequest, opts ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	r, err := c.ChatClient.StartSession(ctx, in, opts...)
	if err == nil {
		c.mu.Lock()
		c.perPair[pairs.Of(r.GetAuth().GetSessionId())]++
		c.mu.Unlock()
	}
	return r, err
}

// pairsResult is what runPairsInto learns beyond the Report.
type pairsResult struct {
	perPair map[string]int
}

// RunPairs is RunCluster with copts.Pairs pairs (at least 1): it also
// reports how the chats were spread over the pairs.
func RunPairs(ctx context.Context, copts ClusterOptions, opts Options, progress io.Writer) (PairsReport, error) {
	if copts.Pairs < 1 {
		return PairsReport{}, fmt.Errorf("chatbench: pairs %d: want at least 1", copts.Pairs)
	}
	var res pairsResult
	rep, err := runPairsInto(ctx, copts, opts, progress, &res)
	out := PairsReport{Report: rep, Pairs: copts.Pairs, PerPair: res.perPair}
	if len(res.perPair) > 0 {
		total, busiest := 0, 0
		for _, n := range res.perPair {
			total += n
			busiest = max(busiest, n)
		}
		out.MaxOverMean = float64(busiest) / (float64(total) / float64(copts.Pairs))
	}
	return out, err
}

func runPairs(ctx context.Context, copts ClusterOptions, opts Options, progress io.Writer) (Report, error) {
	return runPairsInto(ctx, copts, opts, progress, &pairsResult{})
}

// runPairsInto starts the mesh stage with copts.Pairs pairs, waits until
// the control plane serves every pair, and runs the bench through a
// proxyless xDS client.
func runPairsInto(ctx context.Context, copts ClusterOptions, opts Options, progress io.Writer, res *pairsResult) (Report, error) {
	bc, err := benchcluster.StartWith(ctx, demo.StageMesh, benchcluster.Options{Pairs: copts.Pairs}, progress,
		"--transcript-auto-save="+strconv.Itoa(copts.AutoSave),
		fmt.Sprintf("--max-sessions=%d", opts.Sessions+100), "--send-rate=100000", "--send-burst=100000")
	if err != nil {
		return Report{}, err
	}
	defer bc.Stop()
	opts.ServiceToken = benchcluster.ServiceToken
	if err := waitPairsServing(ctx, "http://"+bc.Layout.Addrs.XDSHTTP+xds.PairsPath, copts.Pairs, progress); err != nil {
		return Report{}, err
	}
	var pids []int
	for _, name := range []string{"xds", "xds-b"} {
		pid, err := bc.PID(name)
		if err != nil {
			return Report{}, err
		}
		pids = append(pids, pid)
	}
	for p := 1; p <= copts.Pairs; p++ {
		a, b := demo.PairCoreNames(p)
		for _, name := range []string{a, b} {
			pid, err := bc.PID(name)
			if err != nil {
				return Report{}, err
			}
			pids = append(pids, pid)
		}
	}
	opts.CPU, opts.ClientCPU = ProcessesCPU(pids...), SelfCPU
	boot, err := xds.GRPCBootstrap(xds.BootstrapOptions{XDS: bc.Layout.Addrs.XDSGRPC, Fallback: []string{bc.Layout.Addrs.XDSBGRPC}, NodeID: "bench-chat"})
	if err != nil {
		return Report{}, fmt.Errorf("xds bootstrap: %w", err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		return Report{}, fmt.Errorf("xds resolver: %w", err)
	}
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = []string{"xds:///" + xds.APIListenerName}
	cl, err := chatclient.New(ccfg, telemetry.Discard(), grpc.WithResolvers(rb))
	if err != nil {
		return Report{}, fmt.Errorf("chat client: %w", err)
	}
	defer cl.Close()
	pid, err := bc.PID("core-a")
	if err != nil {
		return Report{}, err
	}
	placed := &placedClient{ChatClient: cl, perPair: map[string]int{}}
	rep, err := Run(ctx, placed, opts, ProcessRSS(pid), progress)
	placed.mu.Lock()
	res.perPair = maps.Clone(placed.perPair)
	placed.mu.Unlock()
	return rep, err
}

// waitPairsServing waits until the control plane at url (GET
// /xds/v1/pairs) publishes n pairs, each serving with a primary.
func waitPairsServing(ctx context.Context, url string, n int, progress io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last string
	for {
		got, err := servingPairs(ctx, url)
		if err == nil && len(got) == n {
			fmt.Fprintf(progress, "control plane serves %d pairs: %s\n", n, strings.Join(got, ", "))
			return nil
		}
		last = fmt.Sprintf("serving %v, err %v", got, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("the control plane does not serve %d pairs after 60s (%s): %w", n, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// servingPairs returns the pairs the control plane publishes as serving.
func servingPairs(ctx context.Context, url string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	var st xds.PairsStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decode %s: %w", url, err)
	}
	var out []string
	for _, p := range st.Pairs {
		if p.State == xds.PairServing && p.Primary != "" {
			out = append(out, p.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}
