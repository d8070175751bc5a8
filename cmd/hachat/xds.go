package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hachat/hachat/coord"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// xdsFile is the YAML shape of `hachat xds --config`: the control plane,
// gossip and telemetry options side by side, keys as the flag names.
type xdsFile struct {
	// Name is the control plane's node name in the gossip cluster.
	Name string `yaml:"name"`
	// Coordination lists the etcd endpoints (host:port, comma-separated)
	// of the coordination cluster that keeps the drained pairs, so that
	// every control plane places alike and a restart forgets no drain.
	// Empty: each control plane keeps its own drain list in memory.
	Coordination string            `yaml:"coordination"`
	XDS          xds.Config        `yaml:",inline"`
	Gossip       membership.Config `yaml:",inline"`
	Telemetry    telemetry.Config  `yaml:",inline"`
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
			fs.StringVar(&f.Coordination, "coordination", f.Coordination, "etcd endpoints host:port,... keeping the drained pairs for every control plane (empty: in memory, per control plane)")
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
	meta := membership.Meta{Kind: membership.KindXDS, GRPCAddr: membership.Announced(f.XDS.GRPC, f.XDS.GRPCAdvertise),
		HTTPAddr: membership.Announced(f.XDS.HTTP, f.XDS.HTTPAdvertise)}
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
	var src *mtls.Source
	if f.XDS.TLS.Enabled() {
		if src, err = mtls.Load(f.XDS.TLS); err != nil {
			return fmt.Errorf("load tls files: %w", err)
		}
	}
	var drains xds.DrainStore
	var adoptions xds.AdoptionStore
	if f.Coordination != "" {
		var etcdTLS *tls.Config
		if src != nil {
			etcdTLS = src.ClientConfig(mtls.Allow(mtls.KindCoord))
		}
		cli, err := coord.Dial(f.Coordination, etcdTLS)
		if err != nil {
			return err
		}
		defer cli.Close()
		ed := xds.NewEtcdDrains(cli, tel.Logger.With("component", "xds"))
		drains, adoptions = ed, ed
		tel.Logger.Info("drained pairs kept at the coordination cluster (etcd)", "endpoints", f.Coordination)
	}
	s, err := xds.New(f.XDS, tel, xds.MembershipView(m), xds.Options{
		TLS:       src,
		Drains:    drains,
		Adoptions: adoptions,
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
	if bound := (membership.Meta{Kind: membership.KindXDS, GRPCAddr: membership.Announced(s.GRPCAddr(), f.XDS.GRPCAdvertise),
		HTTPAddr: membership.Announced(s.HTTPAddr(), f.XDS.HTTPAdvertise)}); bound != meta {
		meta = bound
		if err := m.SetMeta(ctx, meta); err != nil {
			return fmt.Errorf("advertise addresses: %w", err)
		}
	}
	return s.Run(ctx)
}

// bootstrapTLS are the TLS flags of both bootstrap printers: explicit
// files, or a cert dir and a certificate name in it.
type bootstrapTLS struct {
	files    mtls.Files
	certDir  string
	certName string
	state    string
}

// bootstrapFlags are the flags of both bootstrap printers.
func bootstrapFlags(fs *flag.FlagSet, o *xds.BootstrapOptions, bt *bootstrapTLS) {
	fs.StringVar(&o.XDS, "xds", "127.0.0.1:7200", "the control plane's gRPC address")
	fs.StringVar(&o.NodeCluster, "node-cluster", "hachat", "xDS node cluster")
	fs.StringVar(&bt.files.CA, "tls-ca", "", "mTLS: the cluster CA bundle the client trusts (turns mTLS on, with --tls-cert and --tls-key)")
	fs.StringVar(&bt.files.Cert, "tls-cert", "", "mTLS: the client's certificate")
	fs.StringVar(&bt.files.Key, "tls-key", "", "mTLS: the client's private key")
	fs.StringVar(&bt.certDir, "cert-dir", "", "mTLS: a cert dir of hachat certs init: ca.pem, <cert-name>.pem and <cert-name>.key (instead of --tls-*)")
	fs.StringVar(&bt.certName, "cert-name", "", "mTLS: the certificate's name in --cert-dir (default: the node id)")
	fs.StringVar(&o.TrustDomain, "trust-domain", "", "mTLS: SPIFFE trust domain of the cluster (default: read from the CA file, else "+mtls.DefaultTrustDomain+")")
	fs.StringVar(&bt.state, "state", "", "a demo state file (hachat demo): the control planes' addresses and, when the file names one, the cert dir")
}

// demoCredentials is the part of the demo state file that the bootstrap
// printers read besides the parts.
type demoCredentials struct {
	Credentials struct {
		CertDir string `json:"certDir"`
	} `json:"credentials"`
}

// resolve fills o from bt: the control planes of the state file (--xds
// then only names the first when given explicitly), the cert files, the
// trust domain.
func (bt bootstrapTLS) resolve(fs *flag.FlagSet, o *xds.BootstrapOptions) error {
	explicitXDS := false
	fs.Visit(func(f *flag.Flag) { explicitXDS = explicitXDS || f.Name == "xds" })
	if bt.state != "" {
		st, err := demo.ReadState(bt.state)
		if err != nil {
			return err
		}
		var addrs []string
		for _, p := range st.Parts {
			if p.Kind == demo.KindXDS && p.GRPC != "" {
				addrs = append(addrs, p.GRPC)
			}
		}
		if len(addrs) == 0 && !explicitXDS {
			return fmt.Errorf("state %s: no control plane (kind xds) with a gRPC address", bt.state)
		}
		if explicitXDS {
			addrs = slices.DeleteFunc(addrs, func(a string) bool { return a == o.XDS })
		} else {
			o.XDS, addrs = addrs[0], addrs[1:]
		}
		o.Fallback = addrs
		if bt.certDir == "" && !bt.files.Enabled() {
			b, err := os.ReadFile(bt.state)
			if err != nil {
				return fmt.Errorf("read state: %w", err)
			}
			var dc demoCredentials
			if err := json.Unmarshal(b, &dc); err != nil {
				return fmt.Errorf("parse state %s: %w", bt.state, err)
			}
			bt.certDir = dc.Credentials.CertDir
			if bt.certDir != "" && !filepath.IsAbs(bt.certDir) {
				bt.certDir = filepath.Join(filepath.Dir(bt.state), bt.certDir)
			}
		}
	}
	o.TLS = bt.files
	if bt.certDir != "" {
		if bt.files.Enabled() {
			return fmt.Errorf("%w: --cert-dir and --tls-* exclude each other", xds.ErrBadBootstrap)
		}
		name := bt.certName
		if name == "" {
			name = o.NodeID
		}
		f := mtls.FilesIn(bt.certDir, name)
		abs := func(p string) string {
			if a, err := filepath.Abs(p); err == nil {
				return a
			}
			return p
		}
		o.TLS = mtls.Files{CA: abs(f.CA), Cert: abs(f.Cert), Key: abs(f.Key)}
		for _, p := range []string{o.TLS.CA, o.TLS.Cert, o.TLS.Key} {
			if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("cert dir %s (certificate %q, see --cert-name): %w", bt.certDir, name, err)
			}
		}
	}
	if o.TLS.Enabled() && o.TrustDomain == "" {
		if src, err := mtls.Load(o.TLS); err == nil {
			o.TrustDomain = src.ID().TrustDomain
		}
	}
	return nil
}

// runEnvoyBootstrap prints an Envoy bootstrap that takes everything from
// this control plane over ADS.
func runEnvoyBootstrap(args []string, out, errw io.Writer) error {
	o := xds.BootstrapOptions{}
	var bt bootstrapTLS
	format := "yaml"
	fs := flag.NewFlagSet("hachat xds envoy-bootstrap", flag.ContinueOnError)
	bootstrapFlags(fs, &o, &bt)
	fs.StringVar(&o.NodeID, "node-id", "envoy-1", "Envoy's xDS node id (unique per Envoy)")
	fs.StringVar(&o.Admin, "admin", "127.0.0.1:9901", "Envoy's admin address (IP:port)")
	fs.StringVar(&format, "format", format, "output format: yaml or json")
	if err := parseArgs(fs, "Usage: hachat xds envoy-bootstrap [flags] > envoy.yaml\n\nPrint an Envoy v3 bootstrap whose listeners and clusters come from the\ncontrol plane over ADS. Run: envoy -c envoy.yaml\nWith mTLS files (--tls-* or --cert-dir) Envoy speaks mTLS to the control\nplane and defines the secrets the chat cluster and listener name.\n\nFlags:\n", args, errw); err != nil {
		return err
	}
	if err := bt.resolve(fs, &o); err != nil {
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
	var bt bootstrapTLS
	fs := flag.NewFlagSet("hachat xds grpc-bootstrap", flag.ContinueOnError)
	bootstrapFlags(fs, &o, &bt)
	fs.StringVar(&o.NodeID, "node-id", "grpc-1", "the client's xDS node id (unique per client process)")
	fs.DurationVar(&o.CertRefresh, "cert-refresh", mtls.DefaultReloadInterval, "mTLS: how often grpc-go rereads the certificate files")
	if err := parseArgs(fs, "Usage: hachat xds grpc-bootstrap [flags] > bootstrap.json\n\nPrint a grpc-go xDS bootstrap; point GRPC_XDS_BOOTSTRAP at the file and dial\nxds:///chatcore. With mTLS files (--tls-* or --cert-dir, or the cert dir of\n--state) the client speaks mTLS to the control plane (\"tls\" channel\ncredentials) and, with grpc-go's xDS credentials\n(google.golang.org/grpc/credentials/xds), to the cores: the chat cluster's\nUpstreamTlsContext names the certificate provider instance \"hachat\"\n(file_watcher) defined here.\n\nFlags:\n", args, errw); err != nil {
		return err
	}
	if err := bt.resolve(fs, &o); err != nil {
		return err
	}
	b, err := xds.GRPCBootstrap(o)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}
