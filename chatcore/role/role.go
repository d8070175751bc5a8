// Package role is a chat core's role state machine: which role the core
// holds (primary or backup), the fencing epoch that goes with it, and the
// two sub-states of a primary (draining for a switchover, unmerged while it
// merges what UCS holds beyond a stale replica). It is the one place the
// role changes; chatcore decides when (failover.go: promotion, step down,
// handover) and this package keeps the state consistent:
//
//	          BecomePrimary(epoch, serving)
//	backup  ------------------------------->  primary (unmerged unless serving)
//	  ^                                          |  FinishRestoring: serving
//	  |               StepDown(newer)            |  SetDraining: switchover
//	  +------------------------------------------+
//
// A core starts as backup at epoch 0. The epoch only grows (Observe records
// a newer epoch heard elsewhere). A primary's term epoch is the epoch it
// claimed; it reports that epoch (RoleEpoch) until it steps down, even after
// it heard of a newer one, so that no reader ever sees a primary at an epoch
// another core holds.
//
// Every transition takes an effects function that runs with the state's lock
// held, after the state changed and before the waiters of Changed wake: the
// core switches its health status, metrics and replication link there, so
// that a reader of the state under the lock never sees half a transition.
// Effects must not call back into the State (its lock is not reentrant).
// The hot-path readers (IsPrimary, Epoch, Draining, Unmerged) are atomic
// and take no lock.
package role

import (
	"context"
	"sync"
	"sync/atomic"
)

// The roles, as reported in /status, metrics and gossip.
const (
	// Primary serves clients and commits events.
	Primary = "primary"
	// Backup replicates the primary and answers clients UNAVAILABLE.
	Backup = "backup"
)

// State is one core's role and epoch. The zero value is not usable; call New.
type State struct {
	mu sync.Mutex
	// role is Primary or Backup (guarded by mu).
	role string
	// term is the epoch this core claimed for its current term as primary
	// (guarded by mu).
	term uint64
	// changed is closed and replaced at every role change (guarded by mu).
	changed chan struct{}
	// stream lives while this core is primary; endStream cancels it at
	// step down (guarded by mu).
	stream    context.Context
	endStream context.CancelFunc

	epoch    atomic.Uint64 // the newest epoch this core knows
	primary  atomic.Bool   // role == Primary
	draining atomic.Bool   // a primary draining for a switchover
	unmerged atomic.Bool   // a primary merging from UCS: it serves nothing yet
}

// New returns the state of a starting core: backup at epoch 0, with no
// stream context alive.
func New() *State {
	s := &State{role: Backup, changed: make(chan struct{})}
	s.stream, s.endStream = context.WithCancel(context.Background())
	s.endStream() // not primary yet: no stream may live
	return s
}

// Role returns Primary or Backup.
func (s *State) Role() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.role
}

// Epoch returns the newest epoch this core knows.
func (s *State) Epoch() uint64 { return s.epoch.Load() }

// IsPrimary reports whether the core is primary (serving, draining or
// unmerged).
func (s *State) IsPrimary() bool { return s.primary.Load() }

// Draining reports whether a primary drains for a switchover.
func (s *State) Draining() bool { return s.draining.Load() }

// Unmerged reports whether a new primary still merges what UCS holds
// beyond a stale replica: it answers no Chat call and reports NOT_SERVING,
// so that it never assigns an index the old primary may have acknowledged.
func (s *State) Unmerged() bool { return s.unmerged.Load() }

// RoleEpoch returns the role with the epoch that goes with it, read
// together: a primary's own term epoch (even after it heard of a newer one
// and before it stepped down), a backup's newest known epoch. /status,
// /metrics and the gossiped meta report this pair.
func (s *State) RoleEpoch() (string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.role == Primary {
		return s.role, s.term
	}
	return s.role, s.epoch.Load()
}

// Term is the state read together under the lock.
type Term struct {
	// Epoch is the newest epoch the core knows.
	Epoch uint64
	// Primary reports whether the core is primary.
	Primary bool
	// Stream is cancelled when the core stops being primary (already
	// cancelled for a backup).
	Stream context.Context
}

// Term returns the epoch, whether the core is primary and the context of
// its term, read together.
func (s *State) Term() Term {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Term{Epoch: s.epoch.Load(), Primary: s.primary.Load(), Stream: s.stream}
}

// Stream returns a context cancelled when the core stops being primary
// (already cancelled for a backup): client streams end with it.
func (s *State) Stream() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream
}

// Changed returns a channel closed at the next role change.
func (s *State) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Observe records a newer epoch seen elsewhere; an older one changes nothing.
func (s *State) Observe(e uint64) {
	for {
		cur := s.epoch.Load()
		if e <= cur || s.epoch.CompareAndSwap(cur, e) {
			return
		}
	}
}

// BecomePrimary makes the core primary at epoch (the epoch it claimed).
// With serving false it is primary but unmerged until FinishRestoring.
// effects (may be nil) runs with the lock held, then the waiters of Changed
// wake.
func (s *State) BecomePrimary(epoch uint64, serving bool, effects func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch.Store(epoch)
	s.term = epoch
	s.draining.Store(false)
	s.unmerged.Store(!serving)
	s.role = Primary
	s.stream, s.endStream = context.WithCancel(context.Background())
	s.primary.Store(true)
	if effects != nil {
		effects()
	}
	s.changedLocked()
}

// FinishRestoring opens an unmerged primary to clients: its log now holds
// every acknowledged event. It reports false (and runs nothing) when the
// core is not an unmerged primary. effects (may be nil) runs with the lock
// held. It is no role change: Changed's waiters do not wake.
func (s *State) FinishRestoring(effects func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.role != Primary || !s.unmerged.Load() {
		return false
	}
	s.unmerged.Store(false)
	if effects != nil {
		effects()
	}
	return true
}

// StepDown makes a primary a backup at once: the stream context is
// cancelled. newer is the epoch that fenced it (0 when unknown); it is
// observed even when the core is no primary. It reports false (and runs
// nothing) when the core was not primary, or when newer is not newer than
// the primary's own term: such a step-down was decided on an epoch read
// before this core claimed its term (a backup's hello during a
// switchover's claim, confirmed at the fencing authority while the claim
// landed), and epochs are claimed by compare-and-set, so the term's own
// epoch fences nobody but older terms. effects (may be nil) runs with the
// lock held, then the waiters of Changed wake.
func (s *State) StepDown(newer uint64, effects func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Observe(newer)
	if s.role != Primary || newer != 0 && newer <= s.term {
		return false
	}
	s.role = Backup
	s.primary.Store(false)
	s.draining.Store(false)
	s.unmerged.Store(false)
	s.endStream()
	if effects != nil {
		effects()
	}
	s.changedLocked()
	return true
}

// SetDraining marks a primary as draining for a switchover (true) or
// serving again after an aborted one (false).
func (s *State) SetDraining(on bool) { s.draining.Store(on) }

// changedLocked wakes whoever waits for a role change. Call with mu held.
func (s *State) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}
