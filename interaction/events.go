package interaction

import (
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The push events of GET /agent/v1/events (the SSE event names).
const (
	evState        = "state" // full state; first event of every connection
	evOffer        = "offer" // a chat is offered to this agent
	evWithdrawn    = "offerWithdrawn"
	evChatAdded    = "chatAdded"    // this agent now holds, monitors or coaches a chat
	evChatRemoved  = "chatRemoved"  // ... no longer
	evChat         = "chat"         // one event of a chat's log
	evQueue        = "queue"        // queue length
	evReconnecting = "reconnecting" // the chat core (or one chat's stream) is lost
	evReconnected  = "reconnected"
	evLoggedOut    = "loggedOut"
)

// Chat modes: how the holder takes part in a chat.
const (
	ModeAgent   = "agent"   // the assigned agent
	ModeMonitor = "monitor" // a supervisor, silent and unseen by the customer
	ModeCoach   = "coach"   // a supervisor whose messages only the agent sees
)

// participantJSON is a participant as the agent API shows it.
type participantJSON struct {
	ID       string `json:"participantId"`
	Nickname string `json:"nickname"`
	Type     string `json:"type"`
}

// chatEventJSON is one chat event as the agent API shows it.
type chatEventJSON struct {
	ChatID          string            `json:"chatId"`
	Index           uint64            `json:"index"`
	Kind            string            `json:"kind"`
	Text            string            `json:"text,omitempty"`
	From            *participantJSON  `json:"from,omitempty"`
	Visibility      string            `json:"visibility"`
	UTCTime         int64             `json:"utcTime"`
	ClientMessageID string            `json:"clientMessageId,omitempty"`
	Attrs           map[string]string `json:"attrs,omitempty"`
}

// chatJSON is one chat the agent takes part in.
type chatJSON struct {
	ChatInfo
	Mode          string `json:"mode"`
	ParticipantID string `json:"participantId"`
	AgentID       string `json:"agentId,omitempty"`
	NextIndex     uint64 `json:"nextIndex"`
	Connected     bool   `json:"connected"`
}

// offerJSON is one pending offer.
type offerJSON struct {
	ChatInfo
	ExpiresAt time.Time `json:"expiresAt"`
}

type withdrawnJSON struct {
	ChatID string `json:"chatId"`
	Reason string `json:"reason"`
}

type removedJSON struct {
	ChatID string `json:"chatId"`
	Reason string `json:"reason"`
}

type queueJSON struct {
	Size int `json:"size"`
}

type noticeJSON struct {
	Scope   string `json:"scope"` // core or chat
	ChatID  string `json:"chatId,omitempty"`
	Message string `json:"message"`
}

var kindNames = map[chatpb.EventKind]string{
	chatpb.EventKind_EVENT_KIND_SESSION_STARTED:          "SessionStarted",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:       "ParticipantJoined",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:         "ParticipantLeft",
	chatpb.EventKind_EVENT_KIND_MESSAGE:                  "Message",
	chatpb.EventKind_EVENT_KIND_TYPING_STARTED:           "TypingStarted",
	chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:           "TypingStopped",
	chatpb.EventKind_EVENT_KIND_PUSH_URL:                 "PushUrl",
	chatpb.EventKind_EVENT_KIND_NOTICE:                   "Notice",
	chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED:         "TranscriptSaved",
	chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:   "TranscriptSaveFailed",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED: "ParticipantDisconnected",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:  "ParticipantReconnected",
	chatpb.EventKind_EVENT_KIND_SESSION_ENDED:            "SessionEnded",
}

var typeNames = map[chatpb.ParticipantType]string{
	chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER:   "Customer",
	chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT:      "Agent",
	chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR: "Supervisor",
	chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM:     "System",
}

var visibilityNames = map[chatpb.Visibility]string{
	chatpb.Visibility_VISIBILITY_ALL:      "all",
	chatpb.Visibility_VISIBILITY_INTERNAL: "internal",
	chatpb.Visibility_VISIBILITY_MONITOR:  "monitor",
}

func nameOr(m map[chatpb.EventKind]string, k chatpb.EventKind) string {
	if n, ok := m[k]; ok {
		return n
	}
	return k.String()
}

func toEventJSON(ev *chatpb.Event) chatEventJSON {
	out := chatEventJSON{
		ChatID:          ev.GetSessionId(),
		Index:           ev.GetIndex(),
		Kind:            nameOr(kindNames, ev.GetKind()),
		Text:            ev.GetText(),
		Visibility:      visibilityNames[ev.GetVisibility()],
		UTCTime:         ev.GetUtcUnixMs(),
		ClientMessageID: ev.GetClientMessageId(),
		Attrs:           ev.GetAttrs(),
	}
	if p := ev.GetFrom(); p != nil {
		t, ok := typeNames[p.GetType()]
		if !ok {
			t = p.GetType().String()
		}
		out.From = &participantJSON{ID: p.GetId(), Nickname: p.GetNickname(), Type: t}
	}
	return out
}

func infoFromChange(ch *chatpb.SessionChange) ChatInfo {
	var started time.Time
	if ms := ch.GetStartedUnixMs(); ms > 0 {
		started = time.UnixMilli(ms).UTC()
	}
	return ChatInfo{
		ID:       ch.GetSessionId(),
		Service:  ch.GetService(),
		Subject:  ch.GetSubject(),
		Customer: ch.GetCustomerNickname(),
		UserData: ch.GetUserData(),
		Started:  started,
	}
}
