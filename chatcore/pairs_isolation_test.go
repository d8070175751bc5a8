package chatcore

import (
	"strings"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
)

// TestPeerIsInTheSamePair: all cores gossip in one cluster; a core of pair
// 2 takes as its peer only the other core of pair 2, never pair 1's primary
// that gossip lists first.
func TestPeerIsInTheSamePair(t *testing.T) {
	mm := &memMembers{members: []membership.Member{
		{Name: "core-a", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 9, GRPCAddr: "127.0.0.1:7101"}},
		{Name: "core-3a", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 9, GRPCAddr: "127.0.0.1:7641", Pair: "3"}},
		{Name: "core-2a", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 4, GRPCAddr: "127.0.0.1:7601", Pair: "2"}},
	}}
	cfg := testConfig()
	cfg.Name, cfg.Role, cfg.Pair = "core-2b", RoleBackup, "2"
	c, err := New(cfg, newMemStore(), telemetry.Discard(), WithMembership(mm))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.peers.addr(); got != "127.0.0.1:7601" {
		t.Fatalf("pair 2's backup found peer %q, want core-2a's 127.0.0.1:7601", got)
	}
	// A core of the default pair does not take pair 2's or 3's core.
	cfg.Name, cfg.Pair = "core-b", ""
	c, err = New(cfg, newMemStore(), telemetry.Discard(), WithMembership(mm))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.peers.addr(); got != "127.0.0.1:7101" {
		t.Fatalf("pair 1's backup found peer %q, want core-a's", got)
	}
}

// TestPairHasItsOwnEpoch: a primary of pair 2 claims its epoch under its
// pair's service, gossips its pair, mints chat ids that name it, and is not
// fenced by pair 1's primary at a newer epoch; a newer primary of its own
// pair does fence it.
func TestPairHasItsOwnEpoch(t *testing.T) {
	mm := &memMembers{}
	store := newMemStore()
	a := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { c.Pair = "2" }, WithMembership(mm))
	waitFor(t, "core-2a primary", func() bool { return a.c.role.IsPrimary() })
	waitFor(t, "meta with the pair", func() bool { m := mm.lastMeta(); return m.Role == RolePrimary && m.Pair == "2" })
	if e, err := store.Epoch(ctxT(t), "hachat-2"); err != nil || e.Holder != "core-2a" {
		t.Fatalf("pair 2's epoch at service hachat-2: %+v %v", e, err)
	}
	if e, _ := store.Epoch(ctxT(t), "hachat"); e.Holder != "" {
		t.Fatalf("pair 2's core claimed pair 1's epoch: %+v", e)
	}
	resp, err := a.cl.StartSession(ctxT(t), &chatpb.StartSessionRequest{Service: "s", Nickname: "n"})
	if err != nil || !strings.HasPrefix(resp.GetAuth().GetSessionId(), "2.") {
		t.Fatalf("chat id %q (err %v) does not name pair 2", resp.GetAuth().GetSessionId(), err)
	}

	// Pair 1's primary at a much newer epoch, confirmed at its service:
	// not pair 2's business.
	if _, err := store.ClaimEpoch(ctxT(t), "hachat", 0, 50, "core-a"); err != nil {
		t.Fatal(err)
	}
	mm.publish(membership.Event{Type: membership.EventUpdated, Member: membership.Member{Name: "core-a", State: membership.StateAlive,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 50}}})
	// Pair 2's own backup claims epoch 60 and gossips primary: that one
	// fences core-2a, at pair 2's epoch (confirmed at hachat-2, where
	// pair 1's claim never lands).
	mm.publish(membership.Event{Type: membership.EventUpdated, Member: membership.Member{Name: "core-2b", State: membership.StateAlive,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 60, Pair: "2"}}})
	if _, err := store.ClaimEpoch(ctxT(t), "hachat-2", a.c.Epoch(), 60, "core-2b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "core-2a stepped down", func() bool { return a.c.Role() == RoleBackup })
	if got := a.c.Epoch(); got != 60 {
		t.Fatalf("core-2a stepped down at epoch %d, want pair 2's 60", got)
	}
}
