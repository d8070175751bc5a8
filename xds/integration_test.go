package xds

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
)

func gossipConfig(name string, join ...string) membership.Config {
	c := membership.DefaultConfig()
	c.Name = name
	c.BindAddr = "127.0.0.1:0"
	c.Join = join
	return c
}

// TestRealMembership runs the control plane on real gossip: a core that
// joins appears as the primary endpoint, and when it leaves it is gone.
func TestRealMembership(t *testing.T) {
	ctx := context.Background()
	xm, err := membership.New(ctx, gossipConfig("xds"), membership.Meta{Kind: membership.KindXDS}, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xm.Shutdown() })
	s := startServer(t, testConfig(), MembershipView(xm), Options{})

	cm, err := membership.New(ctx, gossipConfig("core-a", xm.Local().Addr), membership.Meta{
		Kind: membership.KindCore, Role: membership.RolePrimary, Epoch: 4, GRPCAddr: "127.0.0.1:7101",
	}, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Shutdown()
	waitFor(t, 5*time.Second, "core-a published as primary", func() bool { return s.Status().Primary == "core-a" })
	if ep := s.Status().Endpoints; len(ep) != 1 || ep[0].Epoch != 4 || ep[0].Priority != 0 || !ep[0].Healthy {
		t.Errorf("endpoints = %+v", ep)
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := cm.Leave(lctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "core-a gone", func() bool { return len(s.Status().Endpoints) == 0 })
}

// chatStub answers Switchover like a primary that hands over.
type chatStub struct {
	chatpb.UnimplementedChatServer
	token string
}

func (c *chatStub) Switchover(_ context.Context, req *chatpb.SwitchoverRequest) (*chatpb.SwitchoverResponse, error) {
	if req.GetAdminToken() != c.token {
		return nil, status.Error(codes.PermissionDenied, "bad admin token")
	}
	return &chatpb.SwitchoverResponse{NewPrimary: "core-b", NewEpoch: 5, PauseMicros: 42}, nil
}

// TestSwitchoverOverGRPC drives the real gRPC switchover call.
func TestSwitchoverOverGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	chatpb.RegisterChatServer(srv, &chatStub{token: "s3cret"})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	view := NewMemoryView(core_("core-a", RolePrimary, 4, ln.Addr().String(), StateAlive))
	s := startServer(t, testConfig(), view, Options{})
	code, body := do(t, "POST", "http://"+s.HTTPAddr()+SwitchoverPath, "s3cret")
	if code != 200 || !containsAll(body, `"previousPrimary": "core-a"`, `"newPrimary": "core-b"`, `"newEpoch": 5`, `"pauseMicros": 42`) {
		t.Errorf("switchover = %d %s", code, body)
	}

	cfg := testConfig()
	cfg.AdminToken = "other"
	s2 := startServer(t, cfg, view, Options{})
	if code, body := do(t, "POST", "http://"+s2.HTTPAddr()+SwitchoverPath, "other"); code != 502 || !containsAll(body, "PermissionDenied") {
		t.Errorf("switchover refused by the core = %d %s", code, body)
	}
}

// TestDeltaADS: a delta xDS client (Envoy with DELTA_GRPC) is served too.
func TestDeltaADS(t *testing.T) {
	s := startServer(t, testConfig(), NewMemoryView(pair()...), Options{})
	conn, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "delta-envoy"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != ClusterName {
		t.Errorf("delta clusters = %v", resp.GetResources())
	}
	if n := s.Status().Nodes; len(n) != 1 || !n[0].Delta {
		t.Errorf("nodes = %+v", n)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
