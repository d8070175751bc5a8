package chatcore

import (
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/replica"
)

// This file is the core's side of the backup's replication: the applier
// (package replica's Applier) changes the core's sessions through
// replicaTable. follower.go runs the stream.

// newApplier returns an applier for one Replicate stream, over c's sessions.
func newApplier(c *Core) *replica.Applier {
	return replica.NewApplier(replicaTable{c}, c.role, c.m.replicated)
}

// replicaTable is the core's session table as the backup's applier
// changes it (replica.Table).
type replicaTable struct{ c *Core }

// Lookup returns session id, nil when there is none.
func (t replicaTable) Lookup(id string) replica.Entry {
	if s := t.c.session(id); s != nil {
		return s
	}
	return nil // not a typed nil
}

// Start inserts a new session that replication started (its first event
// follows), keeping the live count.
func (t replicaTable) Start(first *chatpb.Event) replica.Entry {
	c := t.c
	s := newSession(first.SessionId)
	if first.Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		s.startReq = first.ClientRequestId
	}
	c.mu.Lock()
	c.sessions[s.id] = s
	c.registerStartLocked(s)
	c.live++
	c.m.sessionsLive.Set(float64(c.live))
	c.mu.Unlock()
	return s
}

// Put inserts or replaces the session snap holds.
func (t replicaTable) Put(snap *chatpb.SessionSnapshot) {
	c := t.c
	s := newSession(snap.SessionId)
	if len(snap.Events) > 0 && snap.Events[0].Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		s.startReq = snap.Events[0].ClientRequestId
	}
	for _, ev := range snap.Events {
		s.log.Commit(ev)
	}
	s.save.SavedThrough, s.save.FinalSaved, s.save.NoFinalSave = snap.SavedThrough, snap.FinalSaved, snap.NoFinalSave
	if s.log.State.Ended {
		s.endedAt = c.now()
	}
	c.putSession(s)
}

// Tombstone records a session the primary forgot without a complete final
// save (doubt.go).
func (t replicaTable) Tombstone(id string, last uint64) { t.c.tombs.add(id, last) }

// CommitLocked commits ev into e's log (fold and fan-out). e is locked.
func (t replicaTable) CommitLocked(e replica.Entry, ev *chatpb.Event) {
	t.c.commitLocked(e.(*session), ev)
}

// DropUnseen forgets sessions the primary's snapshot did not carry.
func (t replicaTable) DropUnseen(seen map[string]bool) int {
	c := t.c
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

// Lock takes s.mu (replica.Entry).
func (s *session) Lock() { s.mu.Lock() }

// Unlock releases s.mu.
func (s *session) Unlock() { s.mu.Unlock() }

// LastIndex is the index of the last committed event. Call with s.mu held.
func (s *session) LastIndex() uint64 { return s.log.LastIndex() }

// MergeProgressLocked records save progress the primary's UCS
// acknowledged. Call with s.mu held.
func (s *session) MergeProgressLocked(p *chatpb.SaveProgress) {
	s.save.SavedThrough = max(s.save.SavedThrough, p.SavedThrough)
	s.save.FinalSaved = s.save.FinalSaved || p.FinalSaved
	s.save.NoFinalSave = s.save.NoFinalSave || p.NoFinalSave
}

// putSession inserts or replaces a session (replicated, or restored from
// UCS), keeping the live count. Lock order (doc.go) is s.mu before c.mu
// (commitLocked takes c.mu under s.mu), so the replaced session is marked
// after c.mu is released.
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
	c.due.schedule(s, c.now()) // the janitor looks at it once (janitor.go)
}
