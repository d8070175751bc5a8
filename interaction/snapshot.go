package interaction

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/interaction/auth"
)

// Snapshot is the routing state that outlives one interaction instance: what
// the leader writes to its StateStore after every change and a new leader
// reads when it takes over. Session tokens are kept as SHA-256 digests only.
type Snapshot struct {
	// Version is the snapshot format (snapshotVersion).
	Version  int                  `json:"version"`
	Sessions []auth.SessionRecord `json:"sessions"`
	Router   RouterState          `json:"router"`
	Members  []MemberState        `json:"members"`
	// Ended are the participations that ended lately (endedRetention): a
	// new leader reads their transcripts again for desktops that reconnect.
	Ended []EndedState `json:"ended,omitempty"`
	// Saved is when the leader took the snapshot.
	Saved time.Time `json:"saved"`
}

const snapshotVersion = 1

// RouterState is a Router's state: agents, chats in arrival order and the
// arrival counter.
type RouterState struct {
	Seq       uint64       `json:"seq"`
	LastQueue int          `json:"lastQueue"`
	Agents    []AgentState `json:"agents"`
	Chats     []ChatRecord `json:"chats"`
}

// AgentState is one logged-in agent or supervisor in a RouterState.
type AgentState struct {
	ID        string    `json:"id"`
	Nickname  string    `json:"nickname"`
	Role      Role      `json:"role"`
	Ready     bool      `json:"ready"`
	IdleSince time.Time `json:"idleSince"`
	Chats     []string  `json:"chats,omitempty"`
	Offer     string    `json:"offer,omitempty"`
}

// ChatRecord is one live chat in a RouterState.
type ChatRecord struct {
	Info     ChatInfo  `json:"info"`
	Seq      uint64    `json:"seq"`
	State    ChatState `json:"state"`
	Agent    string    `json:"agent,omitempty"`
	Deadline time.Time `json:"deadline,omitzero"`
	Declined []string  `json:"declined,omitempty"`
}

// MemberState is one participation (an agent's chat, or a supervisor's
// monitoring or coaching) with the core credentials that resume it.
type MemberState struct {
	Chat          string   `json:"chat"`
	Agent         string   `json:"agent"`
	Mode          string   `json:"mode"`
	Info          ChatInfo `json:"info"`
	SessionID     string   `json:"sessionId"`
	ParticipantID string   `json:"participantId"`
	SecureKey     string   `json:"secureKey"`
}

// EndedState is a participation that ended: when and why.
type EndedState struct {
	MemberState
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// State returns a copy of the router's state. Work in flight (a join, a
// transfer, a leave) is not part of it: it dies with the instance.
func (r *Router) State() RouterState {
	st := RouterState{Seq: r.seq, LastQueue: r.lastQueue}
	for _, id := range slices.Sorted(maps.Keys(r.agents)) {
		a := r.agents[id]
		st.Agents = append(st.Agents, AgentState{ID: a.id, Nickname: a.nickname, Role: a.role, Ready: a.ready,
			IdleSince: a.idleSince, Chats: slices.Sorted(maps.Keys(a.chats)), Offer: a.offer})
	}
	cs := slices.Collect(maps.Values(r.chats))
	sort.Slice(cs, func(i, j int) bool { return cs[i].seq < cs[j].seq })
	for _, c := range cs {
		st.Chats = append(st.Chats, ChatRecord{Info: c.info, Seq: c.seq, State: c.state, Agent: c.agent,
			Deadline: c.deadline, Declined: slices.Sorted(maps.Keys(c.declined))})
	}
	return st
}

// RestoreRouter rebuilds a router from st, as State returned it. A state
// that contradicts itself (an offer or chat of an agent who is not there, an
// agent holding a chat that is not theirs) is refused with ErrBadState.
func RestoreRouter(maxChats int, offerTimeout time.Duration, st RouterState) (*Router, error) {
	r := NewRouter(maxChats, offerTimeout)
	r.seq, r.lastQueue = st.Seq, st.LastQueue
	for _, a := range st.Agents {
		if a.ID == "" || r.agents[a.ID] != nil {
			return nil, fmt.Errorf("%w: agent %q empty or twice", ErrBadState, a.ID)
		}
		ra := &routedAgent{id: a.ID, nickname: a.Nickname, role: a.Role, ready: a.Ready, idleSince: a.IdleSince,
			chats: map[string]bool{}, offer: a.Offer}
		for _, c := range a.Chats {
			ra.chats[c] = true
		}
		r.agents[a.ID] = ra
	}
	for _, c := range st.Chats {
		if c.Info.ID == "" || r.chats[c.Info.ID] != nil || c.Seq > r.seq {
			return nil, fmt.Errorf("%w: chat %q empty, twice or beyond the counter", ErrBadState, c.Info.ID)
		}
		rc := &routedChat{info: c.Info, seq: c.Seq, state: c.State, agent: c.Agent, deadline: c.Deadline, declined: map[string]bool{}}
		for _, d := range c.Declined {
			rc.declined[d] = true
		}
		r.chats[c.Info.ID] = rc
		switch c.State {
		case ChatQueued:
			r.queue = append(r.queue, rc)
		case ChatOffered:
			if a := r.agents[c.Agent]; a == nil || a.offer != c.Info.ID {
				return nil, fmt.Errorf("%w: chat %q offered to %q, who does not hold the offer", ErrBadState, c.Info.ID, c.Agent)
			}
		case ChatAssigned:
			if a := r.agents[c.Agent]; a == nil || !a.chats[c.Info.ID] {
				return nil, fmt.Errorf("%w: chat %q assigned to %q, who does not hold it", ErrBadState, c.Info.ID, c.Agent)
			}
		default:
			return nil, fmt.Errorf("%w: chat %q in state %q", ErrBadState, c.Info.ID, c.State)
		}
	}
	for _, a := range r.agents {
		if a.offer != "" {
			if c := r.chats[a.offer]; c == nil || c.state != ChatOffered || c.agent != a.id {
				return nil, fmt.Errorf("%w: agent %q holds offer %q that is not theirs", ErrBadState, a.id, a.offer)
			}
		}
		for id := range a.chats {
			if c := r.chats[id]; c == nil || c.state != ChatAssigned || c.agent != a.id {
				return nil, fmt.Errorf("%w: agent %q holds chat %q that is not theirs", ErrBadState, a.id, id)
			}
		}
	}
	return r, nil
}

// snapshotLocked takes the Snapshot; s.mu is held.
func (s *Server) snapshotLocked() Snapshot {
	sessions := s.authn.sessions.Export()
	slices.SortFunc(sessions, func(a, b auth.SessionRecord) int { return compareStr(a.Digest, b.Digest) })
	for i := range sessions {
		// Activity counts to the minute: a send does not rewrite the
		// state, and a session restored after a takeover may end up to a
		// minute early.
		sessions[i].LastSeen = sessions[i].LastSeen.Truncate(time.Minute)
	}
	snap := Snapshot{Version: snapshotVersion, Sessions: sessions, Router: s.router.State()}
	for _, key := range slices.SortedFunc(maps.Keys(s.members), func(a, b memberKey) int {
		if a.chat != b.chat {
			return compareStr(a.chat, b.chat)
		}
		return compareStr(a.agent, b.agent)
	}) {
		m := s.members[key]
		if m.gone {
			continue
		}
		snap.Members = append(snap.Members, m.state())
	}
	for _, agent := range slices.Sorted(maps.Keys(s.ended)) {
		for _, chat := range slices.Sorted(maps.Keys(s.ended[agent])) {
			e := s.ended[agent][chat]
			snap.Ended = append(snap.Ended, EndedState{MemberState: e.state, Reason: e.reason, At: e.at})
		}
	}
	return snap
}

func compareStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// restoreLocked replaces the server's routing state with snap and resumes
// every participation from the start of its chat (the core replays the
// transcript into the cache). An assigned chat whose agent has no
// participation (its join died with the old leader) goes back to the queue.
// s.mu is held.
func (s *Server) restoreLocked(snap Snapshot) error {
	if snap.Version != snapshotVersion {
		return fmt.Errorf("%w: snapshot version %d, want %d", ErrBadState, snap.Version, snapshotVersion)
	}
	r, err := RestoreRouter(s.cfg.MaxChatsPerAgent, s.cfg.OfferTimeout, snap.Router)
	if err != nil {
		return err
	}
	if err := s.authn.sessions.Restore(snap.Sessions); err != nil {
		return fmt.Errorf("%w: %w", ErrBadState, err)
	}
	s.router = r
	joined := map[memberKey]bool{}
	for _, ms := range snap.Members {
		key := memberKey{chat: ms.Chat, agent: ms.Agent}
		joined[key] = true
		s.addMemberLocked(key, ms.Info, &chatpb.Auth{SessionId: ms.SessionID, ParticipantId: ms.ParticipantID, SecureKey: ms.SecureKey}, ms.Mode)
	}
	s.ended = map[string]map[string]endedPart{}
	for _, e := range snap.Ended {
		if joined[memberKey{chat: e.Chat, agent: e.Agent}] || s.now().Sub(e.At) >= endedRetention {
			continue
		}
		lead := s.lead
		s.wg.Go(func() { s.rereadEnded(lead, e) })
	}
	for _, cv := range r.Chats() {
		if cv.State == ChatAssigned && !joined[memberKey{chat: cv.Info.ID, agent: cv.Agent}] {
			// The old leader accepted it but died before its join finished.
			s.apply(r.End(cv.Agent, cv.Info.ID, true, true, s.now()))
		}
	}
	return nil
}
