// Package benchcluster starts the cluster a benchmark measures: the standard
// plan of package demo (without webapi and interaction, unless a benchmark
// drives them), as real processes on free loopback ports in a temporary
// directory.
package benchcluster

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/hachat/hachat/demo"
)

// Tokens of a bench cluster.
const (
	ServiceToken = "bench-service-token"
	AdminToken   = "bench-admin-token"
)

// Cluster is a running bench cluster.
type Cluster struct {
	*demo.Supervisor
	// Layout says where every part listens.
	Layout demo.Layout
}

// Start starts the parts of stage (without webapi and interaction); every
// core gets coreArgs after its defaults. progress receives the start story.
// Stop the cluster with Stop; its logs stay in Dir().
func Start(ctx context.Context, stage demo.Stage, progress io.Writer, coreArgs ...string) (*Cluster, error) {
	return start(ctx, stage, progress, []string{"webapi", "interaction"}, coreArgs)
}

// StartWhole is Start with every part of stage, webapi and interaction
// included: for benchmarks that drive the customer and agent APIs.
func StartWhole(ctx context.Context, stage demo.Stage, progress io.Writer, coreArgs ...string) (*Cluster, error) {
	return start(ctx, stage, progress, nil, coreArgs)
}

func start(ctx context.Context, stage demo.Stage, progress io.Writer, without, coreArgs []string) (*Cluster, error) {
	addrs, err := demo.FreeAddrs()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hachat-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	layout := demo.Layout{Addrs: addrs, Stage: stage, DataDir: dir, CoreArgs: coreArgs,
		ServiceToken: ServiceToken, AdminToken: AdminToken}
	plan := demo.StandardPlan(layout).Without(without...)
	sup, err := demo.Start(ctx, plan, demo.Options{Dir: dir, Progress: progress})
	if err != nil {
		return nil, fmt.Errorf("start bench cluster (logs in %s): %w", dir, err)
	}
	return &Cluster{Supervisor: sup, Layout: layout}, nil
}
