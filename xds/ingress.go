package xds

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The edge's resources (published when Config.IngressCustomer is set): two
// TCP proxy listeners, each to an EDS cluster of equal instances that
// registered themselves in the gossip cluster.
const (
	// IngressCustomerListener is the customers' public listener.
	IngressCustomerListener = "ingress-customer"
	// IngressAgentListener is the agents' public listener.
	IngressAgentListener = "ingress-agent"
	// WebAPIClusterName is the cluster (and assignment) of webapi instances.
	WebAPIClusterName = "webapi"
	// InteractionClusterName is the cluster of interaction instances.
	InteractionClusterName = "interaction"
	// KindWebAPI and KindInteraction are the gossip kinds of the
	// instances; their HTTPAddr is their public listener.
	KindWebAPI      = "webapi"
	KindInteraction = "interaction"
)

// ingressCheckInterval is the edge's TCP check of each instance. A killed
// instance refuses the next connect and is out at once; the interval only
// bounds how fast a new or returning instance takes traffic.
const ingressCheckInterval = 100 * time.Millisecond

// ingressResources returns the edge's listeners, clusters and assignments,
// or nothing when the control plane publishes no ingress.
func ingressResources(cfg Config, members []Member) (ls, cs, es []types.Resource, err error) {
	for _, in := range []struct{ listener, addr, cluster, kind string }{
		{IngressCustomerListener, cfg.IngressCustomer, WebAPIClusterName, KindWebAPI},
		{IngressAgentListener, cfg.IngressAgent, InteractionClusterName, KindInteraction},
	} {
		if in.addr == "" {
			continue
		}
		host, port, err := hostPort(in.addr)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: ingress %s: %v", ErrBadConfig, in.listener, err)
		}
		tp, err := anypb.New(&tcpproxy.TcpProxy{
			StatPrefix:       in.cluster,
			ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: in.cluster},
			IdleTimeout:      durationpb.New(0), // SSE streams may be quiet for long
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("pack tcp proxy: %w", err)
		}
		ls = append(ls, &listener.Listener{
			Name:    in.listener,
			Address: socketAddress(host, port),
			FilterChains: []*listener.FilterChain{{
				Filters: []*listener.Filter{{Name: TCPProxyFilter, ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}}},
			}},
		})
		iv := durationpb.New(ingressCheckInterval)
		cs = append(cs, &cluster.Cluster{
			Name:                 in.cluster,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
			LbPolicy:             cluster.Cluster_LEAST_REQUEST,
			ConnectTimeout:       durationpb.New(cfg.ConnectTimeout),
			HealthChecks: []*core.HealthCheck{{
				Timeout:            durationpb.New(cfg.HealthTimeout),
				Interval:           iv,
				NoTrafficInterval:  iv,
				UnhealthyThreshold: wrapperspb.UInt32(cfg.UnhealthyThreshold),
				HealthyThreshold:   wrapperspb.UInt32(cfg.HealthyThreshold),
				// A connect only: the instances may serve TLS to browsers,
				// which the edge passes through.
				HealthChecker: &core.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &core.HealthCheck_TcpHealthCheck{}},
			}},
			CloseConnectionsOnHostHealthFailure: true,
		})
		es = append(es, instanceAssignment(in.cluster, in.kind, members))
	}
	return ls, cs, es, nil
}

// instanceAssignment lists the alive and suspect members of kind, by name,
// at priority 0 (suspect ones UNHEALTHY); dead and left ones are dropped,
// and so are members whose HTTP address is not IP:port.
func instanceAssignment(clusterName, kind string, members []Member) *endpoint.ClusterLoadAssignment {
	var ms []Member
	seen := map[string]bool{}
	for _, m := range members {
		if m.Kind != kind || m.State == StateDead || m.State == StateLeft {
			continue
		}
		if _, _, err := hostPort(m.HTTPAddr); err != nil || seen[m.HTTPAddr] {
			continue
		}
		seen[m.HTTPAddr] = true
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b Member) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	cla := &endpoint.ClusterLoadAssignment{ClusterName: clusterName}
	if len(ms) == 0 {
		return cla
	}
	loc := &endpoint.LocalityLbEndpoints{
		Locality:            &core.Locality{Region: "hachat", SubZone: kind},
		LoadBalancingWeight: wrapperspb.UInt32(1),
	}
	for _, m := range ms {
		host, portS, _ := net.SplitHostPort(m.HTTPAddr)
		port, _ := strconv.ParseUint(portS, 10, 16)
		health := core.HealthStatus_HEALTHY
		if m.State != StateAlive {
			health = core.HealthStatus_UNHEALTHY
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: socketAddress(host, uint32(port)), Hostname: m.Name,
			}},
			HealthStatus: health,
			Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{
				MetadataFilter: {Fields: map[string]*structpb.Value{
					"name":  structpb.NewStringValue(m.Name),
					"state": structpb.NewStringValue(m.State.String()),
				}},
			}},
			LoadBalancingWeight: wrapperspb.UInt32(1),
		})
	}
	cla.Endpoints = []*endpoint.LocalityLbEndpoints{loc}
	return cla
}
