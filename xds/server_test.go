package xds

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

func testConfig() Config {
	c := DefaultConfig()
	c.GRPC = "127.0.0.1:0"
	c.HTTP = "127.0.0.1:0"
	c.AdminToken = "s3cret"
	return c
}

// startServer runs a control plane on loopback until the test ends.
func startServer(t *testing.T, cfg Config, view View, opts Options) *Server {
	t.Helper()
	s, err := New(cfg, telemetry.Discard(), view, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	client, scheme := http.DefaultClient, "http://"
	if cfg.TLS.Enabled() {
		// The control plane's own certificate: any identity reads /healthz.
		client, scheme = tlsHTTPClient(t, cfg.TLS), "https://"
	}
	waitFor(t, 2*time.Second, "healthz", func() bool {
		resp, err := client.Get(scheme + s.HTTPAddr() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// adsStream is a hand-driven ADS client.
type adsStream struct {
	t     *testing.T
	node  string
	s     discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resps chan *discovery.DiscoveryResponse
}

func dialADS(t *testing.T, addr, node string) *adsStream {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &adsStream{t: t, node: node, s: s, resps: make(chan *discovery.DiscoveryResponse, 16)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				close(a.resps)
				return
			}
			a.resps <- r
		}
	}()
	return a
}

func (a *adsStream) send(typ string, names []string, version, nonce string, nack error) {
	a.t.Helper()
	req := &discovery.DiscoveryRequest{Node: &core.Node{Id: a.node}, TypeUrl: typ, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if nack != nil {
		req.ErrorDetail = &spb.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	if err := a.s.Send(req); err != nil {
		a.t.Fatalf("send: %v", err)
	}
}

func (a *adsStream) recv(d time.Duration) *discovery.DiscoveryResponse {
	a.t.Helper()
	select {
	case r, ok := <-a.resps:
		if !ok {
			a.t.Fatal("ADS stream ended")
		}
		return r
	case <-time.After(d):
		a.t.Fatalf("no ADS response within %v", d)
	}
	return nil
}

// subscribe asks for typ and acks the first answer, returning it.
func (a *adsStream) subscribe(typ string, names []string) *discovery.DiscoveryResponse {
	a.t.Helper()
	a.send(typ, names, "", "", nil)
	r := a.recv(2 * time.Second)
	if r.GetTypeUrl() != typ {
		a.t.Fatalf("got %s, want %s", r.GetTypeUrl(), typ)
	}
	a.send(typ, names, r.GetVersionInfo(), r.GetNonce(), nil)
	return r
}

func resourceNames(t *testing.T, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	var names []string
	for _, a := range r.GetResources() {
		var n string
		switch r.GetTypeUrl() {
		case resource.ListenerType:
			var l listener.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			n = l.GetName()
		case resource.ClusterType:
			var c cluster.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			n = c.GetName()
		default:
			n = "?"
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func assignment(t *testing.T, r *discovery.DiscoveryResponse) *endpoint.ClusterLoadAssignment {
	t.Helper()
	if r.GetTypeUrl() != resource.EndpointType || len(r.GetResources()) != 1 {
		t.Fatalf("want one load assignment, got %s with %d", r.GetTypeUrl(), len(r.GetResources()))
	}
	var cla endpoint.ClusterLoadAssignment
	if err := r.GetResources()[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	return &cla
}

func pair() []Member {
	return []Member{
		core_("core-a", RolePrimary, 1, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 1, "127.0.0.1:7111", StateAlive),
		{Name: "xds", Kind: KindXDS, State: StateAlive},
	}
}

// TestPushOnMembershipChange: a sidecar-like ADS client gets the new load
// assignment within a deadline after the primary is marked dead.
func TestPushOnMembershipChange(t *testing.T) {
	view := NewMemoryView(pair()...)
	s := startServer(t, testConfig(), view, Options{})
	a := dialADS(t, s.GRPCAddr(), "sidecar-1")

	if got := resourceNames(t, a.subscribe(resource.ListenerType, nil)); !slices.Equal(got, []string{ListenerName}) {
		t.Errorf("wildcard listeners = %v, want only %s", got, ListenerName)
	}
	if got := resourceNames(t, a.subscribe(resource.ClusterType, nil)); !slices.Equal(got, []string{ClusterName}) {
		t.Errorf("clusters = %v", got)
	}
	first := a.subscribe(resource.EndpointType, []string{ClusterName})
	cla := assignment(t, first)
	if p0 := cla.GetEndpoints()[0]; p0.GetPriority() != 0 || p0.GetLbEndpoints()[0].GetEndpoint().GetHostname() != "core-a" {
		t.Fatalf("priority 0 = %v", p0)
	}

	start := time.Now()
	view.Update("core-a", func(m *Member) { m.State = StateDead })
	r := a.recv(time.Second)
	took := time.Since(start)
	if r.GetTypeUrl() != resource.EndpointType || r.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("got %s version %s, want a new load assignment", r.GetTypeUrl(), r.GetVersionInfo())
	}
	cla = assignment(t, r)
	p0 := cla.GetEndpoints()[0].GetLbEndpoints()[0]
	if p0.GetEndpoint().GetHostname() != "core-b" || p0.GetHealthStatus() != core.HealthStatus_HEALTHY {
		t.Errorf("after the primary died priority 0 is %v", p0)
	}
	p1 := cla.GetEndpoints()[1]
	if p1.GetPriority() != 1 || p1.GetLbEndpoints()[0].GetHealthStatus() != core.HealthStatus_UNHEALTHY {
		t.Errorf("dead primary = %v", p1)
	}
	// Speed is measured by BenchmarkBuild and reported, not asserted here;
	// the push is event-driven (the 1s recv deadline would catch a poll).
	t.Logf("push after membership change: %v", took)
	a.send(resource.EndpointType, []string{ClusterName}, r.GetVersionInfo(), r.GetNonce(), nil)

	// The listener and cluster did not change: nothing else is pushed. The
	// next response must be the next endpoint change.
	view.Update("core-b", func(m *Member) { m.Role = RolePrimary; m.Epoch = 2 })
	r = a.recv(time.Second)
	if r.GetTypeUrl() != resource.EndpointType {
		t.Errorf("unchanged %s was pushed again", r.GetTypeUrl())
	}
	if got := s.Status().Primary; got != "core-b" {
		t.Errorf("status primary = %q", got)
	}
}

// TestADSNameMatching: one client asking by name (as grpc-go does) and
// one asking for everything (as sidecars do) are both served.
func TestADSNameMatching(t *testing.T) {
	s := startServer(t, testConfig(), NewMemoryView(pair()...), Options{})
	grpcGo := dialADS(t, s.GRPCAddr(), "grpc-go")
	side := dialADS(t, s.GRPCAddr(), "sidecar")

	if got := resourceNames(t, grpcGo.subscribe(resource.ListenerType, []string{APIListenerName})); !slices.Equal(got, []string{APIListenerName}) {
		t.Errorf("named listener = %v", got)
	}
	if got := resourceNames(t, side.subscribe(resource.ListenerType, nil)); !slices.Equal(got, []string{ListenerName}) {
		t.Errorf("wildcard listener = %v", got)
	}
	r := grpcGo.subscribe(resource.RouteType, []string{RouteName})
	if len(r.GetResources()) != 1 {
		t.Errorf("route: %d resources", len(r.GetResources()))
	}
	if got := resourceNames(t, grpcGo.subscribe(resource.ClusterType, []string{ClusterName})); !slices.Equal(got, []string{ClusterName}) {
		t.Errorf("named cluster = %v", got)
	}
	assignment(t, grpcGo.subscribe(resource.EndpointType, []string{ClusterName}))

	// The same node later asks for both listeners: it gets both.
	grpcGo.send(resource.ListenerType, []string{APIListenerName, ListenerName}, "", "", nil)
	if got := resourceNames(t, grpcGo.recv(2*time.Second)); !slices.Equal(got, []string{APIListenerName, ListenerName}) {
		t.Errorf("two named listeners = %v", got)
	}
	// An explicit "*" is a wildcard.
	star := dialADS(t, s.GRPCAddr(), "star")
	if got := resourceNames(t, star.subscribe(resource.ListenerType, []string{"*"})); !slices.Equal(got, []string{ListenerName}) {
		t.Errorf("explicit * listeners = %v", got)
	}
	st := s.Status()
	if len(st.Nodes) != 3 {
		t.Errorf("status nodes = %+v", st.Nodes)
	}
}

// TestNACKIsRecordedAndNotResent: a client rejects the bad cluster; the
// control plane records the NACK and does not resend the rejected version
// (the next response is the restored good cluster).
func TestNACKIsRecordedAndNotResent(t *testing.T) {
	s := startServer(t, testConfig(), NewMemoryView(pair()...), Options{})
	a := dialADS(t, s.GRPCAddr(), "sidecar")
	good := a.subscribe(resource.ClusterType, nil)

	s.SetFault(context.Background(), true)
	bad := a.recv(time.Second)
	var c cluster.Cluster
	if err := bad.GetResources()[0].UnmarshalTo(&c); err != nil {
		t.Fatal(err)
	}
	verr := c.Validate()
	if verr == nil {
		t.Fatal("fault cluster passes validation")
	}
	a.send(resource.ClusterType, nil, good.GetVersionInfo(), bad.GetNonce(), verr)
	waitFor(t, time.Second, "NACK in status", func() bool { return s.Status().LastNACK != nil })
	n := s.Status().LastNACK
	if n.Node != "sidecar" || n.Type != "cluster" || n.Version != bad.GetVersionInfo() || n.Kept != good.GetVersionInfo() || !strings.Contains(n.Error, "LbPolicy") {
		t.Errorf("last NACK = %+v", n)
	}

	s.SetFault(context.Background(), false)
	r := a.recv(time.Second)
	if r.GetVersionInfo() != good.GetVersionInfo() {
		t.Errorf("after the NACK got version %s, want the restored %s (the rejected one is %s)", r.GetVersionInfo(), good.GetVersionInfo(), bad.GetVersionInfo())
	}
}

type fakeSwitchover struct {
	addr, token string
	err         error
}

func (f *fakeSwitchover) call(_ context.Context, addr, token string) (*chatpb.SwitchoverResponse, error) {
	f.addr, f.token = addr, token
	if f.err != nil {
		return nil, f.err
	}
	return &chatpb.SwitchoverResponse{NewPrimary: "core-b", NewEpoch: 2, PauseMicros: 1234}, nil
}

func do(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminAPI(t *testing.T) {
	fake := &fakeSwitchover{}
	view := NewMemoryView(pair()...)
	s := startServer(t, testConfig(), view, Options{
		Switchover: fake.call,
		Handlers: map[string]http.Handler{"GET /extra": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "extra")
		})},
	})
	base := "http://" + s.HTTPAddr()

	code, body := do(t, "GET", base+StatusPath, "")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("status: %d %v %s", code, err, body)
	}
	if st.Primary != "core-a" || len(st.Members) != 3 || st.Version == "" || len(st.Endpoints) != 2 || st.Members[0].State != "alive" {
		t.Errorf("status = %+v", st)
	}

	tests := []struct {
		name, method, path, token string
		want                      int
		contains                  string
	}{
		{"switchover without token", "POST", SwitchoverPath, "", 403, "admin token"},
		{"switchover with wrong token", "POST", SwitchoverPath, "nope", 403, "admin token"},
		{"switchover", "POST", SwitchoverPath, "s3cret", 200, `"newPrimary": "core-b"`},
		{"bad resource without token", "POST", BadResourcePath, "", 403, ""},
		{"bad resource on", "POST", BadResourcePath, "s3cret", 200, `"fault": true`},
		{"bad resource off", "DELETE", BadResourcePath, "s3cret", 200, `"fault": false`},
		{"status is GET only", "POST", StatusPath, "", 405, ""},
		{"healthz", "GET", "/healthz", "", 200, "ok"},
		{"metrics", "GET", "/metrics", "", 200, "hachat_xds_snapshot_generation"},
		{"extra handler", "GET", "/extra", "", 200, "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(t, tt.method, base+tt.path, tt.token)
			if code != tt.want || !strings.Contains(body, tt.contains) {
				t.Errorf("%s %s = %d %s, want %d containing %q", tt.method, tt.path, code, body, tt.want, tt.contains)
			}
		})
	}
	if fake.addr != "127.0.0.1:7101" || fake.token != "s3cret" {
		t.Errorf("switchover called %q with token %q, want the primary's address and the admin token", fake.addr, fake.token)
	}

	fake.err = status.Error(codes.FailedPrecondition, "no backup connected")
	if code, body := do(t, "POST", base+SwitchoverPath, "s3cret"); code != 409 || !strings.Contains(body, "no backup") {
		t.Errorf("refused switchover = %d %s", code, body)
	}
	fake.err = errors.New("boom")
	if code, _ := do(t, "POST", base+SwitchoverPath, "s3cret"); code != 502 {
		t.Errorf("failed switchover = %d, want 502", code)
	}
	view.Update("core-a", func(m *Member) { m.State = StateDead })
	waitFor(t, time.Second, "primary gone", func() bool { return s.Status().Primary == "" })
	if code, _ := do(t, "POST", base+SwitchoverPath, "s3cret"); code != 409 {
		t.Errorf("switchover without primary = %d, want 409", code)
	}
}

func TestAdminDisabledWithoutToken(t *testing.T) {
	cfg := testConfig()
	cfg.AdminToken = ""
	s := startServer(t, cfg, NewMemoryView(pair()...), Options{Switchover: (&fakeSwitchover{}).call})
	if code, body := do(t, "POST", "http://"+s.HTTPAddr()+SwitchoverPath, ""); code != 403 || !strings.Contains(body, "disabled") {
		t.Errorf("switchover without configured token = %d %s", code, body)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cfg := testConfig()
	cfg.GRPC = "nonsense"
	if _, err := New(cfg, telemetry.Discard(), NewMemoryView(), Options{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("New with bad grpc address = %v", err)
	}
	if _, err := New(testConfig(), telemetry.Discard(), nil, Options{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("New without view = %v", err)
	}
}
