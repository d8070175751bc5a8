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
// (etcd's unit; its members must allow it: see coord.Config).
type EtcdFencer struct {
	cli    *clientv3.Client
	prefix string
	ttl    int64 // seconds

	mu   sync.Mutex
	held map[string]heldLease // by service: the lease of the epoch we hold
	// spent are leases of epochs this fencer held before its last claim,
	// bound to no key any more: the next Renew revokes them, off the claim's
	// path (a lease nobody renews expires anyway).
	spent []clientv3.LeaseID
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
// rewrites it for the new epoch (SoloClaimer). The mark's value names the
// epoch, which is the transaction's revision, known only once it
// committed: the transaction names the revision that follows the one the
// lease grant just read, which it is unless another write to the cluster
// came in between (then the mark names a revision that some other key
// took, no epoch of service).
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
	grant, err := f.cli.Grant(ctx, f.ttl)
	if err != nil {
		return SoloClaim{}, unavailable("grant lease", err)
	}
	ops := []clientv3.Op{
		clientv3.OpPut(f.epochKey(service), holder),
		clientv3.OpPut(lk, holder, clientv3.WithLease(grant.ID)),
	}
	var guess int64 // the epoch the new solo mark names (0: no mark)
	if solo {
		// The read comes first: it sees the mark as it was before.
		ops = append(ops, clientv3.OpGet(f.soloKey(service)))
		if grant.ResponseHeader != nil && grant.Revision > 0 {
			guess = grant.Revision + 1
			ops = append(ops, clientv3.OpPut(f.soloKey(service), soloValue(uint64(guess), holder)))
		}
	}
	resp, err := f.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		f.revoke(grant.ID)
		return SoloClaim{}, unavailable("claim epoch", err)
	}
	if !resp.Succeeded {
		f.revoke(grant.ID)
		return SoloClaim{}, f.conflict(ctx, service, expect, ifSilent > 0)
	}
	epoch := uint64(resp.Header.Revision)
	f.mu.Lock()
	old, had := f.held[service]
	f.held[service] = heldLease{epoch: epoch, id: grant.ID}
	if had {
		// Revoking it here cost the new primary one more round trip
		// before it served.
		f.spent = append(f.spent, old.id)
	}
	f.mu.Unlock()
	out := SoloClaim{Epoch: Epoch{Epoch: epoch, Holder: holder}, Marked: guess != 0 && guess == resp.Header.Revision}
	if solo {
		if r := resp.Responses[2].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			out.WasSolo = soloNames(r.Kvs[0].Value, expect)
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
	return soloNames(resp.Kvs[0].Value, epoch), nil
}

// soloNames reports whether the solo mark's value names epoch.
func soloNames(value []byte, epoch uint64) bool {
	e, _, _ := strings.Cut(string(value), " ")
	return e == strconv.FormatUint(epoch, 10)
}
