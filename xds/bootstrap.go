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
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/mtls"
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
	// Fallback are further control planes, host:port, that grpc-go tries
	// in order when XDS is unreachable (gRPC only).
	Fallback []string
	// TLS names the client's files: the cluster CA, its certificate and
	// key. Set, the client speaks mTLS to the control plane and the
	// bootstrap defines what the chat cluster's TLS settings name: the
	// certificate provider instance CertProviderInstance (gRPC) or the
	// secrets SDSCertSecret and SDSCASecret (Envoy). Unset: plaintext.
	TLS mtls.Files
	// TrustDomain is the SPIFFE trust domain: Envoy requires the control
	// plane's certificate to carry spiffe://<TrustDomain>/xds/... (grpc-go
	// checks the control plane's host name against its certificate
	// instead, see docs/xds.md). Default mtls.DefaultTrustDomain.
	TrustDomain string
	// CertRefresh is how often grpc-go's file_watcher provider rereads the
	// files (default mtls.DefaultReloadInterval).
	CertRefresh time.Duration
}

// checkTLS requires all three files or none, and a valid trust domain.
func (o BootstrapOptions) checkTLS() error {
	if err := o.TLS.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadBootstrap, err)
	}
	if o.TrustDomain != "" {
		if _, err := mtls.ParseID("spiffe://" + o.TrustDomain + "/xds/x"); err != nil {
			return fmt.Errorf("%w: trust domain %q: %v", ErrBadBootstrap, o.TrustDomain, err)
		}
	}
	for _, f := range []string{o.TLS.CA, o.TLS.Cert, o.TLS.Key} {
		if !utf8.ValidString(f) {
			return fmt.Errorf("%w: file names must be UTF-8", ErrBadBootstrap)
		}
	}
	return nil
}

func (o BootstrapOptions) trustDomain() string {
	if o.TrustDomain == "" {
		return mtls.DefaultTrustDomain
	}
	return o.TrustDomain
}

func fileSource(path string) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_Filename{Filename: path}}
}

// envoyTLS returns, for an Envoy bootstrap with o.TLS set, the transport
// socket of the static xds cluster (mTLS to a control plane of kind xds)
// and the static secrets that the Envoy flavour of the resources names.
// Envoy reads static secrets once: rotating the files needs an Envoy hot
// restart (docs/xds.md).
func envoyTLS(o BootstrapOptions) (*core.TransportSocket, []*tlsv3.Secret, error) {
	cert := &tlsv3.TlsCertificate{CertificateChain: fileSource(o.TLS.Cert), PrivateKey: fileSource(o.TLS.Key)}
	typed, _ := uriPrefixMatchers(o.trustDomain(), mtls.KindXDS)
	up, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{cert},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa:                 fileSource(o.TLS.CA),
			MatchTypedSubjectAltNames: typed,
		}},
		AlpnProtocols: []string{"h2"},
	}})
	if err != nil {
		return nil, nil, fmt.Errorf("pack xds upstream tls context: %w", err)
	}
	secrets := []*tlsv3.Secret{
		{Name: SDSCertSecret, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: cert}},
		{Name: SDSCASecret, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: fileSource(o.TLS.CA),
		}}},
	}
	return &core.TransportSocket{Name: TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: up}}, secrets, nil
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
// STRICT_DNS for a host name), and the admin interface on o.Admin. With
// o.TLS set, the xds cluster speaks mTLS (files inline, the control
// plane's SPIFFE ID of kind xds required) and static secrets SDSCertSecret
// and SDSCASecret hold the same files for the chat cluster and the sidecar
// listener. The result passes Envoy's proto validation.
func EnvoyBootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if err := o.checkNode(); err != nil {
		return nil, err
	}
	if err := o.checkTLS(); err != nil {
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
	if o.TLS.Enabled() {
		ts, secrets, err := envoyTLS(o)
		if err != nil {
			return nil, err
		}
		b.StaticResources.Clusters[0].TransportSocket = ts
		b.StaticResources.Secrets = secrets
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
	XDSServers           []grpcXDSServer             `json:"xds_servers"`
	Node                 grpcNode                    `json:"node"`
	CertificateProviders map[string]grpcCertProvider `json:"certificate_providers,omitempty"`
}

// grpcCertProvider is one certificate provider instance; grpc-go's
// file_watcher plugin takes grpcFileWatcher as its config.
type grpcCertProvider struct {
	PluginName string          `json:"plugin_name"`
	Config     grpcFileWatcher `json:"config"`
}

// grpcFileWatcher is the config of grpc-go's file_watcher certificate
// provider, and of its "tls" channel credentials (which build a
// file_watcher from it too).
type grpcFileWatcher struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval,omitempty"`
}

type grpcXDSServer struct {
	ServerURI      string      `json:"server_uri"`
	ChannelCreds   []grpcCreds `json:"channel_creds"`
	ServerFeatures []string    `json:"server_features"`
}

type grpcCreds struct {
	Type   string           `json:"type"`
	Config *grpcFileWatcher `json:"config,omitempty"`
}

type grpcNode struct {
	ID       string            `json:"id"`
	Cluster  string            `json:"cluster,omitempty"`
	Locality map[string]string `json:"locality"`
}

// GRPCBootstrap returns a grpc-go xDS bootstrap that points at the
// control plane at o.XDS (then o.Fallback), speaking xDS v3: over
// plaintext gRPC, or with o.TLS set over mTLS ("tls" channel credentials
// from the files) and with the certificate provider instance
// CertProviderInstance (plugin file_watcher on the same files) that the
// chat cluster's UpstreamTlsContext names, so that grpc-go's xDS
// credentials speak mTLS to the cores.
func GRPCBootstrap(o BootstrapOptions) ([]byte, error) {
	if err := o.checkNode(); err != nil {
		return nil, err
	}
	if err := o.checkTLS(); err != nil {
		return nil, err
	}
	doc := grpcBootstrap{Node: grpcNode{ID: o.NodeID, Cluster: o.NodeCluster, Locality: map[string]string{}}}
	creds := grpcCreds{Type: "insecure"}
	if o.TLS.Enabled() {
		refresh := o.CertRefresh
		if refresh <= 0 {
			refresh = mtls.DefaultReloadInterval
		}
		fw := grpcFileWatcher{CertificateFile: o.TLS.Cert, PrivateKeyFile: o.TLS.Key, CACertificateFile: o.TLS.CA,
			RefreshInterval: strconv.FormatFloat(refresh.Seconds(), 'f', -1, 64) + "s"} // a protobuf Duration
		creds = grpcCreds{Type: "tls", Config: &fw}
		doc.CertificateProviders = map[string]grpcCertProvider{CertProviderInstance: {PluginName: "file_watcher", Config: fw}}
	}
	for _, addr := range append([]string{o.XDS}, o.Fallback...) {
		if _, _, err := splitAddr("xds", addr); err != nil {
			return nil, err
		}
		doc.XDSServers = append(doc.XDSServers, grpcXDSServer{
			ServerURI:      addr,
			ChannelCreds:   []grpcCreds{creds},
			ServerFeatures: []string{"xds_v3"},
		})
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode grpc bootstrap: %w", err)
	}
	return append(b, '\n'), nil
}
