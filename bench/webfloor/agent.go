package webfloor

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/hachat/hachat/sse"
)

// agent is one logged-in agent and its push channel.
type agent struct {
	id string

	mu   sync.Mutex
	push *stream // nil when closed
}

// send hands ev to the agent's push channel; without one (or once it
// ended) the event is dropped.
func (a *agent) send(ctx context.Context, ev event) error {
	a.mu.Lock()
	st := a.push
	a.mu.Unlock()
	if st == nil {
		return nil
	}
	return ignoreGone(st.push(ctx, ev))
}

// handleLogin logs an agent in: POST /agent/v1/login with the JSON
// {"agentId", "password"}, both required, any password taken; the answer
// is {"token": ...}, a bearer token for the other agent routes. A second
// login of the same agent gets another token for the same agent.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var in struct {
		AgentID  string `json:"agentId"`
		Password string `json:"password"`
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxForm))
	if err != nil || json.Unmarshal(body, &in) != nil {
		writeAgentError(w, http.StatusBadRequest, "body is not a JSON login of at most 64 KiB")
		return
	}
	if in.AgentID == "" || in.Password == "" {
		writeAgentError(w, http.StatusBadRequest, "agentId and password are required")
		return
	}
	token := newID()
	s.mu.Lock()
	ag := s.agents[in.AgentID]
	if ag == nil {
		ag = &agent{id: in.AgentID}
		s.agents[in.AgentID] = ag
	}
	s.tokens[token] = ag
	s.mu.Unlock()
	writeAgentJSON(w, struct {
		Token string `json:"token"`
	}{token})
}

// authed passes the agent of the request's bearer token to h, or answers
// 401.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, *agent)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		s.mu.RLock()
		ag := s.tokens[token]
		s.mu.RUnlock()
		if !ok || ag == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hachat-agent"`)
			writeAgentError(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		}
		h(w, r, ag)
	}
}

// handleReady makes the agent ready: POST /agent/v1/ready. New chats are
// offered to the ready agents in turn.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request, ag *agent) {
	s.mu.Lock()
	found := false
	for _, a := range s.ready {
		found = found || a == ag
	}
	if !found {
		s.ready = append(s.ready, ag)
	}
	s.mu.Unlock()
	writeAgentJSON(w, struct {
		State string `json:"state"`
	}{"ready"})
}

// handleAgentEvents serves the agent's push channel: GET /agent/v1/events,
// with an "offer" event per chat offered and a "chat" event per message of
// the chats it accepted, and the comment ": ping" when idle. A channel
// opened again replaces the one before.
func (s *Server) handleAgentEvents(w http.ResponseWriter, r *http.Request, ag *agent) {
	newStream(agentBuffer, agentBurst).serveIn(r.Context(), w, &ag.mu, &ag.push, (*sse.Writer).Ping)
}

// handleAccept accepts a chat offered to the agent: POST
// /agent/v1/offers/{chatId}/accept; from then on its messages reach the
// agent's push channel.
func (s *Server) handleAccept(w http.ResponseWriter, r *http.Request, ag *agent) {
	s.mu.RLock()
	c := s.chats[r.PathValue("chatId")]
	s.mu.RUnlock()
	if c == nil {
		writeAgentError(w, http.StatusNotFound, "no such chat")
		return
	}
	c.mu.Lock()
	ok := c.offered == ag
	if ok {
		c.agent = ag
	}
	c.mu.Unlock()
	if !ok {
		writeAgentError(w, http.StatusConflict, "the chat is not offered to this agent")
		return
	}
	writeAgentJSON(w, struct {
		ChatID string `json:"chatId"`
	}{c.id})
}

// writeAgentJSON writes a 200 answer of the agent API.
func writeAgentJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v) // the floor's answers always encode
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}

// writeAgentError writes an error answer of the agent API.
func writeAgentError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
