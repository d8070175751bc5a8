package main

import (
	"context"
	"flag"
	"io"

	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// witnessFile is the witness configuration: flags and YAML keys alike.
type witnessFile struct {
	// Name is the witness's node name in the gossip cluster.
	Name string `yaml:"name"`
	// HTTP is the address of /healthz, /metrics, /membership/v1/members and
	// /membership/v1/reachable.
	HTTP      string            `yaml:"http"`
	Gossip    membership.Config `yaml:",inline"`
	TLS       mtls.Files        `yaml:",inline"`
	Telemetry telemetry.Config  `yaml:"telemetry"`
}

// runWitness runs a membership witness: a gossip member that only votes.
func runWitness(ctx context.Context, args []string, out, errw io.Writer) error {
	f := witnessFile{Name: "witness", HTTP: "127.0.0.1:7211", Gossip: membership.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	f.Gossip.BindAddr = "127.0.0.1:7213"
	err := parseFlags("witness", "Run a membership witness: a gossip member that only votes. It gives the failure\n"+
		"detector a third vantage point and answers the backup core's question \"can you reach the primary?\".",
		args, errw, &f, func(fs *flag.FlagSet) {
			fs.StringVar(&f.Name, "name", f.Name, "node name in the gossip cluster (unique)")
			fs.StringVar(&f.HTTP, "http", f.HTTP, "HTTP address: /healthz, /metrics, /membership/v1/members, /membership/v1/reachable")
			f.Gossip.RegisterFlags(fs)
			registerTLSFlags(fs, &f.TLS)
			f.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, "witness", errw)
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	f.Gossip.Name = f.Name
	src, err := startTLS(ctx, f.TLS, tel.Logger)
	if err != nil {
		return err
	}
	w, err := membership.NewWitness(ctx, f.Gossip, f.HTTP, tel)
	if err != nil {
		return err
	}
	if src != nil {
		w.UseTLS(src)
	}
	return w.Run(ctx)
}
