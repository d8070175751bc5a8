package chatcore

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hachat/hachat/coord/coordtest"
)

// writeCounter counts the writes a client makes to etcd that each take a
// Raft round: lease grants and transactions (the fencer's claim writes no
// other way; keep-alives and reads are not Raft writes).
type writeCounter struct {
	grants, txns atomic.Int64
}

func (w *writeCounter) writes() int64 { return w.grants.Load() + w.txns.Load() }
func (w *writeCounter) reset()        { w.grants.Store(0); w.txns.Store(0) }

type countingKV struct {
	clientv3.KV
	w *writeCounter
}

func (k countingKV) Txn(ctx context.Context) clientv3.Txn {
	k.w.txns.Add(1)
	return k.KV.Txn(ctx)
}

type countingLease struct {
	clientv3.Lease
	w *writeCounter
}

func (l countingLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	l.w.grants.Add(1)
	return l.Lease.Grant(ctx, ttl)
}

// spareOf returns the lease f prepared (0: none).
func spareOf(f *EtcdFencer) *spareLease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.spare
}

// TestEtcdFencerPreparedClaim: a claim whose lease was granted ahead
// (PrepareClaim) is one write to etcd, the compare-and-set transaction, and
// binds the lease key to a lease of the fencer's TTL that lives; the lease
// is kept alive past its TTL while it waits; a prepared lease that etcd no
// longer knows, or that was not refreshed lately, makes the claim grant
// one as before; and no lease is left behind once the fencer renewed and
// dropped what it prepared.
func TestEtcdFencerPreparedClaim(t *testing.T) {
	ep := coordtest.Start(t)
	cli := coordtest.Client(t, ep)
	cc := coordtest.Client(t, ep)
	var w writeCounter
	cc.KV = countingKV{cc.KV, &w}
	cc.Lease = countingLease{cc.Lease, &w}
	ctx := ctxT(t)
	const svc = "hachat"
	f := NewEtcdFencer(cc, "/test/", time.Second)
	other := NewEtcdFencer(cli, "/test/", time.Second)
	prev, err := other.Claim(ctx, svc, 0, "core-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	prepare := func(t *testing.T) *spareLease {
		t.Helper()
		if err := f.PrepareClaim(ctx); err != nil {
			t.Fatal(err)
		}
		sp := spareOf(f)
		if sp == nil {
			t.Fatal("nothing prepared")
		}
		return sp
	}
	for _, tt := range []struct {
		name   string
		before func(t *testing.T) // between PrepareClaim and the claim
		prep   bool
		grants int64
		txns   int64
	}{
		{"prepared: one write", nil, true, 0, 1},
		{"kept alive past its TTL", func(t *testing.T) {
			start := time.Now()
			waitFor(t, "the prepared lease refreshed after its TTL", func() bool {
				f.mu.Lock()
				defer f.mu.Unlock()
				return f.spare != nil && f.spare.fresh.Sub(start) > 1200*time.Millisecond && time.Since(f.spare.fresh) < 100*time.Millisecond
			})
		}, true, 0, 1},
		{"revoked ahead: grant, then claim", func(t *testing.T) {
			sp := spareOf(f)
			sp.stop() // no re-grant in the background: the claim finds it gone
			if _, err := cli.Revoke(ctx, sp.id); err != nil {
				t.Fatal(err)
			}
		}, true, 1, 2},
		{"not refreshed lately: grant, then claim", func(t *testing.T) {
			f.mu.Lock()
			f.spare.fresh = f.spare.fresh.Add(-time.Second)
			f.mu.Unlock()
		}, true, 1, 1},
		{"nothing prepared: grant, then claim", nil, false, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prep {
				prepare(t)
			}
			if tt.before != nil {
				tt.before(t)
			}
			w.reset()
			got, err := f.ClaimSolo(ctx, svc, prev.Epoch, "core-b", 0)
			if err != nil || got.Epoch.Epoch <= prev.Epoch {
				t.Fatalf("claim: %+v %v", got, err)
			}
			if g, x := w.grants.Load(), w.txns.Load(); g != tt.grants || x != tt.txns {
				t.Fatalf("claim wrote %d lease grants and %d transactions, want %d and %d", g, x, tt.grants, tt.txns)
			}
			if spareOf(f) != nil {
				t.Fatal("the claim left a prepared lease in place")
			}
			if s, err := f.Solo(ctx, svc, got.Epoch.Epoch); err != nil || !s {
				t.Fatalf("solo mark of the new epoch: %v %v", s, err)
			}
			kv, err := cli.Get(ctx, f.leaseKey(svc))
			if err != nil || len(kv.Kvs) != 1 || kv.Kvs[0].Lease == 0 {
				t.Fatalf("lease key after the claim: %+v %v", kv, err)
			}
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Kvs[0].Lease))
			if err != nil || ttl.GrantedTTL != f.ttl || ttl.TTL < 0 { // TTL -1: gone (whole seconds: 0 lives)
				t.Fatalf("the epoch's lease: granted TTL %d, TTL %d, %v; want granted TTL %d and alive", ttl.GrantedTTL, ttl.TTL, err, f.ttl)
			}
			if _, err := f.Renew(ctx, svc, got.Epoch.Epoch, "core-b"); err != nil {
				t.Fatalf("renew after the claim: %v", err)
			}
			prev = got.Epoch
		})
	}
	// A lost claim with a prepared lease revokes it.
	prepare(t)
	if _, err := f.Claim(ctx, svc, 1, "core-b", 0); err == nil {
		t.Fatal("claim on an old epoch succeeded")
	}
	// Prepare once more and drop it: the only lease left is the epoch's.
	prepare(t)
	f.DropPrepared()
	if _, err := f.Renew(ctx, svc, prev.Epoch, "core-b"); err != nil { // revokes the spent ones
		t.Fatal(err)
	}
	kv, err := cli.Get(ctx, f.leaseKey(svc))
	if err != nil || len(kv.Kvs) != 1 {
		t.Fatalf("lease key: %+v %v", kv, err)
	}
	bound := clientv3.LeaseID(kv.Kvs[0].Lease)
	waitFor(t, "only the epoch's lease at etcd", func() bool {
		ls, err := cli.Leases(ctx)
		return err == nil && len(ls.Leases) == 1 && ls.Leases[0].ID == bound
	})
}

// TestBackupPreparesItsClaim: a backup in sync has its fencer grant the
// lease of its next claim ahead, so its promotion after a kill -9 grants
// no lease (one etcd write: the claim's transaction) and binds the epoch
// to the prepared lease; a backup that stops revokes the lease it
// prepared and did not use.
func TestBackupPreparesItsClaim(t *testing.T) {
	ep := coordtest.Start(t)
	cb := coordtest.Client(t, ep)
	var w writeCounter
	cb.Lease = countingLease{cb.Lease, &w}
	cli := coordtest.Client(t, ep)
	fencer := func(c *clientv3.Client) *EtcdFencer { return NewEtcdFencer(c, "/hachat/fencing/", time.Second) }
	fb := fencer(cb)
	store := newMemStore()
	la, lb := listen(t), listen(t)
	aAddr := la.Addr().String()
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil, WithFencer(fencer(cli)))
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b := startNode(t, "core-b", RoleBackup, aAddr, lb, store, nil, WithFencer(fb))
	waitInSync(t, a, "core-b")
	waitFor(t, "b prepared its claim", func() bool { return spareOf(fb) != nil })
	prepared := spareOf(fb).id
	w.reset()

	a.kill()
	waitFor(t, "b primary", func() bool { return b.c.role.IsPrimary() })
	if g := w.grants.Load(); g != 0 {
		t.Fatalf("b's promotion granted %d leases, want none (prepared ahead)", g)
	}
	kv, err := cli.Get(ctxT(t), fb.leaseKey("hachat"))
	if err != nil || len(kv.Kvs) != 1 || clientv3.LeaseID(kv.Kvs[0].Lease) != prepared {
		t.Fatalf("the new epoch's lease key: %+v %v, want bound to the prepared lease %x", kv, err, prepared)
	}

	la2 := relisten(t, aAddr)
	fa := fencer(cli)
	a2 := startNode(t, "core-a", RoleBackup, b.addr, la2, store, nil, WithFencer(fa))
	waitInSync(t, b, "core-a")
	waitFor(t, "a prepared its claim", func() bool { return spareOf(fa) != nil })
	unused := spareOf(fa).id
	a2.stop()
	if spareOf(fa) != nil {
		t.Fatal("a stopped with a prepared lease in place")
	}
	if ttl, err := cli.TimeToLive(ctxT(t), unused); err != nil || ttl.TTL != -1 {
		t.Fatalf("a's unused prepared lease after it stopped: TTL %d %v, want revoked (-1)", ttl.TTL, err)
	}
}
