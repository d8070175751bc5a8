package chatcore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
)

// Membership is the seam to the gossip membership (package membership's
// *Membership implements it). The core publishes its role and epoch with
// SetMeta; the primary steps down when it sees a core with a newer epoch
// claiming primary; the backup promotes when the primary is declared failed
// or left (the fallback for a silent primary).
type Membership interface {
	// Members returns every member this node knows, itself included.
	Members() []membership.Member
	// SetMeta replaces this node's meta and gossips it.
	SetMeta(ctx context.Context, meta membership.Meta) error
	// Subscribe returns membership events until cancel is called.
	Subscribe() (<-chan membership.Event, func())
}

// AskReachableFunc asks the witness serving HTTP at witnessHTTP whether
// target (host:port) accepts TCP connections; membership.AskReachable bound
// to an HTTP client is one.
type AskReachableFunc func(ctx context.Context, witnessHTTP, target string) (bool, error)

// WithMembership attaches the gossip membership. With it a core is part of a
// pair even without Config.Peer: it finds the other core's gRPC address, and
// a witness's (or the control plane's) HTTP address, in the members' meta.
func WithMembership(m Membership) Option { return func(c *Core) { c.members = m } }

// WithWitness sets how the backup asks a witness about the primary.
func WithWitness(f AskReachableFunc) Option { return func(c *Core) { c.witness = f } }

// WithTLS makes the core speak mTLS with workload identities: its gRPC
// server requires a client certificate of the cluster and authorizes each
// call by the caller's kind (CallPolicy), and its connections to the other
// core present src's certificate and accept only a core.
func WithTLS(src *mtls.Source) Option { return func(c *Core) { c.tls = src } }

// CallPolicy says which kinds of workload may call which gRPC method of a
// core: the Chat service by the parts that carry chats (sidecars, webapi,
// interaction), the other core and operators; Switchover by operators, the
// control plane (its admin switchover) and the other core; Replication by
// cores only; health and Status by any part of the cluster.
func CallPolicy() mtls.MethodPolicy {
	chat := "/" + ChatServiceName + "/"
	return mtls.ServicePolicy(map[string]mtls.Policy{
		chat:                mtls.Allow(mtls.KindProxy, mtls.KindWebAPI, mtls.KindInteraction, mtls.KindCore, mtls.KindOperator, mtls.KindEnvoy),
		chat + "Switchover": mtls.Allow(mtls.KindOperator, mtls.KindXDS, mtls.KindCore),
		chat + "Status":     mtls.AnyKind,
		"/" + chatpb.Replication_ServiceDesc.ServiceName + "/": mtls.Allow(mtls.KindCore),
		"/grpc.health.v1.Health/":                              mtls.AnyKind,
		"/grpc.reflection.":                                    mtls.Allow(mtls.KindOperator),
	})
}

// paired reports whether this core runs in a primary/backup pair.
func (c *Core) paired() bool { return c.cfg.Peer != "" || c.members != nil }

// peers finds the other core of the pair and a witness (Config.Peer and
// Config.Witness, else gossip), and holds the one shared connection to the
// other core (replication, status checks).
type peers struct {
	name, peer, witness, pair string // this core; Config.Peer, Config.Witness, Config.Pair
	members                   Membership
	tls                       *mtls.Source // nil: plaintext gRPC
	tel                       *telemetry.Telemetry

	mu       sync.Mutex
	conn     *grpc.ClientConn // to connAddr, created on first use
	connAddr string
}

func newPeers(c *Core) *peers {
	return &peers{name: c.cfg.Name, peer: c.cfg.Peer, witness: c.cfg.Witness, pair: c.cfg.Pair, members: c.members, tls: c.tls, tel: c.tel}
}

// samePair reports whether m is in this core's pair (package pairs: an
// empty pair is the default one). Cores of other pairs gossip in the same
// cluster but are never this core's peer, primary or rival.
func (p *peers) samePair(m membership.Member) bool {
	return pairs.Norm(m.Meta.Pair) == pairs.Norm(p.pair)
}

// addr returns the other core's gRPC address: Config.Peer, or the one
// gossiped by the other core member (a live one first). Empty when unknown.
func (p *peers) addr() string {
	if p.peer != "" || p.members == nil {
		return p.peer
	}
	addr := ""
	for _, m := range p.members.Members() {
		if m.Name == p.name || m.Meta.Kind != membership.KindCore || m.Meta.GRPCAddr == "" || !p.samePair(m) {
			continue
		}
		if m.State == membership.StateAlive || m.State == membership.StateSuspect {
			return m.Meta.GRPCAddr
		}
		addr = m.Meta.GRPCAddr
	}
	return addr
}

// witnessAddr returns the HTTP address of the witness to ask: Config.Witness,
// or a live witness member's, or the control plane's. Empty when none.
func (p *peers) witnessAddr() string {
	if p.witness != "" || p.members == nil {
		return p.witness
	}
	xds := ""
	for _, m := range p.members.Members() {
		if m.State != membership.StateAlive || m.Meta.HTTPAddr == "" {
			continue
		}
		switch m.Meta.Kind {
		case membership.KindWitness:
			return m.Meta.HTTPAddr
		case membership.KindXDS:
			xds = m.Meta.HTTPAddr
		}
	}
	return xds
}

// creds returns the transport credentials towards the other core.
func (p *peers) creds() credentials.TransportCredentials {
	if p.tls != nil {
		return credentials.NewTLS(p.tls.ClientConfig(mtls.Allow(mtls.KindCore)))
	}
	return insecure.NewCredentials()
}

// dial returns the (lazily created, reused) connection to the peer at addr.
func (p *peers) dial(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && p.connAddr == addr {
		return p.conn, nil
	}
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(p.creds()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second}),
	}
	if p.tel.Tracing() {
		// Per-call tracing work only when spans are exported (as the Chat
		// server and chatclient do).
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(p.tel.Tracer), otelgrpc.WithPropagators(p.tel.Propagator))))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", addr, err)
	}
	p.conn, p.connAddr = conn, addr
	return conn, nil
}

// close closes the connection to the peer (shutdown).
func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
	}
}
