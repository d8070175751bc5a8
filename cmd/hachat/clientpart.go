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
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/edge"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
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
	// CorePairs lists the local sidecar listeners of the pairs other than
	// pair 1 ("2=127.0.0.1:7311,3=127.0.0.1:7321"; pair 1 is --core):
	// set, the part routes every call about a chat to its pair's listener
	// and places new chats by the control plane's weights
	// (chatclient.PairClient). Empty (the default): one pair, as before.
	CorePairs string `yaml:"core-pairs"`
	// PairsFrom lists the control planes' admin base URLs
	// (https://host:port, comma-separated) the weights of new chats'
	// placement are read from (GET /xds/v1/pairs). Needed with CorePairs.
	PairsFrom string `yaml:"pairs-from"`
	// PairsPoll is how often the weights are read (default 250ms, the
	// control plane's own poll of the pairs).
	PairsPoll time.Duration `yaml:"pairs-poll"`
}

func defaultClientFile() clientFile {
	return clientFile{Config: chatclient.DefaultConfig(), Telemetry: telemetry.DefaultConfig(), Register: defaultRegisterFile(), PairsPoll: 250 * time.Millisecond}
}

func (f *clientFile) registerFlags(fs *flag.FlagSet) {
	f.Config.RegisterRetryFlags(fs)
	registerTLSFlags(fs, &f.TLS)
	fs.BoolVar(&f.HTTPS, "https", f.HTTPS, "serve HTTPS with the --tls-cert certificate (browsers: import the cluster's ca.pem); default plain HTTP")
	fs.StringVar(&f.ProxyProtocolFrom, "proxy-protocol-from", f.ProxyProtocolFrom, "comma-separated addresses or CIDRs of the edges that send a PROXY protocol v2 header (their connections must, no other may); the header's client address is the remote address")
	f.Telemetry.RegisterFlags(fs)
	f.Register.registerFlags(fs)
	fs.StringVar(&f.CorePairs, "core-pairs", f.CorePairs, "several pairs: the sidecar listeners of the pairs other than pair 1 (P=host:port, comma-separated; pair 1 is --core); calls about a chat go to its pair's listener, new chats are placed by the control plane's weights (needs --pairs-from)")
	fs.StringVar(&f.PairsFrom, "pairs-from", f.PairsFrom, "with --core-pairs: the control planes' admin URLs (http[s]://host:port, comma-separated) whose /xds/v1/pairs weights place new chats")
	fs.DurationVar(&f.PairsPoll, "pairs-poll", f.PairsPoll, "with --core-pairs: how often the placement weights are read")
}

// parseCorePairs parses --core-pairs: P=host:port, comma-separated, no
// pair twice, never pair 1 (that is --core).
func parseCorePairs(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		p, addr, ok := strings.Cut(item, "=")
		if !ok || addr == "" {
			return nil, fmt.Errorf("--core-pairs: %q is not P=host:port", item)
		}
		if err := pairs.Validate(p); err != nil {
			return nil, fmt.Errorf("--core-pairs: %w", err)
		}
		if p == pairs.Default {
			return nil, fmt.Errorf("--core-pairs: pair %s is --core", p)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--core-pairs: pair %s: %w", p, err)
		}
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("--core-pairs: pair %s given twice", p)
		}
		out[p] = addr
	}
	return out, nil
}

// clientPart is what a part that talks to the chat core starts with.
type clientPart struct {
	tls    *mtls.Source // nil: no mTLS
	https  bool
	pp     edge.Proxies // --proxy-protocol-from
	tel    *telemetry.Telemetry
	client *chatclient.Client // pair 1's (the only one without --core-pairs)
	// core is what the part calls: client, or with --core-pairs a
	// chatclient.PairClient over client and the other pairs' clients.
	core    chatpb.ChatClient
	others  []*chatclient.Client // the other pairs' clients
	stop    context.CancelFunc   // ends the weights poller
	polling sync.WaitGroup
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
	part := &clientPart{tls: src, https: f.HTTPS, pp: pp, tel: tel, client: client, core: client, targets: targets, stop: func() {}}
	if f.CorePairs != "" {
		if err := part.startPairs(ctx, f, cc, dopts); err != nil {
			part.close(ctx)
			return nil, err
		}
	}
	return part, nil
}

// startPairs makes the part's core a chatclient.PairClient: a client per
// pair's sidecar listener and the control plane's weights, read by a poller
// the part owns.
func (p *clientPart) startPairs(ctx context.Context, f clientFile, cc chatclient.Config, dopts []grpc.DialOption) error {
	listeners, err := parseCorePairs(f.CorePairs)
	if err != nil {
		return err
	}
	var admins []string
	for _, u := range strings.Split(f.PairsFrom, ",") {
		if u = strings.TrimSuffix(strings.TrimSpace(u), "/"); u != "" {
			admins = append(admins, u)
		}
	}
	if len(admins) == 0 {
		return errors.New("--core-pairs needs --pairs-from (the control planes' admin URLs)")
	}
	clients := map[string]chatpb.ChatClient{pairs.Default: p.client}
	for pair, addr := range listeners {
		pc := cc
		pc.Targets = []string{addr}
		c, err := chatclient.New(pc, p.tel, dopts...)
		if err != nil {
			return fmt.Errorf("pair %s: %w", pair, err)
		}
		p.others = append(p.others, c)
		clients[pair] = c
	}
	ws, err := chatclient.NewPairWeights(admins, httpClient(p.tls, 5*time.Second, mtls.KindXDS), f.PairsPoll, p.tel.Logger)
	if err != nil {
		return err
	}
	pc, err := chatclient.NewPairClient(clients, ws.Weights, uint64(time.Now().UnixNano()), p.tel.Logger)
	if err != nil {
		return err
	}
	if err := pc.Register(p.tel.Registry); err != nil {
		return err
	}
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	p.stop = stop
	p.polling.Add(1)
	go func() {
		defer p.polling.Done()
		ws.Run(pctx)
	}()
	p.core = pc
	p.tel.Logger.Info("chat client over several pairs", "pairs", pc.Pairs(), "listeners", listeners, "weights from", admins)
	return nil
}

// close stops the weights poller, closes the clients and flushes the spans.
func (p *clientPart) close(ctx context.Context) {
	p.stop()
	p.polling.Wait()
	p.client.Close()
	for _, c := range p.others {
		c.Close()
	}
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
