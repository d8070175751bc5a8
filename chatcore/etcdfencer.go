package chatcore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdFencer is the Fencer of an etcd cluster: the consensus of its members
// (raft), not one process, decides who holds an epoch. Per service it keeps
// two keys under its prefix:
//
//   - PREFIX/SERVICE/epoch, whose value is the holder and whose mod revision
//     is the epoch: a claim is a transaction that rewrites it only while its
//     mod revision is the epoch the claimant saw, so the new epoch is the
//     revision of that transaction, unique and increasing across the
//     cluster. The key has no lease: the epoch outlives its holder.
//   - PREFIX/SERVICE/lease, the primary's lease: bound to an etcd lease of
//     the holder that Renew keeps alive. A claim without certain evidence
//     (ifSilent > 0) succeeds only when that key is gone (the lease
//     expired: the holder stopped renewing) or is the claimant's own; a
//     claim with certain evidence rebinds the key to the claimant's lease
//     at once, so a killed primary is replaced in one round trip.
//
// The lease's TTL is the core's epoch-lease rounded up to whole seconds
// (etcd's unit; its members must allow it: see coord.Config). A claim
// binds the lease key to a lease granted ahead when there is one
// (PrepareClaim): the claim is then its transaction alone, one write.
type EtcdFencer struct {
	cli    *clientv3.Client
	prefix string
	ttl    int64 // seconds

	mu   sync.Mutex
	held map[string]heldLease // by service: the lease of the epoch we hold
	// spent are leases bound to no key any more (of epochs this fencer
	// held before its last claim, or prepared and gone stale): the next
	// Renew revokes them, off the claim's path (a lease nobody renews
	// expires anyway).
	spent []clientv3.LeaseID
	// spare is the lease of the next claim, granted ahead (PrepareClaim):
	// a claim of its service that finds it alive binds the epoch to it in
	// its one transaction instead of granting a lease first (nil: none).
	spare *spareLease
}

// spareLease is a lease granted ahead of a claim and kept alive until a
// claim takes it or DropPrepared revokes it. Bound to no key, it grants
// nothing: only the claim's compare-and-set decides.
type spareLease struct {
	// service is the service whose claim it was prepared for: a claim of
	// another service (an N+1 adoption of another pair) leaves it to the
	// promotion it is meant for.
	service string
	id      clientv3.LeaseID
	// fresh is when the last grant or refresh of id was sent: the lease
	// lives at least ttl from then. A claim takes it only while less than
	// half the ttl has passed, so the new primary's lease has at least half
	// its ttl left before the guard's first renewal (at once) refreshes it.
	fresh time.Time
	// rev is the cluster's revision at that grant or refresh: the
	// claim's guess of its own revision starts there (ClaimSolo).
	rev  int64
	stop context.CancelFunc // ends keepSpare
}

// heldLease is the etcd lease behind an epoch this fencer claimed.
type heldLease struct {
	epoch uint64
	id    clientv3.LeaseID
}

// NewEtcdFencer returns a Fencer over cli whose keys live under prefix
// (e.g. "/hachat/fencing/") and whose leases last lease (at least a
// second). The caller owns cli.
func NewEtcdFencer(cli *clientv3.Client, prefix string, lease time.Duration) *EtcdFencer {
	return &EtcdFencer{cli: cli, prefix: prefix, ttl: max(1, int64(math.Ceil(lease.Seconds()))), held: map[string]heldLease{}}
}

func (f *EtcdFencer) epochKey(service string) string { return f.prefix + service + "/epoch" }
func (f *EtcdFencer) leaseKey(service string) string { return f.prefix + service + "/lease" }

// unavailable wraps an etcd failure as ErrUnavailable (retry later).
func unavailable(op string, err error) error { return &etcdError{op: op, err: err} }

// etcdError is an etcd call that failed: it matches ErrUnavailable and
// wraps etcd's error (without the UCS wording of ErrUnavailable's text).
type etcdError struct {
	op  string
	err error
}

func (e *etcdError) Error() string        { return "etcd " + e.op + ": unavailable: " + e.err.Error() }
func (e *etcdError) Unwrap() error        { return e.err }
func (e *etcdError) Is(target error) bool { return target == ErrUnavailable }

// Current returns the service's epoch: the mod revision of its epoch key
// (a linearizable read).
func (f *EtcdFencer) Current(ctx context.Context, service string) (Epoch, error) {
	resp, err := f.cli.Get(ctx, f.epochKey(service))
	if err != nil {
		return Epoch{}, unavailable("read epoch", err)
	}
	if len(resp.Kvs) == 0 {
		return Epoch{}, nil
	}
	kv := resp.Kvs[0]
	return Epoch{Epoch: uint64(kv.ModRevision), Holder: string(kv.Value)}, nil
}

// Claim rewrites the epoch key if its revision is still expect (and, with
// ifSilent, no other holder's lease lives) and binds the lease key to a new
// lease of holder. The new epoch is the transaction's revision.
func (f *EtcdFencer) Claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (Epoch, error) {
	got, err := f.claim(ctx, service, expect, holder, ifSilent, false)
	return got.Epoch, err
}

// ClaimSolo is Claim whose transaction also reads the solo mark and then
// rewrites it for the new epoch (SoloClaimer). The mark names the epoch by
// its mod revision, the transaction's revision, which is the epoch
// (soloNames); its value names the revision the claim guessed (the one
// after the last it saw, above expect), which is the epoch unless another
// write to the cluster came in between.
func (f *EtcdFencer) ClaimSolo(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (SoloClaim, error) {
	return f.claim(ctx, service, expect, holder, ifSilent, true)
}

// claim is Claim, and ClaimSolo when solo.
func (f *EtcdFencer) claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration, solo bool) (SoloClaim, error) {
	if expect > math.MaxInt64 {
		return SoloClaim{}, fmt.Errorf("claim epoch: %w: expect %d out of range", ErrInvalid, expect)
	}
	lk := f.leaseKey(service)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(f.epochKey(service)), "=", int64(expect))}
	if ifSilent > 0 {
		cur, err := f.cli.Get(ctx, lk)
		if err != nil {
			return SoloClaim{}, unavailable("read lease", err)
		}
		var rev int64
		if len(cur.Kvs) > 0 {
			if string(cur.Kvs[0].Value) != holder {
				return SoloClaim{}, f.conflict(ctx, service, expect, true)
			}
			rev = cur.Kvs[0].ModRevision
		}
		// The lease key is as we saw it: absent, or our own.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(lk), "=", rev))
	}
	id, rev, pre := f.takeSpare(service)
	var resp *clientv3.TxnResponse
	for {
		if !pre {
			grant, err := f.cli.Grant(ctx, f.ttl)
			if err != nil {
				return SoloClaim{}, unavailable("grant lease", err)
			}
			id = grant.ID
			if grant.ResponseHeader != nil {
				rev = grant.Revision
			}
		}
		ops := []clientv3.Op{
			clientv3.OpPut(f.epochKey(service), holder),
			clientv3.OpPut(lk, holder, clientv3.WithLease(id)),
		}
		if solo {
			// The read comes first: it sees the mark as it was before. The
			// mark written here names the new epoch by its mod revision,
			// which is the epoch (soloNames); its value names the
			// transaction's revision as guessed, above expect, for readers
			// that read the value alone.
			guess := max(rev+1, int64(expect)+1)
			ops = append(ops, clientv3.OpGet(f.soloKey(service)), clientv3.OpPut(f.soloKey(service), soloValue(uint64(guess), holder)))
		}
		var err error
		resp, err = f.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil && pre && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// The lease granted ahead lapsed or was revoked since its last
			// refresh: the transaction wrote nothing. Grant one and retry.
			pre = false
			continue
		}
		if err != nil {
			f.revoke(id)
			return SoloClaim{}, unavailable("claim epoch", err)
		}
		break
	}
	if !resp.Succeeded {
		f.revoke(id)
		return SoloClaim{}, f.conflict(ctx, service, expect, ifSilent > 0)
	}
	epoch := uint64(resp.Header.Revision)
	f.mu.Lock()
	old, had := f.held[service]
	f.held[service] = heldLease{epoch: epoch, id: id}
	if had {
		// Revoking it here cost the new primary one more round trip
		// before it served.
		f.spent = append(f.spent, old.id)
	}
	f.mu.Unlock()
	out := SoloClaim{Epoch: Epoch{Epoch: epoch, Holder: holder}}
	if solo {
		if r := resp.Responses[2].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			out.WasSolo = soloNames(r.Kvs[0], expect)
		}
	}
	return out, nil
}

// conflict explains a lost claim: the epoch moved past expect, or (silent)
// the holder's lease lives.
func (f *EtcdFencer) conflict(ctx context.Context, service string, expect uint64, silent bool) error {
	cur, err := f.Current(ctx, service)
	if err != nil {
		return err
	}
	return &FenceError{Epoch: cur.Epoch, Holder: cur.Holder, HolderAlive: silent && cur.Epoch == expect}
}

// revoke ends a lease of ours we no longer need, in the background of the
// caller's context (a lease nobody renews expires anyway).
func (f *EtcdFencer) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = f.cli.Revoke(ctx, id)
}

// revokeSpent revokes the leases of epochs held before the last claims.
func (f *EtcdFencer) revokeSpent() {
	f.mu.Lock()
	spent := f.spent
	f.spent = nil
	f.mu.Unlock()
	for _, id := range spent {
		f.revoke(id)
	}
}

// Renew keeps the lease of holder on epoch alive. When the lease expired
// (etcd was unreachable for longer than its TTL) but no one claimed since,
// it binds the lease key to a new lease: the primary keeps its epoch.
func (f *EtcdFencer) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	defer f.revokeSpent()
	cur, err := f.Current(ctx, service)
	if err != nil {
		return Epoch{}, err
	}
	switch {
	case cur.Epoch > epoch:
		return Epoch{}, &FenceError{Epoch: cur.Epoch, Holder: cur.Holder, Stale: true}
	case cur.Epoch != epoch || cur.Holder != holder:
		return Epoch{}, &FenceError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	f.mu.Lock()
	h, ok := f.held[service]
	f.mu.Unlock()
	if ok && h.epoch == epoch {
		_, err := f.cli.KeepAliveOnce(ctx, h.id)
		if err == nil {
			return cur, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return Epoch{}, unavailable("renew lease", err)
		}
	}
	grant, err := f.cli.Grant(ctx, f.ttl)
	if err != nil {
		return Epoch{}, unavailable("grant lease", err)
	}
	resp, err := f.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(f.epochKey(service)), "=", int64(epoch))).
		Then(clientv3.OpPut(f.leaseKey(service), holder, clientv3.WithLease(grant.ID))).Commit()
	if err != nil {
		f.revoke(grant.ID)
		return Epoch{}, unavailable("rebind lease", err)
	}
	if !resp.Succeeded {
		f.revoke(grant.ID)
		now, err := f.Current(ctx, service)
		if err != nil {
			return Epoch{}, err
		}
		return Epoch{}, &FenceError{Epoch: now.Epoch, Holder: now.Holder, Stale: now.Epoch > epoch}
	}
	f.mu.Lock()
	f.held[service] = heldLease{epoch: epoch, id: grant.ID}
	f.mu.Unlock()
	return cur, nil
}

func (f *EtcdFencer) soloKey(service string) string { return f.prefix + service + "/solo" }

// soloValue is the solo mark's value: the epoch, a space, the holder.
func soloValue(epoch uint64, holder string) string {
	return strconv.FormatUint(epoch, 10) + " " + holder
}

// MarkSolo records or clears the solo mark of epoch, in a transaction that
// holds only while epoch is the current epoch.
func (f *EtcdFencer) MarkSolo(ctx context.Context, service string, epoch uint64, holder string, solo bool) error {
	op := clientv3.OpDelete(f.soloKey(service))
	if solo {
		op = clientv3.OpPut(f.soloKey(service), soloValue(epoch, holder))
	}
	resp, err := f.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(f.epochKey(service)), "=", int64(epoch))).Then(op).Commit()
	if err != nil {
		return unavailable("mark solo", err)
	}
	if !resp.Succeeded {
		cur, err := f.Current(ctx, service)
		if err != nil {
			return err
		}
		return &FenceError{Epoch: cur.Epoch, Holder: cur.Holder, Stale: cur.Epoch > epoch}
	}
	return nil
}

// Solo reports whether the solo mark names epoch.
func (f *EtcdFencer) Solo(ctx context.Context, service string, epoch uint64) (bool, error) {
	resp, err := f.cli.Get(ctx, f.soloKey(service))
	if err != nil {
		return false, unavailable("read solo mark", err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	return soloNames(resp.Kvs[0], epoch), nil
}

// soloNames reports whether the solo mark kv names epoch: its value names
// it (MarkSolo, or a claim that guessed its revision), or it was written in
// the claim of epoch (ClaimSolo), whose transaction's revision is epoch: no
// other write has that mod revision.
func soloNames(kv *mvccpb.KeyValue, epoch uint64) bool {
	if epoch > 0 && kv.ModRevision == int64(epoch) {
		return true
	}
	e, _, _ := strings.Cut(string(kv.Value), " ")
	return e == strconv.FormatUint(epoch, 10)
}

// PrepareClaim grants the lease of this fencer's next claim of service now
// and keeps it alive (refreshed four times per TTL, re-granted when it
// lapsed), so that the claim is one write to etcd (the compare-and-set
// transaction) instead of two (a lease grant, a Raft round of its own, then
// the transaction). A backup calls it once in sync with its primary; a
// claim of service uses the lease up (a claim of another service, an N+1
// adoption, leaves it in place), and DropPrepared revokes one no claim
// used. A lease bound to no key grants nothing: the claim's compare-and-set
// alone decides, as without it. It is a no-op while a lease prepared for
// service lives; one prepared for another service is revoked.
func (f *EtcdFencer) PrepareClaim(ctx context.Context, service string) error {
	f.mu.Lock()
	if f.spare != nil && f.spare.service == service {
		f.mu.Unlock()
		return nil
	}
	f.mu.Unlock()
	f.DropPrepared() // one for another service
	sent := time.Now()
	grant, err := f.cli.Grant(ctx, f.ttl)
	if err != nil {
		return unavailable("grant lease ahead", err)
	}
	kctx, stop := context.WithCancel(context.Background())
	sp := &spareLease{service: service, id: grant.ID, fresh: sent, stop: stop}
	if grant.ResponseHeader != nil {
		sp.rev = grant.Revision
	}
	f.mu.Lock()
	if f.spare != nil { // a concurrent PrepareClaim won
		f.mu.Unlock()
		stop()
		f.revoke(grant.ID)
		return nil
	}
	f.spare = sp
	f.mu.Unlock()
	go f.keepSpare(kctx, sp)
	return nil
}

// DropPrepared revokes the lease PrepareClaim granted, when no claim used
// it (shutdown, or a core that no longer needs one).
func (f *EtcdFencer) DropPrepared() {
	f.mu.Lock()
	sp := f.spare
	f.spare = nil
	f.mu.Unlock()
	if sp != nil {
		sp.stop()
		f.revoke(sp.id)
	}
}

// takeSpare hands the prepared lease to a claim of service: its id and the
// revision last seen with it, when it is fresh enough (see
// spareLease.fresh); a stale one joins the spent leases, which the next
// Renew revokes off the claim's path. One prepared for another service
// stays in place.
func (f *EtcdFencer) takeSpare(service string) (clientv3.LeaseID, int64, bool) {
	f.mu.Lock()
	sp := f.spare
	if sp != nil && sp.service != service {
		sp = nil
	} else {
		f.spare = nil
	}
	var id clientv3.LeaseID
	var rev int64
	var fresh time.Time
	if sp != nil {
		id, rev, fresh = sp.id, sp.rev, sp.fresh
	}
	f.mu.Unlock()
	if sp == nil {
		return 0, 0, false
	}
	sp.stop()
	if time.Since(fresh) >= time.Duration(f.ttl)*time.Second/2 {
		f.mu.Lock()
		f.spent = append(f.spent, id)
		f.mu.Unlock()
		return 0, 0, false
	}
	return id, rev, true
}

// keepSpare refreshes sp four times per TTL until ctx ends (a claim took
// it, or DropPrepared); when etcd no longer knows it (it lapsed while etcd
// was unreachable) it grants a new one in its place.
func (f *EtcdFencer) keepSpare(ctx context.Context, sp *spareLease) {
	every := time.Duration(f.ttl) * time.Second / 4
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.cli.Ctx().Done(): // the client closed: nothing to keep
			return
		case <-t.C:
		}
		f.mu.Lock()
		id := sp.id
		f.mu.Unlock()
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, every)
		ka, err := f.cli.KeepAliveOnce(rctx, id)
		cancel()
		if err == nil {
			f.mu.Lock()
			sp.fresh = sent
			if ka.ResponseHeader != nil {
				sp.rev = ka.Revision
			}
			f.mu.Unlock()
			continue
		}
		if ctx.Err() != nil || !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			continue // etcd unreachable: the lease ages; takeSpare judges it
		}
		grant, err := f.cli.Grant(ctx, f.ttl)
		if err != nil {
			continue
		}
		f.mu.Lock()
		current := f.spare == sp && ctx.Err() == nil
		if current {
			sp.id, sp.fresh = grant.ID, sent
			if grant.ResponseHeader != nil {
				sp.rev = grant.Revision
			}
		}
		f.mu.Unlock()
		if !current {
			f.revoke(grant.ID) // taken or dropped meanwhile
			return
		}
	}
}
