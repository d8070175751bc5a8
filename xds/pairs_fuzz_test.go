package xds

import (
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// FuzzBuildPairs: any members in any pairs, with any live counts, drains
// and adoptions, build valid resources: every pair's priorities contiguous
// from 0, a placement route with a positive total weight, and every pair's
// route leading to a published cluster.
func FuzzBuildPairs(f *testing.F) {
	f.Add([]byte("a\x00p\x002\x00127.0.0.1:7101\x00\x00\x001\x00b\x00b\x002\x00127.0.0.1:7111\x00\x00\x002"), uint64(5), uint8(1))
	f.Add([]byte("x\x00p\x00\x00[::1]:1\x00\x02\x00Bad\x00"), uint64(0), uint8(0))
	f.Add([]byte("a\x00p\x002\x00127.0.0.1:7101\x00\x00\x001\x00b\x00b\x002\x00127.0.0.1:7111\x00\x00\x002"), uint64(5), uint8(4))
	f.Add([]byte("a\x00p\x002\x00127.0.0.1:7101\x00\x00\x001"), uint64(5), uint8(8))
	f.Fuzz(func(t *testing.T, data []byte, live uint64, drain uint8) {
		var members []Member
		fields := strings.Split(string(data), "\x00")
		for i := 0; i+5 < len(fields); i += 6 {
			m := Member{Name: fields[i], Kind: KindCore, GRPCAddr: fields[i+3], Pair: fields[i+5]}
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
		in := PairInputs{Live: map[string]uint64{"1": live % 30000, "2": live / 3 % 30000}, Draining: map[string]bool{}, Arrivals: live % 1000}
		if drain&1 != 0 {
			in.Draining["1"] = true
		}
		if drain&2 != 0 {
			in.Draining["2"] = true
		}
		if drain&4 != 0 {
			in.Adopted = map[string]string{"2": "1", "3": "2"}
		}
		if drain&8 != 0 {
			in.Adopted = map[string]string{"1": "2", "Bad": "1", "9": "9", "4": "nope"}
		}
		r, err := BuildPairs(DefaultConfig(), members, in)
		if err != nil {
			t.Fatalf("BuildPairs: %v", err)
		}
		if err := ValidateAll(r); err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Pairs {
			var prev uint32
			for i, c := range p.Cores {
				if i == 0 && c.Priority != 0 || c.Priority < prev || c.Priority > prev+1 {
					t.Fatalf("pair %s: priorities not contiguous: %v", p.Name, p.Cores)
				}
				prev = c.Priority
			}
		}
		if r.Pairs != nil {
			routes := r.Routes[0].(*route.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()
			published := map[string]bool{}
			for _, c := range r.Clusters {
				published[c.(*cluster.Cluster).GetName()] = true
			}
			for _, rt := range routes[:len(routes)-1] {
				if c := rt.GetRoute().GetCluster(); !published[c] {
					t.Fatalf("route %s leads to %q, not a published cluster", rt.GetName(), c)
				}
			}
			var total uint64
			for _, wc := range routes[len(routes)-1].GetRoute().GetWeightedClusters().GetClusters() {
				total += uint64(wc.GetWeight().GetValue())
			}
			if total == 0 || total > 1<<32-1 {
				t.Fatalf("placement weights total %d", total)
			}
		}
	})
}
