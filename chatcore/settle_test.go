package chatcore

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// settleGate replaces a core's settle (afterSettle): while held, each
// settle reports on armed and waits for release; otherwise it passes.
type settleGate struct {
	hold    atomic.Bool
	armed   chan struct{}
	release chan struct{}
}

func newSettleGate() *settleGate {
	return &settleGate{armed: make(chan struct{}, 8), release: make(chan struct{})}
}

func (g *settleGate) option() Option {
	return func(c *Core) {
		c.settle = func(ctx context.Context) bool {
			if !g.hold.Load() {
				return true
			}
			select {
			case g.armed <- struct{}{}:
			case <-ctx.Done():
				return false
			}
			select {
			case <-g.release:
				return true
			case <-ctx.Done():
				return false
			}
		}
	}
}

// catchUpWrites is an EtcdFencer that counts the writes a catch-up leads
// to: the primary's clears of its solo mark and the backup's claim
// preparations.
type catchUpWrites struct {
	*EtcdFencer
	clears, prepares atomic.Int32
}

func (f *catchUpWrites) MarkSolo(ctx context.Context, service string, epoch uint64, holder string, solo bool) error {
	if !solo {
		f.clears.Add(1)
	}
	return f.EtcdFencer.MarkSolo(ctx, service, epoch, holder, solo)
}

func (f *catchUpWrites) PrepareClaim(ctx context.Context, service string) error {
	f.prepares.Add(1)
	return f.EtcdFencer.PrepareClaim(ctx, service)
}

// TestCatchUpWritesWaitForTheSettle: once the old primary of a switchover
// is in sync as the new primary's backup, neither the new primary's clear
// of the solo mark its claim recorded nor the new backup's preparation of
// its next claim is written to etcd before the settle has passed (they
// would take CPU from the clients' pause); both are written after it.
func TestCatchUpWritesWaitForTheSettle(t *testing.T) {
	for _, tt := range []struct {
		name    string
		release bool // let the settles pass
	}{
		{"held: nothing written", false},
		{"released: the mark cleared and the claim prepared", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli := startEtcd(t)
			store := newMemStore()
			g := newSettleGate()
			fa := &catchUpWrites{EtcdFencer: NewEtcdFencer(cli, "/hachat/fencing/", time.Second)}
			fb := &catchUpWrites{EtcdFencer: NewEtcdFencer(cli, "/hachat/fencing/", time.Second)}
			la, lb := listen(t), listen(t)
			a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil, WithFencer(fa), g.option())
			waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
			b := startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, nil, WithFencer(fb), g.option())
			waitInSync(t, a, "core-b")
			waitFor(t, "b's first claim prepared", func() bool { return fb.prepares.Load() == 1 })

			g.hold.Store(true)
			if _, err := a.cl.Switchover(ctxT(t), &chatpb.SwitchoverRequest{AdminToken: "adm-token"}); err != nil {
				t.Fatal(err)
			}
			epoch := b.c.role.Epoch()
			waitInSync(t, b, "core-a")
			for i := range 2 { // b's clear, a's preparation
				select {
				case <-g.armed:
				case <-time.After(10 * time.Second):
					t.Fatalf("%d of the 2 catch-up writes wait for the settle after the switchover", i)
				}
			}
			if n, m := fb.clears.Load(), fa.prepares.Load(); n != 0 || m != 0 {
				t.Fatalf("before the settle: %d clears of the solo mark, %d claims prepared by the new backup; want none", n, m)
			}
			if solo, err := fb.Solo(ctxT(t), "hachat", epoch); err != nil || !solo {
				t.Fatalf("solo mark of epoch %d before the settle: %v %v, want still recorded", epoch, solo, err)
			}
			if !tt.release {
				return
			}
			close(g.release)
			waitFor(t, "the solo mark cleared", func() bool {
				solo, err := fb.Solo(ctxT(t), "hachat", epoch)
				return err == nil && !solo && b.c.solo.epoch.Load() == 0
			})
			waitFor(t, "a's next claim prepared", func() bool { return fa.prepares.Load() == 1 })
		})
	}
}
