package xds

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
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
