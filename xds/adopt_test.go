package xds

import (
	"context"
	"maps"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hachat/hachat/coord/coordtest"
	"github.com/hachat/hachat/telemetry"
)

// TestDecideAdoptions: who adopts a pair that lost its primary, when, and
// how long the adoption holds.
func TestDecideAdoptions(t *testing.T) {
	now := time.Unix(1000, 0)
	grace := 3 * time.Second
	serving := func(name string, live uint64) PairInfo { return PairInfo{Name: name, State: PairServing, Live: live} }
	degraded := func(name string, live uint64) PairInfo { return PairInfo{Name: name, State: PairDegraded, Live: live} }
	draining := func(name string, live uint64) PairInfo { return PairInfo{Name: name, State: PairDraining, Live: live} }
	long := map[string]time.Time{"1": now.Add(-time.Hour), "2": now.Add(-time.Hour), "3": now.Add(-time.Hour), "4": now.Add(-time.Hour)}
	for _, tc := range []struct {
		name  string
		infos []PairInfo
		since map[string]time.Time
		grace time.Duration
		cur   map[string]string
		want  map[string]string
	}{
		{name: "every pair serving: none adopted",
			infos: []PairInfo{serving("1", 10), serving("2", 5)}, since: map[string]time.Time{}, grace: grace,
			want: map[string]string{}},
		{name: "degraded within the grace (its backup may be taking over): not yet",
			infos: []PairInfo{serving("1", 10), degraded("2", 50), serving("3", 5)}, since: map[string]time.Time{"2": now.Add(-2 * time.Second)}, grace: grace,
			want: map[string]string{}},
		{name: "degraded past the grace: the least loaded serving pair adopts it",
			infos: []PairInfo{serving("1", 10), degraded("2", 50), serving("3", 5)}, since: map[string]time.Time{"2": now.Add(-3 * time.Second)}, grace: grace,
			want: map[string]string{"2": "3"}},
		{name: "a tie goes to the first pair in order",
			infos: []PairInfo{serving("1", 7), degraded("2", 50), serving("3", 7)}, since: long, grace: grace,
			want: map[string]string{"2": "1"}},
		{name: "draining and degraded pairs do not adopt",
			infos: []PairInfo{draining("1", 0), degraded("2", 50), degraded("3", 0), serving("4", 900)}, since: long, grace: grace,
			want: map[string]string{"2": "4", "3": "4"}},
		{name: "two lost pairs spread: the first adoption counts in the load",
			infos: []PairInfo{serving("1", 10), degraded("2", 50), degraded("3", 40), serving("4", 20)}, since: long, grace: grace,
			want: map[string]string{"2": "1", "3": "4"}},
		{name: "no pair can adopt: none",
			infos: []PairInfo{degraded("1", 10), degraded("2", 50)}, since: long, grace: grace,
			want: map[string]string{}},
		{name: "an adoption holds although another pair is now less loaded",
			infos: []PairInfo{serving("1", 100), degraded("2", 50), serving("3", 5)}, since: long, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{"2": "1"}},
		{name: "an adoption holds while its adopter drains",
			infos: []PairInfo{draining("1", 100), degraded("2", 50), serving("3", 5)}, since: long, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{"2": "1"}},
		{name: "the adopted pair has a primary again: the adoption ends",
			infos: []PairInfo{serving("1", 100), serving("2", 0)}, since: map[string]time.Time{}, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{}},
		{name: "the adopter lost its primary too: another pair adopts both",
			infos: []PairInfo{degraded("1", 100), degraded("2", 50), serving("3", 5)}, since: long, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{"1": "3", "2": "3"}},
		{name: "the adopted pair's cores left: it stays adopted",
			infos: []PairInfo{serving("1", 100), serving("3", 5)}, since: map[string]time.Time{}, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{"2": "1"}},
		{name: "an adopted pair adopts nothing",
			infos: []PairInfo{serving("1", 100), degraded("2", 0), degraded("3", 1)}, since: map[string]time.Time{"3": now.Add(-time.Hour)}, grace: grace, cur: map[string]string{"2": "1"},
			want: map[string]string{"2": "1", "3": "1"}},
		{name: "grace 0 turns adoption off",
			infos: []PairInfo{serving("1", 10), degraded("2", 50)}, since: long, grace: 0, cur: map[string]string{"2": "1"},
			want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := maps.Clone(tc.cur)
			got := decideAdoptions(tc.infos, tc.since, now, tc.grace, tc.cur)
			if !maps.Equal(got, tc.want) {
				t.Fatalf("adoptions = %v, want %v", got, tc.want)
			}
			if !maps.Equal(cur, tc.cur) {
				t.Fatalf("the current adoptions were changed: %v, were %v", tc.cur, cur)
			}
		})
	}
}

// TestBuildAdoptedPair: an adopted pair's header route and sidecar listener
// lead to its adopter's cluster, it takes no new chat, and it keeps its
// route when its cores left the cluster.
func TestBuildAdoptedPair(t *testing.T) {
	cfg := DefaultConfig()
	check := func(members []Member) {
		t.Helper()
		r, err := BuildPairs(cfg, members, PairInputs{Adopted: map[string]string{"3": "2"}, Live: map[string]uint64{"1": 10, "2": 10}})
		if err != nil {
			t.Fatal(err)
		}
		var p3 *PairInfo
		for i := range r.Pairs {
			if r.Pairs[i].Name == "3" {
				p3 = &r.Pairs[i]
			}
		}
		if p3 == nil || p3.AdoptedBy != "2" || p3.Weight != 0 || p3.State != PairDegraded {
			t.Fatalf("pair 3 = %+v, want degraded, adopted by 2, weight 0", p3)
		}
		found := false
		for _, rt := range r.Routes[0].(*route.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
			if rt.GetName() == "pair-3" {
				found = true
				if got := rt.GetRoute().GetCluster(); got != "chatcore-2" {
					t.Errorf("pair 3's route leads to %q, want the adopter's chatcore-2", got)
				}
			}
			for _, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
				if wc.GetName() == "chatcore-3" {
					t.Errorf("the adopted pair takes new chats: %v", wc)
				}
			}
		}
		if !found {
			t.Error("no route for the adopted pair")
		}
		for _, l := range r.Listeners {
			ln := l.(*listener.Listener)
			if ln.GetName() != "chatcore-sidecar-3" {
				continue
			}
			var tp tcpproxy.TcpProxy
			if err := ln.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp); err != nil {
				t.Fatal(err)
			}
			if tp.GetCluster() != "chatcore-2" {
				t.Errorf("pair 3's sidecar listener leads to %q, want chatcore-2", tp.GetCluster())
			}
		}
	}
	check(threePairs())
	var left []Member
	for _, m := range threePairs() {
		if m.Pair != "3" {
			left = append(left, m)
		}
	}
	check(left)
	// Not adopted: pair 3's route is its own.
	r, err := BuildPairs(cfg, threePairs(), PairInputs{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range r.Routes[0].(*route.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
		if rt.GetName() == "pair-3" && rt.GetRoute().GetCluster() != "chatcore-3" {
			t.Errorf("pair 3 not adopted routes to %q", rt.GetRoute().GetCluster())
		}
	}
}

// TestAdoptionsAgreeInEtcd: two control planes that see different loads
// would pick different adopters for the degraded pair 3; with the
// adoptions in etcd both route it to the one recorded first.
func TestAdoptionsAgreeInEtcd(t *testing.T) {
	ep := coordtest.Start(t)
	newServer := func(live map[string]uint64) *Server {
		store := NewEtcdDrains(coordtest.Client(t, ep), telemetry.Discard().Logger)
		cfg := testConfig()
		cfg.PairPoll, cfg.AdoptGrace = 20*time.Millisecond, 100*time.Millisecond
		return startServer(t, cfg, NewMemoryView(threePairs()...), Options{Drains: store, Adoptions: store,
			PairLive: func(_ context.Context, addr string) (uint64, error) { return live[addr], nil }})
	}
	// a sees pair 1 as the least loaded, b pair 2.
	a := newServer(map[string]uint64{"127.0.0.1:7101": 1, "127.0.0.1:7121": 50})
	b := newServer(map[string]uint64{"127.0.0.1:7101": 50, "127.0.0.1:7121": 1})
	adopter := func(s *Server) string {
		for _, info := range s.Pairs().Pairs {
			if info.Name == "3" {
				return info.AdoptedBy
			}
		}
		return ""
	}
	waitFor(t, 10*time.Second, "pair 3 adopted at both control planes", func() bool { return adopter(a) != "" && adopter(b) != "" })
	if adopter(a) != adopter(b) {
		t.Fatalf("control planes disagree: a routes pair 3 to %q, b to %q", adopter(a), adopter(b))
	}
	store := NewEtcdDrains(coordtest.Client(t, ep), telemetry.Discard().Logger)
	got, err := store.Adoptions(context.Background())
	if err != nil || got["3"] != adopter(a) {
		t.Fatalf("recorded adoptions %v %v, want pair 3 by %s", got, err, adopter(a))
	}
	// Release only by the recorded adopter.
	other := map[string]string{"1": "2", "2": "1"}[got["3"]]
	if err := store.Release(context.Background(), "3", other); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.Adoptions(context.Background()); got["3"] == "" {
		t.Fatal("a release by a pair that is not the adopter removed the adoption")
	}
	if by, err := store.Adopt(context.Background(), "3", other); err != nil || by != adopter(a) {
		t.Fatalf("a second adoption of pair 3 by %s: %q %v, want the first's %q", other, by, err, adopter(a))
	}
}

// TestAdoptionInOneControlPlane: without a coordination cluster the control
// plane decides alone; pair 3, degraded past the grace, is adopted by the
// least loaded serving pair, counted, and its adoption ends when it has a
// primary again.
func TestAdoptionInOneControlPlane(t *testing.T) {
	cfg := testConfig()
	cfg.PairPoll, cfg.AdoptGrace = 20*time.Millisecond, 200*time.Millisecond
	view := NewMemoryView(threePairs()...)
	live := map[string]uint64{"127.0.0.1:7101": 30, "127.0.0.1:7121": 5}
	s := startServer(t, cfg, view, Options{PairLive: func(_ context.Context, addr string) (uint64, error) { return live[addr], nil }})
	adopter := func() string {
		for _, info := range s.Pairs().Pairs {
			if info.Name == "3" {
				return info.AdoptedBy
			}
		}
		return ""
	}
	start := time.Now()
	waitFor(t, 10*time.Second, "pair 3 adopted", func() bool { return adopter() != "" })
	if took := time.Since(start); took < cfg.AdoptGrace {
		t.Fatalf("pair 3 adopted after %v, before the grace %v", took, cfg.AdoptGrace)
	}
	if got := adopter(); got != "2" {
		t.Fatalf("pair 3 adopted by %q, want the least loaded pair 2", got)
	}
	if got := testutil.ToFloat64(s.met.pairAdopted.WithLabelValues("3", "2")); got != 1 {
		t.Fatalf("hachat_xds_pair_adopted{pair=3,by=2} = %v", got)
	}
	// Pair 3's core becomes primary again (the adopter let it go): the
	// adoption ends and its route is its own.
	view.Update("core-3b", func(m *Member) { m.Role, m.Epoch = RolePrimary, 12 })
	waitFor(t, 10*time.Second, "pair 3's adoption ended", func() bool { return adopter() == "" })
}
