// Package benchcluster starts the cluster a benchmark measures: the standard
// plan of package demo (without webapi and interaction unless asked for), as
// real processes on free loopback ports in a temporary directory.
package benchcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/mtls"
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
	// coordDir is the directory made under Options.CoordDataDir ("" without
	// it); Stop removes it.
	coordDir string
	// Accounts are interaction's accounts with their passwords (Options.Whole).
	Accounts []demo.AccountCredential
}

// Start starts the parts of stage (without webapi and interaction); every
// core gets coreArgs after its defaults. progress receives the start story.
// Stop the cluster with Stop; its logs stay in Dir().
func Start(ctx context.Context, stage demo.Stage, progress io.Writer, coreArgs ...string) (*Cluster, error) {
	return StartWith(ctx, stage, Options{}, progress, coreArgs...)
}

// Options shape a bench cluster beyond its stage.
type Options struct {
	// TLS runs the cluster with mTLS on every hop (certificates in the
	// cluster's directory); the bench client then presents the operator's
	// certificate (Cluster.ClientCreds).
	TLS bool
	// Whole keeps webapi and interaction in the cluster (benchmarks that
	// drive the customer and agent APIs); webapi's chat-start limits are
	// lifted (one load generator on one address starts every chat).
	Whole bool
	// Accounts are interaction's accounts (with Whole); their passwords are
	// in Cluster.Accounts.
	Accounts []demo.AccountSpec
	// PartArgs are extra flags by part name, after the plan's own (and
	// after the lifted limits of Whole).
	PartArgs map[string][]string
	// CoordMembers runs that many coordination members (embedded etcd)
	// holding the cores' epochs (0: epochs at UCS).
	CoordMembers int
	// CoordDataDir, when set, puts the coordination members' data (their
	// write-ahead logs) in a fresh directory under it instead of the
	// cluster's directory, e.g. on another filesystem than ucs's database
	// (/dev/shm: a tmpfs). It must be a writable directory; Stop removes
	// what the cluster made in it (the logs stay in Dir()).
	CoordDataDir string
	// Pairs runs that many pairs of cores (demo's Layout.Pairs; 0 or 1:
	// one pair, as the stage has it). With Pairs set and without Whole the
	// plan keeps no sidecar either: the bench client reaches the cores
	// proxyless, driven by the control planes' xDS.
	Pairs int
}

// StartWith is Start with options.
func StartWith(ctx context.Context, stage demo.Stage, opts Options, progress io.Writer, coreArgs ...string) (*Cluster, error) {
	addrs, err := demo.FreeAddrs()
	if err != nil {
		return nil, err
	}
	var coordDir string
	if opts.CoordDataDir != "" {
		if coordDir, err = os.MkdirTemp(opts.CoordDataDir, "hachat-bench-coord-"); err != nil {
			return nil, fmt.Errorf("coordination data dir %s: %w", opts.CoordDataDir, err)
		}
	}
	started := false
	defer func() {
		if !started {
			os.RemoveAll(coordDir) // "" (none made): nothing
		}
	}()
	dir, err := os.MkdirTemp("", "hachat-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	layout := demo.Layout{Addrs: addrs, Stage: stage, DataDir: dir, CoreArgs: coreArgs,
		ServiceToken: ServiceToken, AdminToken: AdminToken, CoordMembers: opts.CoordMembers, CoordDataDir: coordDir, Pairs: opts.Pairs}
	if opts.TLS {
		layout.CertDir = filepath.Join(dir, "certs")
	}
	plan := demo.StandardPlan(layout)
	var accounts []demo.AccountCredential
	if opts.Whole {
		plan = plan.WithKind(demo.KindWebAPI, "--client-start-rate=1000000", "--client-start-burst=1000000",
			"--start-rate=1000000", "--start-burst=1000000")
		if accounts, err = demo.WriteAccounts(layout.AccountsFile(), opts.Accounts); err != nil {
			return nil, err
		}
	} else {
		plan = withoutInstances(plan)
		if opts.Pairs > 0 {
			for _, p := range plan.Parts {
				if p.Kind == demo.KindProxy || p.Kind == demo.KindWebAPI || p.Kind == demo.KindInteraction {
					plan = plan.Without(p.Name)
				}
			}
		}
	}
	for name, args := range opts.PartArgs {
		plan = plan.With(name, args...)
	}
	dopts := demo.Options{Dir: dir, Progress: progress}
	if opts.TLS {
		if err := demo.EnsureCerts(layout.CertDir, plan); err != nil {
			return nil, err
		}
		if dopts.TLS, err = demo.OperatorTLS(layout.CertDir); err != nil {
			return nil, err
		}
	}
	sup, err := demo.Start(ctx, plan, dopts)
	if err != nil {
		return nil, fmt.Errorf("start bench cluster (logs in %s): %w", dir, err)
	}
	started = true
	return &Cluster{Supervisor: sup, Layout: layout, Accounts: accounts, coordDir: coordDir}, nil
}

// Stop stops every part, then removes the stores' data: the coordination
// members' (made under Options.CoordDataDir, or beside the logs) and ucs's
// database. The cluster's directory with the logs stays: without this a run
// left 70-100 MB behind (etcd preallocates its write-ahead log).
func (c *Cluster) Stop() {
	c.Supervisor.Stop()
	os.RemoveAll(c.coordDir) // "" (none made): nothing
	removeData(c.Layout.DataDir)
}

// removeData removes what the parts stored in dir (ucs's database, the
// coordination members' data directories) and leaves everything else, the
// logs among it.
func removeData(dir string) {
	if dir == "" {
		return
	}
	os.Remove(filepath.Join(dir, "ucs.db"))
	members, _ := filepath.Glob(filepath.Join(dir, "etcd-*.etcd"))
	for _, m := range members {
		os.RemoveAll(m)
	}
}

// ClientCreds returns the gRPC transport credentials of a bench client: the
// operator's mTLS certificate when the cluster runs mTLS, else plaintext.
func (c *Cluster) ClientCreds() (credentials.TransportCredentials, error) {
	if c.Layout.CertDir == "" {
		return insecure.NewCredentials(), nil
	}
	src, err := mtls.Load(mtls.FilesIn(c.Layout.CertDir, demo.OperatorName))
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(src.ClientConfig(nil)), nil
}

// withoutInstances drops every instance of webapi and interaction: with
// coordination members the plan runs interaction-2 too (and webapi-2
// behind the edge), which would need the accounts file only Whole writes.
func withoutInstances(plan demo.Plan) demo.Plan {
	var drop []string
	for _, part := range plan.Parts {
		if part.Kind == demo.KindWebAPI || part.Kind == demo.KindInteraction {
			drop = append(drop, part.Name)
		}
	}
	return plan.Without(drop...)
}
