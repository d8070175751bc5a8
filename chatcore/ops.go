package chatcore

import (
	"context"
	"strconv"

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
func (c *Core) openSession(ctx context.Context, requestID, nickname string, attrs map[string]string) (*chatpb.JoinResponse, error) {
	c.mu.Lock()
	if prev := c.startedByLocked(requestID); prev != nil {
		c.mu.Unlock()
		return c.answerAgain(prev, requestID)
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
	resp := &chatpb.EventsResponse{NextIndex: from + uint64(len(log)), Ended: ended}
	for _, e := range log {
		if sessionlog.VisibleTo(viewer, e.Pub) {
			resp.Events = append(resp.Events, e.Pub)
		}
	}
	return resp, nil
}
