package chatcore

import (
	"context"
	"errors"
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
	cli, cc, w := countedEtcd(t)
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
		if err := f.PrepareClaim(ctx, svc); err != nil {
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
	onlyTheEpochsLease(t, ctx, f, cli, svc, prev.Epoch)
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

// cuttableLease is a Lease whose keep-alives fail while cut (etcd
// unreachable for the fencer's refreshes, reachable for the test's).
type cuttableLease struct {
	clientv3.Lease
	cut *atomic.Bool
}

func (l cuttableLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	if l.cut.Load() {
		return nil, errors.New("keep-alive cut by the test")
	}
	return l.Lease.KeepAliveOnce(ctx, id)
}

// TestEtcdFencerRegrantsForgottenSpare: when etcd forgets the lease a
// fencer prepared (revoked behind its back, or expired while its
// keep-alives did not get through), the next keep-alive hears "lease not
// found" and the fencer prepares a new lease in its place: the claim is
// still one write (the transaction, no grant) and binds the epoch to the
// new lease, which lives; the forgotten one stays gone, and none is left
// behind once the fencer renewed and dropped what it prepared.
func TestEtcdFencerRegrantsForgottenSpare(t *testing.T) {
	ep := coordtest.Start(t)
	cli := coordtest.Client(t, ep)
	cc := coordtest.Client(t, ep)
	var w writeCounter
	var cut atomic.Bool
	cc.KV = countingKV{cc.KV, &w}
	cc.Lease = countingLease{cuttableLease{cc.Lease, &cut}, &w}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // two lease expiries and re-grants
	defer cancel()
	const svc = "hachat"
	f := NewEtcdFencer(cc, "/test/", time.Second)
	prev, err := NewEtcdFencer(cli, "/test/", time.Second).Claim(ctx, svc, 0, "core-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	alive := func(t *testing.T, id clientv3.LeaseID) bool {
		t.Helper()
		ttl, err := cli.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return ttl.TTL >= 0 // -1: gone (whole seconds: 0 lives)
	}
	for _, tt := range []struct {
		name   string
		forget func(t *testing.T, id clientv3.LeaseID) // makes etcd forget the prepared lease id
	}{
		{"revoked behind its back", func(t *testing.T, id clientv3.LeaseID) {
			if _, err := cli.Revoke(ctx, id); err != nil {
				t.Fatal(err)
			}
		}},
		{"expired while keep-alives failed", func(t *testing.T, id clientv3.LeaseID) {
			cut.Store(true)
			defer cut.Store(false)
			waitFor(t, "the prepared lease expired at etcd", func() bool { return !alive(t, id) })
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.PrepareClaim(ctx, svc); err != nil {
				t.Fatal(err)
			}
			old := spareOf(f).id
			tt.forget(t, old)
			waitFor(t, "a new lease prepared in place of the forgotten one", func() bool {
				sp := spareOf(f)
				f.mu.Lock()
				defer f.mu.Unlock()
				return sp != nil && sp.id != old
			})
			f.mu.Lock()
			regranted := f.spare.id
			f.mu.Unlock()
			if n, o := alive(t, regranted), alive(t, old); !n || o {
				t.Fatalf("after the re-grant: new lease alive %v, forgotten one alive %v; want true, false", n, o)
			}
			w.reset()
			got, err := f.Claim(ctx, svc, prev.Epoch, "core-b", 0)
			if err != nil || got.Epoch <= prev.Epoch {
				t.Fatalf("claim: %+v %v", got, err)
			}
			if g, x := w.grants.Load(), w.txns.Load(); g != 0 || x != 1 {
				t.Fatalf("claim wrote %d lease grants and %d transactions, want 0 and 1 (the re-granted lease)", g, x)
			}
			kv, err := cli.Get(ctx, f.leaseKey(svc))
			if err != nil || len(kv.Kvs) != 1 || clientv3.LeaseID(kv.Kvs[0].Lease) != regranted || !alive(t, regranted) {
				t.Fatalf("lease key after the claim: %+v %v, want bound to the re-granted lease %x, alive", kv, err, regranted)
			}
			if _, err := f.Renew(ctx, svc, got.Epoch, "core-b"); err != nil {
				t.Fatalf("renew after the claim: %v", err)
			}
			prev = got
		})
	}
	if err := f.PrepareClaim(ctx, svc); err != nil {
		t.Fatal(err)
	}
	f.DropPrepared()
	onlyTheEpochsLease(t, ctx, f, cli, svc, prev.Epoch)
}

// TestEtcdFencerSpareBoundToItsService: the lease a backup prepared for its
// own pair's promotion is not used up by a claim of another service (an
// N+1 adoption of another pair, which a core that turned primary while its
// PrepareClaim was in flight may still make with a lease prepared): that
// claim grants its own lease, the prepared one stays in place, alive, and
// the promotion it was meant for is still one write.
func TestEtcdFencerSpareBoundToItsService(t *testing.T) {
	cli, cc, w := countedEtcd(t)
	ctx := ctxT(t)
	const own, other = "hachat", "hachat-p2"
	f := NewEtcdFencer(cc, "/test/", time.Second)
	if err := f.PrepareClaim(ctx, own); err != nil {
		t.Fatal(err)
	}
	prepared := spareOf(f).id
	for _, tt := range []struct {
		service       string
		grants, txns  int64
		bound         bool // the epoch's lease is the prepared one
		preparedAfter bool // the prepared lease is still in place after the claim
	}{
		{other, 1, 1, false, true}, // the adoption: grant, then claim
		{own, 0, 1, true, false},   // the promotion: one write
	} {
		t.Run(tt.service, func(t *testing.T) {
			w.reset()
			if _, err := f.Claim(ctx, tt.service, 0, "core-b", time.Second); err != nil {
				t.Fatalf("claim: %v", err)
			}
			if g, x := w.grants.Load(), w.txns.Load(); g != tt.grants || x != tt.txns {
				t.Fatalf("claim wrote %d lease grants and %d transactions, want %d and %d", g, x, tt.grants, tt.txns)
			}
			kv, err := cli.Get(ctx, f.leaseKey(tt.service))
			if err != nil || len(kv.Kvs) != 1 || (clientv3.LeaseID(kv.Kvs[0].Lease) == prepared) != tt.bound {
				t.Fatalf("lease key of %s: %+v %v, want bound to the prepared lease %x: %v", tt.service, kv, err, prepared, tt.bound)
			}
			if sp := spareOf(f); (sp != nil) != tt.preparedAfter || (sp != nil && sp.id != prepared) {
				t.Fatalf("prepared lease after the claim: %+v, want the one prepared (%x) in place: %v", sp, prepared, tt.preparedAfter)
			}
			if ttl, err := cli.TimeToLive(ctx, prepared); err != nil || ttl.TTL < 0 {
				t.Fatalf("the prepared lease: TTL %d %v, want alive", ttl.TTL, err)
			}
		})
	}
}

// onlyTheEpochsLease renews epoch (which revokes the leases f spent) and
// waits until the lease bound to svc's epoch key is the only one at etcd.
func onlyTheEpochsLease(t testing.TB, ctx context.Context, f *EtcdFencer, cli *clientv3.Client, svc string, epoch uint64) {
	t.Helper()
	if _, err := f.Renew(ctx, svc, epoch, "core-b"); err != nil {
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

// countedEtcd starts an embedded etcd and returns a plain client and one
// whose writes (KV and lease) w counts.
func countedEtcd(t testing.TB) (cli, cc *clientv3.Client, w *writeCounter) {
	t.Helper()
	ep := coordtest.Start(t)
	cli, cc, w = coordtest.Client(t, ep), coordtest.Client(t, ep), &writeCounter{}
	cc.KV = countingKV{cc.KV, w}
	cc.Lease = countingLease{cc.Lease, w}
	return cli, cc, w
}
