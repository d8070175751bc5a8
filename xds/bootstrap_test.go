package xds

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/mtls"
)

func TestEnvoyBootstrap(t *testing.T) {
	js, err := EnvoyBootstrapText(BootstrapOptions{XDS: "127.0.0.1:7200", NodeID: "envoy-1", Admin: "127.0.0.1:9901"}, "json")
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("bootstrap JSON does not parse: %v\n%s", err, js)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("parsed bootstrap invalid: %v", err)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if b.GetNode().GetId() != "envoy-1" || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != xdsClusterName ||
		b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Errorf("bootstrap = %s", js)
	}
	c := b.GetStaticResources().GetClusters()[0]
	sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if c.GetType() != clusterpb.Cluster_STATIC || sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 7200 {
		t.Errorf("xds cluster = %v", c)
	}
	if b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue() != 9901 {
		t.Errorf("admin = %v", b.GetAdmin())
	}

	y, err := EnvoyBootstrapText(BootstrapOptions{XDS: "xds.hachat:7200", NodeID: "envoy-2", Admin: "127.0.0.1:9902"}, "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(y, &doc); err != nil || doc["dynamic_resources"] == nil {
		t.Fatalf("yaml bootstrap: %v\n%s", err, y)
	}
	if !strings.Contains(string(y), "STRICT_DNS") {
		t.Errorf("host name xds address should use STRICT_DNS:\n%s", y)
	}
}

func TestBootstrapRejectsBadOptions(t *testing.T) {
	bad := []BootstrapOptions{
		{XDS: "127.0.0.1:7200", Admin: "127.0.0.1:9901"},
		{XDS: "127.0.0.1", NodeID: "n", Admin: "127.0.0.1:9901"},
		{XDS: "127.0.0.1:0", NodeID: "n", Admin: "127.0.0.1:9901"},
		{XDS: "127.0.0.1:7200", NodeID: "n", Admin: "localhost:9901"},
		{XDS: ":7200", NodeID: "n", Admin: "127.0.0.1:9901"},
	}
	for _, o := range bad {
		if _, err := EnvoyBootstrapText(o, "json"); !errors.Is(err, ErrBadBootstrap) {
			t.Errorf("EnvoyBootstrap(%+v) = %v, want ErrBadBootstrap", o, err)
		}
	}
	if _, err := EnvoyBootstrapText(BootstrapOptions{XDS: "127.0.0.1:7200", NodeID: "n", Admin: "127.0.0.1:9901"}, "toml"); !errors.Is(err, ErrBadBootstrap) {
		t.Errorf("unknown format accepted: %v", err)
	}
	if _, err := GRPCBootstrap(BootstrapOptions{XDS: "nope", NodeID: "n"}); !errors.Is(err, ErrBadBootstrap) {
		t.Errorf("GRPCBootstrap with bad address = %v", err)
	}
}

func TestGRPCBootstrap(t *testing.T) {
	b, err := GRPCBootstrap(BootstrapOptions{XDS: "127.0.0.1:7200", NodeID: "webapi-1"})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type string `json:"type"`
			} `json:"channel_creds"`
			ServerFeatures []string `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.XDSServers[0]
	if s.ServerURI != "127.0.0.1:7200" || s.ChannelCreds[0].Type != "insecure" || s.ServerFeatures[0] != "xds_v3" || doc.Node.ID != "webapi-1" {
		t.Errorf("grpc bootstrap = %s", b)
	}
}

// FuzzEnvoyBootstrap: any options give either ErrBadBootstrap or a
// bootstrap that validates and parses back.
func FuzzEnvoyBootstrap(f *testing.F) {
	f.Add("127.0.0.1:7200", "envoy-1", "127.0.0.1:9901")
	f.Add("xds:1", "n", "[::1]:9901")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, xds, node, admin string) {
		o := BootstrapOptions{XDS: xds, NodeID: node, Admin: admin}
		js, err := EnvoyBootstrapText(o, "json")
		if err != nil {
			if !errors.Is(err, ErrBadBootstrap) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		var b bootstrapv3.Bootstrap
		if err := protojson.Unmarshal(js, &b); err != nil {
			t.Fatalf("output does not parse: %v", err)
		}
		if err := b.ValidateAll(); err != nil {
			t.Fatalf("output invalid: %v", err)
		}
		if _, err := GRPCBootstrap(o); err != nil {
			t.Fatalf("grpc bootstrap refused options Envoy took: %v", err)
		}
	})
}

func TestBootstrapsWithTLS(t *testing.T) {
	files := mtls.Files{CA: "/certs/ca.pem", Cert: "/certs/envoy-1.pem", Key: "/certs/envoy-1.key"}
	js, err := EnvoyBootstrapText(BootstrapOptions{XDS: "127.0.0.1:7200", NodeID: "envoy-1", Admin: "127.0.0.1:9901",
		TLS: files, TrustDomain: "example.org"}, "json")
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("bootstrap JSON does not parse: %v\n%s", err, js)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("parsed bootstrap invalid: %v", err)
	}
	var up tlsv3.UpstreamTlsContext
	if err := b.GetStaticResources().GetClusters()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatal(err)
	}
	vc := up.GetCommonTlsContext().GetValidationContext()
	if up.GetCommonTlsContext().GetTlsCertificates()[0].GetCertificateChain().GetFilename() != files.Cert ||
		vc.GetTrustedCa().GetFilename() != files.CA || vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetPrefix() != "spiffe://example.org/xds/" {
		t.Fatalf("xds cluster TLS = %v", &up)
	}
	names := map[string]bool{}
	for _, s := range b.GetStaticResources().GetSecrets() {
		names[s.GetName()] = true
	}
	if !names[SDSCertSecret] || !names[SDSCASecret] {
		t.Fatalf("secrets = %v", names)
	}

	gb, err := GRPCBootstrap(BootstrapOptions{XDS: "127.0.0.1:7200", Fallback: []string{"127.0.0.1:7210"}, NodeID: "webapi-1", TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
		CertificateProviders map[string]struct {
			PluginName string            `json:"plugin_name"`
			Config     map[string]string `json:"config"`
		} `json:"certificate_providers"`
	}
	if err := json.Unmarshal(gb, &doc); err != nil {
		t.Fatal(err)
	}
	cp := doc.CertificateProviders[CertProviderInstance]
	cc := doc.XDSServers[0].ChannelCreds[0]
	if len(doc.XDSServers) != 2 || doc.XDSServers[1].ServerURI != "127.0.0.1:7210" || cc.Type != "tls" ||
		cc.Config["ca_certificate_file"] != files.CA || cc.Config["certificate_file"] != files.Cert || cc.Config["private_key_file"] != files.Key ||
		cp.PluginName != "file_watcher" || cp.Config["certificate_file"] != files.Cert || cp.Config["refresh_interval"] != "1s" {
		t.Fatalf("grpc bootstrap = %s", gb)
	}
	if _, err := GRPCBootstrap(BootstrapOptions{XDS: "127.0.0.1:7200", NodeID: "n", TLS: mtls.Files{CA: "ca.pem"}}); !errors.Is(err, ErrBadBootstrap) {
		t.Errorf("partial TLS files accepted: %v", err)
	}
}
