package proxy

import (
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// TestSidecarServesOnePairsListener: with the resources the control plane
// builds for several pairs, a sidecar given a pair's listener
// (--listener chatcore-sidecar-2) carries its clients to that pair's
// primary, and to that pair's backup once it is promoted, while the
// default listener's sidecar stays on pair 1 (docs/design.md: one listener
// per pair).
func TestSidecarServesOnePairsListener(t *testing.T) {
	a1 := newFakeCore(t, "1a", "primary", 3)
	b1 := newFakeCore(t, "1b", "backup", 3)
	a2 := newFakeCore(t, "2a", "primary", 4)
	b2 := newFakeCore(t, "2b", "backup", 4)
	members := func(dead2a bool) []xds.Member {
		st, role := xds.StateAlive, xds.RoleBackup
		if dead2a {
			st, role = xds.StateDead, xds.RolePrimary
		}
		return []xds.Member{
			{Name: "1a", Kind: xds.KindCore, Role: xds.RolePrimary, Epoch: 3, GRPCAddr: a1.addr, Pair: "1", State: xds.StateAlive},
			{Name: "1b", Kind: xds.KindCore, Role: xds.RoleBackup, Epoch: 3, GRPCAddr: b1.addr, Pair: "1", State: xds.StateAlive},
			{Name: "2a", Kind: xds.KindCore, Role: xds.RolePrimary, Epoch: 4, GRPCAddr: a2.addr, Pair: "2", State: st},
			{Name: "2b", Kind: xds.KindCore, Role: role, Epoch: 5, GRPCAddr: b2.addr, Pair: "2", State: xds.StateAlive},
		}
	}
	res, err := xds.BuildPairs(xds.DefaultConfig(), members(false), xds.PairInputs{})
	if err != nil {
		t.Fatal(err)
	}
	cp := newControlPlane(t)
	cp.set("pair-1", "1", res.ByType())
	cp.set("pair-2", "1", res.ByType())
	side := func(node, listener string) *Proxy {
		cfg := testConfig(cp.addr)
		cfg.NodeID, cfg.Listener = node, listener
		p, err := New(cfg, telemetry.Discard())
		if err != nil {
			t.Fatal(err)
		}
		startProxy(t, p)
		return p
	}
	p1 := side("pair-1", xds.PairListener("1"))
	p2 := side("pair-2", xds.PairListener("2"))
	waitFor(t, 5*time.Second, "pair 1's sidecar reaches 1a", func() bool { return statusVia(p1.Addr().String()) == "1a" })
	waitFor(t, 5*time.Second, "pair 2's sidecar reaches 2a", func() bool { return statusVia(p2.Addr().String()) == "2a" })

	// Pair 2's primary dies and its backup takes over: only pair 2's
	// sidecar moves.
	a2.stop()
	b2.set("primary", 5)
	res, err = xds.BuildPairs(xds.DefaultConfig(), members(true), xds.PairInputs{})
	if err != nil {
		t.Fatal(err)
	}
	cp.set("pair-1", "2", res.ByType())
	cp.set("pair-2", "2", res.ByType())
	waitFor(t, 5*time.Second, "pair 2's sidecar reaches 2b", func() bool { return statusVia(p2.Addr().String()) == "2b" })
	if got := statusVia(p1.Addr().String()); got != "1a" {
		t.Fatalf("pair 1's sidecar reached %q after pair 2's failover, want 1a", got)
	}
}
