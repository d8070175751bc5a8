package chatcore

import (
	"context"
	"net/url"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// Input limits besides the configured ones.
const (
	maxNameLen      = 256  // nickname, names, subject pieces
	maxSubjectLen   = 1024 // subject
	maxServiceLen   = 128  // service name
	maxClientIDLen  = 128  // client_message_id
	maxUserData     = 64   // userData entries
	maxUserDataSize = 8192 // bytes of userData keys and values
	maxAttrs        = 16   // attrs of one Send
	maxPage         = 1000 // events per Events call
)

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// The error mapping. rpc.go is a table of "RPC → operation"; what the
// operations (ops.go, the append path, lookup) refuse with is one of these
// sentinels, each already the gRPC status the caller gets, so a handler
// returns it as it is. A client's retry rules read the code: UNAVAILABLE
// means "this core cannot serve it now, try again here or at the other
// core", the others are final for that request. rpc_test.go holds the table.
// Besides these: invalid (INVALID_ARGUMENT, bad input: nothing changed),
// RESOURCE_EXHAUSTED for limits (sessions, send rate), and the append
// path's own statuses (a second copy that failed, a fenced epoch).
var (
	// Who the caller is.
	errBadKey   = status.Error(codes.PermissionDenied, "wrong participant or secure key")
	errBadToken = status.Error(codes.PermissionDenied, "wrong service token")
	// What the call is about.
	errUnknown = status.Error(codes.NotFound, "unknown session")
	errLeft    = status.Error(codes.FailedPrecondition, "participant has left the session")
	errEnded   = status.Error(codes.FailedPrecondition, "session has ended")
	// A retried join whose first attempt's participant was rebuilt from
	// UCS, which never holds secure keys (a StartSession retry starts a new
	// session instead: openSession).
	errKeyNotHeld = status.Error(codes.AlreadyExists, "this client_request_id already joined, and its secure key is no longer held")
	// Whether this core serves now (the gate in server.go and the operations).
	errNotPrimary = status.Error(codes.Unavailable, "this chat core is not primary")
	errDraining   = status.Error(codes.Unavailable, "this chat core is draining for a switchover")
	errHandedOver = status.Error(codes.Unavailable, chatpb.HandedOverMessage)
	errRestoring  = status.Error(codes.Unavailable, "this chat core was just promoted and is merging the transcripts UCS holds: retry")
)

// checkAuth validates the shape of an Auth and finds its session
// (restoring it from UCS if this primary does not hold it, but only for a
// participant and key that the stored PARTICIPANT_JOINED key_hash accepts:
// a wrong key changes nothing). Callers still authorize under s.mu.
func (c *Core) checkAuth(ctx context.Context, a *chatpb.Auth) (*session, string, error) {
	if a == nil || a.SessionId == "" || a.ParticipantId == "" || a.SecureKey == "" {
		return nil, "", invalid("auth needs session_id, participant_id and secure_key")
	}
	keyHash := hashKey(a.SecureKey)
	s, err := c.lookup(ctx, a.SessionId, func(st *sessionlog.State) error {
		_, err := authorize(st, a.ParticipantId, keyHash)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return s, keyHash, nil
}

// authorize finds the participant in st and checks its key. Call with s.mu held.
func authorize(st *sessionlog.State, pid, keyHash string) (*sessionlog.Member, error) {
	m := st.Members[pid]
	if m == nil || !keyMatches(keyHash, m.KeyHash) {
		return nil, errBadKey
	}
	return m, nil
}

func (c *Core) tokenOK(tok string) bool {
	return c.cfg.ServiceToken == "" || keyMatches(hashKey(tok), hashKey(c.cfg.ServiceToken))
}

func checkText(what, v string, max int) error {
	if len(v) > max {
		return invalid("%s is %d bytes, more than %d", what, len(v), max)
	}
	if !utf8.ValidString(v) {
		return invalid("%s is not valid UTF-8", what)
	}
	return nil
}

// StartSession starts a session for a customer: SESSION_STARTED, then the
// customer's PARTICIPANT_JOINED. The response carries the customer's secure key.
func (c *Core) StartSession(ctx context.Context, req *chatpb.StartSessionRequest) (*chatpb.JoinResponse, error) {
	if req.Service == "" || req.Nickname == "" {
		return nil, invalid("service and nickname are required")
	}
	for _, f := range []struct {
		n, v string
		max  int
	}{{"service", req.Service, maxServiceLen}, {"nickname", req.Nickname, maxNameLen}, {"first_name", req.FirstName, maxNameLen},
		{"last_name", req.LastName, maxNameLen}, {"email_address", req.EmailAddress, maxNameLen}, {"subject", req.Subject, maxSubjectLen}} {
		if err := checkText(f.n, f.v, f.max); err != nil {
			return nil, err
		}
	}
	if len(req.UserData) > maxUserData {
		return nil, invalid("%d userData entries, more than %d", len(req.UserData), maxUserData)
	}
	size := 0
	for k, v := range req.UserData {
		if k == "" {
			return nil, invalid("userData key is empty")
		}
		size += len(k) + len(v)
	}
	if size > maxUserDataSize {
		return nil, invalid("userData is %d bytes, more than %d", size, maxUserDataSize)
	}
	if err := checkText("client_request_id", req.ClientRequestId, maxClientIDLen); err != nil {
		return nil, err
	}
	if !c.role.IsPrimary() {
		return nil, errNotPrimary
	}
	return c.openSession(ctx, req.ClientRequestId, req.Nickname, startAttrs(req))
}

// startAttrs translates a StartSessionRequest into SESSION_STARTED's attrs.
func startAttrs(req *chatpb.StartSessionRequest) map[string]string {
	attrs := map[string]string{"service": req.Service}
	for k, v := range map[string]string{"subject": req.Subject, "emailAddress": req.EmailAddress, "firstName": req.FirstName, "lastName": req.LastName} {
		if v != "" {
			attrs[k] = v
		}
	}
	for k, v := range req.UserData {
		attrs[sessionlog.UserDataPrefix+k] = v
	}
	return attrs
}

// Join adds an agent, supervisor or system participant. Only a supervisor
// may join with INTERNAL (coach) or MONITOR visibility.
func (c *Core) Join(ctx context.Context, req *chatpb.JoinRequest) (*chatpb.JoinResponse, error) {
	if !c.tokenOK(req.ServiceToken) {
		return nil, errBadToken
	}
	if req.SessionId == "" {
		return nil, invalid("session_id is required")
	}
	switch req.Type {
	case chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR, chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM:
	default:
		return nil, invalid("join type must be agent, supervisor or system, not %s", req.Type)
	}
	switch req.Visibility {
	case chatpb.Visibility_VISIBILITY_ALL:
	case chatpb.Visibility_VISIBILITY_INTERNAL, chatpb.Visibility_VISIBILITY_MONITOR:
		if req.Type != chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR {
			return nil, invalid("only a supervisor joins with %s visibility", req.Visibility)
		}
	default:
		return nil, invalid("unknown visibility %d", req.Visibility)
	}
	if err := checkText("nickname", req.Nickname, maxNameLen); err != nil {
		return nil, err
	}
	if err := checkText("client_request_id", req.ClientRequestId, maxClientIDLen); err != nil {
		return nil, err
	}
	s, err := c.lookup(ctx, req.SessionId, nil) // the service token was checked above
	if err != nil {
		return nil, err
	}
	nick := req.Nickname
	if nick == "" {
		nick = strings.ToLower(strings.TrimPrefix(req.Type.String(), "PARTICIPANT_TYPE_"))
	}
	return c.addParticipant(ctx, s, req.ClientRequestId, nick, req.Type, req.Visibility)
}

// validateSend checks a SendRequest's shape against the limits.
func (c *Core) validateSend(req *chatpb.SendRequest) error {
	max := c.cfg.MaxMessageSize
	switch req.Kind {
	case chatpb.EventKind_EVENT_KIND_MESSAGE:
		if strings.TrimSpace(req.Text) == "" {
			return invalid("message text is empty")
		}
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:
	case chatpb.EventKind_EVENT_KIND_PUSH_URL:
		u, err := url.Parse(req.Text)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("push URL %q is not an absolute http(s) URL", req.Text)
		}
	case chatpb.EventKind_EVENT_KIND_NOTICE:
		if req.Attrs["noticeType"] == "" {
			return invalid("a custom notice needs attrs[noticeType]")
		}
	default:
		return invalid("kind %s cannot be sent; want MESSAGE, TYPING_STARTED, TYPING_STOPPED, PUSH_URL or NOTICE", req.Kind)
	}
	if err := checkText("text", req.Text, max); err != nil {
		return err
	}
	if err := checkText("client_message_id", req.ClientMessageId, maxClientIDLen); err != nil {
		return err
	}
	if len(req.Attrs) > maxAttrs {
		return invalid("%d attrs, more than %d", len(req.Attrs), maxAttrs)
	}
	size := 0
	for k, v := range req.Attrs {
		if k == "" || k == "reason" {
			return invalid("attr key %q is reserved or empty", k)
		}
		size += len(k) + len(v)
	}
	if size > max {
		return invalid("attrs are %d bytes, more than %d", size, max)
	}
	if _, ok := chatpb.Visibility_name[int32(req.Visibility)]; !ok {
		return invalid("unknown visibility %d", req.Visibility)
	}
	return nil
}

// Send appends a message, typing notice, push URL or custom notice. A resend
// with the same client_message_id returns the first index with duplicate=true.
func (c *Core) Send(ctx context.Context, req *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	if err := c.validateSend(req); err != nil {
		return nil, err
	}
	s, keyHash, err := c.checkAuth(ctx, req.Auth)
	if err != nil {
		return nil, err
	}
	idx, dup, err := c.post(ctx, s, req.Auth.ParticipantId, keyHash, req)
	if err != nil {
		return nil, err
	}
	return &chatpb.SendResponse{Index: idx, Duplicate: dup, Alias: c.cfg.Name}, nil
}

// SendStream carries many sends on one stream: each is Send's checks,
// authorization and operation (same errors, same idempotency by
// client_message_id, same two copies before the answer), processed
// concurrently and answered as it completes, with its request's id.
//
// Both sides may batch (chatpb.SendBatchHeader): the core announces in the
// stream's header that it takes requests with more, and answers with more
// (the results ready together in one stream message) when the client's
// metadata announced it.
func (c *Core) SendStream(stream chatpb.Chat_SendStreamServer) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	batches := len(md.Get(chatpb.SendBatchHeader)) > 0
	if err := stream.SendHeader(metadata.Pairs(chatpb.SendBatchHeader, "1")); err != nil {
		return err
	}
	return c.sendStream(ctx, stream.Recv, stream.Send, batches)
}

// Leave removes a participant. A customer leaving ends the session (reason
// "customer-left"); an agent, supervisor or system participant ends it with
// end_session (reason "closed"). Leaving twice returns the first leave's index.
func (c *Core) Leave(ctx context.Context, req *chatpb.LeaveRequest) (*chatpb.LeaveResponse, error) {
	s, keyHash, err := c.checkAuth(ctx, req.Auth)
	if err != nil {
		return nil, err
	}
	idx, err := c.leave(ctx, s, req.Auth.ParticipantId, keyHash, req.EndSession)
	if err != nil {
		return nil, err
	}
	return &chatpb.LeaveResponse{Index: idx, Alias: c.cfg.Name}, nil
}

// Events returns the events from from_index on that the participant may see,
// at most 1000 per call; next_index is where to continue.
func (c *Core) Events(ctx context.Context, req *chatpb.EventsRequest) (*chatpb.EventsResponse, error) {
	s, keyHash, err := c.checkAuth(ctx, req.Auth)
	if err != nil {
		return nil, err
	}
	return c.events(s, req.Auth.ParticipantId, keyHash, max(req.FromIndex, 1))
}

// Subscribe streams the events from from_index on that the participant may
// see, then the live tail, until the session ends (after SESSION_ENDED), the
// participant leaves (after its PARTICIPANT_LEFT), the client goes away, or
// this core stops being primary (UNAVAILABLE: resume elsewhere from the last
// index). A subscriber too slow for fan-out catches up from the log inside
// the same stream, so it never sees a gap.
func (c *Core) Subscribe(req *chatpb.SubscribeRequest, stream chatpb.Chat_SubscribeServer) error {
	return c.subscribe(stream.Context(), req, stream.Send, nil)
}

// SubscribeStream carries many subscriptions on one stream: each member is
// Subscribe's gate, checks, authorization and tail (same events, same
// ending status), and the events of all members ready at once go out in
// one batch.
func (c *Core) SubscribeStream(stream chatpb.Chat_SubscribeStreamServer) error {
	return c.subscribeStream(stream.Context(), stream.Recv, stream.Send)
}

// WatchSessions streams session changes to the Interaction Server: first
// KIND_STARTED for every live session, then STARTED, UPDATED and ENDED as
// they happen. A watcher too slow to keep up is cut off with UNAVAILABLE and
// re-watches (it gets every live session again).
func (c *Core) WatchSessions(req *chatpb.WatchSessionsRequest, stream chatpb.Chat_WatchSessionsServer) error {
	if !c.tokenOK(req.ServiceToken) {
		return errBadToken
	}
	return c.watchSessions(stream.Context(), stream.Send)
}

// Status reports role, epoch, sessions and replication state. Any core answers it.
func (c *Core) Status(ctx context.Context, _ *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	return c.status(), nil
}
