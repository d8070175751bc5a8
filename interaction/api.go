package interaction

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/interaction/auth"
	"github.com/hachat/hachat/sse"
)

// heartbeat is how long a push connection may stay idle before it gets a
// comment line (package sse's rule), so that proxies keep it open and a
// dead one is noticed; it is also how often the session is checked.
const heartbeat = 15 * time.Second

// errorJSON is the body of every error answer.
type errorJSON struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// statusOf maps an error class to its HTTP status and short code.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, "badRequest"
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, "notFound"
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, "conflict"
	case errors.Is(err, ErrTooMany):
		return http.StatusTooManyRequests, "tooMany"
	case errors.Is(err, ErrCoreUnavailable):
		return http.StatusServiceUnavailable, "coreUnavailable"
	default:
		return http.StatusBadGateway, "coreError"
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing to do
}

func writeErr(w http.ResponseWriter, err error) {
	code, short := statusOf(err)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hachat-agent"`)
	}
	var te *auth.ThrottledError
	if errors.As(err, &te) {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(1, (te.RetryAfter+time.Second-1)/time.Second))))
	}
	if aw, ok := w.(*auditWriter); ok {
		aw.err = err
	}
	writeJSON(w, code, errorJSON{Error: err.Error(), Code: short})
}

// readBody reads a request body of at most maxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, badRequest("body larger than %d bytes", maxBodyBytes)
		}
		return nil, badRequest("read body: %v", err)
	}
	return b, nil
}

// authed is a handler that knows the caller's agent id.
type authed func(w http.ResponseWriter, r *http.Request, agent string)

// auth resolves the bearer token (or, with query, the token query parameter
// that EventSource needs) to an agent.
func (s *Server) auth(query bool, h authed) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r, query)
		if tok == "" {
			writeErr(w, fmt.Errorf("%w: missing bearer token", ErrUnauthorized))
			return
		}
		ident, err := s.session(tok)
		if err != nil {
			writeErr(w, err)
			return
		}
		noteCaller(w, ident.ID)
		h(w, r, ident.ID)
	}
}

// bearer returns the request's bearer token (with query, the token query
// parameter too, which EventSource needs).
func bearer(r *http.Request, query bool) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok && query {
		tok = r.URL.Query().Get("token")
	}
	return strings.TrimSpace(tok)
}

// chatID reads and checks the {chatId} path value.
func chatID(r *http.Request) (string, error) {
	id := r.PathValue("chatId")
	return id, checkChatID(id)
}

// routes builds the HTTP routes.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /agent", desktopHandler())
	mux.Handle("GET /agent/{file}", desktopHandler())

	mux.HandleFunc("POST /agent/v1/login", s.handleLogin)
	mux.HandleFunc("GET /agent/v1/login-options", s.handleLoginOptions)
	mux.HandleFunc("GET /agent/v1/oidc/login", s.handleOIDCStart)
	mux.HandleFunc("GET /agent/v1/oidc/callback", s.handleOIDCCallback)
	mux.HandleFunc("POST /agent/v1/logout", s.auth(false, s.handleLogout))
	mux.HandleFunc("POST /agent/v1/ready", s.auth(false, s.handleReady(true)))
	mux.HandleFunc("POST /agent/v1/notready", s.auth(false, s.handleReady(false)))
	mux.HandleFunc("GET /agent/v1/state", s.auth(false, s.handleState))
	mux.HandleFunc("GET /agent/v1/events", s.auth(true, s.handleEvents))
	mux.HandleFunc("POST /agent/v1/offers/{chatId}/accept", s.auth(false, s.handleAccept))
	mux.HandleFunc("POST /agent/v1/offers/{chatId}/reject", s.auth(false, s.handleReject))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/send", s.auth(false, s.handleSend))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/typing", s.auth(false, s.handleTyping))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/pushUrl", s.auth(false, s.handlePushURL))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/transfer", s.auth(false, s.handleTransfer))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/leave", s.auth(false, s.handleLeave(false)))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/close", s.auth(false, s.handleLeave(true)))
	mux.HandleFunc("GET /agent/v1/chats", s.auth(false, s.handleChats))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/monitor", s.auth(false, s.handleSupervise(ModeMonitor)))
	mux.HandleFunc("POST /agent/v1/chats/{chatId}/coach", s.auth(false, s.handleSupervise(ModeCoach)))
	return s.traced(s.haFront(securityHeaders(s.audit(apiErrors(mux)))))
}

// traced wraps h in a server span per request (otelhttp, named after the
// method and path) when spans are exported (telemetry.Tracing). Otherwise
// it only keeps a request's incoming trace context (telemetry.TraceContext,
// for the log lines): otelhttp with the no-op tracer would still wrap every
// request, and every write and flush of the push channels, for nothing.
func (s *Server) traced(h http.Handler) http.Handler {
	if !s.tel.Tracing() {
		return s.tel.TraceContext(h)
	}
	return otelhttp.NewHandler(h, "interaction",
		otelhttp.WithTracerProvider(s.tel.Tracer), otelhttp.WithPropagators(s.tel.Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }))
}

// apiErrors answers unknown agent API routes (404) and wrong methods (405)
// with the JSON error body every other agent API error has.
func apiErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" || !strings.HasPrefix(r.URL.Path, "/agent/v1/") {
			mux.ServeHTTP(w, r)
			return
		}
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, p := mux.Handler(r2); p != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, errorJSON{Error: fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path), Code: "methodNotAllowed"})
			return
		}
		writeErr(w, fmt.Errorf("%w: no route %s %s", ErrNotFound, r.Method, r.URL.Path))
	})
}

// healthz answers 200 while the server runs: the desktop and the agent API
// work (and the queue resumes by itself) even while the chat core is away.
// The body says whether the session watch is connected.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	up := s.coreUp
	s.mu.Unlock()
	core := "down"
	if up {
		core = "connected"
	}
	fmt.Fprintf(w, "ok core=%s\n", core)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, agent string) {
	if err := s.logout(agent); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) handleReady(ready bool) authed {
	return func(w http.ResponseWriter, r *http.Request, agent string) {
		st, err := s.setReady(agent, ready)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *Server) handleState(w http.ResponseWriter, r *http.Request, agent string) {
	s.mu.Lock()
	st := s.stateLocked(agent)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleAccept(w http.ResponseWriter, r *http.Request, agent string) {
	id, err := chatID(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	cj, err := s.accept(r.Context(), agent, id)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cj)
}

func (s *Server) handleReject(w http.ResponseWriter, r *http.Request, agent string) {
	id, err := chatID(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := s.reject(agent, id); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// sendJSON answers the send, typing and pushUrl routes.
type sendJSON struct {
	Index     uint64 `json:"index"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// chatCall reads {chatId} and the body and runs fn.
func chatCall(fn func(ctx context.Context, agent, chat string, body []byte) (any, error)) authed {
	return func(w http.ResponseWriter, r *http.Request, agent string) {
		id, err := chatID(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		body, err := readBody(w, r)
		if err != nil {
			writeErr(w, err)
			return
		}
		out, err := fn(r.Context(), agent, id, body)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request, agent string) {
	chatCall(func(ctx context.Context, agent, chat string, body []byte) (any, error) {
		req, err := decodeSend(body)
		if err != nil {
			return nil, err
		}
		resp, err := s.send(ctx, agent, chat, chatpb.EventKind_EVENT_KIND_MESSAGE, req.Message, req.ClientMessageID)
		if err != nil {
			return nil, err
		}
		return sendJSON{Index: resp.GetIndex(), Duplicate: resp.GetDuplicate()}, nil
	})(w, r, agent)
}

func (s *Server) handleTyping(w http.ResponseWriter, r *http.Request, agent string) {
	chatCall(func(ctx context.Context, agent, chat string, body []byte) (any, error) {
		typing, err := decodeTyping(body)
		if err != nil {
			return nil, err
		}
		kind := chatpb.EventKind_EVENT_KIND_TYPING_STOPPED
		if typing {
			kind = chatpb.EventKind_EVENT_KIND_TYPING_STARTED
		}
		resp, err := s.send(ctx, agent, chat, kind, "", "")
		if err != nil {
			return nil, err
		}
		return sendJSON{Index: resp.GetIndex()}, nil
	})(w, r, agent)
}

func (s *Server) handlePushURL(w http.ResponseWriter, r *http.Request, agent string) {
	chatCall(func(ctx context.Context, agent, chat string, body []byte) (any, error) {
		req, err := decodePushURL(body)
		if err != nil {
			return nil, err
		}
		resp, err := s.send(ctx, agent, chat, chatpb.EventKind_EVENT_KIND_PUSH_URL, req.URL, req.ClientMessageID)
		if err != nil {
			return nil, err
		}
		return sendJSON{Index: resp.GetIndex(), Duplicate: resp.GetDuplicate()}, nil
	})(w, r, agent)
}

func (s *Server) handleTransfer(w http.ResponseWriter, r *http.Request, agent string) {
	chatCall(func(ctx context.Context, agent, chat string, body []byte) (any, error) {
		req, err := decodeTransfer(body)
		if err != nil {
			return nil, err
		}
		if err := s.transfer(ctx, agent, chat, req.ToAgentID); err != nil {
			return nil, err
		}
		return struct {
			ChatID    string `json:"chatId"`
			ToAgentID string `json:"toAgentId"`
		}{chat, req.ToAgentID}, nil
	})(w, r, agent)
}

func (s *Server) handleLeave(end bool) authed {
	return func(w http.ResponseWriter, r *http.Request, agent string) {
		id, err := chatID(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		if err := s.leave(r.Context(), agent, id, end); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	}
}

func (s *Server) handleChats(w http.ResponseWriter, r *http.Request, agent string) {
	if err := s.requireSupervisor(agent); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Chats []liveChatJSON `json:"chats"`
	}{s.liveChats()})
}

func (s *Server) handleSupervise(mode string) authed {
	return func(w http.ResponseWriter, r *http.Request, agent string) {
		id, err := chatID(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		cj, err := s.supervise(r.Context(), agent, id, mode)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, cj)
	}
}

// handleEvents is the push channel: Server-Sent Events, starting with the
// full state and the cached transcript of every chat, then live updates.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request, agent string) {
	sub, err := s.subscribe(agent)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer s.hub.remove(agent, sub)
	out, err := sse.Start(w, sse.Options{Heartbeat: heartbeat})
	if err != nil {
		return
	}
	defer out.Stop()
	s.log.Debug("push connection opened", "agent", agent)
	// The session is checked on a fixed tick, busy or not; the heartbeat
	// comment goes out when the stream is idle (the sse package's rule).
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			// An open channel keeps its session alive; a revoked or expired
			// one (or a removed account) ends the channel.
			if _, err := s.session(bearer(r, true)); err != nil {
				return
			}
		case <-out.Due():
			if !out.Idle() {
				continue
			}
			if err := out.Ping(); err != nil {
				return
			}
		case m, ok := <-sub.ch:
			if !ok {
				return // dropped (too slow) or logged out
			}
			if err := writeReady(out, sub.ch, m); err != nil {
				return // closed, or too slow to take an event in time
			}
		}
	}
}

// maxBurst bounds the events of one write on an agent's push channel.
const maxBurst = 256

// writeReady writes m and the events already waiting behind it on ch (up
// to maxBurst in all) in one write: under load an agent's channel carries
// the events of many chats, and one flush per burst instead of one per
// event saves a syscall for each. A closed ch ends the burst; the caller's
// next receive sees it.
func writeReady(out *sse.Writer, ch <-chan sseMsg, m sseMsg) error {
	if err := out.Queue("", m.event, m.data); err != nil {
		return err
	}
	for range maxBurst - 1 {
		select {
		case m, ok := <-ch:
			if !ok {
				return out.Flush()
			}
			if err := out.Queue("", m.event, m.data); err != nil {
				return err
			}
			continue
		default:
		}
		break
	}
	return out.Flush()
}
