package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/hachat/hachat/proxy"
	"github.com/hachat/hachat/telemetry"
)

// proxyFile is the YAML shape of `hachat proxy --config`: the proxy options
// and the telemetry options side by side, keys as the flag names.
type proxyFile struct {
	Proxy     proxy.Config     `yaml:",inline"`
	Telemetry telemetry.Config `yaml:",inline"`
}

// runProxy runs a sidecar proxy steered by the xDS control plane.
func runProxy(ctx context.Context, args []string, out, errw io.Writer) error {
	f := proxyFile{Proxy: proxy.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("proxy", "Run a sidecar proxy: a TCP listener whose upstream (the primary chat core)\n"+
		"comes from the xDS control plane over ADS, with its own health checks.", args, errw, &f,
		func(fs *flag.FlagSet) {
			f.Proxy.RegisterFlags(fs)
			f.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, "proxy", errw)
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.Background())
	p, err := proxy.New(f.Proxy, tel)
	if err != nil {
		return fmt.Errorf("start sidecar: %w", err)
	}
	return p.Run(ctx)
}
