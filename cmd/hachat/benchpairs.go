package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/hachat/hachat/bench/chatbench"
	"github.com/hachat/hachat/demo"
)

// benchChatPairs is `hachat bench chat --pairs N`.
func benchChatPairs(ctx context.Context, n int, otherTarget bool, autoSave int, opts chatbench.Options, out, errw io.Writer, asJSON bool) error {
	switch {
	case n < 1 || n > demo.MaxPairs:
		return usageError(errw, "--pairs %d: want 1 to %d", n, demo.MaxPairs)
	case otherTarget:
		return usageError(errw, "--pairs starts its own cluster: it cannot be used with --core or --anchor")
	}
	mode := fmt.Sprintf("%d pair(s) behind the xDS control planes, proxyless grpc-go client routed per pair", n)
	rep, err := chatbench.RunPairs(ctx, chatbench.ClusterOptions{Pairs: n, Pair: true, AutoSave: autoSave}, opts, errw)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, struct {
			Mode     string `json:"mode"`
			AutoSave int    `json:"transcript_auto_save"`
			chatbench.PairsReport
		}{mode, autoSave, rep})
	}
	fmt.Fprintf(out, "hachat bench chat: %s, transcript-auto-save=%d\n%s\n", mode, autoSave, rep.Report)
	fmt.Fprintf(out, "sessions per pair  ")
	for _, p := range slices.Sorted(maps.Keys(rep.PerPair)) {
		fmt.Fprintf(out, " %s:%d", p, rep.PerPair[p])
	}
	fmt.Fprintf(out, "   (max/mean %.2f)\n", rep.MaxOverMean)
	if rep.CPUPerMessage > 0 {
		fmt.Fprintf(out, "%d pair(s): %.0f messages/s, %v CPU per message in the cores and control planes\n",
			n, rep.PerSecond, rep.CPUPerMessage.Round(100*time.Nanosecond))
	}
	return nil
}
