package xds

import (
	"errors"
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func names(rs []types.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, resourceName(r))
	}
	return out
}

func TestBuildIngress(t *testing.T) {
	members := []Member{
		core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive),
		{Name: "webapi-2", Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8083", State: StateAlive},
		{Name: "webapi", Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8082", State: StateAlive},
		{Name: "webapi-3", Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8085", State: StateSuspect},
		{Name: "webapi-dead", Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8086", State: StateDead},
		{Name: "webapi-left", Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8087", State: StateLeft},
		{Name: "webapi-bad", Kind: KindWebAPI, HTTPAddr: "localhost:8088", State: StateAlive},
		{Name: "interaction", Kind: KindInteraction, HTTPAddr: "127.0.0.1:8084", State: StateAlive},
	}

	plain, err := Build(DefaultConfig(), members)
	if err != nil {
		t.Fatal(err)
	}
	if n := names(plain.Listeners); slices.Contains(n, IngressCustomerListener) {
		t.Fatalf("ingress published without --ingress-customer: %v", n)
	}

	cfg := DefaultConfig()
	cfg.IngressCustomer, cfg.IngressAgent = "127.0.0.1:8080", "127.0.0.1:8081"
	r, err := Build(cfg, members)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		got  []string
		name string
	}{
		{names(r.Listeners), IngressCustomerListener}, {names(r.Listeners), IngressAgentListener},
		{names(r.Clusters), WebAPIClusterName}, {names(r.Clusters), InteractionClusterName},
		{names(r.Endpoints), WebAPIClusterName}, {names(r.Endpoints), InteractionClusterName},
		{names(r.Listeners), ListenerName}, {names(r.Clusters), ClusterName},
	} {
		if !slices.Contains(want.got, want.name) {
			t.Errorf("%s missing from %v", want.name, want.got)
		}
	}
	if r.Version == plain.Version {
		t.Error("the ingress did not change the version")
	}
	for _, l := range r.Listeners {
		if l := l.(*listener.Listener); l.GetName() == IngressCustomerListener {
			if a := l.GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 8080 {
				t.Errorf("customer listener at %v", a)
			}
			if l.GetFilterChains()[0].GetTransportSocket() != nil {
				t.Error("the customer listener terminates TLS: ingress is L4 passthrough")
			}
		}
	}
	for _, c := range r.Clusters {
		c := c.(*cluster.Cluster)
		if c.GetName() != WebAPIClusterName {
			continue
		}
		if c.GetHealthChecks()[0].GetTcpHealthCheck() == nil || c.GetTransportSocket() != nil {
			t.Errorf("webapi cluster: want a TCP check and no TLS: %v", c)
		}
	}
	var got []string
	for _, e := range r.Endpoints {
		e := e.(*endpoint.ClusterLoadAssignment)
		if e.GetClusterName() != WebAPIClusterName {
			continue
		}
		for _, loc := range e.GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				got = append(got, lb.GetEndpoint().GetHostname()+"="+lb.GetHealthStatus().String())
			}
		}
	}
	want := []string{"webapi=HEALTHY", "webapi-2=HEALTHY", "webapi-3=" + core.HealthStatus_UNHEALTHY.String()}
	if !slices.Equal(got, want) {
		t.Errorf("webapi endpoints %v, want %v (dead, left and bad addresses dropped)", got, want)
	}
	if r.EnvoyListeners != nil {
		t.Error("Envoy flavour without TLS")
	}

	// With TLS the Envoy flavour carries the ingress too.
	cfg.TrustDomain = "hachat.local"
	rt, err := Build(cfg, members)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names(rt.EnvoyListeners), IngressAgentListener) || !slices.Contains(names(rt.EnvoyClusters), InteractionClusterName) {
		t.Errorf("Envoy flavour lacks the ingress: %v %v", names(rt.EnvoyListeners), names(rt.EnvoyClusters))
	}
}

func TestIngressConfigRefused(t *testing.T) {
	for _, tc := range []struct{ customer, agent string }{
		{"localhost:8080", ""},
		{"127.0.0.1", ""},
		{"", "127.0.0.1:8081"},
		{"127.0.0.1:8080", "127.0.0.1:0"},
	} {
		cfg := DefaultConfig()
		cfg.IngressCustomer, cfg.IngressAgent = tc.customer, tc.agent
		if err := cfg.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("customer %q agent %q: %v, want ErrBadConfig", tc.customer, tc.agent, err)
		}
		if _, err := Build(cfg, nil); !errors.Is(err, ErrBadConfig) {
			t.Errorf("Build with customer %q agent %q: %v, want ErrBadConfig", tc.customer, tc.agent, err)
		}
	}
}

func TestIngressListenersOnlyForEdges(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IngressCustomer, cfg.IngressAgent = "127.0.0.1:8080", "127.0.0.1:8081"
	r, err := Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		st   *nodeState
		want []string
	}{
		{"sidecar, wildcard", &nodeState{names: map[string][]string{}}, []string{ListenerName}},
		{"edge, wildcard", &nodeState{names: map[string][]string{}, edge: true},
			[]string{ListenerName, IngressCustomerListener, IngressAgentListener}},
		{"by name", &nodeState{names: map[string][]string{resource.ListenerType: {IngressAgentListener}}},
			[]string{IngressAgentListener}},
	}
	for _, tt := range tests {
		got := names(selectResources(resource.ListenerType, r.Listeners, tt.st))
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tt.want))
		if !slices.Equal(got, want) {
			t.Errorf("%s: listeners %v, want %v", tt.name, got, want)
		}
	}
}
