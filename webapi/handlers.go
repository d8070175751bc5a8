package webapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/jsonenc"
)

// Header values of every JSON answer, shared (see edge.SecurityHeaders).
var (
	jsonType = []string{"application/json; charset=utf-8"}
	noStore  = []string{"no-store"}
)

// writeJSON writes a response body with the given HTTP status.
func writeJSON(w http.ResponseWriter, code int, resp *response) {
	h := w.Header()
	h["Content-Type"] = jsonType
	h["Cache-Control"] = noStore
	w.WriteHeader(code)
	// As json.NewEncoder(w).Encode(resp) writes it: the JSON and a newline.
	buf := answers.Get().(*[]byte)
	b := append(resp.appendJSON((*buf)[:0]), '\n')
	_, _ = w.Write(b)
	if b = jsonenc.Reuse(b); b != nil { // a long transcript's buffer is not kept
		*buf = b
		answers.Put(buf)
	}
}

// writeError answers err per classify.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	f := classify(err)
	if f.Code == codeInternal {
		s.log.ErrorContext(r.Context(), "request failed", "route", r.Pattern, "chat", r.PathValue("chatId"), "err", err)
	} else {
		s.log.DebugContext(r.Context(), "request refused", "route", r.Pattern, "chat", r.PathValue("chatId"), "code", f.Code, "err", err)
	}
	var sl *startLimitError
	switch {
	case errors.As(err, &sl):
		w.Header().Set("Retry-After", strconv.Itoa(int(sl.d.RetryAfter/time.Second)))
	case f.HTTP == http.StatusServiceUnavailable || f.HTTP == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, f.HTTP, &response{
		StatusCode: f.Status,
		ChatEnded:  f.ChatEnded,
		Errors:     []apiError{{Code: f.Code, Advice: f.Advice}},
	})
}

// refuseOrigin answers a request or preflight from a site that is not on
// allowed-origins: 403 in the GMS error shape, without any CORS header.
func (s *Server) refuseOrigin(w http.ResponseWriter, r *http.Request) {
	s.metrics.refused.WithLabelValues("origin").Inc()
	s.log.WarnContext(r.Context(), "cross-site request refused: origin not allowed", "origin", r.Header.Get("Origin"), "method", r.Method,
		"path", r.URL.Path, "client", s.proxies.ClientAddr(r).String())
	writeJSON(w, http.StatusForbidden, &response{
		StatusCode: statusUnrecovered,
		Errors:     []apiError{{Code: codeOrigin, Advice: "pages of this origin may not call the chat API (allowed-origins)"}},
	})
}

// handleNoRoute answers API paths that match no route.
func (s *Server) handleNoRoute(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusNotFound, &response{
		StatusCode: statusUnrecovered,
		Errors: []apiError{{Code: codeNotFoundRoute, Advice: r.Method + " " + r.URL.Path +
			" is not an API route: POST /genesys/2/chat/{service}[/{chatId}/send|refresh|startTyping|stopTyping|customNotice|pushUrl|disconnect], GET .../{chatId}/events"}},
	})
}

// call makes one call to the chat core, bounded by core-timeout. webapi does
// not retry: the chat client (package chatclient) is the one retry layer, and
// retries within this deadline as its policy says, every retry of a send
// with the same client message id. Its retries are counted here.
//
// Out of the edge's rotation (LeaveRotation) it answers at once with
// Unavailable (the client resends, through the edge, to another instance),
// and a call in flight when the instance leaves gives up then.
func (s *Server) call(ctx context.Context, method string, fn func(ctx context.Context) error) error {
	gone, err := s.rotation.state()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CoreTimeout)
	defer cancel()
	defer context.AfterFunc(gone, cancel)()
	obs := s.retried
	if trace.SpanContextFromContext(ctx).IsValid() {
		// The request is traced: its retries' log lines carry its trace.
		obs = func(method string, attempt int, err error) { s.retry(ctx, method, attempt, err) }
	}
	return fn(chatclient.WithRetryObserver(ctx, obs))
}

// retry counts and logs one retry the chat client makes of a call.
func (s *Server) retry(ctx context.Context, method string, attempt int, err error) {
	s.metrics.coreRetries.WithLabelValues(method).Inc()
	s.log.DebugContext(ctx, "chat core unavailable, the chat client retries", "method", method, "attempt", attempt, "err", err)
}

// parseChat decodes and authenticates-checks a per-chat request.
func (s *Server) parseChat(w http.ResponseWriter, r *http.Request) (chatRequest, *chatpb.Auth, bool) {
	req, err := parseRequest(w, r, s.cfg.MaxBody)
	if err == nil {
		err = req.validateAuth()
	}
	chatID := r.PathValue("chatId")
	if err == nil && !validChatID(chatID) {
		err = errInvalidChatID
	}
	if err != nil {
		s.writeError(w, r, err)
		return req, nil, false
	}
	s.countLenient(req)
	return req, &chatpb.Auth{SessionId: chatID, ParticipantId: req.UserID, SecureKey: req.SecureKey}, true
}

// countLenient counts the GMS client habits a request relied on.
func (s *Server) countLenient(req chatRequest) {
	if req.PositionIgnored {
		s.metrics.lenient.WithLabelValues("position-placeholder").Inc()
	}
	if req.MislabelledJSON {
		s.metrics.lenient.WithLabelValues("json-as-form").Inc()
	}
}

// chatAnswer starts the answer to a per-chat call as GMS shapes it: the
// chat interaction (chatId, userId, secureKey, and the alias: the one the
// client sent, else the serving core's, served) with statusCode 0; the
// handler adds messages, nextPosition and chatEnded.
func chatAnswer(req chatRequest, auth *chatpb.Auth, served string) *response {
	alias := req.Alias
	if alias == "" {
		alias = served
	}
	return &response{
		StatusCode: statusOK,
		ChatID:     auth.GetSessionId(),
		UserID:     auth.GetParticipantId(),
		SecureKey:  auth.GetSecureKey(),
		Alias:      alias,
	}
}

// errInvalidChatID reports a bad chatId path segment.
var errInvalidChatID = status.Error(codes.NotFound, "bad chat id")

// transcript fills resp with the messages from position pos on. A failure is
// logged and leaves resp without messages: the call it follows succeeded.
func (s *Server) transcript(ctx context.Context, auth *chatpb.Auth, pos uint64, resp *response) error {
	if pos == 0 {
		pos = 1
	}
	var er *chatpb.EventsResponse
	err := s.call(ctx, "Events", func(ctx context.Context) error {
		var err error
		er, err = s.core.Events(ctx, &chatpb.EventsRequest{Auth: auth, FromIndex: pos})
		return err
	})
	if err != nil {
		return err
	}
	resp.Messages = toMessages(er.GetEvents())
	resp.NextPosition = er.GetNextIndex()
	if resp.Alias == "" {
		resp.Alias = er.GetAlias()
	}
	resp.ChatEnded = resp.ChatEnded || er.GetEnded()
	return nil
}

// handleStart starts a chat: POST /genesys/2/chat/{service}. The start
// limits come first, before the body is read: a flood costs a map lookup.
func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	client := s.proxies.ClientAddr(r)
	if d := s.starts.Allow(client); !d.Allowed {
		s.metrics.refused.WithLabelValues(d.Scope.String() + "-start-limit").Inc()
		s.log.WarnContext(r.Context(), "chat start refused: limit reached", "scope", d.Scope.String(), "client", client.String(), "retry_after", d.RetryAfter)
		s.writeError(w, r, &startLimitError{d: d})
		return
	}
	req, err := parseRequest(w, r, s.cfg.MaxBody)
	if err == nil {
		s.countLenient(req)
		err = req.validateStart()
	}
	service := r.PathValue("service")
	if err == nil {
		err = checkLen("service", service, maxNameLen)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// One request id for every attempt: a retry after a lost answer gets
	// the first session back instead of starting a second one.
	start := &chatpb.StartSessionRequest{
		Service:         service,
		Nickname:        req.Nickname,
		FirstName:       req.FirstName,
		LastName:        req.LastName,
		Subject:         req.Subject,
		EmailAddress:    req.EmailAddress,
		UserData:        req.UserData,
		ClientRequestId: chatclient.NewClientMessageID(),
	}
	var jr *chatpb.JoinResponse
	err = s.call(r.Context(), "StartSession", func(ctx context.Context) error {
		var err error
		jr, err = s.core.StartSession(ctx, start)
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	auth := jr.GetAuth()
	resp := &response{
		StatusCode:   statusOK,
		ChatID:       auth.GetSessionId(),
		UserID:       auth.GetParticipantId(),
		SecureKey:    auth.GetSecureKey(),
		Alias:        jr.GetAlias(),
		NextPosition: jr.GetNextIndex(),
	}
	if err := s.transcript(r.Context(), auth, 1, resp); err != nil {
		s.log.WarnContext(r.Context(), "chat started but its transcript could not be read", "chat", auth.GetSessionId(), "err", err)
	}
	s.log.InfoContext(r.Context(), "chat started", "chat", auth.GetSessionId(), "service", service, "user", auth.GetParticipantId(), "alias", jr.GetAlias())
	writeJSON(w, http.StatusOK, resp)
}

// newClientMessageID makes an idempotency key for a send that came without
// one, so that webapi's own retries are applied at most once.
func newClientMessageID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "webapi-" + hex.EncodeToString(b[:])
}

// send appends one event from the customer and answers with the index it
// got and, when transcriptPosition was given, the messages since then.
func (s *Server) send(w http.ResponseWriter, r *http.Request, req chatRequest, auth *chatpb.Auth, sr *chatpb.SendRequest) {
	sr.Auth = auth
	if sr.ClientMessageId == "" {
		sr.ClientMessageId = newClientMessageID()
	}
	kind := eventTypes[sr.Kind]
	start := time.Now()
	var out *chatpb.SendResponse
	err := s.call(r.Context(), "Send", func(ctx context.Context) error {
		var err error
		out, err = s.core.Send(ctx, sr)
		return err
	})
	outcome := "ok"
	if err != nil {
		outcome = codeName(err)
	}
	s.metrics.sendLatency.WithLabelValues(kind, outcome).Observe(time.Since(start).Seconds())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp := chatAnswer(req, auth, out.GetAlias())
	resp.Index, resp.Duplicate = out.GetIndex(), out.GetDuplicate()
	// Without transcriptPosition, nextPosition is the event's own index: a
	// client that refreshes from it (as GMS clients do with the nextPosition
	// of any answer) gets its own message back and everything after it.
	resp.NextPosition = out.GetIndex()
	if req.HasPosition {
		if err := s.transcript(r.Context(), auth, req.TranscriptPosition, resp); err != nil {
			s.log.WarnContext(r.Context(), "send applied but the transcript could not be read", "chat", auth.GetSessionId(), "err", err)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// codeName is a short label for an error's outcome.
func codeName(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return "error"
}

// handleSend sends a message: POST .../{chatId}/send.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	if req.Message == "" {
		s.writeError(w, r, errorf("message is required"))
		return
	}
	s.send(w, r, req, auth, &chatpb.SendRequest{
		Kind:            chatpb.EventKind_EVENT_KIND_MESSAGE,
		Text:            req.Message,
		ClientMessageId: req.ClientMessageID,
	})
}

// handleTyping reports typing started or stopped: POST .../startTyping and
// .../stopTyping.
func (s *Server) handleTyping(started bool) http.HandlerFunc {
	kind := chatpb.EventKind_EVENT_KIND_TYPING_STOPPED
	if started {
		kind = chatpb.EventKind_EVENT_KIND_TYPING_STARTED
	}
	return func(w http.ResponseWriter, r *http.Request) {
		req, auth, ok := s.parseChat(w, r)
		if !ok {
			return
		}
		s.send(w, r, req, auth, &chatpb.SendRequest{Kind: kind, Text: req.Message, ClientMessageId: req.ClientMessageID})
	}
}

// handleCustomNotice sends a custom notice: POST .../customNotice.
func (s *Server) handleCustomNotice(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	var attrs map[string]string
	if req.NoticeType != "" {
		attrs = map[string]string{"noticeType": req.NoticeType}
	}
	s.send(w, r, req, auth, &chatpb.SendRequest{
		Kind:            chatpb.EventKind_EVENT_KIND_NOTICE,
		Text:            req.Message,
		ClientMessageId: req.ClientMessageID,
		Attrs:           attrs,
	})
}

// handlePushURL pushes a URL to the other participants: POST .../pushUrl.
func (s *Server) handlePushURL(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	if err := validatePushURL(req.PushURL); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.send(w, r, req, auth, &chatpb.SendRequest{
		Kind:            chatpb.EventKind_EVENT_KIND_PUSH_URL,
		Text:            req.PushURL,
		ClientMessageId: req.ClientMessageID,
	})
}

// handleRefresh returns the transcript from transcriptPosition (default 1):
// POST .../refresh.
func (s *Server) handleRefresh(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	resp := chatAnswer(req, auth, "")
	if err := s.transcript(r.Context(), auth, req.TranscriptPosition, resp); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// handleDisconnect makes the customer leave the chat: POST .../disconnect.
// Leaving a chat that has already ended succeeds.
func (s *Server) handleDisconnect(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	var lr *chatpb.LeaveResponse
	err := s.call(r.Context(), "Leave", func(ctx context.Context) error {
		var err error
		lr, err = s.core.Leave(ctx, &chatpb.LeaveRequest{Auth: auth})
		return err
	})
	if err != nil && status.Code(err) != codes.FailedPrecondition {
		s.writeError(w, r, err)
		return
	}
	s.log.InfoContext(r.Context(), "customer left the chat", "chat", auth.GetSessionId(), "user", auth.GetParticipantId())
	resp := chatAnswer(req, auth, lr.GetAlias())
	resp.ChatEnded = true
	resp.NextPosition = lr.GetIndex() // the ParticipantLeft event; 0 (omitted) if the chat had ended before
	writeJSON(w, http.StatusOK, resp)
}
