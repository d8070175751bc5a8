package chatcore

import (
	"context"
	"fmt"
	"time"
)

// Fencer is the fencing authority of a pair: it hands out epochs (fencing
// tokens) and holds the primary's lease. EtcdFencer is the real one (epochs
// are etcd revisions); StoreFencer keeps the older scheme where UCS holds
// the epochs. Every method is safe for concurrent use and honours ctx.
//
//   - Claim is a compare-and-set: it succeeds only while the current epoch
//     is expect, and returns the new epoch, always greater than expect. With
//     ifSilent > 0 it also fails, with an error matching ErrHolderAlive,
//     while another holder's lease lives (the holder renewed within about
//     ifSilent): a claim without certain evidence must not depose a live
//     primary. A claim with ifSilent == 0 ends the old holder's lease.
//   - Renew keeps holder's lease on epoch alive. It fails with an error
//     matching ErrStaleEpoch when a newer epoch exists and ErrEpochConflict
//     when another holds the epoch: the caller must step down.
//   - Current returns the newest epoch and its holder (zero: none yet).
//
// Unreachability is an error matching none of those sentinels: the caller
// retries (a claim) or stays as it is (a renewal, until its lease lapses).
type Fencer interface {
	// Current returns the service's current epoch and holder.
	Current(ctx context.Context, service string) (Epoch, error)
	// Claim makes holder the holder of a new epoch if the current one is expect.
	Claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (Epoch, error)
	// Renew renews holder's lease on epoch.
	Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error)
}

// WithFencer sets the fencing authority (default: StoreFencer over the
// core's TranscriptStore, i.e. epochs at UCS).
func WithFencer(f Fencer) Option { return func(c *Core) { c.fencer = f } }

// StoreFencer is the Fencer of a TranscriptStore: UCS holds the epochs
// (claims are epoch+1 compare-and-sets there, the lease is UCS's record of
// the last renewal). It is the fallback of a core given no coordination
// cluster; UCS is then a single point of failure of failover itself.
type StoreFencer struct {
	// Store is the store that holds the epochs.
	Store TranscriptStore
}

// Current returns the store's epoch for service.
func (f StoreFencer) Current(ctx context.Context, service string) (Epoch, error) {
	return f.Store.Epoch(ctx, service)
}

// Claim claims expect+1 at the store.
func (f StoreFencer) Claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (Epoch, error) {
	if ifSilent > 0 {
		return f.Store.ClaimEpochIfSilent(ctx, service, expect, expect+1, holder, ifSilent)
	}
	return f.Store.ClaimEpoch(ctx, service, expect, expect+1, holder)
}

// Renew records at the store that holder is alive.
func (f StoreFencer) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	return f.Store.Renew(ctx, service, epoch, holder)
}

// FenceError is a Fencer's refusal that names the current epoch. It
// matches ErrStaleEpoch (Stale) or ErrEpochConflict, and ErrHolderAlive
// too when HolderAlive.
type FenceError struct {
	// Epoch is the current epoch.
	Epoch uint64
	// Holder holds it.
	Holder string
	// Stale says the caller's epoch is older than Epoch.
	Stale bool
	// HolderAlive says a claim without certain evidence met a live lease.
	HolderAlive bool
}

// Error describes the refusal.
func (e *FenceError) Error() string {
	switch {
	case e.Stale:
		return fmt.Sprintf("stale epoch: current epoch is %d (holder %q)", e.Epoch, e.Holder)
	case e.HolderAlive:
		return fmt.Sprintf("epoch claim conflict: holder %q of epoch %d is alive (its lease lives)", e.Holder, e.Epoch)
	}
	return fmt.Sprintf("epoch claim conflict: current epoch is %d (holder %q)", e.Epoch, e.Holder)
}

// Is matches the sentinels of the refusal.
func (e *FenceError) Is(target error) bool {
	switch target {
	case ErrStaleEpoch:
		return e.Stale
	case ErrEpochConflict:
		return !e.Stale
	case ErrHolderAlive:
		return e.HolderAlive
	}
	return false
}

// SoloRecorder is a Fencer that also records, fenced by the epoch, that
// the primary acknowledges events whose second copy is in UCS because its
// backup is away (as Kafka records a shrunk in-sync replica set in its
// consensus store before acknowledging with it). A new primary whose
// replica stopped short (a link break just before a kill, a silent
// primary) then knows from the coordination cluster alone whether the old
// primary acknowledged anything its replica lacks: when it did not, the
// new primary serves at once, even while UCS is down; when it did, it
// merges from UCS first (no serving before the merge).
type SoloRecorder interface {
	// MarkSolo records (solo) or clears (!solo) that holder, at epoch,
	// acknowledges with second copies in UCS. It fails with an error
	// matching ErrStaleEpoch when epoch is no longer current.
	MarkSolo(ctx context.Context, service string, epoch uint64, holder string, solo bool) error
	// Solo reports whether the holder of epoch recorded that it went solo
	// (and did not clear it).
	Solo(ctx context.Context, service string, epoch uint64) (bool, error)
}

// SoloClaimer is a SoloRecorder that can write the solo mark of the epoch
// it grants in the claim itself. A backup promoted after a failover has no
// backup of its own until the old primary comes back, so its first
// acknowledgement takes its second copy in UCS and needs the mark: written
// with the claim, it costs that acknowledgement no write to the
// coordination cluster (4-30 ms of the kill -9 gap through the sidecar on
// a loaded 2-core machine, docs/chatcore.md). A mark written before any
// solo acknowledgement only makes a later promotion with a stale replica
// merge from UCS: the safe side.
type SoloClaimer interface {
	SoloRecorder
	// ClaimSolo is Fencer.Claim that, in the same atomic write, records
	// that holder acknowledges with second copies in UCS at the new epoch
	// and reads the mark it replaces.
	ClaimSolo(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (SoloClaim, error)
}

// ClaimPreparer is a Fencer that can do part of its next claim's work
// ahead: an etcd claim grants the lease its epoch is bound to, a write of
// its own before the compare-and-set; granted ahead (and kept alive) it
// leaves the claim one write. What it prepares grants nothing by itself.
type ClaimPreparer interface {
	// PrepareClaim prepares the next claim of service (a no-op while one
	// is prepared for it); a claim of another service does not use it.
	PrepareClaim(ctx context.Context, service string) error
	// DropPrepared releases what PrepareClaim prepared and no claim used.
	DropPrepared()
}

// SoloClaim is a successful ClaimSolo: the solo mark names Epoch from then
// on, until its holder clears it.
type SoloClaim struct {
	// Epoch is the epoch claimed.
	Epoch Epoch
	// WasSolo says the mark replaced named expect: its holder acknowledged
	// with second copies in UCS (Solo(expect) at the moment of the claim,
	// after which that holder can record nothing more).
	WasSolo bool
}
