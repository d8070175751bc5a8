// Package xds is hachat's xDS control plane. It watches cluster membership
// and publishes, over ADS, the resources that steer every client of the
// chat service to the primary chat core: a TCP proxy listener for
// sidecars, an API listener and route for proxyless gRPC clients (target
// xds:///chatcore), an EDS cluster with active gRPC health checks, and a
// load assignment with the primary at priority 0 and the backup at
// priority 1. What the resources contain is decided by Build, a pure
// function; Server serves them with go-control-plane and an admin HTTP API.
package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// ErrNoPrimary reports that no alive core holds the primary role.
var ErrNoPrimary = errors.New("no primary")

// setSnapshotTimeout bounds one SetSnapshot call: the cache hands responses
// to stream goroutines through buffered channels, so it never blocks in
// practice; the bound turns a bug into a logged error instead of a hang.
const setSnapshotTimeout = 5 * time.Second

// SwitchoverFunc asks the core at addr (its gRPC address) to hand over the
// primary role, passing the admin token.
type SwitchoverFunc func(ctx context.Context, addr, token string) (*chatpb.SwitchoverResponse, error)

// Options are the seams and extras of a Server.
type Options struct {
	// Switchover calls a core's Switchover RPC. Nil dials the core over
	// gRPC (with tracing; mTLS with the control plane's certificate when
	// Config.TLS is set).
	Switchover SwitchoverFunc
	// TLS is the control plane's certificate source. Nil: New loads
	// Config.TLS when it is set (and Run watches the files); a caller that
	// already holds a Source passes it here (Run watches it too).
	TLS *mtls.Source
	// PairLive asks the primary at addr (its gRPC address) for its live
	// sessions. Nil dials the core's Status over gRPC (mTLS as for
	// Switchover), one cached connection per core.
	PairLive PairLiveFunc
	// Drains keeps the drain list where every control plane sees it
	// (EtcdDrains, with --coordination). Nil: each control plane keeps its
	// own, in memory (`hachat ctl drain` tells every control plane).
	Drains DrainStore
	// Adoptions keeps the N+1 adoptions where every control plane sees
	// them (EtcdDrains, with --coordination), so that all route an
	// adopted pair to one adopter. Nil: each control plane decides alone.
	Adoptions AdoptionStore
	// Handlers are mounted on the admin HTTP mux by pattern, e.g.
	// membership's reachable handler so that the control plane serves as
	// the witness.
	Handlers map[string]http.Handler
}

// NACK is the last rejected response a client reported.
type NACK struct {
	Node    string    `json:"node"`
	Type    string    `json:"type"`
	Version string    `json:"version"` // the rejected version
	Kept    string    `json:"kept"`    // the version the client keeps
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// nodeState is what the server knows about one xDS node (client).
type nodeState struct {
	streams int
	delta   bool
	// names holds, per type URL, the resource names of the node's latest
	// request; a type that is absent, or present with nil, is wildcard.
	names map[string][]string
	// snapshotSet is true once the node's snapshot is in the cache.
	snapshotSet bool
	// envoy is true for an Envoy node (user agent "envoy"): it gets the
	// Envoy flavour of the resources (Resources.ForEnvoy).
	envoy bool
	// edge is true for a node of cluster EdgeNodeCluster: only such nodes
	// get the ingress listeners on a wildcard request.
	edge bool
	// set and acked hold, per type URL, the version of the node's snapshot
	// and the version the node last acknowledged (SotW only).
	set, acked map[string]string
}

// Server is the control plane: a go-control-plane snapshot cache in ADS
// mode behind the xDS gRPC services, fed from a View, with an admin HTTP
// API. Build it with New, then call Run.
type Server struct {
	cfg  Config
	tel  *telemetry.Telemetry
	log  *slog.Logger
	view View
	opts Options

	tls     *mtls.Source // nil: plaintext
	cache   cache.SnapshotCache
	xds     serverv3.Server
	grpc    *grpc.Server
	grpcLn  net.Listener
	httpLn  net.Listener
	httpSrv *http.Server
	met     *metrics
	tracer  trace.Tracer

	mu          sync.Mutex
	members     []Member
	good        *Resources // last built, valid resources
	served      *Resources // what nodes get: good, or good with the test fault
	fault       bool
	nodes       map[string]*nodeState
	streamNode  map[int64]string // SotW stream id -> node id
	deltaNode   map[int64]string // delta stream id -> node id
	lastSent    map[int64]map[string]string
	lastNACK    *NACK
	publishedAt time.Time
	// live and draining feed the placement weights (BuildPairs).
	live     map[string]uint64
	draining map[string]bool
	arrivals float64 // new chats per poll interval, smoothed
	// adopted maps an adopted pair to its adopter (N+1, adopt.go);
	// degradedSince is when each pair without a primary was first seen so.
	adopted       map[string]string
	degradedSince map[string]time.Time

	// selCache memoizes the nodes' selections of the served resources.
	selCache selectionCache

	// kick asks Run to rebuild (live sessions or a drain changed).
	kick chan struct{}
}

// New validates cfg, binds the gRPC and HTTP listeners (so GRPCAddr and
// HTTPAddr are known at once, also with port 0) and registers the metrics.
// Nothing is served until Run.
func New(cfg Config, tel *telemetry.Telemetry, view View, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if view == nil {
		return nil, fmt.Errorf("%w: no membership view", ErrBadConfig)
	}
	s := &Server{
		cfg: cfg, tel: tel, log: tel.Logger.With("component", "xds"), view: view, opts: opts,
		tracer: tel.Tracer.Tracer("github.com/hachat/hachat/xds"),
		nodes:  map[string]*nodeState{}, streamNode: map[int64]string{}, deltaNode: map[int64]string{},
		lastSent: map[int64]map[string]string{},
		live:     map[string]uint64{}, draining: map[string]bool{}, adopted: map[string]string{}, degradedSince: map[string]time.Time{}, kick: make(chan struct{}, 1),
	}
	s.tls = opts.TLS
	if s.tls == nil && cfg.TLS.Enabled() {
		src, err := mtls.Load(cfg.TLS)
		if err != nil {
			return nil, fmt.Errorf("load tls files: %w", err)
		}
		s.tls = src
	}
	if s.tls != nil {
		s.cfg.TrustDomain = s.tls.ID().TrustDomain
	}
	if s.opts.Switchover == nil {
		s.opts.Switchover = dialSwitchover(tel, s.tls)
	}
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger{s.log})
	var err error
	s.grpcLn, err = net.Listen("tcp", cfg.GRPC)
	if err != nil {
		return nil, fmt.Errorf("listen grpc: %w", err)
	}
	s.httpLn, err = net.Listen("tcp", cfg.HTTP)
	if err != nil {
		s.grpcLn.Close()
		return nil, fmt.Errorf("listen http: %w", err)
	}
	if s.met, err = newMetrics(tel.Registry); err != nil {
		s.grpcLn.Close()
		s.httpLn.Close()
		return nil, err
	}
	return s, nil
}

// GRPCAddr is the bound xDS gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// HTTPAddr is the bound admin HTTP address.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// Run publishes the first snapshot, serves xDS and the admin API, and
// republishes on every membership notification, until ctx ends; then it
// stops both servers and returns nil (or the first serving error).
func (s *Server) Run(ctx context.Context) error {
	events, cancel := s.view.Subscribe()
	defer cancel()
	s.publish(ctx, "start")

	// Ordered ADS sends the responses of one snapshot change in xDS type
	// order (clusters before assignments before listeners before routes),
	// the make-before-break order Envoy recommends.
	s.xds = serverv3.NewServer(ctx, s.cache, s.callbacks(), sotw.WithOrderedADS())
	gopts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	httpLn := s.httpLn
	var watchers sync.WaitGroup
	if s.tls != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(s.tls.ServerConfig())),
			grpc.UnaryInterceptor(mtls.UnaryInterceptor(DiscoveryPolicy(), s.log)),
			grpc.StreamInterceptor(mtls.StreamInterceptor(DiscoveryPolicy(), s.log)))
		hcfg := s.tls.ServerConfig()
		hcfg.NextProtos = []string{"h2", "http/1.1"}
		httpLn = tls.NewListener(s.httpLn, hcfg)
		// The watcher reloads rotated files until Run returns.
		wctx, wcancel := context.WithCancel(ctx)
		defer watchers.Wait()
		defer wcancel()
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			s.tls.Watch(wctx, 0, s.log)
		}()
		s.log.Info("mTLS on", "id", s.tls.ID().String(), "not_after", s.tls.NotAfter())
	}
	s.grpc = grpc.NewServer(gopts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpc, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(s.grpc, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(s.grpc, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(s.grpc, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(s.grpc, s.xds)
	s.httpSrv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}

	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	go func() { errc <- s.httpSrv.Serve(httpLn) }()
	s.log.Info("xDS control plane serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr())
	pctx, pcancel := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		s.pollPairs(pctx)
	}()
	defer func() { pcancel(); <-polled }()
	adopting := make(chan struct{})
	go func() {
		defer close(adopting)
		s.adoptLoop(pctx)
	}()
	defer func() { pcancel(); <-adopting }()
	if s.opts.Drains != nil {
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			s.watchDrains(pctx)
		}()
		defer func() { pcancel(); <-watched }()
	}

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case _, ok := <-events:
			if !ok {
				err = errors.New("membership view closed its event channel")
				break loop
			}
			s.publish(ctx, "membership change")
		case <-s.kick:
			s.publish(ctx, "pair placement")
		case err = <-errc:
			err = fmt.Errorf("serve: %w", err)
			break loop
		}
	}
	s.log.Info("xDS control plane stopping")
	shutCtx, done := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer done()
	_ = s.httpSrv.Shutdown(shutCtx)
	// xDS streams never end by themselves: Stop, not GracefulStop. Clients
	// keep their last configuration and reconnect with backoff.
	s.grpc.Stop()
	return err
}

// publish rebuilds the resources from the current members and, when the
// content changed, sets the new snapshot for every connected node. A build
// error keeps the last good snapshot.
func (s *Server) publish(ctx context.Context, reason string) {
	start := time.Now()
	_, span := s.tracer.Start(ctx, "xds.build_snapshot", trace.WithAttributes(attribute.String("reason", reason)))
	defer span.End()
	members := s.view.Members()
	res, err := BuildPairs(s.cfg, members, s.pairInputs())
	if err != nil {
		s.met.builds.WithLabelValues("error").Inc()
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		s.log.Error("snapshot build failed; last good snapshot keeps serving", "err", err, "members", len(members))
		return
	}
	for _, sk := range res.Skipped {
		s.log.Warn("core left out of the load assignment", "why", sk)
	}
	s.mu.Lock()
	s.members = members
	if s.good != nil && s.good.Version == res.Version {
		// Same resources; the pairs' live counts (not in the resources
		// when no weight moved) are fresher.
		s.pairChangesLocked(s.good, res)
		g := *s.good
		g.Pairs = res.Pairs
		s.good = &g
		s.mu.Unlock()
		s.met.builds.WithLabelValues("unchanged").Inc()
		span.SetAttributes(attribute.String("version", res.Version), attribute.Bool("changed", false))
		return
	}
	prev := s.good
	s.good = res
	s.refreshLocked(ctx)
	s.pairChangesLocked(prev, res)
	nodes := len(s.nodes)
	s.mu.Unlock()

	took := time.Since(start)
	s.met.builds.WithLabelValues("ok").Inc()
	s.met.buildSeconds.Observe(took.Seconds())
	span.SetAttributes(attribute.String("version", res.Version), attribute.Bool("changed", true),
		attribute.String("primary", res.Primary), attribute.Int("nodes", nodes))
	prevPrimary := ""
	if prev != nil {
		prevPrimary = prev.Primary
	}
	level := slog.LevelInfo
	if reason == "pair placement" {
		level = slog.LevelDebug // weights follow live sessions: every poll may change them
	}
	s.log.Log(ctx, level, "snapshot published", "reason", reason, "version", res.Version, "primary", res.Primary,
		"previous_primary", prevPrimary, "endpoints", placementSummary(res.Placements), "nodes", nodes, "took", took)
}

// refreshLocked recomputes what nodes are served (the good resources, or
// with the test fault) and sets every node's snapshot. s.mu is held.
func (s *Server) refreshLocked(ctx context.Context) {
	if s.good == nil {
		return
	}
	served := s.good
	if s.fault {
		served = withFault(s.good)
	}
	s.served = served
	s.publishedAt = time.Now()
	s.met.published(served, served.Version)
	for id, st := range s.nodes {
		s.setSnapshotLocked(ctx, id, st)
	}
}

// setSnapshotLocked sets node id's snapshot: the served resources cut to
// the names the node asks for. This is what makes the snapshot cache's ADS
// rule work: in ADS mode it answers a request that names resources only if
// every resource of that type in the snapshot is among the names, so
// grpc-go (which asks for "chatcore" listener, route, cluster and
// assignment by name) must see exactly those, while a sidecar asking for
// every listener sees the sidecar listener. s.mu is held.
func (s *Server) setSnapshotLocked(ctx context.Context, id string, st *nodeState) bool {
	if s.served == nil {
		return false
	}
	snap := &cache.Snapshot{}
	byType := s.served.ByType()
	if st.envoy {
		byType = s.served.ForEnvoy()
	}
	for typ, items := range byType {
		sel, v, err := s.selectedLocked(typ, items, st)
		if err != nil {
			s.log.Error("version resources", "node", id, "type", shortType(typ), "err", err)
			return false
		}
		snap.Resources[cache.GetResponseType(typ)] = cache.NewResources(v, sel)
		st.set[typ] = v
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), setSnapshotTimeout)
	defer cancel()
	if err := s.cache.SetSnapshot(ctx, id, snap); err != nil {
		s.log.Error("set snapshot", "node", id, "err", err)
		return false
	}
	st.snapshotSet = true
	return true
}

// Members returns the members of the last snapshot build.
func (s *Server) Members() []Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.members)
}

// Resources returns the resources being served (nil before the first
// build).
func (s *Server) Resources() *Resources {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// SetFault turns the test fault on or off: while on, the chatcore cluster
// is served with an invalid lb_policy (see badCluster), bypassing
// validation on purpose so that clients' NACK paths can be tested end to
// end. Off restores the last good resources.
func (s *Server) SetFault(ctx context.Context, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault == on {
		return
	}
	s.fault = on
	s.log.Warn("test fault changed: bad cluster resource", "on", on)
	s.refreshLocked(ctx)
}

func placementSummary(ps []Placement) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		h := "healthy"
		if !p.Healthy {
			h = "unhealthy"
		}
		out[i] = fmt.Sprintf("%s@%s p%d %s %s e%d %s", p.Name, p.Addr, p.Priority, p.Role, p.State, p.Epoch, h)
	}
	return out
}
