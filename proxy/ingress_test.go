package proxy

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/hachat/hachat/telemetry"
)

func TestBalancedOrder(t *testing.T) {
	type hs struct {
		addr  string
		state hostState
		conns int
	}
	tests := []struct {
		name  string
		hosts []hs
		// firsts are the hosts that may come first across calls (ties
		// taken in turn), rest the order after the leading group.
		firsts []string
		last   string
	}{
		{"fewest connections first", []hs{{"a", stateUp, 3}, {"b", stateUp, 1}, {"c", stateUp, 2}}, []string{"b"}, "a"},
		{"down hosts last whatever their load", []hs{{"a", stateDown, 0}, {"b", stateUp, 5}}, []string{"b"}, "a"},
		{"unchecked hosts take connections", []hs{{"a", stateUnknown, 0}, {"b", stateUp, 1}}, []string{"a"}, "b"},
		{"ties taken in turn", []hs{{"a", stateUp, 1}, {"b", stateUp, 1}, {"c", stateDown, 0}}, []string{"a", "b"}, "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(clusterInfo{name: "webapi", hc: healthCheck{Kind: checkTCP}})
			for _, h := range tt.hosts {
				x := &host{addr: h.addr, cluster: c, state: h.state, conns: map[*conn]struct{}{}}
				for range h.conns {
					x.conns[&conn{}] = struct{}{}
				}
				c.hosts[h.addr] = x
			}
			seen := map[string]bool{}
			for range 2 * len(tt.firsts) {
				o := c.order()
				if len(o) != len(tt.hosts) {
					t.Fatalf("order has %d hosts, want %d", len(o), len(tt.hosts))
				}
				seen[o[0].addr] = true
				if o[len(o)-1].addr != tt.last {
					t.Errorf("last %s, want %s", o[len(o)-1].addr, tt.last)
				}
			}
			for _, f := range tt.firsts {
				if !seen[f] {
					t.Errorf("%s never came first (seen %v)", f, seen)
				}
			}
			if len(seen) != len(tt.firsts) {
				t.Errorf("first hosts %v, want only %v", seen, tt.firsts)
			}
		})
	}
	if c := newCluster(clusterInfo{hc: healthCheck{Kind: checkGRPC}}); c.balanced() {
		t.Error("a gRPC-checked cluster is balanced: cores would lose their primary")
	}
}

// instance stands in for a webapi or interaction process: it greets every
// connection with its name and holds it open (a push channel) until killed.
type instance struct {
	name string
	ln   net.Listener
	mu   sync.Mutex
	cs   []net.Conn
}

func startInstance(t *testing.T, name string) *instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{name: name, ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			in.mu.Lock()
			in.cs = append(in.cs, c)
			in.mu.Unlock()
			c.Write([]byte(name + "\n"))
		}
	}()
	t.Cleanup(in.kill)
	return in
}

// kill closes the listener and every connection, as the kernel does for a
// process killed with SIGKILL.
func (in *instance) kill() {
	in.ln.Close()
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.cs {
		c.Close()
	}
	in.cs = nil
}

func (in *instance) addr() string { return in.ln.Addr().String() }

// greet connects to addr and returns the name of the instance that
// answered, keeping the connection open until the test ends.
func greet(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting through %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

func ingressResources(interval time.Duration, webapis []*instance, interaction *instance) map[resource.Type][]types.Resource {
	tcp := func(name string) *clusterv3.Cluster {
		c := edsCluster(name, interval, 200*time.Millisecond, 2, 1)
		c.HealthChecks[0].HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
		return c
	}
	var eps []ep
	for _, w := range webapis {
		eps = append(eps, ep{w.addr(), 0, corev3.HealthStatus_HEALTHY, w.name, "", 0})
	}
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {tcpListener(CustomerListener, "webapi"), tcpListener(AgentListener, "interaction"),
			tcpListener("chatcore-sidecar", "chatcore")},
		resource.ClusterType: {tcp("webapi"), tcp("interaction")},
		resource.EndpointType: {loadAssignment("webapi", eps...),
			loadAssignment("interaction", ep{interaction.addr(), 0, corev3.HealthStatus_HEALTHY, interaction.name, "", 0})},
	}
}

// TestIngress runs the edge against a control plane that publishes two
// webapi instances and one interaction: new connections spread over both
// webapi instances; a killed one refuses, is marked down at once, and every
// new connection reaches the other without a failure; agents reach
// interaction on their own address. The checks run every 10s, so only the
// refused connection can take the killed instance out of rotation in time.
func TestIngress(t *testing.T) {
	cp := newControlPlane(t)
	w1, w2 := startInstance(t, "webapi-1"), startInstance(t, "webapi-2")
	ix := startInstance(t, "interaction-1")
	res := ingressResources(10*time.Second, []*instance{w1, w2}, ix)
	cp.set("edge-customer", "v1", res)
	cp.set("edge-agent", "v1", res)

	base := testConfig(cp.addr)
	base.NodeID = "edge"
	in, err := NewIngress(IngressConfig{Base: base, Customer: "127.0.0.1:0", Agent: "127.0.0.1:0"}, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	startProxy(t, in.Customer)
	startProxy(t, in.Agent)
	cust, agent := in.Customer.Addr().String(), in.Agent.Addr().String()
	waitFor(t, 5*time.Second, "both webapi instances up", func() bool {
		d := in.Customer.Dump()
		up := 0
		for _, cl := range d.Clusters {
			for _, e := range cl.Endpoints {
				if cl.Name == "webapi" && e.Health == "up" {
					up++
				}
			}
		}
		return up == 2
	})

	got := map[string]int{}
	for range 6 {
		got[greet(t, cust)]++
	}
	if got["webapi-1"] != 3 || got["webapi-2"] != 3 {
		t.Errorf("6 connections landed %v, want 3 on each instance (least connections)", got)
	}
	if n := metricValue(in.Customer.um.conns.WithLabelValues("webapi", w2.addr())); n != 3 {
		t.Errorf("connections to webapi-2: %v, want 3", n)
	}
	if name := greet(t, agent); name != "interaction-1" {
		t.Errorf("agents' address reached %q", name)
	}

	downs := metricValue(in.Customer.um.changes.WithLabelValues("webapi", "down"))
	w2.kill()
	for i := range 6 {
		if name := greet(t, cust); name != "webapi-1" {
			t.Fatalf("connection %d after the kill reached %q", i, name)
		}
	}
	if d := metricValue(in.Customer.um.changes.WithLabelValues("webapi", "down")); d != downs+1 {
		t.Errorf("upstream changes (down) %v -> %v, want one more", downs, d)
	}
	waitFor(t, 5*time.Second, "the killed instance's connections closed", func() bool {
		return metricValue(in.Customer.um.conns.WithLabelValues("webapi", w2.addr())) == 0
	})
}

func TestNewIngressRefusesBadConfig(t *testing.T) {
	base := testConfig("127.0.0.1:1")
	for _, tc := range []IngressConfig{
		{Base: base},
		{Base: base, Customer: "no-port"},
		{Base: base, Customer: "127.0.0.1:0", Agent: "bad"},
	} {
		if _, err := NewIngress(tc, telemetry.Discard()); err == nil {
			t.Errorf("NewIngress(%+v) accepted", tc)
		}
	}
}
