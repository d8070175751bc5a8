package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"unicode/utf8"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hachat/hachat/pairs"
)

// Names of the published resources. Clients depend on them: grpc-go asks
// for APIListenerName (target xds:///chatcore), sidecars for ListenerName
// or for every listener.
const (
	// ListenerName is the TCP proxy listener for sidecars.
	ListenerName = "chatcore-sidecar"
	// APIListenerName is the API listener for proxyless gRPC clients.
	APIListenerName = "chatcore"
	// RouteName is the route configuration the API listener names in RDS.
	RouteName = "chatcore-route"
	// ClusterName is the EDS cluster of chat cores, and the name of its
	// ClusterLoadAssignment.
	ClusterName = "chatcore"
	// HealthService is the grpc.health.v1 service a core reports SERVING
	// only while it is primary.
	HealthService = "hachat.chat.v1.Chat"
	// MetadataFilter is the endpoint filter_metadata key holding name, role,
	// epoch and state of the core behind each endpoint.
	MetadataFilter = "hachat"
	// TCPProxyFilter is the network filter of the sidecar listener.
	TCPProxyFilter = "envoy.filters.network.tcp_proxy"
	// RouterFilter is the only HTTP filter of the API listener.
	RouterFilter = "envoy.filters.http.router"
	http2Options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// ErrInvalidResource reports a built resource that failed validation; it
// is never published.
var ErrInvalidResource = errors.New("invalid xds resource")

// Placement says where one core landed in the load assignment.
type Placement struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Role     string `json:"role"`
	Epoch    uint64 `json:"epoch"`
	State    string `json:"state"`
	Priority uint32 `json:"priority"`
	Healthy  bool   `json:"healthy"`
	// Pair is the core's pair when the cluster runs several (empty with
	// one).
	Pair string `json:"pair,omitempty"`
}

// Resources is one consistent, validated set of resources for the chat
// service.
type Resources struct {
	// Version is a hash of the content: equal content, equal version, also
	// across control plane restarts, so a restarted control plane does not
	// make clients reapply what they already have.
	Version string
	// Primary is the name of the core published at priority 0 as primary,
	// empty when no alive core claims the primary role.
	Primary string
	// Placements lists every published core in priority order.
	Placements []Placement
	// Skipped explains each core left out (bad or duplicate address).
	Skipped []string
	// Pairs describes every pair, in pair order, when the cluster runs
	// several (nil with the default pair only).
	Pairs []PairInfo

	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource

	// EnvoyListeners and EnvoyClusters replace Listeners and Clusters for
	// Envoy nodes when the resources carry TLS (Config.TrustDomain set):
	// Envoy does not implement certificate provider instances, so its TLS
	// contexts name the SDS secrets of its bootstrap instead, and its
	// sidecar listener terminates mTLS (the hachat sidecar terminates it by
	// its own --tls-* flags). Nil without TLS: every node gets the same.
	EnvoyListeners []types.Resource
	EnvoyClusters  []types.Resource
}

// ByType returns the resources keyed by xDS type URL (the flavour every
// node but Envoy gets).
func (r *Resources) ByType() map[resource.Type][]types.Resource {
	return map[resource.Type][]types.Resource{
		resource.ListenerType: r.Listeners,
		resource.RouteType:    r.Routes,
		resource.ClusterType:  r.Clusters,
		resource.EndpointType: r.Endpoints,
	}
}

// ForEnvoy returns the resources keyed by xDS type URL as an Envoy node
// gets them: ByType with the Envoy flavour of listeners and clusters when
// there is one.
func (r *Resources) ForEnvoy() map[resource.Type][]types.Resource {
	m := r.ByType()
	if r.EnvoyListeners != nil {
		m[resource.ListenerType] = r.EnvoyListeners
	}
	if r.EnvoyClusters != nil {
		m[resource.ClusterType] = r.EnvoyClusters
	}
	return m
}

// Build turns the member list into the chat service's resources: the
// sidecar listener, the API listener and its route, the EDS cluster with
// its health check, and the load assignment (the primary, the alive core
// with role primary and the newest epoch, at priority 0, every other core
// at priority 1; without a primary every core gets its own priority,
// alive before not alive, primary role before backup, newest epoch first).
// Members other than cores, and cores that left, are ignored. Build is pure
// and validates every resource; it returns an error wrapping ErrBadConfig
// or ErrInvalidResource and no resources when anything is wrong.
func Build(cfg Config, members []Member) (*Resources, error) {
	return BuildPairs(cfg, members, PairInputs{})
}

// BuildPairs is Build with what the control plane knows of the pairs
// besides membership (live sessions, drains). With the cores of one pair,
// the default one, the resources are exactly Build's of a one-pair
// cluster; with more, see buildPairs.
func BuildPairs(cfg Config, members []Member, in PairInputs) (*Resources, error) {
	if err := cfg.validateResources(); err != nil {
		return nil, err
	}
	names := pairNames(members)
	withCores := slices.Clone(names)
	for p, by := range in.Adopted { // an adopted pair keeps its route when its cores left
		if pairs.Validate(p) == nil && by != p && slices.Contains(withCores, by) && !slices.Contains(names, p) {
			names = append(names, p)
		}
	}
	slices.SortFunc(names, comparePairs)
	if len(names) > 1 || len(names) == 1 && names[0] != pairs.Default {
		return buildPairs(cfg, members, names, in)
	}
	placements, primary, skipped := place(members)
	r := &Resources{Placements: placements, Primary: primary, Skipped: skipped}
	sidecar, err := sidecarListener(cfg, nil)
	if err != nil {
		return nil, err
	}
	api, err := apiListener()
	if err != nil {
		return nil, err
	}
	hc, err := chatCluster(cfg, providerFlavour, ClusterName)
	if err != nil {
		return nil, err
	}
	r.Listeners = []types.Resource{api, sidecar}
	r.Routes = []types.Resource{chatRoute()}
	r.Clusters = []types.Resource{hc}
	r.Endpoints = []types.Resource{loadAssignment(ClusterName, placements)}
	ils, ics, ies, err := ingressResources(cfg, members)
	if err != nil {
		return nil, err
	}
	r.Listeners = append(r.Listeners, ils...)
	r.Clusters = append(r.Clusters, ics...)
	r.Endpoints = append(r.Endpoints, ies...)
	if cfg.TrustDomain != "" {
		down, err := downstreamTLS(cfg.TrustDomain)
		if err != nil {
			return nil, err
		}
		esidecar, err := sidecarListener(cfg, down)
		if err != nil {
			return nil, err
		}
		ehc, err := chatCluster(cfg, sdsFlavour, ClusterName)
		if err != nil {
			return nil, err
		}
		r.EnvoyListeners = append([]types.Resource{api, esidecar}, ils...)
		r.EnvoyClusters = append([]types.Resource{ehc}, ics...)
	}
	return finish(r)
}

// finish validates r and sets its version.
func finish(r *Resources) (*Resources, error) {
	if err := ValidateAll(r); err != nil {
		return nil, err
	}
	v, err := contentVersion(r)
	if err != nil {
		return nil, err
	}
	r.Version = v
	return r, nil
}

// validator is what every generated Envoy proto offers.
type validator interface{ ValidateAll() error }

// ValidateAll runs the proto constraint validation of every resource in r
// and returns the first failure wrapped in ErrInvalidResource.
func ValidateAll(r *Resources) error {
	for _, flavour := range []map[resource.Type][]types.Resource{r.ByType(), r.ForEnvoy()} {
		for typ, items := range flavour {
			for _, item := range items {
				v, ok := item.(validator)
				if !ok {
					return fmt.Errorf("%w: %s %T has no validation", ErrInvalidResource, typ, item)
				}
				if err := v.ValidateAll(); err != nil {
					return fmt.Errorf("%w: %s %q: %v", ErrInvalidResource, shortType(typ), resourceName(item), err)
				}
			}
		}
	}
	return nil
}

// rank orders cores: alive before suspect before dead, primary role
// first, newest epoch first, then by name so that the order is total.
func rank(a, b Member) int {
	return cmp.Or(
		cmp.Compare(a.State, b.State),
		cmp.Compare(roleRank(a.Role), roleRank(b.Role)),
		cmp.Compare(b.Epoch, a.Epoch),
		cmp.Compare(a.Name, b.Name),
	)
}

func roleRank(role string) int {
	if role == RolePrimary {
		return 0
	}
	return 1
}

// place picks the cores to publish and their priorities, and names the
// primary (empty when no alive core has the primary role).
func place(members []Member) ([]Placement, string, []string) {
	var cores []Member
	var skipped []string
	for _, m := range members {
		if m.Kind != KindCore || m.State == StateLeft {
			continue
		}
		if !utf8.ValidString(m.Name) || !utf8.ValidString(m.Role) {
			skipped = append(skipped, fmt.Sprintf("%q: name or role is not valid UTF-8", m.Name))
			continue
		}
		if _, _, err := hostPort(m.GRPCAddr); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", m.Name, err))
			continue
		}
		cores = append(cores, m)
	}
	slices.SortFunc(cores, rank)
	// One endpoint per address: grpc-go rejects a load assignment with a
	// duplicate address, and a restarted core may briefly appear twice
	// (its dead former self and its new self). The best-ranked wins.
	seen := map[string]string{}
	kept := cores[:0]
	for _, m := range cores {
		if other, dup := seen[m.GRPCAddr]; dup {
			skipped = append(skipped, fmt.Sprintf("%s: address %s already published for %s", m.Name, m.GRPCAddr, other))
			continue
		}
		seen[m.GRPCAddr] = m.Name
		kept = append(kept, m)
	}
	cores = kept
	primary := ""
	if len(cores) > 0 && cores[0].State == StateAlive && cores[0].Role == RolePrimary {
		primary = cores[0].Name
	}
	out := make([]Placement, 0, len(cores))
	for i, m := range cores {
		p := uint32(i)
		if primary != "" {
			p = min(p, 1)
		}
		out = append(out, Placement{
			Name: m.Name, Addr: m.GRPCAddr, Role: m.Role, Epoch: m.Epoch,
			State: m.State.String(), Priority: p, Healthy: m.State == StateAlive,
		})
	}
	return out, primary, skipped
}

// hostPort splits an endpoint address; the host must be an IP literal
// because EDS endpoints are not resolved.
func hostPort(addr string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("bad grpc address %q: %w", addr, err)
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("bad grpc address %q: host is not an IP address", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("bad grpc address %q: bad port", addr)
	}
	return host, uint32(n), nil
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol: core.SocketAddress_TCP, Address: host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// sidecarListener is the TCP proxy listener: every connection goes to the
// chatcore cluster. The idle timeout is disabled because chat
// subscriptions are long-lived streams that may be quiet for hours. A
// non-nil ts (the Envoy flavour with TLS) makes the filter chain terminate
// mTLS.
func sidecarListener(cfg Config, ts *core.TransportSocket) (*listener.Listener, error) {
	return pairSidecarListener(ListenerName, ClusterName, cfg.ListenerPort, ts)
}

// pairSidecarListener is a sidecar listener called name on 127.0.0.1:port
// whose TCP proxy goes to cluster clusterName.
func pairSidecarListener(name, clusterName string, port uint32, ts *core.TransportSocket) (*listener.Listener, error) {
	tp, err := anypb.New(&tcpproxy.TcpProxy{
		StatPrefix:       clusterName,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName},
		IdleTimeout:      durationpb.New(0),
	})
	if err != nil {
		return nil, fmt.Errorf("pack tcp proxy: %w", err)
	}
	return &listener.Listener{
		Name:    name,
		Address: socketAddress("127.0.0.1", port),
		FilterChains: []*listener.FilterChain{{
			Filters:         []*listener.Filter{{Name: TCPProxyFilter, ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}}},
			TransportSocket: ts,
		}},
	}, nil
}

// apiListener is the listener grpc-go's proxyless client resolves for the
// target xds:///chatcore: an HttpConnectionManager whose routes come over
// ADS (RDS chatcore-route) and whose only filter is the router.
func apiListener() (*listener.Listener, error) {
	rt, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, fmt.Errorf("pack router: %w", err)
	}
	m, err := anypb.New(&hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: APIListenerName,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: adsSource(), RouteConfigName: RouteName,
		}},
		HttpFilters: []*hcm.HttpFilter{{Name: RouterFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rt}}},
	})
	if err != nil {
		return nil, fmt.Errorf("pack http connection manager: %w", err)
	}
	return &listener.Listener{
		Name:        APIListenerName,
		ApiListener: &listener.ApiListener{ApiListener: m},
	}, nil
}

// chatRoute sends every request to the chatcore cluster. The route timeout
// is disabled: Subscribe and WatchSessions are endless streams.
func chatRoute() *route.RouteConfiguration {
	return &route.RouteConfiguration{
		Name: RouteName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    ClusterName,
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: ClusterName},
					Timeout:          durationpb.New(0),
				}},
			}},
		}},
	}
}

// chatCluster is the EDS cluster of chat cores with an active gRPC health
// check of HealthService (SERVING only on the primary). HTTP/2 is declared
// because Envoy's gRPC health checker requires it; the TCP proxy ignores
// it. close_connections_on_host_health_failure makes Envoy drop
// connections to a core that fails its checks, so clients reconnect at
// once. With cfg.TrustDomain set, the cluster speaks mTLS to the cores
// (transport socket with an UpstreamTlsContext in flavour f, peer SAN
// spiffe://<td>/core/...).
func chatCluster(cfg Config, f tlsFlavour, name string) (*cluster.Cluster, error) {
	h2, err := anypb.New(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("pack http protocol options: %w", err)
	}
	var ts *core.TransportSocket
	if cfg.TrustDomain != "" {
		if ts, err = upstreamTLS(f, cfg.TrustDomain); err != nil {
			return nil, err
		}
	}
	interval := durationpb.New(cfg.HealthInterval)
	return &cluster.Cluster{
		TransportSocket:      ts,
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		ConnectTimeout:       durationpb.New(cfg.ConnectTimeout),
		HealthChecks: []*core.HealthCheck{{
			Timeout:            durationpb.New(cfg.HealthTimeout),
			Interval:           interval,
			NoTrafficInterval:  interval,
			UnhealthyThreshold: wrapperspb.UInt32(cfg.UnhealthyThreshold),
			HealthyThreshold:   wrapperspb.UInt32(cfg.HealthyThreshold),
			HealthChecker: &core.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &core.HealthCheck_GrpcHealthCheck{
				ServiceName: HealthService,
			}},
		}},
		CloseConnectionsOnHostHealthFailure: true,
		TypedExtensionProtocolOptions:       map[string]*anypb.Any{http2Options: h2},
	}, nil
}

// loadAssignment groups the placements by priority, one locality per
// priority (grpc-go rejects a locality repeated within a priority, and
// priorities must be contiguous from 0, which place guarantees).
func loadAssignment(name string, ps []Placement) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	var cur *endpoint.LocalityLbEndpoints
	for _, p := range ps {
		if cur == nil || cur.Priority != p.Priority {
			cur = &endpoint.LocalityLbEndpoints{
				Locality:            &core.Locality{Region: "hachat", SubZone: fmt.Sprintf("priority-%d", p.Priority)},
				Priority:            p.Priority,
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}
			cla.Endpoints = append(cla.Endpoints, cur)
		}
		host, port, _ := hostPort(p.Addr) // place checked it
		health := core.HealthStatus_UNHEALTHY
		if p.Healthy {
			health = core.HealthStatus_HEALTHY
		}
		cur.LbEndpoints = append(cur.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address:  socketAddress(host, port),
				Hostname: p.Name,
			}},
			HealthStatus: health,
			Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{
				MetadataFilter: {Fields: map[string]*structpb.Value{
					"name":  structpb.NewStringValue(p.Name),
					"role":  structpb.NewStringValue(p.Role),
					"epoch": structpb.NewNumberValue(float64(p.Epoch)),
					"state": structpb.NewStringValue(p.State),
				}},
			}},
			LoadBalancingWeight: wrapperspb.UInt32(1),
		})
	}
	return cla
}

// contentVersion hashes every resource, in a fixed order, deterministically.
func contentVersion(r *Resources) (string, error) {
	h := sha256.New()
	for _, group := range [][]types.Resource{r.Listeners, r.Routes, r.Clusters, r.Endpoints, r.EnvoyListeners, r.EnvoyClusters} {
		for _, item := range group {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(item)
			if err != nil {
				return "", fmt.Errorf("marshal %q: %w", resourceName(item), err)
			}
			fmt.Fprintf(h, "%d:", len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// resourceName returns the name of any published resource.
func resourceName(r types.Resource) string {
	switch v := r.(type) {
	case *listener.Listener:
		return v.GetName()
	case *route.RouteConfiguration:
		return v.GetName()
	case *cluster.Cluster:
		return v.GetName()
	case *endpoint.ClusterLoadAssignment:
		return v.GetClusterName()
	}
	return ""
}

// shortType turns a type URL into its short kind for logs and status.
func shortType(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	return typeURL
}
