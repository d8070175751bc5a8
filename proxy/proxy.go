// Package proxy is the hachat sidecar: a TCP proxy steered by an xDS control
// plane over ADS, with its own active health checks so that it fails over
// even while the control plane is away.
//
// Clients (webapi, interaction) connect to the sidecar's listen address on
// loopback. Each new connection goes to the chat core that the sidecar's own
// checks see as primary with the newest epoch; when none does, to the best
// host by EDS priority and health. When a host turns unhealthy, or a newer
// primary appears, the sidecar closes every client connection to the old
// host so that clients reconnect at once.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hachat/hachat/telemetry"
)

// Resources is a static set of xDS resources. NewStatic feeds it through the
// same decoding, validation and apply path as an ADS response, so benchmarks
// and tests exercise the real sidecar without a control plane.
type Resources struct {
	// Listeners are LDS resources.
	Listeners []*listenerv3.Listener
	// Clusters are CDS resources.
	Clusters []*clusterv3.Cluster
	// Endpoints are EDS resources.
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Proxy is one sidecar. Build it with New or NewStatic, then call Run.
type Proxy struct {
	cfg    Config
	tel    *telemetry.Telemetry
	log    *slog.Logger
	m      *metrics
	um     *upstreamMetrics
	tracer trace.Tracer
	ads    *adsClient  // nil for a static proxy
	tls    *sidecarTLS // nil: plaintext

	ln      net.Listener
	adminLn net.Listener
	admin   *http.Server

	// runCtx is the context of Run: host checkers and connections live
	// under it. Until Run starts it is a cancelled-never background context
	// held back by started.
	runCtx  context.Context
	started chan struct{}
	wg      sync.WaitGroup // host checkers and client connections

	mu          sync.Mutex
	lds         map[string]listenerInfo
	cds         map[string]clusterInfo
	eds         map[string]assignment
	listener    listenerInfo // the listener this sidecar serves
	cluster     *cluster     // the upstream cluster of that listener; nil until known
	changed     chan struct{}
	xds         XDSStatus
	configured  bool
	stopping    bool
	pendingHost []*host // hosts created before Run started; their checkers start in Run
}

// XDSStatus is what the admin endpoint shows about the control plane.
type XDSStatus struct {
	// Address is the control plane of the current (or last) ADS stream,
	// or the first one before any answered ("static" for NewStatic).
	Address string `json:"address"`
	// Servers are every control plane the sidecar knows, in order.
	Servers []string `json:"servers,omitempty"`
	// Connected is true while an ADS stream is open and has answered.
	Connected bool `json:"connected"`
	// Moves counts streams established to another control plane than
	// the previous one.
	Moves uint64 `json:"moves"`
	// Cache is the state of the xDS cache file (nil without one).
	Cache *CacheStatus `json:"cache,omitempty"`
	// Versions are the last accepted versions by type: lds, cds, eds.
	Versions map[string]string `json:"versions"`
	// Updates and NACKs count accepted and rejected responses.
	Updates uint64 `json:"updates"`
	NACKs   uint64 `json:"nacks"`
	// LastNACK is the last rejected response, if any.
	LastNACK *NACKInfo `json:"lastNack,omitempty"`
}

// NACKInfo describes a response the sidecar rejected: its type, version and
// nonce, why, and when.
type NACKInfo struct {
	Type    string    `json:"type"`
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// New builds a sidecar that takes its configuration from the control planes
// of cfg.XDS. With cfg.XDSCache set it first loads the last accepted
// configuration from that file, if the file is there and valid, so that it
// routes before any control plane answers. It binds the listen and admin addresses at once (so callers can
// read Addr and AdminAddr); Run serves them and releases them when it returns.
func New(cfg Config, tel *telemetry.Telemetry) (*Proxy, error) {
	if err := cfg.validate(false); err != nil {
		return nil, err
	}
	p, err := newProxy(cfg, tel)
	if err != nil {
		return nil, err
	}
	p.ads = newADSClient(p)
	p.xds.Servers = cfg.XDSServers()
	p.xds.Address = p.xds.Servers[0]
	for _, addr := range p.xds.Servers {
		p.m.adsServer.WithLabelValues(addr).Set(0)
	}
	if cfg.XDSCache != "" {
		p.ads.loadCache()
	}
	return p, nil
}

// NewStatic builds a sidecar from static resources instead of a control
// plane; cfg.XDS is ignored. The resources go through the same decoding,
// validation and apply path as ADS responses; a bad resource is an error.
func NewStatic(cfg Config, tel *telemetry.Telemetry, res Resources) (*Proxy, error) {
	if err := cfg.validate(true); err != nil {
		return nil, err
	}
	lds, err := decodeListeners(toAny(res.Listeners))
	if err != nil {
		return nil, err
	}
	cds, err := decodeClusters(toAny(res.Clusters))
	if err != nil {
		return nil, err
	}
	eds, err := decodeAssignments(toAny(res.Endpoints))
	if err != nil {
		return nil, err
	}
	p, err := newProxy(cfg, tel)
	if err != nil {
		return nil, err
	}
	p.xds.Address = "static"
	p.apply(lds, cds, eds)
	return p, nil
}

func toAny[T proto.Message](ms []T) []*anypb.Any {
	out := make([]*anypb.Any, 0, len(ms))
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			// Marshalling a well-formed generated message does not fail;
			// keep an undecodable Any so decoding reports it.
			a = &anypb.Any{TypeUrl: "invalid"}
		}
		out = append(out, a)
	}
	return out
}

func newProxy(cfg Config, tel *telemetry.Telemetry) (*Proxy, error) {
	if tel == nil {
		return nil, fmt.Errorf("%w: nil telemetry", ErrConfig)
	}
	reg := prometheus.Registerer(tel.Registry)
	if cfg.metricsListener != "" {
		// The edge runs a proxy per public listener in one process.
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"listener": cfg.metricsListener}, reg)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	um, err := newUpstreamMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	st, err := newSidecarTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		um:      um,
		tls:     st,
		cfg:     cfg,
		tel:     tel,
		log:     tel.Logger.With("node", cfg.NodeID),
		m:       m,
		tracer:  tel.Tracer.Tracer("github.com/hachat/hachat/proxy"),
		runCtx:  context.Background(),
		started: make(chan struct{}),
		changed: make(chan struct{}),
		xds:     XDSStatus{Versions: map[string]string{}},
	}
	p.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	if cfg.Admin != "" {
		p.adminLn, err = net.Listen("tcp", cfg.Admin)
		if err != nil {
			p.ln.Close()
			return nil, fmt.Errorf("listen admin %s: %w", cfg.Admin, err)
		}
		// Failed TLS handshakes (a client without a certificate) are
		// logged by the server at debug; refusals of a verified identity
		// are security events logged by the middleware.
		p.admin = &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: 5 * time.Second,
			ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)}
		if p.tls != nil {
			p.adminLn = tls.NewListener(p.adminLn, p.tls.admin)
		}
	}
	return p, nil
}

// Addr is the bound data listener address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// AdminAddr is the bound admin HTTP address, or nil when the admin endpoint
// is disabled.
func (p *Proxy) AdminAddr() net.Addr {
	if p.adminLn == nil {
		return nil
	}
	return p.adminLn.Addr()
}

// Run serves until ctx is cancelled: the ADS client, the health checks, the
// data listener and the admin endpoint. It closes every client connection
// before it returns. Run may be called once.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	p.runCtx = ctx
	pending := p.pendingHost
	p.pendingHost = nil
	for _, h := range pending {
		p.startChecker(h)
	}
	close(p.started)
	p.mu.Unlock()

	admin := ""
	if a := p.AdminAddr(); a != nil {
		admin = a.String()
	}
	identity := ""
	if p.tls != nil {
		identity = p.tls.src.ID().String()
	}
	p.log.Info("sidecar starting", "listen", p.ln.Addr().String(), "admin", admin, "xds", p.xds.Address,
		"listener", p.cfg.Listener, "mtls", identity)

	errc := make(chan error, 3)
	var loops sync.WaitGroup
	loops.Add(1)
	go func() {
		defer loops.Done()
		errc <- p.serveListener(ctx)
	}()
	if p.admin != nil {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := p.admin.Serve(p.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin: %w", err)
			}
		}()
	}
	if p.ads != nil {
		loops.Add(1)
		go func() {
			defer loops.Done()
			p.ads.run(ctx)
		}()
	}
	if p.tls != nil {
		// Rotated certificate files take effect at the next handshake.
		loops.Add(1)
		go func() {
			defer loops.Done()
			p.tls.src.Watch(ctx, 0, p.log)
		}()
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	p.ln.Close()
	if p.admin != nil {
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		p.admin.Shutdown(sctx)
		scancel()
	}
	p.mu.Lock()
	p.stopping = true
	if c := p.cluster; c != nil {
		p.closeAllLocked(c, "sidecar stopping")
	}
	p.mu.Unlock()
	loops.Wait()
	p.wg.Wait()
	p.log.Info("sidecar stopped")
	return err
}

// apply installs a new last-good configuration (already decoded and
// validated): it picks the served listener and cluster and reconciles the
// upstream hosts, starting and stopping their health checks.
func (p *Proxy) apply(lds map[string]listenerInfo, cds map[string]clusterInfo, eds map[string]assignment) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return
	}
	p.lds, p.cds, p.eds = lds, cds, eds
	p.configured = true

	li, ok := p.pickListener(lds)
	if !ok {
		if p.listener.name != "" {
			p.log.Warn("served listener gone from LDS; no upstream for new connections", "listener", p.listener.name)
		}
		p.listener = listenerInfo{}
		p.setClusterLocked(nil)
		return
	}
	if li != p.listener {
		p.log.Info("serving listener", "listener", li.name, "cluster", li.cluster, "listen", p.ln.Addr().String())
	}
	p.listener = li
	ci, ok := cds[li.cluster]
	if !ok {
		p.log.Warn("cluster of the served listener not in CDS yet", "cluster", li.cluster)
		p.setClusterLocked(nil)
		return
	}
	eps := ci.static
	if ci.eds {
		eps = eds[ci.edsName].endpoints
	}
	c := p.cluster
	if c == nil || c.name != ci.name {
		c = newCluster(ci)
		p.setClusterLocked(c)
	}
	c.info = ci
	seen := make(map[string]bool, len(eps))
	for _, ep := range eps {
		seen[ep.addr] = true
		if h, ok := c.hosts[ep.addr]; ok {
			h.ep = ep
			continue
		}
		if h, ok := c.orphans[ep.addr]; ok {
			p.reviveLocked(h, ep)
			p.startOrDeferChecker(h)
			continue
		}
		h := p.newHost(c, ep)
		c.hosts[ep.addr] = h
		p.upstreamChange(h, "added")
		p.log.Info("upstream host added", "cluster", c.name, "host", ep.addr, "priority", ep.priority,
			"eds_health", ep.health.String(), "name", ep.name, "role", ep.role, "epoch", ep.epoch)
		p.startOrDeferChecker(h)
	}
	for addr, h := range c.hosts {
		if !seen[addr] {
			p.removeHostLocked(h, "removed from EDS", true)
		}
	}
	p.recomputeLocked("config update")
}

// startOrDeferChecker starts h's checker, or queues it until Run starts.
func (p *Proxy) startOrDeferChecker(h *host) {
	select {
	case <-p.started:
		p.startChecker(h)
	default:
		p.pendingHost = append(p.pendingHost, h)
	}
}

// pickListener finds the listener this sidecar serves: the configured name,
// or the only non-API listener with a tcp_proxy cluster.
func (p *Proxy) pickListener(lds map[string]listenerInfo) (listenerInfo, bool) {
	if p.cfg.Listener != "" {
		li, ok := lds[p.cfg.Listener]
		return li, ok && !li.api && li.cluster != ""
	}
	var found listenerInfo
	n := 0
	for _, li := range lds {
		if !li.api && li.cluster != "" {
			found = li
			n++
		}
	}
	return found, n == 1
}

// setClusterLocked replaces the served cluster, tearing down the old one.
func (p *Proxy) setClusterLocked(c *cluster) {
	if old := p.cluster; old != nil && old != c {
		p.closeAllLocked(old, "cluster replaced")
	}
	p.cluster = c
	p.notifyLocked()
}

// notifyLocked wakes connections waiting for a route.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}
