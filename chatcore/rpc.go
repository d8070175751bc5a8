package chatcore

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
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
	// Whether this core serves now (the gate in server.go and the operations).
	errNotPrimary = status.Error(codes.Unavailable, "this chat core is not primary")
	errDraining   = status.Error(codes.Unavailable, "this chat core is draining for a switchover")
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
		return nil, status.Error(codes.AlreadyExists, "this client_request_id already joined, and its secure key is no longer held")
	}
	c.m.requestRetries.Inc()
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: m.P.Id, SecureKey: m.SecureKey},
		Alias: c.cfg.Name, NextIndex: m.Joined + 1}, nil
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
	return &chatpb.SendResponse{Index: idx, Duplicate: dup}, nil
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
	return &chatpb.LeaveResponse{Index: idx}, nil
}

// touch records client activity of pid (flex-disconnect-timeout).
func (c *Core) touch(s *session, pid string) {
	s.mu.Lock()
	if m := s.log.State.Members[pid]; m != nil {
		m.LastSeen = c.now().UnixNano()
	}
	s.mu.Unlock()
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
	s, keyHash, err := c.checkAuth(stream.Context(), req.Auth)
	if err != nil {
		return err
	}
	roleCtx := c.role.Stream()
	ctx := stream.Context()
	next := max(req.FromIndex, 1)

	s.mu.Lock()
	m, err := authorize(&s.log.State, req.Auth.ParticipantId, keyHash)
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
		s.mu.Unlock()
		c.m.subscribers.Dec()
	}()

	// send delivers one event; done reports the end of the stream.
	send := func(ev *chatpb.Event) (done bool, err error) {
		next = ev.Index + 1
		if sessionlog.VisibleTo(viewer, ev) {
			if err := stream.Send(ev); err != nil {
				return true, err
			}
		}
		end := ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED ||
			(ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.From.GetId() == viewer.Id)
		return end, nil
	}
	for {
		// Catch up from the log; register for fan-out once caught up.
		s.mu.Lock()
		batch := s.log.From(next)
		var sub *subscriber
		if len(batch) <= c.cfg.SubscriberBuffer && !s.log.State.Ended && !s.removed {
			sub = &subscriber{ch: make(chan *chatpb.Event, c.cfg.SubscriberBuffer)}
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
					continue
				}
				if done, err := send(ev); done {
					c.unsubscribe(s, sub)
					return err
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

// WatchSessions streams session changes to the Interaction Server: first
// KIND_STARTED for every live session, then STARTED, UPDATED and ENDED as
// they happen. A watcher too slow to keep up is cut off with UNAVAILABLE and
// re-watches (it gets every live session again).
func (c *Core) WatchSessions(req *chatpb.WatchSessionsRequest, stream chatpb.Chat_WatchSessionsServer) error {
	if !c.tokenOK(req.ServiceToken) {
		return errBadToken
	}
	roleCtx := c.role.Stream()
	w := &watcher{ch: make(chan *chatpb.SessionChange, 1024)}
	c.watch.add(w)
	defer c.watch.remove(w)

	c.mu.RLock()
	all := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		all = append(all, s)
	}
	c.mu.RUnlock()
	for _, s := range all {
		s.mu.Lock()
		var ch *chatpb.SessionChange
		if !s.log.State.Ended && !s.removed && s.log.State.Customer() != nil {
			ch = c.changeLocked(s, chatpb.SessionChange_KIND_STARTED)
		}
		s.mu.Unlock()
		if ch != nil {
			if err := stream.Send(ch); err != nil {
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
			if err := stream.Send(ch); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
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

// Status reports role, epoch, sessions and replication state. Any core answers it.
func (c *Core) Status(ctx context.Context, _ *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	return c.status(), nil
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
		Draining: c.role.Draining() || c.role.Unmerged(), ReplicationLag: c.repl.lag(),
	}
	if l := c.repl.current(); l != nil {
		st.Backup = l.name
	}
	if c.members != nil {
		for _, m := range c.members.Members() {
			st.Members = append(st.Members, &chatpb.Member{Name: m.Name, Role: m.Meta.Role, Epoch: m.Meta.Epoch,
				GrpcAddr: m.Meta.GRPCAddr, State: m.State.String()})
		}
	}
	return st
}
