package proxy

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// waitFor polls cond every 5ms until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// fakeCore is a chat core stand-in: a gRPC server answering Chat/Status with
// a name, role and epoch the test controls, and grpc.health.v1 with the Chat
// service SERVING while it is primary, as a core does. Stop closes its
// listener and every connection, like a killed process; Start serves again
// on the same address.
type fakeCore struct {
	chatpb.UnimplementedChatServer
	t     *testing.T
	name  string
	addr  string
	role  atomic.Value
	epoch atomic.Uint64

	// creds are the server credentials (nil: plaintext).
	creds credentials.TransportCredentials
	// lastPeer is the SPIFFE ID of the last caller of Status under mTLS.
	lastPeer atomic.Value
	// sick, while set, makes Status fail the way a live but unhealthy
	// process does, with its listener and connections left open: sickError
	// answers an error, sickHang holds the call until the caller gives up.
	sick atomic.Int32

	// health is its grpc.health.v1 service; noHealth (set before start)
	// leaves it unregistered, like a core that does not serve it.
	health   *health.Server
	noHealth bool
	// watching counts the grpc.health.v1 Watch streams open on it.
	watching atomic.Int32

	mu  sync.Mutex
	srv *grpc.Server
	ln  *connsListener
}

// watchCounter is a health service that counts its open Watch streams.
type watchCounter struct {
	*health.Server
	n *atomic.Int32
}

func (w watchCounter) Watch(req *healthpb.HealthCheckRequest, st healthpb.Health_WatchServer) error {
	w.n.Add(1)
	defer w.n.Add(-1)
	return w.Server.Watch(req, st)
}

// connsListener is a listener that keeps the connections it accepted, so
// that a test can reset them as a killed process's kernel does.
type connsListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func newFakeCore(t *testing.T, name, role string, epoch uint64) *fakeCore {
	t.Helper()
	f := &fakeCore{t: t, name: name, health: health.NewServer()}
	f.set(role, epoch)
	f.start("127.0.0.1:0")
	t.Cleanup(f.stop)
	return f
}

func (f *fakeCore) start(addr string) {
	f.t.Helper()
	var ln net.Listener
	var err error
	// The port of a just-stopped server can take a moment to free.
	waitFor(f.t, 5*time.Second, "listen "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	f.addr = ln.Addr().String()
	var opts []grpc.ServerOption
	if f.creds != nil {
		opts = append(opts, grpc.Creds(f.creds))
	}
	srv := grpc.NewServer(opts...)
	chatpb.RegisterChatServer(srv, f)
	if !f.noHealth {
		healthpb.RegisterHealthServer(srv, watchCounter{Server: f.health, n: &f.watching})
	}
	cl := &connsListener{Listener: ln}
	f.mu.Lock()
	f.srv, f.ln = srv, cl
	f.mu.Unlock()
	go srv.Serve(cl)
}

// kill stops f as kill -9 does: its listener gone first (connects are
// refused), then every connection reset (RST, no GOAWAY, no FIN).
func (f *fakeCore) kill() {
	f.mu.Lock()
	ln := f.ln
	f.mu.Unlock()
	if ln != nil {
		ln.Close()
		ln.mu.Lock()
		for _, c := range ln.conns {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
		ln.mu.Unlock()
	}
	f.stop()
}

func (f *fakeCore) stop() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// How a sick fakeCore answers Status.
const (
	sickNone int32 = iota
	sickError
	sickHang
)

// set changes the role and epoch Status answers, then the Chat service's
// serving status (SERVING while primary), in a core's order.
func (f *fakeCore) set(role string, epoch uint64) {
	f.role.Store(role)
	f.epoch.Store(epoch)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if role == "primary" {
		st = healthpb.HealthCheckResponse_SERVING
	}
	f.health.SetServingStatus(chatService, st)
}

// chatService is the service the cores' health checks name.
const chatService = "hachat.chat.v1.Chat"

// Status implements chatpb.ChatServer.
func (f *fakeCore) Status(ctx context.Context, _ *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	if id, err := mtls.FromContext(ctx); err == nil {
		f.lastPeer.Store(id.String())
	}
	switch f.sick.Load() {
	case sickError:
		return nil, status.Error(codes.Unavailable, "chat service not serving")
	case sickHang:
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &chatpb.StatusResponse{Name: f.name, Role: f.role.Load().(string), Epoch: f.epoch.Load()}, nil
}

// xdsRecord is one DiscoveryRequest or DiscoveryResponse the control plane saw.
type xdsRecord struct {
	typeURL, version, nonce string
	nack                    bool
}

// controlPlane is an in-process go-control-plane ADS server.
type controlPlane struct {
	t     *testing.T
	cache cachev3.SnapshotCache
	addr  string
	srv   *grpc.Server

	mu        sync.Mutex
	requests  []xdsRecord
	responses []xdsRecord
	streams   int
}

func newControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	cp.start("127.0.0.1:0")
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start(addr string) {
	cp.t.Helper()
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			cp.mu.Lock()
			cp.streams++
			cp.mu.Unlock()
			return nil
		},
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			cp.mu.Lock()
			cp.requests = append(cp.requests, xdsRecord{req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail() != nil})
			cp.mu.Unlock()
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			cp.mu.Lock()
			cp.responses = append(cp.responses, xdsRecord{resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), false})
			cp.mu.Unlock()
		},
	}
	srv := serverv3.NewServer(context.Background(), cp.cache, cb)
	var ln net.Listener
	var err error
	waitFor(cp.t, 5*time.Second, "listen "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	cp.addr = ln.Addr().String()
	cp.srv = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, srv)
	go cp.srv.Serve(ln)
}

func (cp *controlPlane) stop() {
	if cp.srv != nil {
		cp.srv.Stop()
		cp.srv = nil
	}
}

// set publishes a snapshot for node (not checked for consistency, so that
// tests can publish bad resources).
func (cp *controlPlane) set(node, version string, res map[resource.Type][]types.Resource) {
	cp.t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		cp.t.Fatalf("snapshot: %v", err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		cp.t.Fatalf("set snapshot: %v", err)
	}
}

// acked reports whether every response of typeURL at version was answered
// by a request with that version and nonce and no error.
func (cp *controlPlane) acked(typeURL, version string) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, resp := range cp.responses {
		if resp.typeURL != typeURL || resp.version != version {
			continue
		}
		for _, req := range cp.requests {
			if req.typeURL == typeURL && req.nonce == resp.nonce && req.version == version && !req.nack {
				return true
			}
		}
	}
	return false
}

// nacked reports whether a response of typeURL at badVersion was answered by
// a NACK carrying its nonce and the previous good version.
func (cp *controlPlane) nacked(typeURL, badVersion, goodVersion string) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, resp := range cp.responses {
		if resp.typeURL != typeURL || resp.version != badVersion {
			continue
		}
		for _, req := range cp.requests {
			if req.typeURL == typeURL && req.nonce == resp.nonce && req.nack && req.version == goodVersion {
				return true
			}
		}
	}
	return false
}

func (cp *controlPlane) nackCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := 0
	for _, req := range cp.requests {
		if req.nack {
			n++
		}
	}
	return n
}

func (cp *controlPlane) streamCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.streams
}

// ep is an endpoint of a test ClusterLoadAssignment.
type ep struct {
	addr     string
	priority uint32
	health   corev3.HealthStatus
	name     string
	role     string
	epoch    uint64
}

func tcpListener(name, cluster string) *listenerv3.Listener {
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: "chatcore",
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 7301}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}},
	}
}

func edsCluster(name string, interval, timeout time.Duration, unhealthy, healthy uint32) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(time.Second),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		HealthChecks: []*corev3.HealthCheck{{
			Interval:           durationpb.New(interval),
			Timeout:            durationpb.New(timeout),
			UnhealthyThreshold: wrapperspb.UInt32(unhealthy),
			HealthyThreshold:   wrapperspb.UInt32(healthy),
			HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
				ServiceName: chatService}},
		}},
	}
}

func loadAssignment(name string, eps ...ep) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	byPrio := map[uint32]*endpointv3.LocalityLbEndpoints{}
	for _, e := range eps {
		host, portS, _ := net.SplitHostPort(e.addr)
		port, _ := strconv.Atoi(portS)
		loc, ok := byPrio[e.priority]
		if !ok {
			loc = &endpointv3.LocalityLbEndpoints{Priority: e.priority}
			byPrio[e.priority] = loc
			cla.Endpoints = append(cla.Endpoints, loc)
		}
		md, _ := structpb.NewStruct(map[string]any{"name": e.name, "role": e.role, "epoch": float64(e.epoch)})
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}},
			HealthStatus: e.health,
			Metadata:     &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"hachat": md}},
		})
	}
	return cla
}

// pairResources is the usual chat pair: primary a at priority 0, backup b at
// priority 1.
func pairResources(a, b *fakeCore, interval time.Duration, unhealthy uint32) map[resource.Type][]types.Resource {
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {tcpListener("chatcore-sidecar", "chatcore")},
		resource.ClusterType:  {edsCluster("chatcore", interval, 200*time.Millisecond, unhealthy, 1)},
		resource.EndpointType: {loadAssignment("chatcore",
			ep{a.addr, 0, corev3.HealthStatus_HEALTHY, a.name, "primary", 1},
			ep{b.addr, 1, corev3.HealthStatus_HEALTHY, b.name, "backup", 1})},
	}
}

// testConfig is a sidecar config on ephemeral loopback ports.
func testConfig(xds string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = "test-sidecar"
	cfg.XDS = xds
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin = "127.0.0.1:0"
	cfg.ADSBackoffMax = 200 * time.Millisecond
	return cfg
}

// startProxy runs p until the test ends.
func startProxy(t *testing.T, p *Proxy) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
	})
}

func newTestProxy(t *testing.T, xds string) *Proxy {
	t.Helper()
	p, err := New(testConfig(xds), telemetry.Discard())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startProxy(t, p)
	return p
}

// statusVia calls Chat/Status through the sidecar on a fresh connection and
// returns the name of the core that answered ("" on error).
func statusVia(addr string) string {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return ""
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	resp, err := chatpb.NewChatClient(cc).Status(ctx, &chatpb.StatusRequest{})
	if err != nil {
		return ""
	}
	return resp.GetName()
}

// metricValue sums the counter or gauge values a collector reports.
func metricValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			continue
		}
		sum += d.GetCounter().GetValue() + d.GetGauge().GetValue()
	}
	return sum
}

// longLived opens a gRPC connection through the sidecar, calls Status once
// and returns the connection and the name of the core that answered.
func longLived(t *testing.T, addr string) (*grpc.ClientConn, string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := chatpb.NewChatClient(cc).Status(ctx, &chatpb.StatusRequest{})
	if err != nil {
		t.Fatalf("status through the sidecar: %v", err)
	}
	return cc, resp.GetName()
}

// waitClosed waits until the sidecar has closed cc's connection.
func waitClosed(t *testing.T, cc *grpc.ClientConn, what string) {
	t.Helper()
	waitFor(t, 3*time.Second, what, func() bool { return cc.GetState() != connectivity.Ready })
}
