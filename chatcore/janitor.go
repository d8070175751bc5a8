package chatcore

import (
	"context"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// janitorEvery is the janitor's tick: the resolution of
// flex-disconnect-timeout, ended-session-linger and given-up save retries.
const janitorEvery = 250 * time.Millisecond

// janitor disconnects idle customers, retries given-up saves and forgets
// ended sessions, until ctx is done.
func (c *Core) janitor(ctx context.Context) {
	t := time.NewTicker(janitorEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.sweep(ctx)
		}
	}
}

// sweep is one janitor pass over the sessions that are due (c.due): it
// costs in proportion to the work there is, not to the sessions held. A
// session is due when it has, or may have, something to do at a time: an
// event in doubt to try again (doubtNext), a given-up save to re-queue
// (retryAt), a customer who may have fallen idle (LastSeen plus
// flex-disconnect-timeout), an ended session to forget (endedAt plus
// ended-session-linger). Whatever changes those schedules the session
// (dueAt); activity that only moves a deadline later (a customer's poll)
// does not, and the pass finds the later deadline when the earlier one
// comes. After each session the pass schedules it again at its next
// deadline, if it has one.
func (c *Core) sweep(ctx context.Context) {
	now := c.now()
	due := c.due.popDue(now, nil)
	primary := c.role.IsPrimary()
	for _, s := range due {
		if primary {
			c.settleDoubt(ctx, s)
		}
		c.saver.PendingRetry(s, now)
		s.mu.Lock()
		var idle *sessionlog.Member
		var next time.Time // zero: nothing due later
		if primary && !s.log.State.Ended {
			if cu := s.log.State.Customer(); cu != nil && cu.Left == 0 && cu.Streams == 0 {
				if cu.LastSeen == 0 {
					cu.LastSeen = now.UnixNano() // restored or replicated: the clock starts now
				}
				if deadline := time.Unix(0, cu.LastSeen).Add(c.cfg.FlexDisconnectTimeout); now.After(deadline) {
					idle = cu
				} else {
					next = deadline.Add(time.Nanosecond) // idle once strictly past the timeout
				}
			}
			// A customer with a stream open is scheduled when its last
			// stream ends (tail).
		}
		forget := s.log.State.Ended && now.Sub(s.endedAt) >= c.cfg.EndedSessionLinger &&
			(s.save.FinalSaved || s.save.NoFinalSave || s.save.SavedThrough >= s.lastIndex())
		if !forget && !s.removed {
			next = s.nextDueLocked(now, next, c.cfg.EndedSessionLinger)
		}
		s.mu.Unlock()
		if idle != nil {
			c.flexDisconnect(ctx, s, idle)
		}
		if forget {
			c.forget(s)
		} else if !next.IsZero() {
			c.due.schedule(s, next)
		}
	}
}

// nextDueLocked returns the earliest of next (zero: none) and the times s
// is due for its event in doubt, its given-up save and its linger
// (ended-session-linger) after it ended. A
// deadline already past (its work could not be done in this pass: the
// session's appender was busy, its save still running, its final save not
// settled) is looked at again on the next tick. Call with s.mu held.
func (s *session) nextDueLocked(now, next time.Time, linger time.Duration) time.Time {
	earliest := func(at time.Time) {
		if !at.After(now) {
			at = now.Add(janitorEvery)
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if s.doubt != nil {
		earliest(s.doubtNext)
	}
	if !s.save.RetryAt.IsZero() && !s.save.NoFinalSave {
		earliest(s.save.RetryAt)
	}
	if s.log.State.Ended {
		earliest(s.endedAt.Add(linger))
	}
	return next
}

// dueAll schedules every session for the next pass: a core that became
// primary looks at each once (idle customers, events in doubt), then only
// at what is due.
func (c *Core) dueAll() {
	now := c.now()
	for _, s := range c.all() {
		c.due.schedule(s, now)
	}
}

// flexDisconnect removes a customer who stopped polling, which ends the session.
func (c *Core) flexDisconnect(ctx context.Context, s *session, cu *sessionlog.Member) {
	_, _, err := c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		if st.Ended || cu.Left != 0 {
			return nil, 0, errEnded
		}
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, From: cu.P,
			Attrs: map[string]string{"reason": "flex-disconnect-timeout"}}, 0, nil
	})
	if err == nil {
		c.log.InfoContext(ctx, "customer disconnected after flex-disconnect-timeout", "session", s.id, "participant", cu.P.Id, "timeout", c.cfg.FlexDisconnectTimeout)
		err = c.endSession(ctx, s, "flex-disconnect-timeout")
	}
	if err != nil && err != errEnded {
		c.log.WarnContext(ctx, "flex disconnect failed", "session", s.id, "err", err)
	}
}

// forget drops an ended session whose transcript is settled. A session
// whose final save was given up (transcript-save-on-error=close) leaves a
// tombstone: UCS holds less than this core acknowledged.
func (c *Core) forget(s *session) {
	s.mu.Lock()
	s.removed = true
	incomplete := !s.save.FinalSaved && (s.save.NoFinalSave || s.save.SavedThrough < s.lastIndex())
	last := s.lastIndex()
	c.dropDoubtLocked(s)
	s.mu.Unlock()
	if incomplete {
		c.tombs.add(s.id, last)
	}
	c.mu.Lock()
	delete(c.sessions, s.id)
	c.unregisterStartLocked(s)
	c.mu.Unlock()
}
