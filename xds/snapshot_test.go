package xds

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
)

func core_(name, role string, epoch uint64, addr string, st State) Member {
	return Member{Name: name, Kind: KindCore, Role: role, Epoch: epoch, GRPCAddr: addr, State: st}
}

// ep is the expected shape of one endpoint.
type ep struct {
	name     string
	priority uint32
	health   core.HealthStatus
}

func endpointsOf(t *testing.T, r *Resources) []ep {
	t.Helper()
	if len(r.Endpoints) != 1 {
		t.Fatalf("want 1 load assignment, got %d", len(r.Endpoints))
	}
	cla := r.Endpoints[0].(*endpoint.ClusterLoadAssignment)
	var out []ep
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			md := e.GetMetadata().GetFilterMetadata()[MetadataFilter].GetFields()
			if md["name"].GetStringValue() != e.GetEndpoint().GetHostname() {
				t.Errorf("metadata name %q != hostname %q", md["name"].GetStringValue(), e.GetEndpoint().GetHostname())
			}
			out = append(out, ep{md["name"].GetStringValue(), l.GetPriority(), e.GetHealthStatus()})
		}
	}
	return out
}

func TestBuildPlacement(t *testing.T) {
	const (
		H = core.HealthStatus_HEALTHY
		U = core.HealthStatus_UNHEALTHY
	)
	tests := []struct {
		name    string
		members []Member
		primary string
		want    []ep
	}{
		{
			name: "primary and backup",
			members: []Member{
				core_("core-b", RoleBackup, 1, "127.0.0.1:7111", StateAlive),
				core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive),
			},
			primary: "core-a",
			want:    []ep{{"core-a", 0, H}, {"core-b", 1, H}},
		},
		{
			name: "newest epoch wins among primaries",
			members: []Member{
				core_("core-a", RolePrimary, 3, "127.0.0.1:7101", StateAlive),
				core_("core-b", RolePrimary, 4, "127.0.0.1:7111", StateAlive),
			},
			primary: "core-b",
			want:    []ep{{"core-b", 0, H}, {"core-a", 1, H}},
		},
		{
			name: "health from state",
			members: []Member{
				core_("core-a", RolePrimary, 2, "127.0.0.1:7101", StateAlive),
				core_("core-b", RoleBackup, 2, "127.0.0.1:7111", StateSuspect),
				core_("core-c", RoleBackup, 1, "127.0.0.1:7121", StateDead),
				core_("core-d", RoleBackup, 1, "127.0.0.1:7131", StateLeft),
			},
			primary: "core-a",
			want:    []ep{{"core-a", 0, H}, {"core-b", 1, U}, {"core-c", 1, U}},
		},
		{
			name: "no primary: alive cores first, each its own priority",
			members: []Member{
				core_("core-a", RolePrimary, 5, "127.0.0.1:7101", StateDead),
				core_("core-b", RoleBackup, 5, "127.0.0.1:7111", StateAlive),
			},
			want: []ep{{"core-b", 0, H}, {"core-a", 1, U}},
		},
		{
			name: "no primary: two backups by epoch",
			members: []Member{
				core_("core-a", RoleBackup, 1, "127.0.0.1:7101", StateAlive),
				core_("core-b", RoleBackup, 2, "127.0.0.1:7111", StateAlive),
			},
			want: []ep{{"core-b", 0, H}, {"core-a", 1, H}},
		},
		{
			name: "suspect primary is not the primary",
			members: []Member{
				core_("core-a", RolePrimary, 5, "127.0.0.1:7101", StateSuspect),
				core_("core-b", RoleBackup, 5, "127.0.0.1:7111", StateAlive),
			},
			want: []ep{{"core-b", 0, H}, {"core-a", 1, U}},
		},
		{
			name: "only non-cores and bad addresses",
			members: []Member{
				{Name: "xds", Kind: KindXDS, GRPCAddr: "127.0.0.1:7200"},
				{Name: "witness", Kind: KindWitness},
				core_("core-x", RolePrimary, 1, "localhost:7101", StateAlive),
				core_("core-y", RolePrimary, 1, "127.0.0.1", StateAlive),
				core_("core-z", RolePrimary, 1, "127.0.0.1:0", StateAlive),
			},
			want: nil,
		},
		{
			name: "duplicate address: restarted core wins over its dead self",
			members: []Member{
				core_("core-a-old", RolePrimary, 1, "127.0.0.1:7101", StateDead),
				core_("core-a", RoleBackup, 2, "127.0.0.1:7101", StateAlive),
				core_("core-b", RolePrimary, 2, "127.0.0.1:7111", StateAlive),
			},
			primary: "core-b",
			want:    []ep{{"core-b", 0, H}, {"core-a", 1, H}},
		},
		{
			name:    "empty cluster",
			members: nil,
			want:    nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Build(DefaultConfig(), tt.members)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if r.Primary != tt.primary {
				t.Errorf("primary = %q, want %q", r.Primary, tt.primary)
			}
			if got := endpointsOf(t, r); !slices.Equal(got, tt.want) {
				t.Errorf("endpoints = %v, want %v", got, tt.want)
			}
			if len(r.Placements) != len(tt.want) {
				t.Errorf("placements = %v", r.Placements)
			}
		})
	}
}

func TestBuildSkipsAndExplains(t *testing.T) {
	r, err := Build(DefaultConfig(), []Member{
		core_("core-x", RolePrimary, 1, "localhost:7101", StateAlive),
		core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 1, "127.0.0.1:7101", StateAlive),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Skipped) != 2 || !strings.Contains(r.Skipped[0]+r.Skipped[1], "not an IP") || !strings.Contains(r.Skipped[0]+r.Skipped[1], "already published for core-a") {
		t.Errorf("skipped = %q", r.Skipped)
	}
}

func TestBuildResourceShapes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HealthInterval = 250 * time.Millisecond
	cfg.UnhealthyThreshold = 3
	cfg.ListenerPort = 9999
	r, err := Build(cfg, []Member{core_("core-a", RolePrimary, 7, "127.0.0.1:7101", StateAlive)})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Listeners) != 2 || len(r.Routes) != 1 || len(r.Clusters) != 1 {
		t.Fatalf("resource counts: %d listeners %d routes %d clusters", len(r.Listeners), len(r.Routes), len(r.Clusters))
	}
	var api, side *listener.Listener
	for _, l := range r.Listeners {
		switch l := l.(*listener.Listener); l.GetName() {
		case APIListenerName:
			api = l
		case ListenerName:
			side = l
		}
	}
	if api == nil || side == nil {
		t.Fatal("missing a listener")
	}
	if side.GetAddress().GetSocketAddress().GetPortValue() != 9999 || side.GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" {
		t.Errorf("sidecar address = %v", side.GetAddress())
	}
	f := side.GetFilterChains()[0].GetFilters()[0]
	var tp tcpproxy.TcpProxy
	if f.GetName() != TCPProxyFilter || f.GetTypedConfig().UnmarshalTo(&tp) != nil || tp.GetCluster() != ClusterName {
		t.Errorf("sidecar filter = %v", f)
	}
	var m hcm.HttpConnectionManager
	if err := api.GetApiListener().GetApiListener().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetRds().GetRouteConfigName() != RouteName || m.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("rds = %v", m.GetRds())
	}
	if n := len(m.GetHttpFilters()); n != 1 || m.GetHttpFilters()[0].GetName() != RouterFilter {
		t.Errorf("http filters = %v", m.GetHttpFilters())
	}
	c := r.Clusters[0].(*cluster.Cluster)
	if c.GetType() != cluster.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetLbPolicy() != cluster.Cluster_ROUND_ROBIN {
		t.Errorf("cluster = %v", c)
	}
	hc := c.GetHealthChecks()[0]
	if hc.GetInterval().AsDuration() != 250*time.Millisecond || hc.GetTimeout().AsDuration() != 100*time.Millisecond ||
		hc.GetUnhealthyThreshold().GetValue() != 3 || hc.GetHealthyThreshold().GetValue() != 1 ||
		hc.GetGrpcHealthCheck().GetServiceName() != HealthService {
		t.Errorf("health check = %v", hc)
	}
	if c.GetConnectTimeout().AsDuration() != 500*time.Millisecond {
		t.Errorf("connect timeout = %v", c.GetConnectTimeout())
	}
	cla := r.Endpoints[0].(*endpoint.ClusterLoadAssignment)
	md := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetMetadata().GetFilterMetadata()[MetadataFilter].GetFields()
	if md["role"].GetStringValue() != RolePrimary || md["epoch"].GetNumberValue() != 7 || md["state"].GetStringValue() != "alive" {
		t.Errorf("metadata = %v", md)
	}
}

func TestBuildVersion(t *testing.T) {
	a := core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive)
	b := core_("core-b", RoleBackup, 1, "127.0.0.1:7111", StateAlive)
	r1, err := Build(DefaultConfig(), []Member{a, b})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Build(DefaultConfig(), []Member{b, a, {Name: "w", Kind: KindWitness}})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version != r2.Version {
		t.Errorf("same content, versions %s and %s", r1.Version, r2.Version)
	}
	b.State = StateDead
	r3, err := Build(DefaultConfig(), []Member{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if r3.Version == r1.Version {
		t.Errorf("changed content kept version %s", r1.Version)
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	members := []Member{core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive)}
	bad := []func(*Config){
		func(c *Config) { c.HealthInterval = 0 },
		func(c *Config) { c.HealthTimeout = -time.Second },
		func(c *Config) { c.UnhealthyThreshold = 0 },
		func(c *Config) { c.HealthyThreshold = 0 },
		func(c *Config) { c.ConnectTimeout = 0 },
		func(c *Config) { c.ListenerPort = 0 },
		func(c *Config) { c.ListenerPort = 70000 },
	}
	for i, mutate := range bad {
		cfg := DefaultConfig()
		mutate(&cfg)
		if r, err := Build(cfg, members); !errors.Is(err, ErrBadConfig) || r != nil {
			t.Errorf("case %d: Build = %v, %v; want ErrBadConfig", i, r, err)
		}
	}
}

func TestValidateAllCatchesInvalidResource(t *testing.T) {
	r, err := Build(DefaultConfig(), []Member{core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive)})
	if err != nil {
		t.Fatal(err)
	}
	tampered := []func(r *Resources){
		func(r *Resources) { r.Clusters[0].(*cluster.Cluster).LbPolicy = 42 },
		func(r *Resources) { r.Clusters[0].(*cluster.Cluster).HealthChecks[0].Interval = nil },
		func(r *Resources) {
			r.Listeners[1].(*listener.Listener).Address.GetSocketAddress().PortSpecifier = &core.SocketAddress_PortValue{PortValue: 70000}
		},
		func(r *Resources) { r.Endpoints[0].(*endpoint.ClusterLoadAssignment).ClusterName = "" },
	}
	for i, tamper := range tampered {
		c := cloneResources(r)
		tamper(c)
		if err := ValidateAll(c); !errors.Is(err, ErrInvalidResource) {
			t.Errorf("case %d: ValidateAll = %v, want ErrInvalidResource", i, err)
		}
	}
	if err := ValidateAll(r); err != nil {
		t.Errorf("original no longer valid: %v", err)
	}
}

func TestBadClusterIsInvalid(t *testing.T) {
	r, err := Build(DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := badCluster(r.Clusters[0].(*cluster.Cluster))
	if err := bad.ValidateAll(); err == nil {
		t.Fatal("the test fault cluster passes validation")
	}
	b, err := proto.Marshal(bad)
	if err != nil {
		t.Fatal(err)
	}
	var back cluster.Cluster
	if err := proto.Unmarshal(b, &back); err != nil || back.GetLbPolicy() != bad.GetLbPolicy() {
		t.Fatalf("the test fault cluster does not round-trip: %v", err)
	}
}

func cloneResources(r *Resources) *Resources {
	c := *r
	c.Listeners = cloneAll(r.Listeners)
	c.Routes = cloneAll(r.Routes)
	c.Clusters = cloneAll(r.Clusters)
	c.Endpoints = cloneAll(r.Endpoints)
	return &c
}

// FuzzBuild feeds arbitrary member lists to Build: it must not panic, and
// whatever it returns must be valid, with contiguous priorities and at
// most one primary at priority 0.
func FuzzBuild(f *testing.F) {
	f.Add([]byte("a\x00p\x011\x00127.0.0.1:7101\x00\x00b\x00b\x001\x00127.0.0.1:7111\x00\x01"))
	f.Add([]byte("x\x00p\x00\x00[::1]:1\x00\x02"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var members []Member
		fields := strings.Split(string(data), "\x00")
		for i := 0; i+4 < len(fields); i += 5 {
			m := Member{Name: fields[i], Kind: KindCore, GRPCAddr: fields[i+3]}
			if strings.HasPrefix(fields[i+1], "p") {
				m.Role = RolePrimary
			} else {
				m.Role = fields[i+1]
			}
			for _, c := range []byte(fields[i+2]) {
				m.Epoch = m.Epoch*7 + uint64(c)
			}
			if s := fields[i+4]; s != "" {
				m.State = State(s[0] % 5)
			}
			members = append(members, m)
		}
		r, err := Build(DefaultConfig(), members)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		if err := ValidateAll(r); err != nil {
			t.Fatal(err)
		}
		var prev uint32
		for i, p := range r.Placements {
			if i == 0 && p.Priority != 0 || p.Priority < prev || p.Priority > prev+1 {
				t.Fatalf("priorities not contiguous: %v", r.Placements)
			}
			prev = p.Priority
			if i > 0 && p.Priority == 0 {
				t.Fatalf("two cores at priority 0: %v", r.Placements)
			}
		}
		if r.Primary != "" && r.Placements[0].Name != r.Primary {
			t.Fatalf("primary %q not first: %v", r.Primary, r.Placements)
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	members := []Member{
		core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 1, "127.0.0.1:7111", StateAlive),
		{Name: "xds", Kind: KindXDS, State: StateAlive},
	}
	cfg := DefaultConfig()
	for b.Loop() {
		if _, err := Build(cfg, members); err != nil {
			b.Fatal(err)
		}
	}
}
