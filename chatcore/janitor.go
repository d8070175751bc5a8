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

// sweep is one janitor pass.
func (c *Core) sweep(ctx context.Context) {
	now := c.now()
	c.mu.RLock()
	all := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		all = append(all, s)
	}
	c.mu.RUnlock()
	primary := c.role.IsPrimary()
	for _, s := range all {
		if primary {
			c.settleDoubt(ctx, s)
		}
		c.saver.pendingRetry(s, now)
		s.mu.Lock()
		var idle *sessionlog.Member
		if primary && !s.log.State.Ended {
			if cu := s.log.State.Customer(); cu != nil && cu.Left == 0 && cu.Streams == 0 {
				if cu.LastSeen == 0 {
					cu.LastSeen = now.UnixNano() // restored or replicated: the clock starts now
				} else if now.Sub(time.Unix(0, cu.LastSeen)) > c.cfg.FlexDisconnectTimeout {
					idle = cu
				}
			}
		}
		forget := s.log.State.Ended && now.Sub(s.endedAt) >= c.cfg.EndedSessionLinger &&
			(s.finalSaved || s.noFinalSave || s.savedThrough >= s.lastIndex())
		s.mu.Unlock()
		if idle != nil {
			c.flexDisconnect(ctx, s, idle)
		}
		if forget {
			c.forget(s)
		}
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
	incomplete := !s.finalSaved && (s.noFinalSave || s.savedThrough < s.lastIndex())
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
