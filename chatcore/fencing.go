package chatcore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// This file is the core's side of the role state machine (package role holds
// the state): when this core claims the epoch and becomes primary, when it
// steps down, and what else changes with the role (health, metrics, the
// replication link, the gossiped meta). Who decides is in failover.go
// (roleLoop, lead, promote, handover) and follower.go with package detect
// (the backup's detection); the epochs come from a Fencer (fencer.go, etcdfencer.go).

// becomePrimary makes this core primary at epoch, the epoch it just claimed.
// With serving false it is primary but restoring: Chat calls get UNAVAILABLE
// and health stays NOT_SERVING until finishRestoring.
func (c *Core) becomePrimary(epoch uint64, serving bool) {
	c.role.BecomePrimary(epoch, serving, func() {
		if serving {
			c.health.SetServingStatus(ChatServiceName, healthServing)
		} else {
			c.health.SetServingStatus(ChatServiceName, healthNotServing)
		}
		c.bg.spawn(c.publishMeta)
	})
	c.dueAll() // a new primary looks at every session once (janitor.go)
}

// prepareClaim has a fencer that can (ClaimPreparer) prepare this core's
// next claim of service (its own pair's) now, so that a failover or
// switchover that promotes it waits for one write to the coordination
// cluster, not two: a backup calls it each time it is in sync with its
// primary (follower.go). An N+1 adoption claims another service and does
// not use it.
func prepareClaim(ctx context.Context, f Fencer, service string, log *slog.Logger) {
	p, ok := f.(ClaimPreparer)
	if !ok {
		return
	}
	if err := p.PrepareClaim(ctx, service); err != nil {
		log.WarnContext(ctx, "could not prepare the next epoch claim: a promotion grants its lease then", "err", err)
	}
}

// dropPreparedClaim releases a prepared claim no claim used (shutdown).
func dropPreparedClaim(f Fencer) {
	if p, ok := f.(ClaimPreparer); ok {
		p.DropPrepared()
	}
}

// finishRestoring opens a restoring primary to clients: its log now holds
// every acknowledged event.
func (c *Core) finishRestoring() {
	c.role.FinishRestoring(func() {
		c.health.SetServingStatus(ChatServiceName, healthServing)
		c.bg.spawn(c.publishMeta)
	})
}

// stepDown makes this core a backup at once: client streams are closed with
// UNAVAILABLE and the Chat health service turns NOT_SERVING. newer is the
// epoch that fenced it (0 when unknown).
func (c *Core) stepDown(reason string, newer uint64) {
	c.role.StepDown(newer, func() {
		c.health.SetServingStatus(ChatServiceName, healthNotServing)
		c.m.stepDowns.Inc()
		c.solo.forget() // a mark of an old epoch stays at etcd, keyed by its epoch
		c.repl.DropLink("stepped down")
		c.bg.spawn(c.publishMeta)
		c.log.Warn("stepped down to backup: client streams closed", "reason", reason, "epoch", c.role.Epoch())
	})
}

// freshDecision is how old a decision to promote may be and still be acted
// on without confirming it again (see claim.recheck).
const freshDecision = 50 * time.Millisecond

// claim is one attempt to become primary.
type claim struct {
	// known is the newest epoch the claimant knows; a claim fails with
	// ErrEpochConflict when the store holds a newer one (0: no such check).
	known uint64
	// holder is who the claimant believes holds known (the primary it
	// followed, the one handing over): logged as the previous holder when
	// the claim on known succeeds without reading the store.
	holder string
	// reason is logged with the claim.
	reason string
	// recheck, when set, confirms the decision to claim again immediately
	// before each compare-and-set whose decision is older than
	// freshDecision; its error drops the claim.
	recheck func(ctx context.Context) error
	// restore claims the role but keeps the core restoring (not serving)
	// until finishRestoring.
	restore bool
	// ifSilent > 0 claims only when the current holder has not renewed its
	// lease for that long (ClaimEpochIfSilent); a live holder drops the
	// claim with errPrimaryAlive.
	ifSilent time.Duration
	// solo, when set, asks a fencer that can (SoloClaimer) to record the
	// solo mark of the new epoch with the claim, and to read the mark it
	// replaces, which decides whether a stale replica merges
	// (trustReplica): the claimant will acknowledge with second copies in
	// UCS at once (a promotion: its backup is the primary it lost). What
	// the claim learned is written there.
	solo *soloClaimed
}

// soloClaimed is what a claim with the solo mark learned (claim.solo).
type soloClaimed struct {
	SoloClaim
	// done says the claim that succeeded was a ClaimSolo.
	done bool
}

// claimPrimary claims the next epoch at the fencing authority (c.fencer:
// etcd, or UCS without a coordination cluster) with a compare-and-set
// (expect is the epoch it holds now, which must not be newer than cl.known
// when cl.known > 0), retrying while it is unreachable, and becomes
// primary. A lost compare-and-set returns ErrEpochConflict: someone else
// moved first; a failed re-check returns its error and claims nothing.
func (c *Core) claimPrimary(ctx context.Context, cl claim) (uint64, error) {
	ctx, span := c.tracer.Start(ctx, "chatcore.claimEpoch")
	defer span.End()
	known, reason := cl.known, cl.reason
	delay := 50 * time.Millisecond
	decided := time.Now()
	if known > 0 {
		// The claimant knows the epoch it replaces (a handover names it; a
		// backup observed its primary's): compare-and-set on it at once,
		// without reading the store first, one round trip to the fencing
		// authority fewer on the way to a new primary. The compare-and-set
		// alone decides, as below: a store holding any other epoch refuses
		// it, and the loop then reads the store and decides as before.
		got, err := c.claimOn(ctx, cl, known)
		if err == nil {
			c.claimedFrom.Store(known)
			c.becomePrimary(got.Epoch, !cl.restore)
			c.log.InfoContext(ctx, "claimed epoch, now primary", "epoch", got.Epoch, "previous", known, "previous_holder", cl.holder, "reason", reason)
			return got.Epoch, nil
		}
		if errors.Is(err, ErrHolderAlive) {
			// The holder of known renewed its lease: it is alive.
			return 0, fmt.Errorf("%w: claim the epoch after %d: %w", errPrimaryAlive, known, err)
		}
		// Another epoch, or the authority unreachable: read and retry below.
	}
	for {
		cur, err := c.fencer.Current(ctx, c.cfg.Cluster)
		if err == nil {
			if known > 0 && cur.Epoch > known && cur.Holder != c.cfg.Name {
				c.role.Observe(cur.Epoch)
				return 0, fmt.Errorf("epoch %d held by %s is newer than %d: %w", cur.Epoch, cur.Holder, known, ErrEpochConflict)
			}
			if cl.recheck != nil && time.Since(decided) > freshDecision {
				if rerr := cl.recheck(ctx); rerr != nil {
					span.RecordError(rerr)
					return 0, rerr
				}
				decided = time.Now()
			}
			var got Epoch
			got, err = c.claimOn(ctx, cl, cur.Epoch)
			if err == nil {
				c.claimedFrom.Store(cur.Epoch)
				c.becomePrimary(got.Epoch, !cl.restore)
				c.log.InfoContext(ctx, "claimed epoch, now primary", "epoch", got.Epoch, "previous", cur.Epoch, "previous_holder", cur.Holder, "reason", reason)
				return got.Epoch, nil
			}
			if errors.Is(err, ErrHolderAlive) {
				// The holder renewed its lease: it is alive and reaches UCS.
				return 0, fmt.Errorf("%w: claim the epoch after %d: %w", errPrimaryAlive, cur.Epoch, err)
			}
			if errors.Is(err, ErrEpochConflict) {
				return 0, fmt.Errorf("claim the epoch after %d: %w", cur.Epoch, err)
			}
		}
		c.m.fencingFailures.WithLabelValues("claim").Inc()
		if errors.Is(err, ErrForbidden) {
			c.log.ErrorContext(ctx, "UCS refused the epoch claim: missing or wrong writer token (--ucs-token); retrying", "err", err, "retry_in", delay)
		} else {
			c.log.WarnContext(ctx, "epoch claim failed, the fencing authority is unreachable: retrying (no promotion without a fencing epoch)", "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("claim epoch: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
		if cl.recheck != nil {
			// Confirm again after the wait, even when UCS stays down: a
			// dropped decision stops the retries and lets the core follow.
			if rerr := cl.recheck(ctx); rerr != nil {
				span.RecordError(rerr)
				return 0, rerr
			}
			decided = time.Now()
		}
	}
}

// claimOn makes one compare-and-set of cl on expect at the fencing
// authority. With cl.solo and a fencer that can (SoloClaimer) the claim
// also records the solo mark of the new epoch, which the core then knows
// as recorded before it serves: its first acknowledgement with a second
// copy in UCS writes nothing more to the coordination cluster.
func (c *Core) claimOn(ctx context.Context, cl claim, expect uint64) (Epoch, error) {
	sc, ok := c.fencer.(SoloClaimer)
	if cl.solo == nil || !ok {
		return c.fencer.Claim(ctx, c.cfg.Cluster, expect, c.cfg.Name, cl.ifSilent)
	}
	got, err := sc.ClaimSolo(ctx, c.cfg.Cluster, expect, c.cfg.Name, cl.ifSilent)
	if err != nil {
		return Epoch{}, err
	}
	*cl.solo = soloClaimed{SoloClaim: got, done: true}
	c.solo.recorded(got.Epoch.Epoch)
	return got.Epoch, nil
}
