package chatcore

import (
	"github.com/hachat/hachat/chatcore/chatpb"
)

// member is one participant's state, folded from the log. The fields below
// the blank line are runtime bookkeeping of the serving core, not replicated.
type member struct {
	p         *chatpb.Participant
	keyHash   string
	joined    uint64            // index of the PARTICIPANT_JOINED event
	left      uint64            // index of the PARTICIPANT_LEFT event, 0 while present
	typing    bool              // between TYPING_STARTED and TYPING_STOPPED (or a message)
	clientIDs map[string]uint64 // client_message_id -> first index
	secureKey string            // the joiner's key when its join carried a client_request_id (to answer a retry)

	bucket   tokenBucket
	lastSeen int64 // unix nanos of the last Send, Events or Subscribe call
	streams  int   // open Subscribe streams
}

// state is the fold of a session's log: everything the core decides with.
type state struct {
	service   string
	subject   string
	startedMs int64
	userData  map[string]string
	members   map[string]*member
	order     []string // participant ids in join order
	ended     bool
	endReason string
	nextPID   int               // number of participants that ever joined
	joinReqs  map[string]string // client_request_id of a StartSession or Join -> participant id
}

func newState() state {
	return state{members: make(map[string]*member, 2)}
}

// apply folds one committed event into the state. It never fails: an event
// reaches apply only after the primary validated it, and a backup or a
// restoration applies the same events in the same order.
func (st *state) apply(ev *chatpb.Event) {
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_SESSION_STARTED:
		st.service = ev.Attrs["service"]
		st.subject = ev.Attrs["subject"]
		st.startedMs = ev.UtcUnixMs
		for k, v := range ev.Attrs {
			if len(k) > len(userDataPrefix) && k[:len(userDataPrefix)] == userDataPrefix {
				if st.userData == nil {
					st.userData = make(map[string]string)
				}
				st.userData[k[len(userDataPrefix):]] = v
			}
		}
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
		if ev.From == nil {
			return
		}
		st.nextPID++
		m := &member{p: ev.From, keyHash: ev.KeyHash, joined: ev.Index, secureKey: ev.SecureKey}
		st.members[ev.From.Id] = m
		st.order = append(st.order, ev.From.Id)
		if ev.ClientRequestId != "" {
			if st.joinReqs == nil {
				st.joinReqs = make(map[string]string, 2)
			}
			if _, seen := st.joinReqs[ev.ClientRequestId]; !seen {
				st.joinReqs[ev.ClientRequestId] = ev.From.Id
			}
		}
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
		if m := st.member(ev); m != nil {
			m.left = ev.Index
			m.typing = false
		}
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED:
		if m := st.member(ev); m != nil {
			m.typing = true
		}
	case chatpb.EventKind_EVENT_KIND_TYPING_STOPPED, chatpb.EventKind_EVENT_KIND_MESSAGE:
		if m := st.member(ev); m != nil {
			m.typing = false
		}
	case chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		st.ended = true
		st.endReason = ev.Attrs["reason"]
		for _, m := range st.members {
			m.typing = false
		}
	}
	if ev.ClientMessageId != "" {
		if m := st.member(ev); m != nil {
			if m.clientIDs == nil {
				m.clientIDs = make(map[string]uint64, 4)
			}
			if _, seen := m.clientIDs[ev.ClientMessageId]; !seen {
				m.clientIDs[ev.ClientMessageId] = ev.Index
			}
		}
	}
}

func (st *state) member(ev *chatpb.Event) *member {
	if ev.From == nil {
		return nil
	}
	return st.members[ev.From.Id]
}

// customer returns the session's customer, nil if none.
func (st *state) customer() *member {
	for _, id := range st.order {
		if m := st.members[id]; m.p.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			return m
		}
	}
	return nil
}

// participants returns the present participants in join order.
func (st *state) participants() []*chatpb.Participant {
	out := make([]*chatpb.Participant, 0, len(st.order))
	for _, id := range st.order {
		if m := st.members[id]; m.left == 0 {
			out = append(out, m.p)
		}
	}
	return out
}

// fold rebuilds a state from a whole log.
func fold(log []*chatpb.Event) state {
	st := newState()
	for _, ev := range log {
		st.apply(ev)
	}
	return st
}

// visibleTo reports whether viewer may receive ev: a customer receives only
// VISIBILITY_ALL events (never internal coaching, never monitor events, and
// so never the join or leave of a monitoring supervisor, whose join and leave
// carry the supervisor's visibility). Agents, supervisors and system
// participants see everything.
func visibleTo(viewer *chatpb.Participant, ev *chatpb.Event) bool {
	if viewer.GetType() != chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
		return true
	}
	return ev.Visibility == chatpb.Visibility_VISIBILITY_ALL
}

// public returns ev as clients may see it: without key_hash,
// client_request_id and secure_key. Events without them are returned as is
// (they are immutable once committed).
func public(ev *chatpb.Event) *chatpb.Event {
	if ev.KeyHash == "" && ev.ClientRequestId == "" && ev.SecureKey == "" {
		return ev
	}
	c := &chatpb.Event{
		SessionId: ev.SessionId, Index: ev.Index, Kind: ev.Kind, From: ev.From,
		Visibility: ev.Visibility, Text: ev.Text, UtcUnixMs: ev.UtcUnixMs,
		ClientMessageId: ev.ClientMessageId, Attrs: ev.Attrs, Epoch: ev.Epoch,
	}
	return c
}

// saved returns ev as UCS stores it: without secure_key (the key stays in
// the memory of the pair; key_hash is saved so that a restore can check
// keys). Events without a secure key are returned as is.
func saved(ev *chatpb.Event) *chatpb.Event {
	if ev.SecureKey == "" {
		return ev
	}
	c := &chatpb.Event{
		SessionId: ev.SessionId, Index: ev.Index, Kind: ev.Kind, From: ev.From,
		Visibility: ev.Visibility, Text: ev.Text, UtcUnixMs: ev.UtcUnixMs,
		ClientMessageId: ev.ClientMessageId, Attrs: ev.Attrs, Epoch: ev.Epoch,
		KeyHash: ev.KeyHash, ClientRequestId: ev.ClientRequestId,
	}
	return c
}

const userDataPrefix = "userData."
