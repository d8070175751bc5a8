package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/edge"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// clientFile holds the keys that webapi and interaction share: how their
// chat client retries (chatclient.Config; the addresses come from the
// part's own core key), and telemetry.
type clientFile struct {
	chatclient.Config `yaml:",inline"`
	// TLS turns on mTLS to the sidecar (or the cores): tls-ca, tls-cert, tls-key.
	TLS mtls.Files `yaml:",inline"`
	// HTTPS serves the part's HTTP API and pages over TLS with its
	// certificate (no client certificate asked: browsers connect). Needs TLS.
	HTTPS bool `yaml:"https"`
	// ProxyProtocolFrom lists the edges (addresses, CIDRs) whose
	// connections start with a PROXY protocol v2 header carrying the
	// client's address (edge.ProxyProtocolListener); empty: none.
	ProxyProtocolFrom string           `yaml:"proxy-protocol-from"`
	Telemetry         telemetry.Config `yaml:"telemetry"`
	// Register puts the instance in the gossip cluster so that the edge
	// learns it (register.go).
	Register registerFile `yaml:",inline"`
}

func defaultClientFile() clientFile {
	return clientFile{Config: chatclient.DefaultConfig(), Telemetry: telemetry.DefaultConfig(), Register: defaultRegisterFile()}
}

func (f *clientFile) registerFlags(fs *flag.FlagSet) {
	f.Config.RegisterRetryFlags(fs)
	registerTLSFlags(fs, &f.TLS)
	fs.BoolVar(&f.HTTPS, "https", f.HTTPS, "serve HTTPS with the --tls-cert certificate (browsers: import the cluster's ca.pem); default plain HTTP")
	fs.StringVar(&f.ProxyProtocolFrom, "proxy-protocol-from", f.ProxyProtocolFrom, "comma-separated addresses or CIDRs of the edges that send a PROXY protocol v2 header (their connections must, no other may); the header's client address is the remote address")
	f.Telemetry.RegisterFlags(fs)
	f.Register.registerFlags(fs)
}

// clientPart is what a part that talks to the chat core starts with.
type clientPart struct {
	tls     *mtls.Source // nil: no mTLS
	https   bool
	pp      edge.Proxies // --proxy-protocol-from
	tel     *telemetry.Telemetry
	client  *chatclient.Client
	targets []string
}

// startClientPart sets up telemetry and the chat client for the part called
// name, whose --core flag is core (comma-separated addresses). The chat
// client dials with the otelgrpc client handler built from the telemetry, so
// every call carries the HTTP request's trace context to the core.
func startClientPart(ctx context.Context, name, core string, f clientFile, errw io.Writer) (*clientPart, error) {
	var targets []string
	for _, t := range strings.Split(core, ",") {
		if t = strings.TrimSpace(t); t != "" {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return nil, errors.New("--core: no chat core address")
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, name, errw)
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	pp, err := edge.ParseProxies(f.ProxyProtocolFrom)
	if err != nil {
		_ = tel.Shutdown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("--proxy-protocol-from: %w", err)
	}
	src, err := startTLS(ctx, f.TLS, tel.Logger)
	if err == nil && f.HTTPS && src == nil {
		err = errors.New("--https needs --tls-ca, --tls-cert and --tls-key")
	}
	if err != nil {
		_ = tel.Shutdown(context.WithoutCancel(ctx))
		return nil, err
	}
	cc := f.Config
	cc.Targets = targets
	var dopts []grpc.DialOption
	if src != nil {
		// The sidecar in front of the cores, or a core itself.
		dopts = append(dopts, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig(mtls.Allow(mtls.KindProxy, mtls.KindCore)))))
	}
	client, err := chatclient.New(cc, tel, dopts...)
	if err != nil {
		_ = tel.Shutdown(context.WithoutCancel(ctx))
		return nil, err
	}
	return &clientPart{tls: src, https: f.HTTPS, pp: pp, tel: tel, client: client, targets: targets}, nil
}

// close closes the client and flushes the spans.
func (p *clientPart) close(ctx context.Context) {
	p.client.Close()
	_ = p.tel.Shutdown(context.WithoutCancel(ctx))
}

// listen opens the part's HTTP listener on addr: PROXY protocol from the
// --proxy-protocol-from edges (refused from anyone else), then TLS for
// browsers when --https is set (the header precedes the handshake). It
// returns the listener and its URL scheme.
func (p *clientPart) listen(ctx context.Context, addr string) (net.Listener, string, error) {
	var lc net.ListenConfig
	raw, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen %s: %w", addr, err)
	}
	ln, err := edge.NewProxyProtocolListener(raw, p.pp, p.tel.Logger, p.tel.Registry)
	if err != nil {
		raw.Close()
		return nil, "", err
	}
	if p.https {
		return tls.NewListener(ln, p.tls.PublicServerConfig()), "https", nil
	}
	return ln, "http", nil
}
