package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"

	"github.com/hachat/hachat/proxy"
	"github.com/hachat/hachat/telemetry"
)

// proxyFile is the YAML shape of `hachat proxy --config`: the proxy options
// and the telemetry options side by side, keys as the flag names.
type proxyFile struct {
	Proxy     proxy.Config     `yaml:",inline"`
	Telemetry telemetry.Config `yaml:",inline"`
	// Ingress runs the proxy as the edge (docs/proxy.md, ingress mode):
	// --listen is then the customers' address and AgentListen the agents'.
	Ingress     bool   `yaml:"ingress"`
	AgentListen string `yaml:"agent-listen"`
	// ProxyProtocol and UpstreamSource: proxy.IngressConfig's.
	ProxyProtocol  bool   `yaml:"proxy-protocol"`
	UpstreamSource string `yaml:"upstream-source"`
}

// runProxy runs a sidecar proxy steered by the xDS control plane.
func runProxy(ctx context.Context, args []string, out, errw io.Writer) error {
	f := proxyFile{Proxy: proxy.DefaultConfig(), Telemetry: telemetry.DefaultConfig(), ProxyProtocol: true}
	err := parseFlags("proxy", "Run a sidecar proxy: a TCP listener whose upstream (the primary chat core)\n"+
		"comes from the xDS control plane over ADS, with its own health checks.", args, errw, &f,
		func(fs *flag.FlagSet) {
			f.Proxy.RegisterFlags(fs)
			f.Telemetry.RegisterFlags(fs)
			fs.BoolVar(&f.Ingress, "ingress", f.Ingress, "run as the edge: --listen is the customers' address (to the webapi instances), --agent-listen the agents' (to the interaction instances); bytes pass through (L4)")
			fs.StringVar(&f.AgentListen, "agent-listen", f.AgentListen, "with --ingress: the agents' address (empty: customers only)")
			fs.BoolVar(&f.ProxyProtocol, "proxy-protocol", f.ProxyProtocol, "with --ingress: start each connection to an instance with a PROXY protocol v2 header carrying the client's address (the instances list the edge in --proxy-protocol-from)")
			fs.StringVar(&f.UpstreamSource, "upstream-source", f.UpstreamSource, "with --ingress: the local IP address to dial the instances from (empty: the system's choice)")
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, "proxy", errw)
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.Background())
	var source netip.Addr
	if f.UpstreamSource != "" {
		if source, err = netip.ParseAddr(f.UpstreamSource); err != nil || !f.Ingress {
			return fmt.Errorf("--upstream-source %q: want an IP address, with --ingress", f.UpstreamSource)
		}
	}
	if f.Ingress {
		in, err := proxy.NewIngress(proxy.IngressConfig{Base: f.Proxy, Customer: f.Proxy.Listen, Agent: f.AgentListen,
			ProxyProtocol: f.ProxyProtocol, UpstreamSource: source}, tel)
		if err != nil {
			return fmt.Errorf("start edge: %w", err)
		}
		fmt.Fprintf(out, "hachat edge: customers %s, agents %s\n", in.Customer.Addr(), f.AgentListen)
		return in.Run(ctx)
	}
	if f.AgentListen != "" {
		return fmt.Errorf("--agent-listen needs --ingress")
	}
	p, err := proxy.New(f.Proxy, tel)
	if err != nil {
		return fmt.Errorf("start sidecar: %w", err)
	}
	return p.Run(ctx)
}
