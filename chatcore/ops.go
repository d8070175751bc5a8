package chatcore

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
	"github.com/hachat/hachat/pairs"
)

// The Chat operations: what a call does to the sessions and their logs once
// rpc.go has validated its input, authenticated the caller and translated
// the request. rpc.go maps what they return to the answer (their errors are
// the sentinels of rpc.go's error table, or errors of the append path).

// openSession starts a session for a customer: SESSION_STARTED with attrs,
// then the customer's PARTICIPANT_JOINED. A retry of requestID answers from
// the first attempt. The response carries the customer's secure key.
//
// A retry whose first attempt's session was rebuilt from UCS, which never
// holds a secure key, cannot get the first answer: no core knows the key
// (the pair lost it with the memory of the core that answered). It starts
// a new session under requestID instead (the first one, whose customer
// nobody can authenticate as unless it did get the answer, idles out); a
// further retry is answered from the new one. Not an error: the caller's
// retry asked for a session it can use, and ALREADY_EXISTS left it none.
func (c *Core) openSession(ctx context.Context, requestID, nickname string, attrs map[string]string) (*chatpb.JoinResponse, error) {
	c.mu.Lock()
	for {
		prev := c.startedByLocked(requestID)
		if prev == nil {
			break
		}
		c.mu.Unlock()
		ans, err := c.answerAgain(prev, requestID)
		if !errors.Is(err, errKeyNotHeld) {
			return ans, err
		}
		c.mu.Lock()
		if c.startedByLocked(requestID) == prev {
			// Still the keyless one: this call starts the new session
			// (registered below before c.mu is let go: a concurrent retry
			// then waits for it, as for any first attempt).
			c.log.Info("a StartSession retry finds its first session rebuilt from UCS without the key: starting a new one", "first_session", prev.id)
			break
		}
	}
	if c.live >= c.cfg.MaxSessions {
		c.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "this core holds %d sessions, its limit", c.cfg.MaxSessions)
	}
	s := newSession(pairs.ChatID(c.cfg.Pair, newID()))
	s.startReq = requestID
	c.sessions[s.id] = s
	c.registerStartLocked(s)
	c.live++
	c.m.sessionsLive.Set(float64(c.live))
	c.mu.Unlock()

	key := newID()
	_, _, err := c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, From: systemParticipant, Attrs: attrs, ClientRequestId: requestID}, 0, nil
	})
	var idx uint64
	var pid string
	if err == nil {
		idx, _, err = c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
			pid = "p" + strconv.Itoa(st.NextPID+1)
			p := &chatpb.Participant{Id: pid, Nickname: nickname, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}
			return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: p, KeyHash: hashKey(key),
				ClientRequestId: requestID, SecureKey: keepKey(requestID, key)}, 0, nil
		})
	}
	if err != nil {
		c.dropSession(s)
		return nil, err
	}
	c.m.sessionsStarted.Inc()
	c.touch(s, pid)
	c.log.Debug("session started", "session", s.id, "service", attrs["service"])
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: pid, SecureKey: key}, Alias: c.cfg.Name, NextIndex: idx + 1}, nil
}

// addParticipant appends the PARTICIPANT_JOINED of an agent, supervisor or
// system participant to s. A retry of requestID answers from the first join.
func (c *Core) addParticipant(ctx context.Context, s *session, requestID, nick string, typ chatpb.ParticipantType, vis chatpb.Visibility) (*chatpb.JoinResponse, error) {
	key := newID()
	var pid string
	idx, dup, err := c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		if requestID != "" {
			if m := st.Members[st.JoinReqs[requestID]]; m != nil {
				if m.P.Type != typ {
					return nil, 0, invalid("client_request_id was already used by a join of type %s", m.P.Type)
				}
				return nil, m.Joined, nil // a retry: answered below from the first join
			}
		}
		if st.Ended {
			return nil, 0, errEnded
		}
		pid = "p" + strconv.Itoa(st.NextPID+1)
		p := &chatpb.Participant{Id: pid, Nickname: nick, Type: typ, Visibility: vis}
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: p, Visibility: vis, KeyHash: hashKey(key),
			ClientRequestId: requestID, SecureKey: keepKey(requestID, key)}, 0, nil
	})
	if err != nil {
		return nil, err
	}
	if dup {
		return c.answerAgain(s, requestID)
	}
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: pid, SecureKey: key}, Alias: c.cfg.Name, NextIndex: idx + 1}, nil
}

// post appends what participant pid (holding keyHash) sends to s: the
// participant's rights, its rate and the session's state are checked under
// s.mu. A resend of the same client_message_id returns the first index with
// dup=true.
func (c *Core) post(ctx context.Context, s *session, pid, keyHash string, req *chatpb.SendRequest) (idx uint64, dup bool, err error) {
	now := c.now().UnixNano()
	return c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		m, err := authorize(st, pid, keyHash)
		if err != nil {
			return nil, 0, err
		}
		m.LastSeen = now
		if req.ClientMessageId != "" {
			if first, ok := m.ClientIDs[req.ClientMessageId]; ok {
				return nil, first, nil
			}
		}
		if st.Ended {
			return nil, 0, errEnded
		}
		if m.Left != 0 {
			return nil, 0, errLeft
		}
		vis := req.Visibility
		if m.P.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER && vis != chatpb.Visibility_VISIBILITY_ALL {
			return nil, 0, invalid("a customer sends with visibility ALL only")
		}
		if vis == chatpb.Visibility_VISIBILITY_ALL {
			vis = m.P.Visibility // a coach's or monitor's events never reach the customer
		}
		if !m.Bucket.Take(now, c.cfg.SendRate, c.cfg.SendBurst) {
			return nil, 0, status.Errorf(codes.ResourceExhausted, "more than %g sends per second (burst %d)", c.cfg.SendRate, c.cfg.SendBurst)
		}
		return &chatpb.Event{Kind: req.Kind, From: m.P, Visibility: vis, Text: req.Text,
			ClientMessageId: req.ClientMessageId, Attrs: req.Attrs}, 0, nil
	})
}

// leave appends participant pid's PARTICIPANT_LEFT to s and ends the session
// when a customer leaves ("customer-left") or endSession asks it ("closed").
// Leaving twice returns the first leave's index.
func (c *Core) leave(ctx context.Context, s *session, pid, keyHash string, endSession bool) (uint64, error) {
	var endReason string
	idx, dup, err := c.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		m, err := authorize(st, pid, keyHash)
		if err != nil {
			return nil, 0, err
		}
		if m.Left != 0 {
			return nil, m.Left, nil
		}
		if st.Ended {
			return nil, 0, errEnded
		}
		switch {
		case m.P.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER:
			endReason = "customer-left"
		case endSession:
			endReason = "closed"
		}
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, From: m.P, Visibility: m.P.Visibility,
			Attrs: map[string]string{"reason": "left"}}, 0, nil
	})
	if err != nil {
		return 0, err
	}
	if !dup && endReason != "" {
		if err := c.endSession(ctx, s, endReason); err != nil {
			return 0, err
		}
	}
	return idx, nil
}

// events returns the events of s from index from on that participant pid
// (holding keyHash) may see, at most maxPage per call.
func (c *Core) events(s *session, pid, keyHash string, from uint64) (*chatpb.EventsResponse, error) {
	s.mu.Lock()
	m, err := authorize(&s.log.State, pid, keyHash)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	m.LastSeen = c.now().UnixNano()
	last := s.lastIndex()
	if from > last+1 {
		s.mu.Unlock()
		return nil, invalid("from_index %d is past the end of the log (next index %d)", from, last+1)
	}
	log := s.log.From(from)
	ended := s.log.State.Ended
	viewer := m.P
	s.mu.Unlock()

	if len(log) > maxPage {
		log = log[:maxPage]
		ended = false
	}
	resp := &chatpb.EventsResponse{NextIndex: from + uint64(len(log)), Ended: ended, Alias: c.cfg.Name}
	for _, e := range log {
		if sessionlog.VisibleTo(viewer, e.Pub) {
			resp.Events = append(resp.Events, e.Pub)
		}
	}
	return resp, nil
}

// tail delivers the events of s from index next on that participant pid
// (holding keyHash) may see, then the live tail, until the session ends
// (after SESSION_ENDED), the participant leaves (after its
// PARTICIPANT_LEFT), ctx is done, deliver fails, or this core's term ends
// (errNotPrimary). A subscriber too slow for fan-out catches up from the log
// inside the same call, so it never sees a gap. try (nil: none) is deliver
// without blocking: fan-out hands it the live events directly while nothing
// waits in the subscriber's mailbox (see subscriber), the events that end
// the stream excepted.
func (c *Core) tail(ctx context.Context, s *session, pid, keyHash string, next uint64, deliver func(*chatpb.Event) error, try func(*chatpb.Event) bool) error {
	roleCtx := c.role.Stream()

	s.mu.Lock()
	m, err := authorize(&s.log.State, pid, keyHash)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if next > s.lastIndex()+1 {
		s.mu.Unlock()
		return invalid("from_index %d is past the end of the log (next index %d)", next, s.lastIndex()+1)
	}
	viewer := m.P
	m.Streams++
	m.LastSeen = c.now().UnixNano()
	s.mu.Unlock()
	c.m.subscribers.Inc()
	defer func() {
		s.mu.Lock()
		m.Streams--
		m.LastSeen = c.now().UnixNano()
		if m.Streams == 0 {
			c.due.schedule(s, c.now().Add(c.cfg.FlexDisconnectTimeout)) // janitor.go: idle from now
		}
		s.mu.Unlock()
		c.m.subscribers.Dec()
	}()

	// ends reports whether ev ends the stream: the session's end, or the
	// viewer's own leave.
	ends := func(ev *chatpb.Event) bool {
		return ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED ||
			(ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.From.GetId() == viewer.Id)
	}
	// send delivers one event; done reports the end of the stream.
	send := func(ev *chatpb.Event) (done bool, err error) {
		next = ev.Index + 1
		if sessionlog.VisibleTo(viewer, ev) {
			if err := deliver(ev); err != nil {
				return true, err
			}
		}
		return ends(ev), nil
	}
	// direct is fan-out's way past the mailbox (under s.mu): it declines
	// the events that end the stream, so that this goroutine ends it.
	direct := func(sub *subscriber) func(*chatpb.Event) bool {
		return func(ev *chatpb.Event) bool {
			if ends(ev) || ctx.Err() != nil || roleCtx.Err() != nil {
				return false
			}
			if sessionlog.VisibleTo(viewer, ev) && !try(ev) {
				return false
			}
			sub.next.Store(ev.Index + 1)
			return true
		}
	}
	for {
		// Catch up from the log; register for fan-out once caught up.
		s.mu.Lock()
		batch := s.log.From(next)
		var sub *subscriber
		if len(batch) <= c.cfg.SubscriberBuffer && !s.log.State.Ended && !s.removed {
			sub = &subscriber{ch: make(chan *chatpb.Event, c.cfg.SubscriberBuffer)}
			if try != nil {
				sub.direct = direct(sub)
				sub.held.Store(1) // until the batch below is delivered
			}
			if s.subs == nil {
				s.subs = make(map[*subscriber]struct{})
			}
			s.subs[sub] = struct{}{}
		}
		s.mu.Unlock()
		for _, e := range batch {
			if done, err := send(e.Pub); done {
				c.unsubscribe(s, sub)
				return err
			}
		}
		if sub != nil && sub.direct != nil {
			sub.held.Add(-1)
		}
		if sub == nil {
			if len(batch) == 0 { // removed or ended with everything sent
				return nil
			}
			continue
		}
		for lagging := false; !lagging; {
			select {
			case ev, ok := <-sub.ch:
				if !ok {
					lagging = true // dropped from fan-out (or the session ended): catch up from the log
					// after the events direct took too
					next = max(next, sub.next.Load())
					continue
				}
				done, err := send(ev)
				if done {
					c.unsubscribe(s, sub)
					return err
				}
				if sub.direct != nil {
					sub.held.Add(-1) // delivered: fan-out may go direct again
				}
			case <-ctx.Done():
				c.unsubscribe(s, sub)
				return status.FromContextError(ctx.Err()).Err()
			case <-roleCtx.Done():
				c.unsubscribe(s, sub)
				return errNotPrimary
			}
		}
	}
}

// unsubscribe takes sub (nil: none) off the fan-out of s and closes its mailbox.
func (c *Core) unsubscribe(s *session, sub *subscriber) {
	if sub == nil {
		return
	}
	s.mu.Lock()
	if _, ok := s.subs[sub]; ok {
		delete(s.subs, sub)
		close(sub.ch)
	}
	s.mu.Unlock()
}

// watchSessions delivers KIND_STARTED for every live session, then each
// session change, until ctx is done, deliver fails, this core's term ends
// (errNotPrimary) or the watcher falls behind (UNAVAILABLE: watch again).
func (c *Core) watchSessions(ctx context.Context, deliver func(*chatpb.SessionChange) error) error {
	roleCtx := c.role.Stream()
	w := &watcher{ch: make(chan *chatpb.SessionChange, 1024)}
	c.watch.add(w)
	defer c.watch.remove(w)

	for _, s := range c.all() {
		s.mu.Lock()
		var ch *chatpb.SessionChange
		if !s.log.State.Ended && !s.removed && s.log.State.Customer() != nil {
			ch = c.changeLocked(s, chatpb.SessionChange_KIND_STARTED)
		}
		s.mu.Unlock()
		if ch != nil {
			if err := deliver(ch); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case ch, ok := <-w.ch:
			if !ok {
				return status.Error(codes.Unavailable, "session watcher fell behind; watch again")
			}
			if err := deliver(ch); err != nil {
				return err
			}
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-roleCtx.Done():
			return errNotPrimary
		}
	}
}

// watcher is one WatchSessions stream's mailbox.
type watcher struct {
	ch chan *chatpb.SessionChange
}

// watchers are the open WatchSessions streams. It owns its lock, a leaf:
// notify never blocks (a full mailbox drops its watcher, whose stream ends).
type watchers struct {
	mu  sync.Mutex
	set map[*watcher]struct{}
}

// add registers w.
func (ws *watchers) add(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.set == nil {
		ws.set = make(map[*watcher]struct{})
	}
	ws.set[w] = struct{}{}
}

// remove unregisters w and closes its mailbox, unless notify dropped it.
func (ws *watchers) remove(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if _, ok := ws.set[w]; ok {
		delete(ws.set, w)
		close(w.ch)
	}
}

// notify hands ch to every watcher, dropping those whose mailbox is full.
func (ws *watchers) notify(ch *chatpb.SessionChange) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.set {
		select {
		case w.ch <- ch:
		default:
			delete(ws.set, w)
			close(w.ch)
		}
	}
}

// count returns the number of registered watchers.
func (ws *watchers) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.set)
}

// dropSession forgets a session that never got started (its first appends failed).
func (c *Core) dropSession(s *session) {
	s.mu.Lock()
	ended := s.log.State.Ended
	s.removed = true
	c.dropDoubtLocked(s)
	s.mu.Unlock()
	c.mu.Lock()
	delete(c.sessions, s.id)
	c.unregisterStartLocked(s)
	if !ended {
		c.live--
		c.m.sessionsLive.Set(float64(c.live))
	}
	c.mu.Unlock()
}

// keepKey returns the secure key to keep in the PARTICIPANT_JOINED event when
// the call carries a client_request_id (so that a retry, on this core or on
// the promoted backup, gets the same key), and "" otherwise.
func keepKey(requestID, key string) string {
	if requestID == "" {
		return ""
	}
	return key
}

// registerStartLocked records the client_request_id that started s. Call with c.mu held.
func (c *Core) registerStartLocked(s *session) {
	if s.startReq != "" {
		c.startReqs[s.startReq] = s
	}
}

// unregisterStartLocked forgets the client_request_id of s, unless another
// session took it over. Call with c.mu held.
func (c *Core) unregisterStartLocked(s *session) {
	if s.startReq != "" && c.startReqs[s.startReq] == s {
		delete(c.startReqs, s.startReq)
	}
}

// startedByLocked returns the session a StartSession with this request id
// started, nil if none (or the id is empty). Call with c.mu held.
func (c *Core) startedByLocked(requestID string) *session {
	if requestID == "" {
		return nil
	}
	s := c.startReqs[requestID]
	if s == nil || c.sessions[s.id] != s {
		return nil
	}
	return s
}

// answerAgain answers a retried StartSession or Join from the participant its
// first attempt added to s.
func (c *Core) answerAgain(s *session, requestID string) (*chatpb.JoinResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.log.State.Members[s.log.State.JoinReqs[requestID]]
	switch {
	case s.removed:
		return nil, errUnknown
	case m == nil:
		// The first attempt is still appending (or failed and is being dropped).
		return nil, status.Error(codes.Unavailable, "the first attempt of this client_request_id is still in progress: retry")
	case m.SecureKey == "":
		// Restored from UCS, which never holds secure keys.
		return nil, errKeyNotHeld
	}
	c.m.requestRetries.Inc()
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: m.P.Id, SecureKey: m.SecureKey},
		Alias: c.cfg.Name, NextIndex: m.Joined + 1}, nil
}

// touch records client activity of pid (flex-disconnect-timeout).
func (c *Core) touch(s *session, pid string) {
	s.mu.Lock()
	if m := s.log.State.Members[pid]; m != nil {
		m.LastSeen = c.now().UnixNano()
	}
	s.mu.Unlock()
}

func (c *Core) status() *chatpb.StatusResponse {
	c.mu.RLock()
	live := c.live
	c.mu.RUnlock()
	role, epoch := c.role.RoleEpoch()
	st := &chatpb.StatusResponse{
		Name: c.cfg.Name, Role: role, Epoch: epoch, LiveSessions: uint64(max(live, 0)),
		// A primary still merging UCS reports draining too: sidecars and
		// clients that skip a draining primary skip it until it serves.
		Draining: c.role.Draining() || c.role.Unmerged(), ReplicationLag: c.repl.Lag(),
	}
	if l := c.repl.Current(); l != nil {
		st.Backup = l.Name()
	}
	if c.members != nil {
		for _, m := range c.members.Members() {
			st.Members = append(st.Members, &chatpb.Member{Name: m.Name, Role: m.Meta.Role, Epoch: m.Meta.Epoch,
				GrpcAddr: m.Meta.GRPCAddr, State: m.State.String()})
		}
	}
	return st
}
