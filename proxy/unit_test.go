package proxy

import (
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/hachat/hachat/telemetry"
)

func TestRank(t *testing.T) {
	type hs struct {
		addr     string
		prio     uint32
		eds      corev3.HealthStatus
		state    hostState
		role     string
		epoch    uint64
		draining bool
	}
	tests := []struct {
		name        string
		hosts       []hs
		want        []string
		wantPrimary bool // the first host is a healthy primary
	}{
		{"primary wins over priority", []hs{
			{"a", 0, 0, stateUp, "backup", 1, false},
			{"b", 1, 0, stateUp, "primary", 2, false},
		}, []string{"b", "a"}, true},
		{"newest epoch among primaries", []hs{
			{"a", 0, 0, stateUp, "primary", 1, false},
			{"b", 1, 0, stateUp, "primary", 2, false},
		}, []string{"b", "a"}, true},
		{"own checks beat EDS health for primaries", []hs{
			{"a", 0, corev3.HealthStatus_HEALTHY, stateDown, "primary", 3, false},
			{"b", 1, corev3.HealthStatus_UNHEALTHY, stateUp, "primary", 2, false},
		}, []string{"b", "a"}, true},
		{"no primary: priority among hosts not down", []hs{
			{"a", 0, 0, stateDown, "primary", 1, false},
			{"b", 1, 0, stateUp, "backup", 1, false},
			{"c", 2, 0, stateUnknown, "", 0, false},
		}, []string{"b", "c", "a"}, false},
		{"no primary: EDS unhealthy goes after healthy", []hs{
			{"a", 0, corev3.HealthStatus_UNHEALTHY, stateUnknown, "", 0, false},
			{"b", 1, corev3.HealthStatus_HEALTHY, stateUnknown, "", 0, false},
		}, []string{"b", "a"}, false},
		{"draining primary is not chosen as primary", []hs{
			{"a", 0, 0, stateUp, "primary", 2, true},
			{"b", 1, 0, stateUp, "primary", 1, false},
		}, []string{"b", "a"}, true},
		{"checked-up before unchecked at equal priority", []hs{
			{"b", 0, 0, stateUnknown, "", 0, false},
			{"a", 0, 0, stateUp, "backup", 0, false},
		}, []string{"a", "b"}, false},
		{"all down: still ordered for retries", []hs{
			{"b", 1, 0, stateDown, "", 0, false},
			{"a", 0, 0, stateDown, "", 0, false},
		}, []string{"a", "b"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hosts := map[string]*host{}
			for _, h := range tc.hosts {
				hosts[h.addr] = &host{addr: h.addr, ep: endpointInfo{addr: h.addr, priority: h.prio, health: h.eds},
					state: h.state, role: h.role, epoch: h.epoch, draining: h.draining}
			}
			got := rank(hosts)
			var names []string
			for _, h := range got {
				names = append(names, h.addr)
			}
			if strings.Join(names, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("rank = %v, want %v", names, tc.want)
			}
			if (got[0].class() == 0) != tc.wantPrimary {
				t.Fatalf("first is primary = %v, want %v", got[0].class() == 0, tc.wantPrimary)
			}
		})
	}
}

func TestFastInterval(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{5 * time.Millisecond, 5 * time.Millisecond},
		{50 * time.Millisecond, 10 * time.Millisecond},
		{200 * time.Millisecond, 20 * time.Millisecond},
		{time.Second, 25 * time.Millisecond},
	} {
		if got := fastInterval(tc.in); got != tc.want {
			t.Errorf("fastInterval(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDecodeListeners(t *testing.T) {
	noCluster := tcpListener("x", "chatcore")
	noCluster.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t,
		&tcpproxyv3.TcpProxy{StatPrefix: "s"})}
	emptyPrefix := tcpListener("y", "chatcore")
	emptyPrefix.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t,
		&tcpproxyv3.TcpProxy{ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}})}
	api := &listenerv3.Listener{Name: "chatcore", ApiListener: &listenerv3.ApiListener{}}
	tests := []struct {
		name    string
		in      []*anypb.Any
		want    map[string]string // listener -> cluster
		wantErr bool
	}{
		{"tcp proxy listener", []*anypb.Any{mustAny(t, tcpListener("chatcore-sidecar", "chatcore"))},
			map[string]string{"chatcore-sidecar": "chatcore"}, false},
		{"api listener is kept but has no cluster", []*anypb.Any{mustAny(t, api), mustAny(t, tcpListener("s", "c"))},
			map[string]string{"chatcore": "", "s": "c"}, false},
		{"tcp_proxy without cluster", []*anypb.Any{mustAny(t, noCluster)}, nil, true},
		{"tcp_proxy fails Validate", []*anypb.Any{mustAny(t, emptyPrefix)}, nil, true},
		{"duplicate name", []*anypb.Any{mustAny(t, tcpListener("s", "c")), mustAny(t, tcpListener("s", "c"))}, nil, true},
		{"wrong type", []*anypb.Any{mustAny(t, edsCluster("c", time.Second, time.Second, 1, 1))}, nil, true},
		{"garbage bytes", []*anypb.Any{{TypeUrl: listenerType, Value: []byte{0xff, 0xff}}}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeListeners(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrBadResource) {
					t.Fatalf("err = %v, want ErrBadResource", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d listeners, want %d", len(got), len(tc.want))
			}
			for name, c := range tc.want {
				if got[name].cluster != c {
					t.Errorf("listener %s cluster %q, want %q", name, got[name].cluster, c)
				}
			}
		})
	}
}

func TestDecodeClusters(t *testing.T) {
	good := edsCluster("chatcore", 100*time.Millisecond, 50*time.Millisecond, 2, 1)
	noTimeout := edsCluster("chatcore", 100*time.Millisecond, 50*time.Millisecond, 2, 1)
	noTimeout.HealthChecks[0].Timeout = nil
	zeroConnect := edsCluster("chatcore", 100*time.Millisecond, 50*time.Millisecond, 2, 1)
	zeroConnect.ConnectTimeout = durationpb.New(0)
	serviceName := edsCluster("chatcore", time.Second, time.Second, 1, 1)
	serviceName.EdsClusterConfig.ServiceName = "other"
	badLB := edsCluster("chatcore", time.Second, time.Second, 1, 1)
	badLB.LbPolicy = clusterv3.Cluster_LbPolicy(42) // the control plane's bad-resource test fault
	bare := &clusterv3.Cluster{Name: "bare", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	static := &clusterv3.Cluster{Name: "st", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: loadAssignment("st", ep{addr: "127.0.0.1:9", name: "n"})}
	tests := []struct {
		name    string
		in      proto.Message
		check   func(t *testing.T, c clusterInfo)
		wantErr bool
	}{
		{"eds with health check", good, func(t *testing.T, c clusterInfo) {
			want := healthCheck{100 * time.Millisecond, 50 * time.Millisecond, 2, 1, "hachat.chat.v1.Chat", checkGRPC}
			if !c.eds || c.edsName != "chatcore" || c.hc != want || c.connectTimeout != time.Second {
				t.Fatalf("got %+v", c)
			}
		}, false},
		{"eds service name", serviceName, func(t *testing.T, c clusterInfo) {
			if c.edsName != "other" {
				t.Fatalf("edsName %q", c.edsName)
			}
		}, false},
		{"defaults without health check", bare, func(t *testing.T, c clusterInfo) {
			if c.hc.Interval != defaultHCInterval || c.hc.Unhealthy != defaultUnhealthy || c.connectTimeout != defaultConnectTimeout {
				t.Fatalf("got %+v", c)
			}
		}, false},
		{"static with load assignment", static, func(t *testing.T, c clusterInfo) {
			if c.eds || len(c.static) != 1 || c.static[0].addr != "127.0.0.1:9" || c.static[0].name != "n" {
				t.Fatalf("got %+v", c)
			}
		}, false},
		{"health check without timeout", noTimeout, nil, true},
		{"zero connect timeout", zeroConnect, nil, true},
		{"undefined lb_policy", badLB, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeClusters([]*anypb.Any{mustAny(t, tc.in)})
			if tc.wantErr {
				if !errors.Is(err, ErrBadResource) {
					t.Fatalf("err = %v, want ErrBadResource", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range got {
				tc.check(t, c)
			}
		})
	}
}

func TestDecodeAssignments(t *testing.T) {
	good := loadAssignment("chatcore",
		ep{"127.0.0.1:7101", 0, corev3.HealthStatus_HEALTHY, "core-a", "primary", 3},
		ep{"127.0.0.1:7111", 1, corev3.HealthStatus_UNHEALTHY, "core-b", "backup", 3})
	dup := loadAssignment("chatcore", ep{addr: "127.0.0.1:1"}, ep{addr: "127.0.0.1:1", priority: 1})
	noPort := loadAssignment("chatcore", ep{addr: "127.0.0.1:0"})
	strEpoch := loadAssignment("chatcore", ep{addr: "127.0.0.1:5"})
	strEpoch.Endpoints[0].LbEndpoints[0].Metadata.FilterMetadata["hachat"].Fields["epoch"] = structpb.NewStringValue("42")
	noAddr := &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{}}}}}}}
	tests := []struct {
		name    string
		in      *endpointv3.ClusterLoadAssignment
		want    []endpointInfo
		wantErr bool
	}{
		{"pair", good, []endpointInfo{
			{"127.0.0.1:7101", 0, corev3.HealthStatus_HEALTHY, "core-a", "primary", 3},
			{"127.0.0.1:7111", 1, corev3.HealthStatus_UNHEALTHY, "core-b", "backup", 3}}, false},
		{"epoch as string", strEpoch, []endpointInfo{{"127.0.0.1:5", 0, 0, "", "", 42}}, false},
		{"duplicate endpoint", dup, nil, true},
		{"port zero", noPort, nil, true},
		{"no address", noAddr, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeAssignments([]*anypb.Any{mustAny(t, tc.in)})
			if tc.wantErr {
				if !errors.Is(err, ErrBadResource) {
					t.Fatalf("err = %v, want ErrBadResource", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			eps := got[tc.in.GetClusterName()].endpoints
			if len(eps) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", eps, tc.want)
			}
			for i := range eps {
				if eps[i] != tc.want[i] {
					t.Errorf("endpoint %d = %+v, want %+v", i, eps[i], tc.want[i])
				}
			}
		})
	}
}

// FuzzDecode feeds arbitrary bytes to the three xDS decoders: they must
// return a resource or ErrBadResource, never panic.
func FuzzDecode(f *testing.F) {
	seeds := []proto.Message{
		tcpListener("chatcore-sidecar", "chatcore"),
		edsCluster("chatcore", time.Second, time.Second, 2, 1),
		loadAssignment("chatcore", ep{"127.0.0.1:7101", 0, corev3.HealthStatus_HEALTHY, "a", "primary", 1}),
	}
	for i, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
		f.Add(uint8(i), b[:len(b)/2])
	}
	f.Add(uint8(0), []byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		var err error
		switch kind % 3 {
		case 0:
			_, err = decodeListeners([]*anypb.Any{{TypeUrl: listenerType, Value: b}})
		case 1:
			_, err = decodeClusters([]*anypb.Any{{TypeUrl: clusterType, Value: b}})
		case 2:
			var as map[string]assignment
			as, err = decodeAssignments([]*anypb.Any{{TypeUrl: endpointType, Value: b}})
			for _, a := range as {
				for _, e := range a.endpoints {
					if e.addr == "" {
						t.Fatal("accepted an endpoint without an address")
					}
				}
			}
		}
		if err != nil && !errors.Is(err, ErrBadResource) {
			t.Fatalf("error %v is not ErrBadResource", err)
		}
	})
}

func TestConfig(t *testing.T) {
	if err := DefaultConfig().validate(false); err != nil {
		t.Fatalf("default config: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		static bool
		ok     bool
	}{
		{"no node id", func(c *Config) { c.NodeID = "" }, false, false},
		{"bad xds", func(c *Config) { c.XDS = "nope" }, false, false},
		{"static ignores xds", func(c *Config) { c.XDS = "" }, true, true},
		{"empty xds", func(c *Config) { c.XDS = " , " }, false, false},
		{"two control planes", func(c *Config) { c.XDS = "127.0.0.1:7200, 127.0.0.1:7220" }, false, true},
		{"one bad of two", func(c *Config) { c.XDS = "127.0.0.1:7200,nope" }, false, false},
		{"control plane twice", func(c *Config) { c.XDS = "127.0.0.1:7200,127.0.0.1:7200" }, false, false},
		{"bad listen", func(c *Config) { c.Listen = "7301" }, false, false},
		{"admin disabled", func(c *Config) { c.Admin = "" }, false, true},
		{"zero breaker failures", func(c *Config) { c.BreakerFailures = 0 }, false, false},
		{"zero attempts", func(c *Config) { c.ConnectAttempts = 0 }, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.validate(tc.static)
			if tc.ok != (err == nil) {
				t.Fatalf("validate = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Fatalf("err %v is not ErrConfig", err)
			}
		})
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := DefaultConfig()
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"-node-id", "n1", "-listen", "127.0.0.1:1", "-breaker-failures", "7"}); err != nil {
		t.Fatal(err)
	}
	if c.NodeID != "n1" || c.Listen != "127.0.0.1:1" || c.BreakerFailures != 7 {
		t.Fatalf("flags not bound: %+v", c)
	}
	if err := fs.Parse([]string{"-breaker-failures", "x"}); err == nil {
		t.Fatal("bad breaker-failures accepted")
	}
}

func TestPickListener(t *testing.T) {
	lds := map[string]listenerInfo{
		"chatcore":         {name: "chatcore", api: true},
		"chatcore-sidecar": {name: "chatcore-sidecar", cluster: "chatcore"},
	}
	two := map[string]listenerInfo{
		"a": {name: "a", cluster: "x"},
		"b": {name: "b", cluster: "y"},
	}
	tests := []struct {
		name, configured string
		lds              map[string]listenerInfo
		want             string
		ok               bool
	}{
		{"by name", "chatcore-sidecar", lds, "chatcore-sidecar", true},
		{"api listener by name is refused", "chatcore", lds, "", false},
		{"missing name", "other", lds, "", false},
		{"empty name: the only tcp_proxy listener", "", lds, "chatcore-sidecar", true},
		{"empty name: two candidates is ambiguous", "", two, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &Proxy{cfg: Config{Listener: tc.configured}}
			got, ok := p.pickListener(tc.lds)
			if ok != tc.ok || (ok && got.name != tc.want) {
				t.Fatalf("pickListener = %q, %v; want %q, %v", got.name, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestNewStaticRejectsBadResources(t *testing.T) {
	bad := edsCluster("chatcore", time.Second, time.Second, 1, 1)
	bad.HealthChecks[0].Interval = nil
	cfg := DefaultConfig()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", ""
	_, err := NewStatic(cfg, telemetry.Discard(), Resources{Clusters: []*clusterv3.Cluster{bad}})
	if !errors.Is(err, ErrBadResource) {
		t.Fatalf("NewStatic with a bad cluster: %v, want ErrBadResource", err)
	}
	cfg.Listen = "nope"
	if _, err := NewStatic(cfg, telemetry.Discard(), Resources{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("NewStatic with a bad listen address: %v, want ErrConfig", err)
	}
}

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestPipeHalfClose(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{m: m}
	client, clientSide := tcpPair(t)
	upstreamSide, upstream := tcpPair(t)
	type result struct {
		up, down      int64
		err           error
		upstreamFirst bool
	}
	done := make(chan result, 1)
	go func() {
		up, down, err, first := p.pipe(&conn{client: clientSide, upstream: upstreamSide})
		done <- result{up, down, err, first}
	}()
	deadline := time.Now().Add(5 * time.Second)
	client.SetDeadline(deadline)
	upstream.SetDeadline(deadline)

	// The client sends a request and shuts down its sending side; the
	// upstream must see the request and then EOF, and can still answer.
	if _, err := client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	got, err := io.ReadAll(upstream)
	if err != nil || string(got) != "request" {
		t.Fatalf("upstream read %q, %v; want the request then EOF", got, err)
	}
	if _, err := upstream.Write([]byte("answer")); err != nil {
		t.Fatalf("upstream answer after the client's half-close: %v", err)
	}
	upstream.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "answer" {
		t.Fatalf("client read %q, %v; want the answer then EOF", got, err)
	}
	select {
	case r := <-done:
		if r.up != 7 || r.down != 6 || r.err != nil || r.upstreamFirst {
			t.Fatalf("pipe = %+v, want 7 up, 6 down, no error, client first", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pipe did not end after both sides closed")
	}
	if got := metricValue(m.bytes); got != 13 {
		t.Fatalf("bytes metric = %v, want 13", got)
	}
}
