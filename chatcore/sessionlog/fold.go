// Package sessionlog is one chat session's log and its fold, and nothing
// else: no locks, no I/O, no clock. A session's state is a pure function of
// its committed events (Fold), so the primary that appends, a backup that
// applies the replicated stream and a primary that restores from UCS all
// rebuild the same State from the same events.
//
// The events are validated before they get here (chatcore's append path);
// Apply never fails. The caller owns the locking: chatcore keeps a Log under
// its session's mutex.
package sessionlog

import (
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// Member is one participant's state, folded from the log. The fields below
// the blank line are runtime bookkeeping of the serving core, not replicated.
type Member struct {
	P         *chatpb.Participant
	KeyHash   string
	Joined    uint64            // index of the PARTICIPANT_JOINED event
	Left      uint64            // index of the PARTICIPANT_LEFT event, 0 while present
	Typing    bool              // between TYPING_STARTED and TYPING_STOPPED (or a message)
	ClientIDs map[string]uint64 // client_message_id -> first index
	SecureKey string            // the joiner's key when its join carried a client_request_id (to answer a retry)

	Bucket   TokenBucket // the participant's Send rate limit
	LastSeen int64       // unix nanos of the last Send, Events or Subscribe call
	Streams  int         // open Subscribe streams
}

// State is the fold of a session's log: everything the core decides with.
type State struct {
	Service   string
	Subject   string
	StartedMs int64
	UserData  map[string]string
	Members   map[string]*Member
	Order     []string // participant ids in join order
	Ended     bool
	EndReason string
	NextPID   int               // number of participants that ever joined
	JoinReqs  map[string]string // client_request_id of a StartSession or Join -> participant id
}

// NewState returns the state of an empty log.
func NewState() State {
	return State{Members: make(map[string]*Member, 2)}
}

// Apply folds one committed event into the state. It never fails: an event
// reaches Apply only after the primary validated it, and a backup or a
// restoration applies the same events in the same order.
func (st *State) Apply(ev *chatpb.Event) {
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_SESSION_STARTED:
		st.Service = ev.Attrs["service"]
		st.Subject = ev.Attrs["subject"]
		st.StartedMs = ev.UtcUnixMs
		for k, v := range ev.Attrs {
			if len(k) > len(UserDataPrefix) && k[:len(UserDataPrefix)] == UserDataPrefix {
				if st.UserData == nil {
					st.UserData = make(map[string]string)
				}
				st.UserData[k[len(UserDataPrefix):]] = v
			}
		}
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
		if ev.From == nil {
			return
		}
		st.NextPID++
		m := &Member{P: ev.From, KeyHash: ev.KeyHash, Joined: ev.Index, SecureKey: ev.SecureKey}
		st.Members[ev.From.Id] = m
		st.Order = append(st.Order, ev.From.Id)
		if ev.ClientRequestId != "" {
			if st.JoinReqs == nil {
				st.JoinReqs = make(map[string]string, 2)
			}
			if _, seen := st.JoinReqs[ev.ClientRequestId]; !seen {
				st.JoinReqs[ev.ClientRequestId] = ev.From.Id
			}
		}
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
		if m := st.Author(ev); m != nil {
			m.Left = ev.Index
			m.Typing = false
		}
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED:
		if m := st.Author(ev); m != nil {
			m.Typing = true
		}
	case chatpb.EventKind_EVENT_KIND_TYPING_STOPPED, chatpb.EventKind_EVENT_KIND_MESSAGE:
		if m := st.Author(ev); m != nil {
			m.Typing = false
		}
	case chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		st.Ended = true
		st.EndReason = ev.Attrs["reason"]
		for _, m := range st.Members {
			m.Typing = false
		}
	}
	if ev.ClientMessageId != "" {
		if m := st.Author(ev); m != nil {
			if m.ClientIDs == nil {
				m.ClientIDs = make(map[string]uint64, 4)
			}
			if _, seen := m.ClientIDs[ev.ClientMessageId]; !seen {
				m.ClientIDs[ev.ClientMessageId] = ev.Index
			}
		}
	}
}

// Author returns the member that wrote ev, nil if ev has no author or the
// author never joined.
func (st *State) Author(ev *chatpb.Event) *Member {
	if ev.From == nil {
		return nil
	}
	return st.Members[ev.From.Id]
}

// Customer returns the session's customer, nil if none.
func (st *State) Customer() *Member {
	for _, id := range st.Order {
		if m := st.Members[id]; m.P.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			return m
		}
	}
	return nil
}

// Participants returns the present participants in join order.
func (st *State) Participants() []*chatpb.Participant {
	out := make([]*chatpb.Participant, 0, len(st.Order))
	for _, id := range st.Order {
		if m := st.Members[id]; m.Left == 0 {
			out = append(out, m.P)
		}
	}
	return out
}

// Fold rebuilds a state from a whole log.
func Fold(log []*chatpb.Event) State {
	st := NewState()
	for _, ev := range log {
		st.Apply(ev)
	}
	return st
}

// VisibleTo reports whether viewer may receive ev: a customer receives only
// VISIBILITY_ALL events (never internal coaching, never monitor events, and
// so never the join or leave of a monitoring supervisor, whose join and leave
// carry the supervisor's visibility). Agents, supervisors and system
// participants see everything.
func VisibleTo(viewer *chatpb.Participant, ev *chatpb.Event) bool {
	if viewer.GetType() != chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
		return true
	}
	return ev.Visibility == chatpb.Visibility_VISIBILITY_ALL
}

// Public returns ev as clients may see it: without key_hash,
// client_request_id and secure_key. Events without them are returned as is
// (they are immutable once committed).
func Public(ev *chatpb.Event) *chatpb.Event {
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

// Saved returns ev as UCS stores it: without secure_key (the key stays in
// the memory of the pair; key_hash is saved so that a restore can check
// keys). Events without a secure key are returned as is.
func Saved(ev *chatpb.Event) *chatpb.Event {
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

// UserDataPrefix prefixes the SESSION_STARTED attributes that carry the
// session's user data (userData.order=42 is user data order=42).
const UserDataPrefix = "userData."

// Entry is one committed log entry: the event as replicated and saved, and
// the copy clients receive (key_hash stripped; the same pointer when there is
// nothing to strip). Both are immutable once committed.
type Entry struct {
	// Ev is the event as committed, replicated and saved.
	Ev *chatpb.Event
	// Pub is Ev as clients receive it (Public(Ev)).
	Pub *chatpb.Event
}

// Log is one session's committed entries and their fold, kept together so
// that they never disagree: the only way in is Commit. Index i (1-based) is
// entry i-1; the log is gap-free.
type Log struct {
	// State is the fold of the entries. Callers read it to decide; only
	// Commit changes it, apart from Member's runtime bookkeeping.
	State   State
	entries []Entry
}

// NewLog returns an empty log.
func NewLog() Log { return Log{State: NewState()} }

// Commit folds ev into the state and appends it; ev.Index must be
// LastIndex()+1 (the caller checked). It returns the entry.
func (l *Log) Commit(ev *chatpb.Event) Entry {
	l.State.Apply(ev)
	e := Entry{Ev: ev, Pub: Public(ev)}
	l.entries = append(l.entries, e)
	return e
}

// LastIndex returns the index of the last committed event (0: empty).
func (l *Log) LastIndex() uint64 { return uint64(len(l.entries)) }

// Entries returns the committed entries, oldest first. The slice is shared:
// read it, never modify it.
func (l *Log) Entries() []Entry { return l.entries }

// From returns the entries from index from (1-based) on; from must be in
// 1..LastIndex()+1. The slice is shared: read it, never modify it.
func (l *Log) From(from uint64) []Entry { return l.entries[from-1:] }

// TokenBucket limits the sends of one participant. It is runtime
// bookkeeping of the serving core (Member.Bucket), never folded from the log.
type TokenBucket struct {
	// Tokens is the number of sends left.
	Tokens float64
	// Last is the unix nanos of the last Take; 0 = never used (full bucket).
	Last int64
}

// Take removes one token if there is one, refilling at rate per second up to burst.
func (b *TokenBucket) Take(now int64, rate float64, burst int) bool {
	if b.Last == 0 {
		b.Tokens = float64(burst)
	} else if now > b.Last {
		b.Tokens += float64(now-b.Last) / float64(time.Second) * rate
		if b.Tokens > float64(burst) {
			b.Tokens = float64(burst)
		}
	}
	b.Last = now
	if b.Tokens < 1 {
		return false
	}
	b.Tokens--
	return true
}
