package webapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/edge"
)

// Status codes of the GMS Chat API v2 body.
const (
	statusOK          = 0 // done
	statusRetry       = 1 // a transient failure: send the same request again
	statusUnrecovered = 2 // the request cannot succeed as it is
)

// Error codes in the errors array of a response (GMS style: a number and an
// advice). They are documented in docs/api.md.
const (
	codeInternal      = 100 // the server failed; not the client's fault
	codeMalformed     = 101 // the body could not be decoded
	codeInvalidParam  = 102 // a parameter is missing or has a bad value
	codeTooLarge      = 103 // the body is over max-body
	codeUnknownChat   = 104 // no such chat
	codeForbidden     = 105 // userId and secureKey do not match the chat
	codeTooMany       = 106 // too many requests or sessions: retry later
	codeChatEnded     = 107 // the chat has ended
	codeUnavailable   = 108 // no chat core could take the request now: retry
	codeNotFoundRoute = 109 // no such API route
	codeOrigin        = 110 // the page's origin may not call the API
	codeAPIKey        = 111 // the apikey header is missing or wrong
)

// apiError is one entry of a response's errors array.
type apiError struct {
	Code   int    `json:"code"`
	Advice string `json:"advice"`
}

// response is the JSON body of every customer API answer.
type response struct {
	StatusCode   int        `json:"statusCode"`
	ChatID       string     `json:"chatId,omitempty"`
	UserID       string     `json:"userId,omitempty"`
	SecureKey    string     `json:"secureKey,omitempty"`
	Alias        string     `json:"alias,omitempty"`
	Messages     []*message `json:"messages,omitzero"` // [] when a transcript read found nothing new, absent when none was read
	NextPosition uint64     `json:"nextPosition,omitempty"`
	ChatEnded    bool       `json:"chatEnded"`
	// Index and Duplicate answer a send (our extension): the transcript
	// position the message got, and whether the clientMessageId was seen
	// before (Index is then the first send's).
	Index     uint64     `json:"index,omitempty"`
	Duplicate bool       `json:"duplicate,omitempty"`
	Errors    []apiError `json:"errors,omitempty"`
}

// from says who caused an event.
type from struct {
	Nickname      string `json:"nickname"`
	ParticipantID string `json:"participantId"`
	Type          string `json:"type"`
}

// message is one transcript entry as the GMS Chat API v2 shows it.
type message struct {
	Index           uint64 `json:"index"`
	Type            string `json:"type"`
	Text            string `json:"text,omitempty"`
	UTCTime         int64  `json:"utcTime"`
	From            from   `json:"from"`
	ClientMessageID string `json:"clientMessageId,omitempty"`
	NoticeType      string `json:"noticeType,omitempty"`
	Reason          string `json:"reason,omitempty"`
}

// eventTypes names each event kind in the API. SESSION_STARTED is internal
// bookkeeping (subject, user data) and is not shown.
var eventTypes = map[chatpb.EventKind]string{
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
	chatpb.EventKind_EVENT_KIND_SESSION_ENDED:            "ChatEnded",
}

// participantTypes names each participant type in the API.
var participantTypes = map[chatpb.ParticipantType]string{
	chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER:   "Client",
	chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT:      "Agent",
	chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR: "Supervisor",
	chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM:     "External",
}

// toMessage converts a core event into an API message; ok is false for an
// event a customer must not see (internal or monitor visibility, internal
// kinds), which the core should have filtered already.
func toMessage(ev *chatpb.Event) (*message, bool) {
	m, ok := messageOf(ev)
	if !ok {
		return nil, false
	}
	return &m, true
}

// messageOf is toMessage without the allocation.
func messageOf(ev *chatpb.Event) (message, bool) {
	if ev.GetVisibility() != chatpb.Visibility_VISIBILITY_ALL {
		return message{}, false
	}
	typ, ok := eventTypes[ev.GetKind()]
	if !ok {
		return message{}, false
	}
	if ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED && ev.GetFrom().GetVisibility() == chatpb.Visibility_VISIBILITY_MONITOR {
		return message{}, false
	}
	ptype, ok := participantTypes[ev.GetFrom().GetType()]
	if !ok {
		ptype = "External"
	}
	return message{
		Index:   ev.GetIndex(),
		Type:    typ,
		Text:    ev.GetText(),
		UTCTime: ev.GetUtcUnixMs(),
		From: from{
			Nickname:      ev.GetFrom().GetNickname(),
			ParticipantID: ev.GetFrom().GetId(),
			Type:          ptype,
		},
		ClientMessageID: ev.GetClientMessageId(),
		NoticeType:      ev.GetAttrs()["noticeType"],
		Reason:          ev.GetAttrs()["reason"],
	}, true
}

// toMessages converts the visible events of a batch, in order.
func toMessages(evs []*chatpb.Event) []*message {
	out := make([]*message, 0, len(evs))
	for _, ev := range evs {
		if m, ok := toMessage(ev); ok {
			out = append(out, m)
		}
	}
	return out
}

// failure is what an error becomes on the wire: the HTTP status, the body's
// statusCode and one error entry.
type failure struct {
	HTTP      int
	Status    int
	Code      int
	Advice    string
	ChatEnded bool
}

// startLimitError is a chat start refused by a start limit.
type startLimitError struct{ d edge.Decision }

func (e *startLimitError) Error() string {
	return fmt.Sprintf("%s chat start limit reached; retry after %s", e.d.Scope, e.d.RetryAfter)
}

// classify maps an error from request parsing or from the core to its
// answer, per the table in docs/design.md.
func classify(err error) failure {
	var sl *startLimitError
	switch {
	case errors.As(err, &sl):
		advice := "too many chat starts from this address; retry in " + strconv.Itoa(int(sl.d.RetryAfter/time.Second)) + " s"
		if sl.d.Scope == edge.ScopeGlobal {
			advice = "too many chat starts right now; retry in " + strconv.Itoa(int(sl.d.RetryAfter/time.Second)) + " s"
		}
		return failure{http.StatusTooManyRequests, statusRetry, codeTooMany, advice, false}
	case errors.Is(err, errTooLarge):
		return failure{http.StatusBadRequest, statusUnrecovered, codeTooLarge, err.Error(), false}
	case errors.Is(err, errMalformed):
		return failure{http.StatusBadRequest, statusUnrecovered, codeMalformed, err.Error(), false}
	case errors.Is(err, errInvalid):
		return failure{http.StatusBadRequest, statusUnrecovered, codeInvalidParam, err.Error(), false}
	}
	st, ok := status.FromError(err)
	if !ok {
		return failure{http.StatusInternalServerError, statusUnrecovered, codeInternal, "internal error", false}
	}
	msg := st.Message()
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange:
		return failure{http.StatusBadRequest, statusUnrecovered, codeInvalidParam, msg, false}
	case codes.PermissionDenied, codes.Unauthenticated:
		return failure{http.StatusForbidden, statusUnrecovered, codeForbidden, "userId and secureKey do not match this chat", false}
	case codes.NotFound:
		return failure{http.StatusNotFound, statusUnrecovered, codeUnknownChat, "unknown chat", false}
	case codes.ResourceExhausted:
		return failure{http.StatusTooManyRequests, statusRetry, codeTooMany, "too many requests: " + msg + "; retry later", false}
	case codes.FailedPrecondition:
		return failure{http.StatusOK, statusUnrecovered, codeChatEnded, "the chat has ended", true}
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Canceled, codes.Unknown:
		return failure{http.StatusServiceUnavailable, statusRetry, codeUnavailable, "chat server temporarily unavailable; send the same request again", false}
	default:
		return failure{http.StatusInternalServerError, statusUnrecovered, codeInternal, "internal error", false}
	}
}
