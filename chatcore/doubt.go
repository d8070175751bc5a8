package chatcore

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// This file holds two rules that keep an acknowledged event where it was
// acknowledged (docs/chatcore.md, "Events in doubt" and "Tombstones").
//
// Events in doubt. An append whose second copy fails with an uncertain
// outcome (queued to the backup without an ack; a UCS save that timed out
// or was cut after sending) cannot tell whether a copy exists: the backup
// may have applied it, the save may have landed. Giving its index to
// another event could leave two different events at one index (UCS refuses
// the second as a conflict, a promoted backup keeps the first). So the
// event stays in doubt at its index: the session's appends first try its
// second copy again, with exactly the same event (idempotent at UCS; the
// backup, once back in sync, acknowledges it like any event), and answer
// Unavailable while that fails. A definite copy commits it at its index,
// after which a client's resend (same client_message_id) is its duplicate.
// A newer epoch supersedes it: a stale-epoch refusal steps the core down
// (as for any append), and the primary that follows decides the index,
// merging the event from UCS if it landed there (the same event: no harm).
//
// Tombstones. A session ended without a complete final save (UCS refused
// a save for good under transcript-save-on-error=close) holds events UCS
// lacks; once forgotten, restoring it from UCS would reopen an older copy
// and give its acknowledged indexes again. Forgetting it leaves a
// tombstone (id, last index) that the backup learns too (its own janitor
// forgets the same session; a backup that joins later gets the tombstones
// in the snapshot), and lookup answers a tombstoned session as ended.

// holdInDoubt records ev, whose second copy's outcome is uncertain, as the
// session's event in doubt and returns the error for the client. Call with
// s.appendMu held.
func (c *Core) holdInDoubt(ctx context.Context, s *session, ev *chatpb.Event, cause error) error {
	s.mu.Lock()
	if s.doubt == nil {
		c.m.inDoubt.Inc()
	}
	s.doubt = ev
	s.doubtNext = c.now().Add(doubtRetryEvery)
	c.due.schedule(s, s.doubtNext)
	s.mu.Unlock()
	c.log.WarnContext(ctx, "event in doubt: its second copy failed with an uncertain outcome; its index is kept for it and the session's appends wait until a definite copy commits it",
		"session", s.id, "index", ev.Index, "kind", kindName(ev.Kind), "epoch", ev.Epoch, "client_message_id", ev.ClientMessageId, "err", cause)
	return status.Errorf(codes.Unavailable, "the second copy of event %d has an uncertain outcome (the event is in doubt): resend with the same client_message_id", ev.Index)
}

// resolveDoubt settles the session's event in doubt, if any, before an
// append takes the next index: it commits it after a definite second copy
// of the same event, drops it when a newer epoch or a merge decided its
// index, or returns Unavailable while neither the backup nor UCS can take
// it. Call with s.appendMu held, as primary.
func (c *Core) resolveDoubt(ctx context.Context, s *session) error {
	s.mu.Lock()
	ev := s.doubt
	if ev == nil {
		s.mu.Unlock()
		return nil
	}
	if s.removed || ev.Epoch != c.role.Epoch() || ev.Index != s.lastIndex()+1 {
		c.dropDoubtLocked(s)
		s.mu.Unlock()
		c.m.doubtResolved.WithLabelValues("superseded").Inc()
		c.log.InfoContext(ctx, "event in doubt superseded: a newer epoch or a merge decided its index", "session", s.id, "index", ev.Index, "epoch", ev.Epoch)
		return nil
	}
	s.mu.Unlock()
	start := time.Now()
	if _, err := c.secondCopy(ctx, s, ev, true); err != nil {
		if !c.role.IsPrimary() {
			return errNotPrimary
		}
		return status.Errorf(codes.Unavailable, "event %d of this session is in doubt (its second copy's outcome is unknown) and cannot be copied yet: retry", ev.Index)
	}
	if !c.role.IsPrimary() { // fenced while waiting for the copy
		return errNotPrimary
	}
	s.mu.Lock()
	if s.doubt != ev || s.removed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "session changed while its event in doubt was copied: retry")
	}
	c.dropDoubtLocked(s)
	s.mu.Unlock()
	c.commitAppended(ctx, s, ev, start)
	c.m.doubtResolved.WithLabelValues("committed").Inc()
	c.log.InfoContext(ctx, "event in doubt resolved: a definite second copy, committed at its index", "session", s.id, "index", ev.Index,
		"kind", kindName(ev.Kind), "client_message_id", ev.ClientMessageId, "in_doubt_for", time.Since(start))
	return nil
}

// dropDoubtLocked forgets the session's event in doubt. Call with s.mu held.
func (c *Core) dropDoubtLocked(s *session) {
	if s.doubt != nil {
		s.doubt = nil
		c.m.inDoubt.Dec()
	}
}

// doubtRetryEvery is how often the janitor tries an event in doubt again
// (appends of its session try at once).
const doubtRetryEvery = time.Second

// settleDoubt is the janitor's try at a session's event in doubt, so that
// it resolves without waiting for the next append. It never waits for an
// append or a switchover in progress.
func (c *Core) settleDoubt(ctx context.Context, s *session) {
	now := c.now()
	s.mu.Lock()
	pending := s.doubt != nil && !now.Before(s.doubtNext)
	if pending {
		s.doubtNext = now.Add(doubtRetryEvery)
	}
	s.mu.Unlock()
	if !pending || !c.inflight.TryRLock() {
		return
	}
	defer c.inflight.RUnlock()
	if !s.appendMu.TryLock() {
		return
	}
	defer s.appendMu.Unlock()
	if !c.role.IsPrimary() || c.role.Unmerged() || c.role.Draining() {
		return
	}
	_ = c.resolveDoubt(ctx, s) // a failure stays in doubt; the next tick tries again
}

// maxTombstones bounds the tombstones kept (the oldest go first): each is
// a session id and an index, and only sessions closed after a save refused
// for good leave one.
const maxTombstones = 100000

// tombstone is what the core keeps of a session forgotten without a
// complete final save.
type tombstone struct {
	last uint64 // the last index acknowledged
}

// tombstones are the sessions this core forgot without a complete final
// save (at most maxTombstones, oldest dropped first). It owns its lock, a
// leaf: nothing else is locked under it.
type tombstones struct {
	mu    sync.Mutex
	byID  map[string]tombstone
	order []string // byID's ids, oldest first

	gauge prometheus.Gauge // hachat_core_tombstones
	log   *slog.Logger
}

// add records that session id ended with events through last
// acknowledged and UCS lacks some of them.
func (t *tombstones) add(id string, last uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byID == nil {
		t.byID = make(map[string]tombstone)
	}
	if old, ok := t.byID[id]; ok {
		t.byID[id] = tombstone{last: max(old.last, last)}
		return
	}
	t.byID[id] = tombstone{last: last}
	t.order = append(t.order, id)
	for len(t.order) > maxTombstones {
		delete(t.byID, t.order[0])
		t.order = t.order[1:]
	}
	t.gauge.Set(float64(len(t.byID)))
	t.log.Info("session forgotten with a tombstone: UCS holds less than was acknowledged, it is never restored from there", "session", id, "last_index", last)
}

// has reports whether id has a tombstone.
func (t *tombstones) has(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.byID[id]
	return ok
}

// snapshots returns the tombstones as snapshot messages for a backup.
func (t *tombstones) snapshots() []*chatpb.SessionSnapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*chatpb.SessionSnapshot, 0, len(t.order))
	for _, id := range t.order {
		if ts, ok := t.byID[id]; ok {
			out = append(out, &chatpb.SessionSnapshot{SessionId: id, Tombstone: true, LastIndex: ts.last, NoFinalSave: true})
		}
	}
	return out
}

// errTombstoned answers a session forgotten with a tombstone.
var errTombstoned = status.Error(codes.FailedPrecondition, "session has ended (closed without a complete transcript in UCS; it is not restored from there)")
