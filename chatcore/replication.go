package chatcore

import (
	"context"
	"errors"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/replica"
)

// This file is the core's side of the primary's replication: the
// replicator itself (the stream, the link, the batched sends and the
// cumulative acks) is package replica's Replicator; the core gives it a
// snapshot of its sessions (replicaSource) and asks it for the second copy
// of each event (secondCopy).

// newReplicator returns the primary's replicator, reaching the core
// through replicaSource.
func newReplicator(c *Core) *replica.Replicator {
	cfg := replica.Config{Name: c.cfg.Name, AdminToken: c.cfg.AdminToken, Timeout: c.cfg.ReplicationTimeout,
		ConfirmTimeout: epochConfirmTimeout, NotPrimary: errNotPrimary}
	return replica.NewReplicator(replicaSource{c}, cfg, c.role, fencerAuthority{c.fencer, c.cfg.Cluster}, c.m.replica(), c.log)
}

// replica returns the replication metrics.
func (m *metrics) replica() replica.Metrics {
	return replica.Metrics{Replicated: m.replicated, Lag: m.replicationLag, InSync: m.backupInSync, Batch: m.replicationBatch}
}

// fencerAuthority is the fencing authority as the replicator confirms a
// backup's newer epoch with it.
type fencerAuthority struct {
	f       Fencer
	service string
}

// CurrentEpoch returns the epoch the fencing authority holds for the pair.
func (a fencerAuthority) CurrentEpoch(ctx context.Context) (uint64, error) {
	e, err := a.f.Current(ctx, a.service)
	return e.Epoch, err
}

// replicaSource is the core as the primary's replicator sees it
// (replica.Core).
type replicaSource struct{ c *Core }

// SnapshotTo queues a snapshot of every session (and every tombstone) on
// l. Each session's snapshot is taken under its appendMu, so it is ordered
// with the events that follow it on the stream.
func (r replicaSource) SnapshotTo(l *replica.Link) int {
	c := r.c
	all := c.all()
	for _, t := range c.tombs.snapshots() {
		l.Snapshot(t)
	}
	n := 0
	for _, s := range all {
		s.appendMu.Lock()
		s.mu.Lock()
		if s.removed {
			s.mu.Unlock()
			s.appendMu.Unlock()
			continue
		}
		snap := s.snapshotLocked()
		s.mu.Unlock()
		l.Hold(s, snap)
		s.appendMu.Unlock()
		n++
	}
	return n
}

// StepDown ends this core's term: a backup knows a newer epoch.
func (r replicaSource) StepDown(reason string, newer uint64) { r.c.stepDown(reason, newer) }

// BackupInSync is the replicator's word that a backup acknowledged its
// snapshot: every acknowledged event is on it again, so the solo mark goes.
func (r replicaSource) BackupInSync() { r.c.bg.spawn(r.c.solo.clear) }

// LinkGen is the generation of the backup link that holds s (replica.Session).
func (s *session) LinkGen() uint64 { return s.replGen.Load() }

// SetLinkGen records the backup link that holds s.
func (s *session) SetLinkGen(gen uint64) { s.replGen.Store(gen) }

// SaveProgress is s's transcript save progress now.
func (s *session) SaveProgress() *chatpb.SaveProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &chatpb.SaveProgress{SessionId: s.id, SavedThrough: s.save.SavedThrough, FinalSaved: s.save.FinalSaved, NoFinalSave: s.save.NoFinalSave}
}

// Replicate serves a backup: hello, snapshot, live tail, acks. Only the
// primary accepts; a backup that knows a newer epoch fences this core. The
// replicator does the work.
func (c *Core) Replicate(stream chatpb.Replication_ReplicateServer) error {
	return c.repl.Serve(stream)
}

// secondCopy makes sure a second copy of ev exists before it is committed
// (invariant 1): the backup's ack, or, while the backup is away or does not
// have the session yet, a save of ev in UCS. A standalone core (no peer)
// keeps no second copy. Call with s.appendMu held.
//
// On failure, uncertain reports whether ev may exist anyway: it was queued
// to the backup without an ack (the backup may have applied it), or its
// save in UCS failed without a definite answer (a timeout or a connection
// cut after sending: the write may have landed). Such an event is in doubt
// (see doubt.go): its index is kept for it. A definite refusal (stale
// epoch, conflict, invalid, forbidden, the breaker open: nothing sent) and
// no attempt to the backup leave it certain that no copy exists.
//
// A backup still resyncing (its snapshot not acknowledged: after a
// switchover, the old primary that just became backup) acknowledges ev only
// behind the rest of its snapshot: ev goes to it all the same, and the
// first of the two copies decides (eitherCopy).
func (c *Core) secondCopy(ctx context.Context, s *session, ev *chatpb.Event, needCopy bool) (uncertain bool, err error) {
	cp := c.repl.SendToBackup(s, ev, needCopy)
	ucs := c.paired() && needCopy && c.notices.keeps(ev)
	if ucs && cp.Resyncing {
		return c.eitherCopy(ctx, s, ev, &cp)
	}
	if cp.Wait(nil) {
		return false, nil
	}
	if !ucs {
		return false, nil
	}
	return c.ucs.copy(ctx, s.id, ev, cp.Uncertain)
}

// eitherCopy is the second copy of ev queued to a resyncing backup (cp):
// a save in UCS (ucsCopy.copy, which records the solo mark first unless the
// claim recorded it) runs beside the wait for the backup's ack, and the
// first that succeeds commits ev. The save runs in the core's background
// (bounded by its own timeouts) and may land after the backup's ack: a
// copy too many in UCS, which the saver's idempotent saves absorb. Only
// when both fail is ev refused; it was queued to the backup, so it is
// uncertain while this core is primary.
func (c *Core) eitherCopy(ctx context.Context, s *session, ev *chatpb.Event, cp *replica.Copy) (bool, error) {
	var (
		uncertain bool
		err       error
	)
	saved := make(chan struct{})
	queued := cp.Uncertain             // the save's goroutine takes this, not cp (which stays on the caller's stack)
	octx := context.WithoutCancel(ctx) // the client giving up must not count as a UCS failure
	if !c.bg.spawn(func(bctx context.Context) {
		defer close(saved)
		sctx, cancel := context.WithCancel(octx)
		defer cancel()
		stop := context.AfterFunc(bctx, cancel) // the core stops
		defer stop()
		uncertain, err = c.ucs.copy(sctx, s.id, ev, queued)
	}) {
		// The core is stopping: no save runs, the backup's ack alone decides.
		if cp.Wait(nil) {
			return false, nil
		}
		return queued && c.role.IsPrimary(), errNotPrimary
	}
	if cp.Wait(saved) {
		return false, nil // the backup's ack came before the save's answer
	}
	<-saved
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, errNotPrimary) && cp.Wait(nil) {
		return false, nil // UCS failed, the backup still acknowledged
	}
	return uncertain, err
}

// replicateProgress tells the backup about an acknowledged transcript save
// (the saver's report, saver.Core.Progress through saverHost): the replicator sends it.
func (c *Core) replicateProgress(s *session, now bool) { c.repl.Progress(s, now) }
