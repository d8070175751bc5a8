package interaction

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
)

// agentJSON is the agent part of GET /agent/v1/state.
type agentJSON struct {
	ID        string    `json:"agentId"`
	Nickname  string    `json:"nickname"`
	Role      Role      `json:"role"`
	State     string    `json:"state"` // ready, notReady (supervisors: notReady)
	IdleSince time.Time `json:"idleSince"`
}

// stateJSON is GET /agent/v1/state and the first push event.
type stateJSON struct {
	Agent         agentJSON   `json:"agent"`
	Chats         []chatJSON  `json:"chats"`
	Offers        []offerJSON `json:"offers"`
	Queue         queueJSON   `json:"queue"`
	CoreConnected bool        `json:"coreConnected"`
}

// liveChatJSON is one entry of the supervisor's GET /agent/v1/chats.
type liveChatJSON struct {
	ChatInfo
	State       ChatState `json:"state"`
	AgentID     string    `json:"agentId,omitempty"`
	Supervisors []string  `json:"supervisors"`
}

func (s *Server) logout(agent string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byAgent[agent]) > 0 {
		return ErrHoldsChats
	}
	ns, err := s.router.Logout(agent, s.now())
	if err != nil {
		return err
	}
	s.apply(ns)
	delete(s.ended, agent)
	n := s.authn.sessions.RevokeUser(agent)
	s.log.Info("agent logged out", "agent", agent, "sessionsRevoked", n)
	s.hub.publish(agent, newMsg(evLoggedOut, struct{}{}))
	s.hub.closeAgent(agent)
	return nil
}

func (s *Server) setReady(agent string, ready bool) (stateJSON, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, err := s.router.SetReady(agent, ready, s.now())
	if err != nil {
		return stateJSON{}, err
	}
	s.log.Info("agent readiness", "agent", agent, "ready", ready)
	s.apply(ns)
	st := s.stateLocked(agent)
	s.hub.publish(agent, newMsg(evState, st))
	return st, nil
}

func (s *Server) stateLocked(agent string) stateJSON {
	av, _ := s.router.Agent(agent)
	st := stateJSON{
		Agent:         agentJSON{ID: av.ID, Nickname: av.Nickname, Role: av.Role, State: "notReady", IdleSince: av.IdleSince},
		Chats:         []chatJSON{},
		Offers:        []offerJSON{},
		Queue:         queueJSON{Size: s.router.QueueLen()},
		CoreConnected: s.coreUp,
	}
	if av.Ready {
		st.Agent.State = "ready"
	}
	if av.Offer != "" {
		if cv, ok := s.router.Chat(av.Offer); ok {
			st.Offers = append(st.Offers, offerJSON{ChatInfo: cv.Info, ExpiresAt: cv.Deadline})
		}
	}
	byChat := s.byAgent[agent]
	for _, id := range slices.Sorted(maps.Keys(byChat)) {
		st.Chats = append(st.Chats, s.chatJSONLocked(byChat[id]))
	}
	return st
}

// subscribe opens a push connection for agent. It first queues the state and
// every cached event of every chat the agent takes part in; since events are
// published under s.mu, nothing falls between that snapshot and the live
// stream. It fails with ErrUnauthorized when the agent is no longer logged
// in (a logout between the token check and here), so that no connection
// outlives its agent's logout.
func (s *Server) subscribe(agent string) (*subscriber, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.router.Agent(agent); !ok {
		return nil, fmt.Errorf("%w: logged out", ErrUnauthorized)
	}
	msgs := []sseMsg{newMsg(evState, s.stateLocked(agent))}
	byChat := s.byAgent[agent]
	for _, id := range slices.Sorted(maps.Keys(byChat)) {
		for _, ev := range byChat[id].events {
			msgs = append(msgs, newMsg(evChat, ev))
		}
	}
	// Chats that ended lately: their tail and end may have gone out while
	// this desktop had no channel here (a reconnect, a takeover).
	s.pruneEndedLocked(s.now())
	ended := s.ended[agent]
	for _, id := range slices.Sorted(maps.Keys(ended)) {
		if byChat[id] != nil {
			continue // taken part in again: replayed above
		}
		for _, ev := range ended[id].events {
			msgs = append(msgs, newMsg(evChat, ev))
		}
		msgs = append(msgs, newMsg(evChatRemoved, removedJSON{ChatID: id, Reason: ended[id].reason}))
	}
	return s.hub.add(agent, msgs), nil
}

func (s *Server) nickname(agent string) string {
	av, _ := s.router.Agent(agent)
	return av.Nickname
}

// accept joins the offered chat as agent.
func (s *Server) accept(ctx context.Context, agent, chat string) (chatJSON, error) {
	s.mu.Lock()
	ns, err := s.router.Accept(agent, chat, s.now())
	if err != nil {
		s.mu.Unlock()
		return chatJSON{}, err
	}
	s.apply(ns)
	nick := s.nickname(agent)
	s.mu.Unlock()

	// Only the current leader's accept may reach the core: an instance
	// deposed while paused must not join a chat the new leader routes.
	if err := s.confirmLeading(ctx); err != nil {
		s.mu.Lock()
		ns, _ := s.router.JoinDone(agent, chat, false, s.now())
		s.apply(ns)
		s.mu.Unlock()
		return chatJSON{}, err
	}
	jctx, cancel := stateChange(ctx)
	defer cancel()
	resp, err := s.core.Join(jctx, &chatpb.JoinRequest{SessionId: chat, Nickname: nick,
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, Visibility: chatpb.Visibility_VISIBILITY_ALL,
		ServiceToken: s.cfg.ServiceToken})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		err = coreErr("join chat", err)
		if isEnded(err) {
			s.endChatLocked(chat, ReasonEnded)
		} else {
			ns, _ := s.router.JoinDone(agent, chat, false, s.now())
			s.apply(ns)
		}
		s.log.Warn("accept failed", "chat", chat, "agent", agent, "err", err)
		return chatJSON{}, err
	}
	if ns, err := s.router.JoinDone(agent, chat, true, s.now()); err != nil {
		// The session ended while we joined: leave again.
		s.log.Info("chat ended during accept", "chat", chat, "agent", agent)
		s.wg.Go(func() { s.leaveQuietly(resp.GetAuth(), false) })
		return chatJSON{}, ErrChatEnded
	} else {
		s.apply(ns)
	}
	s.metrics.offersAccepted.Inc()
	m := s.addMemberLocked(memberKey{chat, agent}, s.chatInfoLocked(chat), resp.GetAuth(), ModeAgent)
	s.log.Info("chat accepted", "chat", chat, "agent", agent, "participant", resp.GetAuth().GetParticipantId())
	return s.chatJSONLocked(m), nil
}

// stateChangeTimeout bounds a join or leave in the core.
const stateChangeTimeout = 15 * time.Second

// stateChange returns the context of a join or leave made for an HTTP
// request: it keeps the request's trace but not its cancellation, so that a
// client that goes away mid-call cannot leave the core and the router
// disagreeing (a join done in the core but undone here).
func stateChange(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), stateChangeTimeout)
}

func isEnded(err error) bool {
	return errors.Is(err, ErrUnknownChat) || errors.Is(err, ErrChatEnded)
}

func (s *Server) chatInfoLocked(chat string) ChatInfo {
	cv, _ := s.router.Chat(chat)
	return cv.Info
}

// leaveQuietly leaves a chat the server no longer wants to be in.
func (s *Server) leaveQuietly(auth *chatpb.Auth, end bool) {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if _, err := s.core.Leave(ctx, &chatpb.LeaveRequest{Auth: auth, EndSession: end}); err != nil {
		s.log.Warn("leave failed", "chat", auth.GetSessionId(), "participant", auth.GetParticipantId(), "err", err)
	}
}

func (s *Server) reject(agent, chat string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, err := s.router.Reject(agent, chat, s.now())
	if err != nil {
		return err
	}
	s.apply(ns)
	return nil
}

// memberOf returns the caller's participation in chat.
func (s *Server) memberOf(agent, chat string) (*member, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.memberLocked(agent, chat)
}

func (s *Server) memberLocked(agent, chat string) (*member, error) {
	if m, ok := s.members[memberKey{chat, agent}]; ok {
		return m, nil
	}
	if _, ok := s.router.Chat(chat); ok {
		return nil, ErrNotYourChat
	}
	for k := range s.members {
		if k.chat == chat {
			return nil, ErrNotYourChat
		}
	}
	return nil, ErrUnknownChat
}

// send appends a message (or another kind) for the caller.
func (s *Server) send(ctx context.Context, agent, chat string, kind chatpb.EventKind, text, clientID string) (*chatpb.SendResponse, error) {
	m, err := s.memberOf(agent, chat)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	mode := m.mode
	s.mu.Unlock()
	vis := chatpb.Visibility_VISIBILITY_ALL
	switch mode {
	case ModeMonitor:
		return nil, ErrSilentMonitor
	case ModeCoach:
		if kind == chatpb.EventKind_EVENT_KIND_PUSH_URL {
			return nil, fmt.Errorf("%w: a coaching supervisor cannot push URLs", ErrConflict)
		}
		vis = chatpb.Visibility_VISIBILITY_INTERNAL
	}
	if clientID == "" && kind == chatpb.EventKind_EVENT_KIND_MESSAGE || kind == chatpb.EventKind_EVENT_KIND_PUSH_URL && clientID == "" {
		clientID = chatclient.NewClientMessageID() // makes the core's retries idempotent
	}
	resp, err := s.core.Send(ctx, &chatpb.SendRequest{Auth: m.auth, Kind: kind, Text: text, ClientMessageId: clientID, Visibility: vis})
	if err != nil {
		return nil, coreErr("send", err)
	}
	return resp, nil
}

// transfer hands the caller's chat to another agent: the new agent joins,
// then the old one leaves.
func (s *Server) transfer(ctx context.Context, from, chat, to string) error {
	s.mu.Lock()
	if _, err := s.memberLocked(from, chat); err != nil {
		s.mu.Unlock()
		return err
	}
	if err := s.router.BeginTransfer(from, chat, to); err != nil {
		s.mu.Unlock()
		return err
	}
	nick := s.nickname(to)
	s.mu.Unlock()

	if err := s.confirmLeading(ctx); err != nil { // as in accept
		s.mu.Lock()
		s.apply(s.router.FinishTransfer(chat, false, s.now()))
		s.mu.Unlock()
		return err
	}
	jctx, cancel := stateChange(ctx)
	defer cancel()
	resp, err := s.core.Join(jctx, &chatpb.JoinRequest{SessionId: chat, Nickname: nick,
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, Visibility: chatpb.Visibility_VISIBILITY_ALL,
		ServiceToken: s.cfg.ServiceToken})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		err = coreErr("join transfer target", err)
		s.apply(s.router.FinishTransfer(chat, false, s.now()))
		if isEnded(err) {
			s.endChatLocked(chat, ReasonEnded)
		}
		s.log.Warn("transfer failed", "chat", chat, "from", from, "to", to, "err", err)
		return err
	}
	if cv, ok := s.router.Chat(chat); !ok || cv.Agent != from {
		s.wg.Go(func() { s.leaveQuietly(resp.GetAuth(), false) })
		return ErrChatEnded
	}
	s.apply(s.router.FinishTransfer(chat, true, s.now()))
	s.metrics.transfers.Inc()
	old := s.members[memberKey{chat, from}]
	s.addMemberLocked(memberKey{chat, to}, s.chatInfoLocked(chat), resp.GetAuth(), ModeAgent)
	if old != nil {
		s.dropMemberLocked(old, "transferred")
		auth := old.auth
		s.wg.Go(func() { s.leaveQuietly(auth, false) })
	}
	s.log.Info("chat transferred", "chat", chat, "from", from, "to", to)
	return nil
}

// leave takes the caller out of the chat. An agent's chat goes back to the
// queue (the customer is still there); end closes the session instead.
func (s *Server) leave(ctx context.Context, agent, chat string, end bool) error {
	s.mu.Lock()
	m, err := s.memberLocked(agent, chat)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	isAgent := m.mode == ModeAgent
	if isAgent {
		if err := s.router.Begin(agent, chat); err != nil {
			s.mu.Unlock()
			return err
		}
	} else if s.joining[m.key] {
		s.mu.Unlock()
		return ErrBusy
	}
	if !isAgent {
		s.joining[m.key] = true
	}
	reason := "left"
	if end {
		reason = "closed"
	}
	m.leaving = reason
	auth := m.auth
	s.mu.Unlock()

	lctx, cancel := stateChange(ctx)
	defer cancel()
	_, err = s.core.Leave(lctx, &chatpb.LeaveRequest{Auth: auth, EndSession: end})
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.joining, m.key)
	if err != nil {
		m.leaving = ""
		err = coreErr("leave", err)
		if isAgent {
			s.apply(s.router.End(agent, chat, false, false, s.now()))
		}
		if isEnded(err) {
			s.endChatLocked(chat, ReasonEnded)
			s.dropMemberLocked(m, ReasonEnded)
		}
		return err
	}
	if isAgent {
		s.apply(s.router.End(agent, chat, true, !end, s.now()))
	}
	s.dropMemberLocked(m, reason)
	if end {
		s.endChatLocked(chat, "closed")
	}
	s.log.Info("left chat", "chat", chat, "agent", agent, "mode", m.mode, "closed", end)
	return nil
}

// liveChats lists every live chat for a supervisor.
func (s *Server) liveChats() []liveChatJSON {
	s.mu.Lock()
	defer s.mu.Unlock()
	sups := map[string][]string{}
	for k, m := range s.members {
		if m.mode != ModeAgent {
			sups[k.chat] = append(sups[k.chat], k.agent)
		}
	}
	out := []liveChatJSON{}
	for _, cv := range s.router.Chats() {
		sv := sups[cv.Info.ID]
		slices.Sort(sv)
		if sv == nil {
			sv = []string{}
		}
		out = append(out, liveChatJSON{ChatInfo: cv.Info, State: cv.State, AgentID: cv.Agent, Supervisors: sv})
	}
	return out
}

func (s *Server) requireSupervisor(agent string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	av, ok := s.router.Agent(agent)
	if !ok {
		return ErrUnauthorized
	}
	if av.Role != RoleSupervisor {
		return ErrSupervisorOnly
	}
	return nil
}

// supervise joins a live chat as a supervisor who monitors (unseen by the
// customer) or coaches (messages seen by the agent only). A supervisor
// already in the chat just switches mode.
func (s *Server) supervise(ctx context.Context, sup, chat, mode string) (chatJSON, error) {
	if err := s.requireSupervisor(sup); err != nil {
		return chatJSON{}, err
	}
	key := memberKey{chat, sup}
	s.mu.Lock()
	if m, ok := s.members[key]; ok {
		m.mode = mode
		cj := s.chatJSONLocked(m)
		s.hub.publish(sup, newMsg(evChatAdded, cj))
		s.mu.Unlock()
		s.log.Info("supervisor switched mode", "chat", chat, "supervisor", sup, "mode", mode)
		return cj, nil
	}
	if _, ok := s.router.Chat(chat); !ok {
		s.mu.Unlock()
		return chatJSON{}, ErrUnknownChat
	}
	if s.joining[key] {
		s.mu.Unlock()
		return chatJSON{}, ErrBusy
	}
	s.joining[key] = true
	nick := s.nickname(sup)
	s.mu.Unlock()

	vis := chatpb.Visibility_VISIBILITY_MONITOR
	if mode == ModeCoach {
		vis = chatpb.Visibility_VISIBILITY_INTERNAL
	}
	jctx, cancel := stateChange(ctx)
	defer cancel()
	resp, err := s.core.Join(jctx, &chatpb.JoinRequest{SessionId: chat, Nickname: nick,
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR, Visibility: vis, ServiceToken: s.cfg.ServiceToken})
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.joining, key)
	if err != nil {
		err = coreErr("join as supervisor", err)
		if isEnded(err) {
			s.endChatLocked(chat, ReasonEnded)
		}
		return chatJSON{}, err
	}
	if _, ok := s.router.Chat(chat); !ok {
		s.wg.Go(func() { s.leaveQuietly(resp.GetAuth(), false) })
		return chatJSON{}, ErrChatEnded
	}
	m := s.addMemberLocked(key, s.chatInfoLocked(chat), resp.GetAuth(), mode)
	s.log.Info("supervisor joined", "chat", chat, "supervisor", sup, "mode", mode)
	return s.chatJSONLocked(m), nil
}
