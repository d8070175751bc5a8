package chatcore

import (
	"errors"
	"fmt"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// This file is the backup's side of replication: the applier folds the
// primary's stream (snapshots, events, batches of them, save progress)
// into the core's sessions. follower.go runs the stream and decides when
// the primary is dead; the applier decides what of the stream fits.

// applierCore is what applying the primary's stream does to the core: the
// session table (look up, insert or replace, forget the sessions the
// snapshot lacked) and committing an event into a session's log (fold and
// fan-out). *Core implements it; nothing else of the core is in the
// applier's reach.
type applierCore interface {
	session(id string) *session
	addSession(s *session)
	putSession(s *session)
	commitLocked(s *session, ev *chatpb.Event) *chatpb.SessionChange
	dropUnseen(seen map[string]bool) int
}

// applier applies one Replicate stream on the backup. It refuses a message
// of an epoch older than the newest this core knows (a fenced primary), a
// snapshot that is not a gap-free log, an event that does not follow its
// session's last, and a batch whose seqs do not run up to its own; the
// caller acknowledges a message only after apply returned nil for it.
// One applier serves one stream, from one goroutine.
type applier struct {
	core  applierCore
	role  *role.State // the newest epoch this core knows; admit raises it
	tombs *tombstones // tombstones the snapshot carries
	m     *metrics
	now   func() time.Time
	seen  map[string]bool // sessions this stream's snapshot or events carried
}

// newApplier returns an applier for one Replicate stream.
func (c *Core) newApplier() *applier {
	return &applier{core: c, role: c.role, tombs: &c.tombs, m: c.m, now: c.now, seen: make(map[string]bool)}
}

// fits refuses a message of a primary whose epoch is older than the
// newest this core knows: it has been fenced.
func (a *applier) fits(msg *chatpb.ReplicaMsg) error {
	if known := a.role.Epoch(); msg.Epoch < known {
		return fmt.Errorf("primary %s carries epoch %d, older than %d: rejected", msg.Primary, msg.Epoch, known)
	}
	return nil
}

// admit checks any message of the stream (fits) and records its epoch as
// known.
func (a *applier) admit(msg *chatpb.ReplicaMsg) error {
	if err := a.fits(msg); err != nil {
		return err
	}
	a.role.Observe(msg.Epoch)
	return nil
}

// apply applies a snapshot, an event, save progress or a batch of events
// and save progress. A message that does not fit changes nothing of
// itself (a batch may have applied its earlier entries: the stream then
// resyncs from a fresh snapshot).
func (a *applier) apply(msg *chatpb.ReplicaMsg) error {
	if err := a.fits(msg); err != nil {
		return err
	}
	if b, ok := msg.Body.(*chatpb.ReplicaMsg_Batch); ok {
		return a.applyBatch(msg.Seq, b.Batch)
	}
	return a.applyOne(msg)
}

// synced ends the snapshot (snapshot_done): the sessions it did not carry
// are forgotten. It returns how many were dropped and how many it carried.
func (a *applier) synced() (dropped, kept int) {
	return a.core.dropUnseen(a.seen), len(a.seen)
}

// applyOne applies one snapshot, event or save progress of the primary
// and notes the session as seen.
func (a *applier) applyOne(msg *chatpb.ReplicaMsg) error {
	switch b := msg.Body.(type) {
	case *chatpb.ReplicaMsg_Snapshot:
		if b.Snapshot == nil {
			return errors.New("empty snapshot")
		}
		if b.Snapshot.Tombstone {
			// Not marked seen: a local copy of the session goes at snapshot_done.
			if b.Snapshot.SessionId == "" {
				return errors.New("tombstone without a session id")
			}
			a.tombs.add(b.Snapshot.SessionId, b.Snapshot.LastIndex)
			return nil
		}
		if err := a.applySnapshot(b.Snapshot); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		a.seen[b.Snapshot.SessionId] = true
	case *chatpb.ReplicaMsg_Event:
		if b.Event == nil {
			return errors.New("empty event")
		}
		if err := a.applyEvent(b.Event); err != nil {
			return fmt.Errorf("event: %w", err)
		}
		a.seen[b.Event.SessionId] = true
	case *chatpb.ReplicaMsg_Saved:
		if b.Saved != nil {
			a.applyProgress(b.Saved)
		}
	default:
		return fmt.Errorf("unexpected replication message %T", msg.Body)
	}
	return nil
}

// applyBatch applies a ReplicaBatch in order. Its messages are events and
// save progress with consecutive seqs ending at seq (the outer message's);
// anything else means the stream is not what this core expects and it
// resyncs (nothing of the batch is acknowledged: the caller acks only after
// the whole batch applied).
func (a *applier) applyBatch(seq uint64, b *chatpb.ReplicaBatch) error {
	msgs := b.GetMsgs()
	if len(msgs) == 0 {
		return errors.New("empty batch")
	}
	if first := msgs[0].Seq; first+uint64(len(msgs))-1 != seq {
		return fmt.Errorf("batch of %d from seq %d does not end at %d", len(msgs), first, seq)
	}
	for i, m := range msgs {
		if m == nil || m.Seq != msgs[0].Seq+uint64(i) {
			return fmt.Errorf("batch entry %d is out of sequence", i)
		}
		switch m.Body.(type) {
		case *chatpb.ReplicaMsg_Event, *chatpb.ReplicaMsg_Saved:
		default:
			return fmt.Errorf("batch entry %d: %T cannot be batched", i, m.Body)
		}
		if err := a.applyOne(m); err != nil {
			return fmt.Errorf("batch entry %d (seq %d): %w", i, m.Seq, err)
		}
	}
	return nil
}

// applySnapshot replaces the local copy of one session. A snapshot that is
// not a gap-free log of its session is refused and changes nothing.
func (a *applier) applySnapshot(snap *chatpb.SessionSnapshot) error {
	if snap.SessionId == "" {
		return errors.New("snapshot without a session id")
	}
	for i, ev := range snap.Events {
		if ev == nil || ev.Index != uint64(i+1) || ev.SessionId != snap.SessionId {
			return fmt.Errorf("snapshot of %s: entry %d is not event %d of the session", snap.SessionId, i, i+1)
		}
	}
	s := newSession(snap.SessionId)
	if len(snap.Events) > 0 && snap.Events[0].Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		s.startReq = snap.Events[0].ClientRequestId
	}
	for _, ev := range snap.Events {
		s.log.Commit(ev)
	}
	s.savedThrough, s.finalSaved, s.noFinalSave = snap.SavedThrough, snap.FinalSaved, snap.NoFinalSave
	if s.log.State.Ended {
		s.endedAt = a.now()
	}
	a.core.putSession(s)
	return nil
}

// applyEvent appends one replicated event: the next of its session, or
// the first of a new one.
func (a *applier) applyEvent(ev *chatpb.Event) error {
	if ev.SessionId == "" {
		return errors.New("replicated event without a session id")
	}
	s := a.core.session(ev.SessionId)
	if s == nil {
		if ev.Index != 1 {
			return fmt.Errorf("event %d of unknown session %s", ev.Index, ev.SessionId)
		}
		s = newSession(ev.SessionId)
		if ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
			s.startReq = ev.ClientRequestId
		}
		a.core.addSession(s)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.lastIndex()
	switch {
	case ev.Index <= last:
		return nil // already have it (snapshot and event raced on the stream)
	case ev.Index != last+1:
		return fmt.Errorf("session %s: event %d after %d", s.id, ev.Index, last)
	}
	a.core.commitLocked(s, ev)
	a.m.replicated.Inc()
	return nil
}

// applyProgress records a save the primary's UCS acknowledged.
func (a *applier) applyProgress(p *chatpb.SaveProgress) {
	s := a.core.session(p.SessionId)
	if s == nil {
		return
	}
	s.mu.Lock()
	s.savedThrough = max(s.savedThrough, p.SavedThrough)
	s.finalSaved = s.finalSaved || p.FinalSaved
	s.noFinalSave = s.noFinalSave || p.NoFinalSave
	s.mu.Unlock()
}

// The core's side: its session table, as the applier changes it.

// addSession inserts a new session that replication started (its first
// event follows), keeping the live count.
func (c *Core) addSession(s *session) {
	c.mu.Lock()
	c.sessions[s.id] = s
	c.registerStartLocked(s)
	c.live++
	c.m.sessionsLive.Set(float64(c.live))
	c.mu.Unlock()
}

// putSession inserts or replaces a session, keeping the live count. Lock
// order (doc.go) is s.mu before c.mu (commitLocked takes c.mu under s.mu),
// so the replaced session is marked after c.mu is released.
func (c *Core) putSession(s *session) {
	c.mu.Lock()
	old := c.sessions[s.id]
	c.sessions[s.id] = s
	if old != nil {
		c.unregisterStartLocked(old)
	}
	c.registerStartLocked(s)
	c.mu.Unlock()
	delta := 0
	if old != nil {
		old.mu.Lock()
		old.removed = true
		c.dropDoubtLocked(old)
		if !old.log.State.Ended {
			delta--
		}
		old.mu.Unlock()
	}
	s.mu.Lock()
	if !s.log.State.Ended {
		delta++
	}
	s.mu.Unlock()
	c.mu.Lock()
	c.live += delta
	c.m.sessionsLive.Set(float64(c.live))
	c.mu.Unlock()
}

// dropUnseen forgets sessions the primary's snapshot did not carry.
func (c *Core) dropUnseen(seen map[string]bool) int {
	c.mu.Lock()
	var drop []*session
	for id, s := range c.sessions {
		if !seen[id] {
			drop = append(drop, s)
			delete(c.sessions, id)
			c.unregisterStartLocked(s)
		}
	}
	c.mu.Unlock()
	for _, s := range drop {
		s.mu.Lock()
		s.removed = true
		c.dropDoubtLocked(s)
		ended := s.log.State.Ended
		s.mu.Unlock()
		if !ended {
			c.mu.Lock()
			c.live--
			c.m.sessionsLive.Set(float64(c.live))
			c.mu.Unlock()
		}
	}
	return len(drop)
}
