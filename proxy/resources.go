package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// xDS type URLs the sidecar subscribes to.
const (
	typePrefix   = "type.googleapis.com/"
	listenerType = typePrefix + "envoy.config.listener.v3.Listener"
	clusterType  = typePrefix + "envoy.config.cluster.v3.Cluster"
	endpointType = typePrefix + "envoy.config.endpoint.v3.ClusterLoadAssignment"
	tcpProxyType = typePrefix + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
)

// ErrBadResource marks an xDS resource that failed to decode or validate; the
// ADS client NACKs the response that carried it.
var ErrBadResource = errors.New("bad xds resource")

// Defaults applied to a cluster without a health check or connect timeout.
const (
	defaultHCInterval     = time.Second
	defaultHCTimeout      = 500 * time.Millisecond
	defaultUnhealthy      = 2
	defaultHealthy        = 1
	defaultConnectTimeout = time.Second
	defaultHCService      = "hachat.chat.v1.Chat"
)

// listenerInfo is what the sidecar takes from one LDS Listener.
type listenerInfo struct {
	name    string
	cluster string // from the tcp_proxy filter; empty if none
	api     bool   // an API listener (proxyless gRPC): ignored by the sidecar
}

// healthCheck is the active health check of a cluster, from CDS.
type healthCheck struct {
	Interval  time.Duration `json:"interval"`
	Timeout   time.Duration `json:"timeout"`
	Unhealthy int           `json:"unhealthyThreshold"`
	Healthy   int           `json:"healthyThreshold"`
	Service   string        `json:"service"`
	// Kind is the checker: "grpc" (Chat/Status, the default: the cluster
	// has a primary to find) or "tcp" (a connect: a cluster of equal,
	// stateless instances, balanced; see balanced in cluster.go).
	Kind string `json:"kind"`
}

// Health checker kinds (healthCheck.Kind).
const (
	checkGRPC = "grpc"
	checkTCP  = "tcp"
)

// clusterInfo is what the sidecar takes from one CDS Cluster.
type clusterInfo struct {
	name           string
	edsName        string // the ClusterLoadAssignment name for an EDS cluster
	eds            bool
	connectTimeout time.Duration
	hc             healthCheck
	static         []endpointInfo // endpoints of a STATIC cluster
}

// endpointInfo is one upstream host from EDS.
type endpointInfo struct {
	addr     string
	priority uint32
	health   corev3.HealthStatus
	name     string // metadata "hachat".name
	role     string // metadata "hachat".role
	epoch    uint64 // metadata "hachat".epoch
}

// assignment is one ClusterLoadAssignment.
type assignment struct {
	name      string
	endpoints []endpointInfo
}

// decodeListeners decodes and validates an LDS response.
func decodeListeners(res []*anypb.Any) (map[string]listenerInfo, error) {
	out := make(map[string]listenerInfo, len(res))
	for i, a := range res {
		var l listenerv3.Listener
		if err := unmarshal(a, listenerType, &l); err != nil {
			return nil, fmt.Errorf("listener %d: %w", i, err)
		}
		info, err := listenerFrom(&l)
		if err != nil {
			return nil, err
		}
		if _, dup := out[info.name]; dup {
			return nil, fmt.Errorf("%w: listener %q twice", ErrBadResource, info.name)
		}
		out[info.name] = info
	}
	return out, nil
}

func listenerFrom(l *listenerv3.Listener) (listenerInfo, error) {
	if err := l.Validate(); err != nil {
		return listenerInfo{}, fmt.Errorf("%w: listener %q: %v", ErrBadResource, l.GetName(), err)
	}
	if l.GetName() == "" {
		return listenerInfo{}, fmt.Errorf("%w: listener without a name", ErrBadResource)
	}
	info := listenerInfo{name: l.GetName(), api: l.GetApiListener() != nil}
	if info.api {
		return info, nil
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || tc.GetTypeUrl() != tcpProxyType {
				continue
			}
			var tp tcpproxyv3.TcpProxy
			if err := unmarshal(tc, tcpProxyType, &tp); err != nil {
				return listenerInfo{}, fmt.Errorf("listener %q tcp_proxy: %w", l.GetName(), err)
			}
			if err := tp.Validate(); err != nil {
				return listenerInfo{}, fmt.Errorf("%w: listener %q tcp_proxy: %v", ErrBadResource, l.GetName(), err)
			}
			c := tp.GetCluster()
			if c == "" {
				if wc := tp.GetWeightedClusters().GetClusters(); len(wc) > 0 {
					c = wc[0].GetName()
				}
			}
			if c == "" {
				return listenerInfo{}, fmt.Errorf("%w: listener %q: tcp_proxy names no cluster", ErrBadResource, l.GetName())
			}
			if info.cluster != "" && info.cluster != c {
				return listenerInfo{}, fmt.Errorf("%w: listener %q: filter chains name clusters %q and %q", ErrBadResource, l.GetName(), info.cluster, c)
			}
			info.cluster = c
		}
	}
	return info, nil
}

// decodeClusters decodes and validates a CDS response.
func decodeClusters(res []*anypb.Any) (map[string]clusterInfo, error) {
	out := make(map[string]clusterInfo, len(res))
	for i, a := range res {
		var c clusterv3.Cluster
		if err := unmarshal(a, clusterType, &c); err != nil {
			return nil, fmt.Errorf("cluster %d: %w", i, err)
		}
		info, err := clusterFrom(&c)
		if err != nil {
			return nil, err
		}
		if _, dup := out[info.name]; dup {
			return nil, fmt.Errorf("%w: cluster %q twice", ErrBadResource, info.name)
		}
		out[info.name] = info
	}
	return out, nil
}

func clusterFrom(c *clusterv3.Cluster) (clusterInfo, error) {
	if err := c.Validate(); err != nil {
		return clusterInfo{}, fmt.Errorf("%w: cluster %q: %v", ErrBadResource, c.GetName(), err)
	}
	if c.GetName() == "" {
		return clusterInfo{}, fmt.Errorf("%w: cluster without a name", ErrBadResource)
	}
	info := clusterInfo{
		name:           c.GetName(),
		connectTimeout: defaultConnectTimeout,
		hc: healthCheck{Interval: defaultHCInterval, Timeout: defaultHCTimeout,
			Unhealthy: defaultUnhealthy, Healthy: defaultHealthy, Service: defaultHCService, Kind: checkGRPC},
	}
	if ct := c.GetConnectTimeout(); ct != nil {
		info.connectTimeout = ct.AsDuration()
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		info.eds = true
		info.edsName = c.GetEdsClusterConfig().GetServiceName()
		if info.edsName == "" {
			info.edsName = c.GetName()
		}
	case clusterv3.Cluster_STATIC:
		if la := c.GetLoadAssignment(); la != nil {
			as, err := assignmentFrom(la)
			if err != nil {
				return clusterInfo{}, fmt.Errorf("cluster %q load_assignment: %w", c.GetName(), err)
			}
			info.static = as.endpoints
		}
	default:
		// Other discovery types (LOGICAL_DNS, ...) are accepted and served
		// with no endpoints: the sidecar routes only to EDS or static hosts.
	}
	if hcs := c.GetHealthChecks(); len(hcs) > 0 {
		h := hcs[0]
		info.hc.Interval = h.GetInterval().AsDuration()
		info.hc.Timeout = h.GetTimeout().AsDuration()
		if h.GetInterval() == nil || info.hc.Interval <= 0 || h.GetTimeout() == nil || info.hc.Timeout <= 0 {
			return clusterInfo{}, fmt.Errorf("%w: cluster %q: health check needs a positive interval and timeout", ErrBadResource, c.GetName())
		}
		if v := h.GetUnhealthyThreshold(); v != nil && v.GetValue() > 0 {
			info.hc.Unhealthy = int(v.GetValue())
		}
		if v := h.GetHealthyThreshold(); v != nil && v.GetValue() > 0 {
			info.hc.Healthy = int(v.GetValue())
		}
		if g := h.GetGrpcHealthCheck(); g != nil && g.GetServiceName() != "" {
			info.hc.Service = g.GetServiceName()
		}
		if h.GetTcpHealthCheck() != nil {
			info.hc.Kind = checkTCP
			info.hc.Service = ""
		}
	}
	if info.connectTimeout <= 0 {
		return clusterInfo{}, fmt.Errorf("%w: cluster %q: connect_timeout must be positive", ErrBadResource, c.GetName())
	}
	return info, nil
}

// decodeAssignments decodes and validates an EDS response.
func decodeAssignments(res []*anypb.Any) (map[string]assignment, error) {
	out := make(map[string]assignment, len(res))
	for i, a := range res {
		var cla endpointv3.ClusterLoadAssignment
		if err := unmarshal(a, endpointType, &cla); err != nil {
			return nil, fmt.Errorf("load assignment %d: %w", i, err)
		}
		as, err := assignmentFrom(&cla)
		if err != nil {
			return nil, err
		}
		if _, dup := out[as.name]; dup {
			return nil, fmt.Errorf("%w: load assignment %q twice", ErrBadResource, as.name)
		}
		out[as.name] = as
	}
	return out, nil
}

func assignmentFrom(cla *endpointv3.ClusterLoadAssignment) (assignment, error) {
	if err := cla.Validate(); err != nil {
		return assignment{}, fmt.Errorf("%w: load assignment %q: %v", ErrBadResource, cla.GetClusterName(), err)
	}
	as := assignment{name: cla.GetClusterName()}
	seen := map[string]bool{}
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return assignment{}, fmt.Errorf("%w: load assignment %q: endpoint without a socket address", ErrBadResource, as.name)
			}
			if sa.GetProtocol() != corev3.SocketAddress_TCP {
				return assignment{}, fmt.Errorf("%w: load assignment %q: endpoint %s is not TCP", ErrBadResource, as.name, sa.GetAddress())
			}
			port := sa.GetPortValue()
			if port == 0 || port > 65535 || sa.GetAddress() == "" {
				return assignment{}, fmt.Errorf("%w: load assignment %q: endpoint %q port %d", ErrBadResource, as.name, sa.GetAddress(), port)
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(port)))
			if seen[addr] {
				return assignment{}, fmt.Errorf("%w: load assignment %q: endpoint %s twice", ErrBadResource, as.name, addr)
			}
			seen[addr] = true
			ep := endpointInfo{addr: addr, priority: loc.GetPriority(), health: lb.GetHealthStatus()}
			if md := lb.GetMetadata().GetFilterMetadata()["hachat"]; md != nil {
				ep.name, ep.role, ep.epoch = metaFields(md)
			}
			as.endpoints = append(as.endpoints, ep)
		}
	}
	return as, nil
}

// metaFields reads name, role and epoch from the "hachat" filter metadata;
// the epoch may be a number or a decimal string.
func metaFields(md *structpb.Struct) (name, role string, epoch uint64) {
	f := md.GetFields()
	name = f["name"].GetStringValue()
	role = f["role"].GetStringValue()
	switch v := f["epoch"].GetKind().(type) {
	case *structpb.Value_NumberValue:
		if v.NumberValue > 0 {
			epoch = uint64(v.NumberValue)
		}
	case *structpb.Value_StringValue:
		epoch, _ = strconv.ParseUint(v.StringValue, 10, 64)
	}
	return name, role, epoch
}

// unmarshal decodes a into m after checking its type URL.
func unmarshal(a *anypb.Any, typeURL string, m proto.Message) error {
	if a.GetTypeUrl() != typeURL {
		return fmt.Errorf("%w: type %q, want %q", ErrBadResource, a.GetTypeUrl(), typeURL)
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return fmt.Errorf("%w: decode %s: %v", ErrBadResource, typeURL, err)
	}
	return nil
}
