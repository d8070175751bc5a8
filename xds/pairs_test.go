package xds

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/hachat/hachat/coord/coordtest"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
)

func pairCore(name, p, role string, epoch uint64, addr string, st State) Member {
	m := core_(name, role, epoch, addr, st)
	m.Pair = p
	return m
}

func threePairs() []Member {
	return []Member{
		pairCore("core-a", "1", RolePrimary, 5, "127.0.0.1:7101", StateAlive),
		pairCore("core-b", "1", RoleBackup, 5, "127.0.0.1:7111", StateAlive),
		pairCore("core-2a", "2", RolePrimary, 7, "127.0.0.1:7121", StateAlive),
		pairCore("core-2b", "2", RoleBackup, 7, "127.0.0.1:7131", StateAlive),
		pairCore("core-3a", "3", RoleBackup, 9, "127.0.0.1:7141", StateDead),
		pairCore("core-3b", "3", RoleBackup, 9, "127.0.0.1:7151", StateAlive),
		{Name: "xds", Kind: KindXDS, State: StateAlive},
	}
}

// TestBuildOnePairUnchanged: cores that name the default pair, or none,
// get exactly the one-pair resources of before.
func TestBuildOnePairUnchanged(t *testing.T) {
	cfg := DefaultConfig()
	plain := []Member{
		core_("core-a", RolePrimary, 3, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 3, "127.0.0.1:7111", StateAlive),
	}
	named := []Member{
		pairCore("core-a", "1", RolePrimary, 3, "127.0.0.1:7101", StateAlive),
		pairCore("core-b", "1", RoleBackup, 3, "127.0.0.1:7111", StateAlive),
	}
	a, err := Build(cfg, plain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildPairs(cfg, named, PairInputs{Live: map[string]uint64{"1": 40}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != b.Version || b.Pairs != nil || len(b.Clusters) != 1 {
		t.Fatalf("one named pair changed the resources: %s vs %s, pairs %v", a.Version, b.Version, b.Pairs)
	}
}

func TestBuildPairs(t *testing.T) {
	cfg := DefaultConfig()
	r, err := BuildPairs(cfg, threePairs(), PairInputs{Live: map[string]uint64{"1": 100, "2": 60, "3": 10}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Pairs) != 3 {
		t.Fatalf("pairs = %+v", r.Pairs)
	}
	want := map[string]struct {
		state   string
		primary string
		cluster string
	}{
		"1": {PairServing, "core-a", "chatcore"},
		"2": {PairServing, "core-2a", "chatcore-2"},
		"3": {PairDegraded, "", "chatcore-3"},
	}
	for _, p := range r.Pairs {
		w := want[p.Name]
		if p.State != w.state || p.Primary != w.primary || p.Cluster != w.cluster {
			t.Errorf("pair %s = %s primary %q cluster %q, want %+v", p.Name, p.State, p.Primary, p.Cluster, w)
		}
	}
	// Weights: the degraded pair none; pair 2, 40 behind pair 1, most.
	if w1, w2, w3 := r.Pairs[0].Weight, r.Pairs[1].Weight, r.Pairs[2].Weight; w3 != 0 || w1 == 0 || w2 <= w1 {
		t.Errorf("weights %d %d %d: want pair 2 > pair 1 > 0 = pair 3", w1, w2, w3)
	}
	if r.Primary != "core-a" || len(r.Placements) != 2 {
		t.Errorf("default pair placements = %q %+v", r.Primary, r.Placements)
	}
	// One cluster, assignment and sidecar listener per pair.
	var clusters, clas, sidecars []string
	for _, c := range r.Clusters {
		clusters = append(clusters, c.(*cluster.Cluster).GetName())
	}
	for _, e := range r.Endpoints {
		cla := e.(*endpoint.ClusterLoadAssignment)
		clas = append(clas, cla.GetClusterName())
		if cla.GetClusterName() == "chatcore-2" {
			// The pair's primary at priority 0, its backup at 1.
			got := map[string]uint32{}
			for _, l := range cla.GetEndpoints() {
				for _, e := range l.GetLbEndpoints() {
					got[e.GetEndpoint().GetHostname()] = l.GetPriority()
				}
			}
			if len(got) != 2 || got["core-2a"] != 0 || got["core-2b"] != 1 {
				t.Errorf("chatcore-2 assignment = %v", got)
			}
		}
	}
	for _, l := range r.Listeners {
		if l.(*listener.Listener).GetApiListener() == nil {
			sidecars = append(sidecars, l.(*listener.Listener).GetName())
		}
	}
	if strings.Join(clusters, ",") != "chatcore,chatcore-2,chatcore-3" || strings.Join(clas, ",") != strings.Join(clusters, ",") ||
		strings.Join(sidecars, ",") != "chatcore-sidecar,chatcore-sidecar-2,chatcore-sidecar-3" {
		t.Errorf("clusters %v, assignments %v, sidecar listeners %v", clusters, clas, sidecars)
	}
	// The route: a header match per pair, then the weighted placement.
	rc := r.Routes[0].(*route.RouteConfiguration)
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	if len(routes) != 4 {
		t.Fatalf("routes = %v", routes)
	}
	for i, p := range []string{"1", "2", "3"} {
		h := routes[i].GetMatch().GetHeaders()
		if len(h) != 1 || h[0].GetName() != pairs.Header || h[0].GetStringMatch().GetExact() != p ||
			routes[i].GetRoute().GetCluster() != PairCluster(p) {
			t.Errorf("route %d = %v", i, routes[i])
		}
	}
	wc := routes[3].GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetName() != "chatcore" || wc[1].GetName() != "chatcore-2" {
		t.Errorf("placement = %v", wc)
	}

	// Drained: pair 2 gets no weight; with every pair out, all get 1.
	r, err = BuildPairs(cfg, threePairs(), PairInputs{Draining: map[string]bool{"2": true}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pairs[1].State != PairDraining || r.Pairs[1].Weight != 0 || r.Pairs[0].Weight == 0 {
		t.Errorf("drained pair 2: %+v", r.Pairs)
	}
	r, err = BuildPairs(cfg, threePairs(), PairInputs{Draining: map[string]bool{"1": true, "2": true}})
	if err != nil {
		t.Fatal(err)
	}
	wc = r.Routes[0].(*route.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()[3].GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 3 {
		t.Errorf("no pair placeable: placement = %v, want every pair at weight 1", wc)
	}
	// Full: a pair at capacity takes nothing.
	r, err = BuildPairs(cfg, threePairs(), PairInputs{Live: map[string]uint64{"1": 50, "2": 3}, Capacity: 50})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pairs[0].Weight != 0 || r.Pairs[1].Weight == 0 {
		t.Errorf("pair 1 full: %+v", r.Pairs)
	}
}

// TestPairWeightsBalance places chats at random by the weights, which are
// a poll old (as clients see them), with the arrivals estimated as the
// control plane does: 300 chats in bursts of 150, 50 and 10 per poll
// interval end within max/mean 1.2 (for many seeds); so do the pairs after
// pair 1's chats end in a burst and new chats keep coming.
func TestPairWeightsBalance(t *testing.T) {
	for _, perPoll := range []int{150, 50, 25, 10} {
		for seed := range int64(50) {
			rng := rand.New(rand.NewSource(seed))
			infos := []PairInfo{{Name: "1", State: PairServing}, {Name: "2", State: PairServing}, {Name: "3", State: PairServing}}
			live := []uint64{0, 0, 0}
			var arrivals float64
			place := func(n int) {
				var growth uint64
				for i := range infos {
					if live[i] > infos[i].Live {
						growth += live[i] - infos[i].Live
					}
				}
				arrivals = max(float64(growth), (arrivals+float64(growth))/2)
				for i := range infos {
					infos[i].Live = live[i]
				}
				pairWeights(infos, DefaultPairCapacity, uint64(arrivals+0.5))
				var total uint32
				for _, p := range infos {
					total += p.Weight
				}
				for range n {
					r := uint32(rng.Int63n(int64(total)))
					for i, p := range infos {
						if r < p.Weight {
							live[i]++
							break
						}
						r -= p.Weight
					}
				}
			}
			check := func(what string) {
				var sum, hi uint64
				for _, n := range live {
					sum += n
					hi = max(hi, n)
				}
				if mean := float64(sum) / 3; float64(hi)/mean > 1.2 {
					t.Fatalf("%d chats per poll, seed %d, %s: live %v, max/mean %.2f > 1.2", perPoll, seed, what, live, float64(hi)/mean)
				}
			}
			for placed := 0; placed < 300; placed += perPoll {
				place(min(perPoll, 300-placed))
			}
			check("300 chats")
			live[0] /= 3 // pair 1's chats end in a burst
			for range 300 / perPoll {
				place(perPoll)
			}
			check("after pair 1's chats ended")
		}
	}
}

// TestProxylessRoutesByPair is the acceptance test of the pair routes for
// proxyless clients: grpc-go's own xDS client, configured only by a
// bootstrap that points at this control plane, reaches the pair a request
// names in pairs.Header, is placed by the weights when it names none (a
// drained pair gets nothing), and fails over within a pair when the pair's
// primary is gone. grpc-go NACKs what it does not accept: none may come.
func TestProxylessRoutesByPair(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	stand := map[string]*standIn{}
	for _, n := range []string{"1a", "1b", "2a", "2b", "3a", "3b"} {
		stand[n] = startStandIn(t, n, "127.0.0.1:0", n[1] == 'a')
	}
	members := func(dead2a bool) []Member {
		st2a, role2b := StateAlive, RoleBackup
		if dead2a {
			st2a, role2b = StateDead, RolePrimary
		}
		return []Member{
			pairCore("1a", "1", RolePrimary, 2, stand["1a"].addr, StateAlive),
			pairCore("1b", "1", RoleBackup, 2, stand["1b"].addr, StateAlive),
			pairCore("2a", "2", RolePrimary, 4, stand["2a"].addr, st2a),
			pairCore("2b", "2", role2b, 4, stand["2b"].addr, StateAlive),
			pairCore("3a", "3", RolePrimary, 6, stand["3a"].addr, StateAlive),
			pairCore("3b", "3", RoleBackup, 6, stand["3b"].addr, StateAlive),
			{Name: "xds", Kind: KindXDS, State: StateAlive},
		}
	}
	view := NewMemoryView(members(false)...)
	var mu sync.Mutex
	live := map[string]uint64{}
	cfg := testConfig()
	cfg.PairPoll = 20 * time.Millisecond
	s := startServer(t, cfg, view, Options{PairLive: func(_ context.Context, addr string) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		return live[addr], nil
	}})
	boot, err := GRPCBootstrap(BootstrapOptions{XDS: s.GRPCAddr(), NodeID: "pairs-test"})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+APIListenerName, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ask := func(p string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if p != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, pairs.Header, p)
		}
		var md metadata.MD
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md)); err != nil {
			return "err " + err.Error()
		}
		return strings.Join(md.Get(coreHeader), ",")
	}
	waitAnswer := func(p, want string) {
		t.Helper()
		var got string
		waitFor(t, 10*time.Second, "pair "+p+" answered by "+want, func() bool {
			got = ask(p)
			return got == want
		})
	}
	// 1. Each pair's chats reach its primary.
	for _, p := range []string{"1", "2", "3"} {
		waitAnswer(p, p+"a")
	}
	// 2. New chats (no header) are placed on every pair...
	seen := map[string]int{}
	for range 60 {
		seen[ask("")]++
	}
	if seen["1a"] == 0 || seen["2a"] == 0 || seen["3a"] == 0 {
		t.Errorf("placement over three equal pairs: %v", seen)
	}
	// ...but not on drained pairs, nor on a pair that is far ahead.
	if err := s.SetDraining(context.Background(), "1", true); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	live[stand["3a"].addr] = 500
	mu.Unlock()
	waitFor(t, 10*time.Second, "pair 1 drained and pair 3 loaded in the route", func() bool {
		ps := s.Pairs().Pairs
		return len(ps) == 3 && ps[0].Weight == 0 && ps[2].Weight < ps[1].Weight/10
	})
	waitFor(t, 10*time.Second, "the client applied the new route", func() bool {
		for _, n := range s.Status().Nodes {
			if n.ID == "pairs-test" {
				return n.InSync
			}
		}
		return false
	})
	seen = map[string]int{}
	for range 60 {
		seen[ask("")]++
	}
	if seen["1a"] != 0 || seen["2a"] < 50 {
		t.Errorf("pair 1 drained, pair 3 ahead by 500: placed %v, want nearly all on 2a, none on 1a", seen)
	}
	// A drained pair still serves its own chats.
	waitAnswer("1", "1a")
	// 3. Pair 2's primary dies: pair 2's chats reach its backup, the other
	// pairs' chats stay where they are.
	stand["2a"].srv.Stop()
	view.Set(members(true)...)
	waitAnswer("2", "2b")
	waitAnswer("3", "3a")
	waitAnswer("1", "1a")
	if n := s.Status().LastNACK; n != nil {
		t.Fatalf("grpc-go rejected our resources: %+v", n)
	}
}

// TestPairAdminAPI: draining needs the admin token, a bad pair name is
// refused with 400 and changes nothing, a drain shows in /xds/v1/pairs and
// in the metrics, and DELETE undoes it.
func TestPairAdminAPI(t *testing.T) {
	s := startServer(t, testConfig(), NewMemoryView(threePairs()...), Options{PairLive: func(context.Context, string) (uint64, error) { return 0, nil }})
	base := "http://" + s.HTTPAddr()
	drain := base + "/xds/v1/pairs/2/drain"
	if code, body := do(t, "POST", drain, ""); code != 403 {
		t.Fatalf("drain without token = %d %s", code, body)
	}
	if code, body := do(t, "POST", base+"/xds/v1/pairs/Bad-1/drain", "s3cret"); code != 400 || !strings.Contains(body, "bad pair name") {
		t.Fatalf("drain of a bad name = %d %s", code, body)
	}
	if d := s.Pairs().Draining; len(d) != 0 {
		t.Fatalf("refused drains changed the list: %v", d)
	}
	if code, body := do(t, "POST", drain, "s3cret"); code != 200 {
		t.Fatalf("drain = %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "pair 2 draining", func() bool {
		code, body := do(t, "GET", base+PairsPath, "")
		return code == 200 && strings.Contains(body, `"name": "2",
      "state": "draining"`)
	})
	if _, body := do(t, "GET", base+"/metrics", ""); !strings.Contains(body, `hachat_xds_pair_state{pair="2",state="draining"} 1`) ||
		!strings.Contains(body, `hachat_xds_pair_weight{pair="2"} 0`) || !strings.Contains(body, `hachat_xds_pair_state{pair="3",state="degraded"} 1`) {
		t.Errorf("pair metrics:\n%s", body)
	}
	if code, _ := do(t, "DELETE", drain, "s3cret"); code != 200 {
		t.Fatalf("undrain = %d", code)
	}
	waitFor(t, 5*time.Second, "pair 2 serving again", func() bool {
		ps := s.Pairs().Pairs
		return len(ps) == 3 && ps[1].State == PairServing && ps[1].Weight > 0
	})
}

// TestDrainOnlyPairRefused: a cluster of one pair refuses to drain it
// (409, nothing changes); /xds/v1/pairs reports its live chats.
func TestDrainOnlyPairRefused(t *testing.T) {
	view := NewMemoryView(
		core_("core-a", RolePrimary, 3, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 3, "127.0.0.1:7111", StateAlive),
	)
	cfg := testConfig()
	cfg.PairPoll = 20 * time.Millisecond
	s := startServer(t, cfg, view, Options{PairLive: func(_ context.Context, addr string) (uint64, error) {
		if addr != "127.0.0.1:7101" {
			return 0, fmt.Errorf("asked %s, not the primary", addr)
		}
		return 7, nil
	}})
	if code, body := do(t, "POST", "http://"+s.HTTPAddr()+"/xds/v1/pairs/1/drain", "s3cret"); code != 409 || !strings.Contains(body, "only pair") {
		t.Fatalf("drain of the only pair = %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "pair 1 serving with 7 live chats", func() bool {
		ps := s.Pairs()
		return len(ps.Pairs) == 1 && ps.Pairs[0].State == PairServing && ps.Pairs[0].Live == 7 && len(ps.Draining) == 0
	})
}

// TestBuildPairsWithTLS: the Envoy flavour of the pair resources (TLS,
// SDS secrets) is built and validated too: one cluster and one sidecar
// listener per pair in each flavour.
func TestBuildPairsWithTLS(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustDomain = "hachat.test"
	r, err := BuildPairs(cfg, threePairs(), PairInputs{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Clusters) != 3 || len(r.EnvoyClusters) != 3 || len(r.EnvoyListeners) != 4 || len(r.Listeners) != 4 {
		t.Fatalf("clusters %d/%d, listeners %d/%d", len(r.Clusters), len(r.EnvoyClusters), len(r.Listeners), len(r.EnvoyListeners))
	}
	for _, c := range r.EnvoyClusters {
		if c.(*cluster.Cluster).GetTransportSocket() == nil {
			t.Errorf("envoy cluster %s without TLS", c.(*cluster.Cluster).GetName())
		}
	}
}

// TestDrainsInEtcd: with the drain list in the coordination cluster, a
// drain asked of one control plane shows at the other, and a control plane
// started later (a restart) finds it; an undrain reaches both.
func TestDrainsInEtcd(t *testing.T) {
	ep := coordtest.Start(t)
	newServer := func() *Server {
		store := NewEtcdDrains(coordtest.Client(t, ep), telemetry.Discard().Logger)
		return startServer(t, testConfig(), NewMemoryView(threePairs()...), Options{Drains: store,
			PairLive: func(context.Context, string) (uint64, error) { return 0, nil }})
	}
	a, b := newServer(), newServer()
	state := func(s *Server, p string) string {
		for _, info := range s.Pairs().Pairs {
			if info.Name == p {
				return info.State
			}
		}
		return ""
	}
	if err := a.SetDraining(context.Background(), "2", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "pair 2 drained at the other control plane", func() bool { return state(b, "2") == PairDraining })
	c := newServer()
	waitFor(t, 5*time.Second, "pair 2 drained at a control plane started later", func() bool { return state(c, "2") == PairDraining })
	if err := c.SetDraining(context.Background(), "2", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "pair 2 serving at every control plane", func() bool {
		return state(a, "2") == PairServing && state(b, "2") == PairServing && state(c, "2") == PairServing
	})
}
