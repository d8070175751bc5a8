package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"
)

// ErrBadBootstrap reports bootstrap options that cannot work.
var ErrBadBootstrap = errors.New("bad bootstrap options")

// xdsClusterName is the static cluster of an Envoy bootstrap that points
// at the control plane.
const xdsClusterName = "hachat_xds"

// BootstrapOptions say where a client finds the control plane and who it
// is.
type BootstrapOptions struct {
	// XDS is the control plane's gRPC address, host:port.
	XDS string
	// NodeID is the client's xDS node id; the control plane keeps one
	// snapshot per node id, so every client needs its own.
	NodeID string
	// NodeCluster is the client's xDS node cluster (informational).
	NodeCluster string
	// Admin is Envoy's admin address, IP:port (Envoy only).
	Admin string
}

// checkNode requires a node id and UTF-8 node fields.
func (o BootstrapOptions) checkNode() error {
	if o.NodeID == "" {
		return fmt.Errorf("%w: node id is empty", ErrBadBootstrap)
	}
	if !utf8.ValidString(o.NodeID) || !utf8.ValidString(o.NodeCluster) {
		return fmt.Errorf("%w: node id and cluster must be UTF-8", ErrBadBootstrap)
	}
	return nil
}

func splitAddr(what, addr string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s address %q: %v", ErrBadBootstrap, what, addr, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || host == "" || !utf8.ValidString(host) {
		return "", 0, fmt.Errorf("%w: %s address %q: want host:port with a port 1..65535", ErrBadBootstrap, what, addr)
	}
	return host, uint32(n), nil
}

// EnvoyBootstrap builds an Envoy v3 bootstrap whose listeners and clusters
// all come over ADS from the control plane at o.XDS: dynamic_resources
// with ads_config (SotW gRPC, v3) and LDS/CDS from ADS, one static
// HTTP/2 cluster for the control plane itself (STATIC for an IP address,
// STRICT_DNS for a host name), and the admin interface on o.Admin. The
// result passes Envoy's proto validation.
func EnvoyBootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if err := o.checkNode(); err != nil {
		return nil, err
	}
	xhost, xport, err := splitAddr("xds", o.XDS)
	if err != nil {
		return nil, err
	}
	ahost, aport, err := splitAddr("admin", o.Admin)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(ahost) == nil {
		return nil, fmt.Errorf("%w: admin address %q: Envoy needs an IP address", ErrBadBootstrap, o.Admin)
	}
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
	discoveryType := clusterpb.Cluster_STATIC
	if net.ParseIP(xhost) == nil {
		discoveryType = clusterpb.Cluster_STRICT_DNS
	}
	nodeCluster := o.NodeCluster
	if nodeCluster == "" {
		nodeCluster = "hachat"
	}
	b := &bootstrapv3.Bootstrap{
		Node:  &core.Node{Id: o.NodeID, Cluster: nodeCluster},
		Admin: &bootstrapv3.Admin{Address: socketAddress(ahost, aport)},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             core.ApiConfigSource_GRPC,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: xdsClusterName},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterpb.Cluster{{
			Name:                 xdsClusterName,
			ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: discoveryType},
			ConnectTimeout:       durationpb.New(time.Second),
			LoadAssignment: &endpoint.ClusterLoadAssignment{
				ClusterName: xdsClusterName,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(xhost, xport)}},
				}}}},
			},
			TypedExtensionProtocolOptions: map[string]*anypb.Any{http2Options: h2},
		}}},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadBootstrap, err)
	}
	return b, nil
}

// EnvoyBootstrapText renders EnvoyBootstrap as "json" or "yaml" (the
// same document; Envoy reads either, by file extension).
func EnvoyBootstrapText(o BootstrapOptions, format string) ([]byte, error) {
	b, err := EnvoyBootstrap(o)
	if err != nil {
		return nil, err
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode bootstrap: %w", err)
	}
	switch format {
	case "", "json":
		// protojson varies its whitespace on purpose; print a stable document.
		var out bytes.Buffer
		if err := json.Indent(&out, bytes.TrimSpace(js), "", "  "); err != nil {
			return nil, fmt.Errorf("encode bootstrap: %w", err)
		}
		return append(out.Bytes(), '\n'), nil
	case "yaml":
		var doc yaml.Node
		if err := yaml.Unmarshal(js, &doc); err != nil {
			return nil, fmt.Errorf("convert bootstrap to yaml: %w", err)
		}
		clearStyle(&doc)
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(&doc); err != nil {
			return nil, fmt.Errorf("convert bootstrap to yaml: %w", err)
		}
		return buf.Bytes(), nil
	}
	return nil, fmt.Errorf("%w: format %q: want json or yaml", ErrBadBootstrap, format)
}

// clearStyle turns the JSON flow style that yaml.v3 keeps from its input
// into block style, and drops quotes that YAML does not need.
func clearStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		clearStyle(c)
	}
}

// grpcBootstrap is the JSON bootstrap of grpc-go's xDS client (the file
// named by GRPC_XDS_BOOTSTRAP, or the content of
// GRPC_XDS_BOOTSTRAP_CONFIG).
type grpcBootstrap struct {
	XDSServers []grpcXDSServer `json:"xds_servers"`
	Node       grpcNode        `json:"node"`
}

type grpcXDSServer struct {
	ServerURI      string      `json:"server_uri"`
	ChannelCreds   []grpcCreds `json:"channel_creds"`
	ServerFeatures []string    `json:"server_features"`
}

type grpcCreds struct {
	Type string `json:"type"`
}

type grpcNode struct {
	ID       string            `json:"id"`
	Cluster  string            `json:"cluster,omitempty"`
	Locality map[string]string `json:"locality"`
}

// GRPCBootstrap returns a grpc-go xDS bootstrap that points at the
// control plane at o.XDS over plaintext gRPC, speaking xDS v3.
func GRPCBootstrap(o BootstrapOptions) ([]byte, error) {
	if err := o.checkNode(); err != nil {
		return nil, err
	}
	if _, _, err := splitAddr("xds", o.XDS); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(grpcBootstrap{
		XDSServers: []grpcXDSServer{{
			ServerURI:      o.XDS,
			ChannelCreds:   []grpcCreds{{Type: "insecure"}},
			ServerFeatures: []string{"xds_v3"},
		}},
		Node: grpcNode{ID: o.NodeID, Cluster: o.NodeCluster, Locality: map[string]string{}},
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode grpc bootstrap: %w", err)
	}
	return append(b, '\n'), nil
}
