package chatcore

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/ucsmock"
)

// tcpProxy forwards loopback TCP to a target; cut closes it (and every
// connection through it), heal listens again on the same address.
type tcpProxy struct {
	t      testing.TB
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
	wg     sync.WaitGroup
	// holdUp, while set, holds what the dialling side sends (a backup's
	// acks and hellos) without closing anything: it goes on when cleared.
	holdUp atomic.Bool
}

// copyUp forwards c to u, holding each read while holdUp is set.
func (p *tcpProxy) copyUp(u, c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		for n > 0 && p.holdUp.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := u.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func newProxy(t testing.TB, target string) *tcpProxy {
	p := &tcpProxy{t: t, target: target}
	p.ln = listen(t)
	p.addr = p.ln.Addr().String()
	p.serve(p.ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { p.copyUp(u, c); u.Close() })
			p.wg.Go(func() { io.Copy(c, u); c.Close() })
		}
	})
}

func (p *tcpProxy) cut() {
	p.holdUp.Store(false) // a held read goes on to find its connection closed
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *tcpProxy) heal() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.serve(ln)
}

// TestLinkCutNoFailover cuts only the primary-backup link: the witness still
// reaches the primary, so the backup does not promote; the primary keeps
// serving with second copies in UCS; after the heal the backup resyncs.
func TestLinkCutNoFailover(t *testing.T) {
	store := newMemStore()
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	proxy := newProxy(t, la.Addr().String())
	asked := make(chan string, 16)
	witness := WithWitness(func(ctx context.Context, w, target string) (bool, error) {
		asked <- target
		return true, nil // the witness still reaches the primary
	})
	b := startNode(t, "core-b", RoleBackup, proxy.addr, lb, store, func(c *Config) { c.Witness = "127.0.0.1:1" }, witness)
	waitInSync(t, a, "core-b")
	ctx := ctxT(t)
	cust, _ := a.chat(t)

	proxy.cut()
	waitFor(t, "a lost the link", func() bool { return a.c.repl.Current() == nil })
	var acked []uint64
	for range 3 {
		r, err := a.cl.Send(ctx, msg(cust, "during the cut", ""))
		if err != nil {
			t.Fatalf("send during link cut: %v", err)
		}
		acked = append(acked, r.Index)
	}
	for _, idx := range acked {
		if !containsIndex(store.indexes(cust.SessionId), idx) {
			t.Errorf("index %d acknowledged without a copy in UCS", idx)
		}
	}
	select {
	case target := <-asked:
		if target != proxy.addr {
			t.Errorf("witness asked about %s", target)
		}
	case <-ctx.Done():
		t.Fatal("backup never asked the witness")
	}
	if b.c.role.IsPrimary() || !a.c.role.IsPrimary() {
		t.Fatal("a failover happened on a link cut")
	}
	proxy.heal()
	waitInSync(t, a, "core-b")
	if !sameLog(a.log(cust.SessionId), b.log(cust.SessionId)) {
		t.Fatal("backup did not catch up after the heal")
	}
	if b.c.replicaStale.Load() {
		t.Error("backup still marks its replica stale after resync")
	}
}

func containsIndex(xs []uint64, x uint64) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// TestGossipFailureCopiesStaleMerge: membership declares the primary failed
// while the backup's replica is stale (the link had been cut): the backup
// promotes and merges the events UCS holds beyond its copy.
func TestGossipFailurePromotesAndMerges(t *testing.T) {
	p := startGossipCutPair(t, newMemStore())
	a, b := p.a, p.b
	cust, _ := a.chat(t)
	p.cut(t)
	r, err := a.cl.Send(ctxT(t), msg(cust, "only in UCS", "u1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b marks its replica stale", func() bool { return b.c.replicaStale.Load() })
	p.killPrimary()
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	d, err := b.cl.Send(ctxT(t), msg(cust, "only in UCS", "u1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("message acknowledged during the cut: %v %v", d, err)
	}
	evs, err := b.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: cust, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs.Events {
		if ev.Index != uint64(i+1) {
			t.Fatalf("gap at %d: %d", i, ev.Index)
		}
	}
}

// TestPartitionedPrimaryAcksMerged: the primary is cut off from the backup
// and the witness, but still reaches UCS, and acknowledges a message with a
// second copy there before the backup claims the epoch. The new primary
// finds it in UCS's chat listing and merges it: nothing acknowledged is lost.
func TestPartitionedPrimaryAcksMerged(t *testing.T) {
	store := ucsmock.NewMemStore(1)
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	proxy := newProxy(t, la.Addr().String())
	release := make(chan struct{})
	witness := WithWitness(func(ctx context.Context, w, target string) (bool, error) {
		select {
		case <-release:
			return false, nil // the witness cannot reach the primary either
		case <-ctx.Done():
			return false, ctx.Err()
		}
	})
	b := startNode(t, "core-b", RoleBackup, proxy.addr, lb, store, func(c *Config) { c.Witness = "127.0.0.1:1"; c.ProbeTimeout = time.Second }, witness)
	waitInSync(t, a, "core-b")
	cust, agent := a.chat(t)
	proxy.cut()
	waitFor(t, "a lost the link", func() bool { return a.c.repl.Current() == nil })
	r, err := a.cl.Send(ctxT(t), msg(cust, "acked during the partition", "p1"))
	if err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	evs, err := b.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: agent, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for i, ev := range evs.Events {
		if ev.Index != uint64(i+1) {
			t.Fatalf("gap at %d", i)
		}
		if ev.Index == r.Index {
			found = ev.ClientMessageId == "p1"
		}
	}
	if !found {
		t.Fatalf("message acknowledged at %d during the partition is not at b: %v", r.Index, kinds(evs.Events))
	}
	// The old primary is fenced at its next write.
	if _, err := a.cl.Send(ctxT(t), msg(cust, "after the claim", "")); err == nil {
		t.Fatal("the partitioned old primary committed after the new epoch")
	}
	waitFor(t, "a stepped down", func() bool { return a.c.Role() == RoleBackup })
}

// gossipCutPair is a pair whose backup reaches the primary through a proxy
// that can be cut, with gossip (mm) and a witness that reaches the primary
// until killPrimary.
type gossipCutPair struct {
	a, b   *node
	proxy  *tcpProxy
	mm     *memMembers
	killed atomic.Bool
}

// startGossipCutPair starts a (primary) and b (backup, in sync through the
// proxy), both on store.
func startGossipCutPair(t testing.TB, store TranscriptStore) *gossipCutPair {
	t.Helper()
	p := &gossipCutPair{mm: &memMembers{}}
	la, lb := listen(t), listen(t)
	p.a = startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return p.a.c.role.IsPrimary() })
	p.proxy = newProxy(t, la.Addr().String())
	witness := WithWitness(func(ctx context.Context, w, target string) (bool, error) { return !p.killed.Load(), nil })
	p.b = startNode(t, "core-b", RoleBackup, p.proxy.addr, lb, store, func(c *Config) { c.Witness = "127.0.0.1:1" }, witness, WithMembership(p.mm))
	waitInSync(t, p.a, "core-b")
	return p
}

// cut cuts the replication link and waits until the primary lost it.
func (p *gossipCutPair) cut(t testing.TB) {
	t.Helper()
	p.proxy.cut()
	waitFor(t, "a lost the link", func() bool { return p.a.c.repl.Current() == nil })
}

// killPrimary kills a; the witness and gossip then report it dead.
func (p *gossipCutPair) killPrimary() {
	p.a.kill()
	p.killed.Store(true)
	p.mm.publish(membership.Event{Type: membership.EventFailed, Member: membership.Member{Name: "core-a", State: membership.StateDead,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 1, GRPCAddr: p.proxy.addr}}})
}
