package replica

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// This file is the backup's side of replication: the applier folds the
// primary's stream (snapshots, events, batches of them, save progress)
// into the backup's session table. The core's follower runs the stream and
// decides when the primary is dead; the applier decides what of the stream
// fits.

// Table is the backup's session table as applying the primary's stream
// changes it.
type Table interface {
	// Lookup returns the session id, nil when there is none.
	Lookup(id string) Entry
	// Start adds a new session that replication started; first is its
	// first event (index 1), which Commit adds next.
	Start(first *chatpb.Event) Entry
	// Put inserts or replaces a session with the one snap holds (a
	// gap-free log of it, checked).
	Put(snap *chatpb.SessionSnapshot)
	// Tombstone records a session the primary forgot without a complete
	// final save.
	Tombstone(id string, last uint64)
	// CommitLocked appends ev, the next event of e, to its log (fold and
	// fan-out). Call with e locked.
	CommitLocked(e Entry, ev *chatpb.Event)
	// DropUnseen forgets the sessions seen lacks and returns how many.
	DropUnseen(seen map[string]bool) int
}

// Entry is one session of the Table.
type Entry interface {
	// Lock and Unlock guard the session's log and save progress.
	Lock()
	Unlock()
	// LastIndex is the index of the last committed event. Call locked.
	LastIndex() uint64
	// MergeProgressLocked records save progress the primary's UCS
	// acknowledged. Call locked.
	MergeProgressLocked(p *chatpb.SaveProgress)
}

// Applier applies one Replicate stream on the backup. It refuses a message
// of an epoch older than the newest this core knows (a fenced primary), a
// snapshot that is not a gap-free log, an event that does not follow its
// session's last, and a batch whose seqs do not run up to its own; the
// caller acknowledges a message only after Apply returned nil for it.
// One applier serves one stream, from one goroutine.
type Applier struct {
	table      Table
	role       *role.State // the newest epoch this core knows; Admit raises it
	replicated prometheus.Counter
	seen       map[string]bool // sessions this stream's snapshot or events carried
}

// NewApplier returns an applier for one Replicate stream; replicated
// counts the events it applies.
func NewApplier(t Table, rs *role.State, replicated prometheus.Counter) *Applier {
	return &Applier{table: t, role: rs, replicated: replicated, seen: make(map[string]bool)}
}

// fits refuses a message of a primary whose epoch is older than the
// newest this core knows: it has been fenced.
func (a *Applier) fits(msg *chatpb.ReplicaMsg) error {
	if known := a.role.Epoch(); msg.Epoch < known {
		return fmt.Errorf("primary %s carries epoch %d, older than %d: rejected", msg.Primary, msg.Epoch, known)
	}
	return nil
}

// Admit checks any message of the stream (its epoch) and records its
// epoch as known.
func (a *Applier) Admit(msg *chatpb.ReplicaMsg) error {
	if err := a.fits(msg); err != nil {
		return err
	}
	a.role.Observe(msg.Epoch)
	return nil
}

// Apply applies a snapshot, an event, save progress or a batch of events
// and save progress. A message that does not fit changes nothing of
// itself (a batch may have applied its earlier entries: the stream then
// resyncs from a fresh snapshot).
func (a *Applier) Apply(msg *chatpb.ReplicaMsg) error {
	if err := a.fits(msg); err != nil {
		return err
	}
	if b, ok := msg.Body.(*chatpb.ReplicaMsg_Batch); ok {
		return a.applyBatch(msg.Seq, b.Batch)
	}
	return a.applyOne(msg)
}

// Synced ends the snapshot (snapshot_done): the sessions it did not carry
// are forgotten. It returns how many were dropped and how many it carried.
func (a *Applier) Synced() (dropped, kept int) {
	return a.table.DropUnseen(a.seen), len(a.seen)
}

// applyOne applies one snapshot, event or save progress of the primary
// and notes the session as seen.
func (a *Applier) applyOne(msg *chatpb.ReplicaMsg) error {
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
			a.table.Tombstone(b.Snapshot.SessionId, b.Snapshot.LastIndex)
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
	case *chatpb.ReplicaMsg_SavedBatch:
		for _, p := range b.SavedBatch.GetProgress() {
			if p != nil {
				a.applyProgress(p)
			}
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
func (a *Applier) applyBatch(seq uint64, b *chatpb.ReplicaBatch) error {
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
		case *chatpb.ReplicaMsg_Event, *chatpb.ReplicaMsg_Saved, *chatpb.ReplicaMsg_SavedBatch:
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
func (a *Applier) applySnapshot(snap *chatpb.SessionSnapshot) error {
	if snap.SessionId == "" {
		return errors.New("snapshot without a session id")
	}
	for i, ev := range snap.Events {
		if ev == nil || ev.Index != uint64(i+1) || ev.SessionId != snap.SessionId {
			return fmt.Errorf("snapshot of %s: entry %d is not event %d of the session", snap.SessionId, i, i+1)
		}
	}
	a.table.Put(snap)
	return nil
}

// applyEvent appends one replicated event: the next of its session, or
// the first of a new one.
func (a *Applier) applyEvent(ev *chatpb.Event) error {
	if ev.SessionId == "" {
		return errors.New("replicated event without a session id")
	}
	s := a.table.Lookup(ev.SessionId)
	if s == nil {
		if ev.Index != 1 {
			return fmt.Errorf("event %d of unknown session %s", ev.Index, ev.SessionId)
		}
		s = a.table.Start(ev)
	}
	s.Lock()
	defer s.Unlock()
	last := s.LastIndex()
	switch {
	case ev.Index <= last:
		return nil // already have it (snapshot and event raced on the stream)
	case ev.Index != last+1:
		return fmt.Errorf("session %s: event %d after %d", ev.SessionId, ev.Index, last)
	}
	a.table.CommitLocked(s, ev)
	a.replicated.Inc()
	return nil
}

// applyProgress records a save the primary's UCS acknowledged.
func (a *Applier) applyProgress(p *chatpb.SaveProgress) {
	s := a.table.Lookup(p.SessionId)
	if s == nil {
		return
	}
	s.Lock()
	s.MergeProgressLocked(p)
	s.Unlock()
}
