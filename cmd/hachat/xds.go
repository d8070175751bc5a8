package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// xdsFile is the YAML shape of `hachat xds --config`: the control plane,
// gossip and telemetry options side by side, keys as the flag names.
type xdsFile struct {
	// Name is the control plane's node name in the gossip cluster.
	Name      string            `yaml:"name"`
	XDS       xds.Config        `yaml:",inline"`
	Gossip    membership.Config `yaml:",inline"`
	Telemetry telemetry.Config  `yaml:",inline"`
}

// runXDS runs the xDS control plane, or prints a bootstrap for a client.
func runXDS(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "envoy-bootstrap":
			return runEnvoyBootstrap(args[1:], out, errw)
		case "grpc-bootstrap":
			return runGRPCBootstrap(args[1:], out, errw)
		}
	}
	f := xdsFile{Name: "xds", XDS: xds.DefaultConfig(), Gossip: membership.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	f.Gossip.BindAddr = "127.0.0.1:7203"
	err := parseFlags("xds", "Run the xDS control plane: a gossip member (kind xds) that watches the chat cores\n"+
		"and serves sidecars, Envoy and proxyless gRPC clients over ADS, with an admin API.\n"+
		"Also: hachat xds envoy-bootstrap [flags], hachat xds grpc-bootstrap [flags].",
		args, errw, &f, func(fs *flag.FlagSet) {
			fs.StringVar(&f.Name, "name", f.Name, "node name in the gossip cluster (unique)")
			f.XDS.RegisterFlags(fs)
			f.Gossip.RegisterFlags(fs)
			f.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	if err := f.XDS.Validate(); err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, "xds", errw)
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))

	f.Gossip.Name = f.Name
	meta := membership.Meta{Kind: membership.KindXDS, GRPCAddr: f.XDS.GRPC, HTTPAddr: f.XDS.HTTP}
	m, err := membership.New(ctx, f.Gossip, meta, tel)
	if err != nil {
		return fmt.Errorf("join the gossip cluster: %w", err)
	}
	defer func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := m.Leave(lctx); err != nil && !errors.Is(err, membership.ErrClosed) {
			tel.Logger.Warn("leave the gossip cluster", "err", err)
		}
		_ = m.Shutdown()
	}()
	s, err := xds.New(f.XDS, tel, xds.MembershipView(m), xds.Options{
		Handlers: map[string]http.Handler{
			// The control plane is a witness: cores ask it whether it can
			// reach a primary they lost.
			membership.ReachablePath: membership.ReachableHandler(),
			membership.MembersPath:   m.MembersHandler(),
		},
	})
	if err != nil {
		return fmt.Errorf("start control plane: %w", err)
	}
	if s.GRPCAddr() != f.XDS.GRPC || s.HTTPAddr() != f.XDS.HTTP {
		meta.GRPCAddr, meta.HTTPAddr = s.GRPCAddr(), s.HTTPAddr()
		if err := m.SetMeta(ctx, meta); err != nil {
			return fmt.Errorf("advertise addresses: %w", err)
		}
	}
	return s.Run(ctx)
}

// bootstrapFlags are the flags of both bootstrap printers.
func bootstrapFlags(fs *flag.FlagSet, o *xds.BootstrapOptions) {
	fs.StringVar(&o.XDS, "xds", "127.0.0.1:7200", "the control plane's gRPC address")
	fs.StringVar(&o.NodeCluster, "node-cluster", "hachat", "xDS node cluster")
}

// runEnvoyBootstrap prints an Envoy bootstrap that takes everything from
// this control plane over ADS.
func runEnvoyBootstrap(args []string, out, errw io.Writer) error {
	o := xds.BootstrapOptions{}
	format := "yaml"
	fs := flag.NewFlagSet("hachat xds envoy-bootstrap", flag.ContinueOnError)
	fs.SetOutput(errw)
	bootstrapFlags(fs, &o)
	fs.StringVar(&o.NodeID, "node-id", "envoy-1", "Envoy's xDS node id (unique per Envoy)")
	fs.StringVar(&o.Admin, "admin", "127.0.0.1:9901", "Envoy's admin address (IP:port)")
	fs.StringVar(&format, "format", format, "output format: yaml or json")
	fs.Usage = func() {
		fmt.Fprintf(errw, "Usage: hachat xds envoy-bootstrap [flags] > envoy.yaml\n\nPrint an Envoy v3 bootstrap whose listeners and clusters come from the\ncontrol plane over ADS. Run: envoy -c envoy.yaml\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseBootstrapFlags(fs, args, errw); err != nil {
		return err
	}
	b, err := xds.EnvoyBootstrapText(o, format)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}

// runGRPCBootstrap prints a grpc-go xDS bootstrap for proxyless clients.
func runGRPCBootstrap(args []string, out, errw io.Writer) error {
	o := xds.BootstrapOptions{}
	fs := flag.NewFlagSet("hachat xds grpc-bootstrap", flag.ContinueOnError)
	fs.SetOutput(errw)
	bootstrapFlags(fs, &o)
	fs.StringVar(&o.NodeID, "node-id", "grpc-1", "the client's xDS node id (unique per client process)")
	fs.Usage = func() {
		fmt.Fprintf(errw, "Usage: hachat xds grpc-bootstrap [flags] > bootstrap.json\n\nPrint a grpc-go xDS bootstrap; point GRPC_XDS_BOOTSTRAP at the file and dial\nxds:///chatcore.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseBootstrapFlags(fs, args, errw); err != nil {
		return err
	}
	b, err := xds.GRPCBootstrap(o)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}

func parseBootstrapFlags(fs *flag.FlagSet, args []string, errw io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(errw, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}
