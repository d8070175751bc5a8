package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
)

// AgentAPI is a client of the Interaction Server's agent API (docs/api.md):
// bearer-token JSON routes under /agent/v1 and the push channel
// GET /agent/v1/events.
type AgentAPI struct {
	// Base is the interaction URL, e.g. http://127.0.0.1:8081.
	Base string
	// HTTP is the client used; its timeout bounds one call.
	HTTP *http.Client
	// Accounts are the cluster's accounts with their passwords (from the
	// plan's credentials or the demo's state file); Login uses them.
	Accounts []demo.AccountCredential
}

// Agents returns an agent API client for the cluster's interaction server,
// knowing the cluster's account passwords.
func (c *Cluster) Agents() *AgentAPI {
	return &AgentAPI{Base: c.InteractionURL(), HTTP: &http.Client{Timeout: 15 * time.Second}, Accounts: c.creds.Accounts}
}

// Password returns the password of account user; "" when the harness does
// not know the account.
func (a *AgentAPI) Password(user string) string {
	cred, _ := demo.Credentials{Accounts: a.Accounts}.Account(user)
	return cred.Password
}

// AgentError is the body of an agent API error answer.
type AgentError struct {
	HTTPStatus int    `json:"-"`
	Message    string `json:"error"`
	Code       string `json:"code"`
}

// Error renders the status, the short code and the message.
func (e *AgentError) Error() string {
	return fmt.Sprintf("agent API: HTTP %d %s: %s", e.HTTPStatus, e.Code, e.Message)
}

// Retryable reports an answer worth resending as is (core unavailable, too many).
func (e *AgentError) Retryable() bool {
	return e.HTTPStatus == http.StatusServiceUnavailable || e.HTTPStatus == http.StatusTooManyRequests
}

// Do sends a JSON body (nil for none; []byte is sent raw) with token as
// bearer and decodes a 200 answer into out. A non-200 answer is an *AgentError.
func (a *AgentAPI) Do(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		ae := &AgentError{HTTPStatus: resp.StatusCode}
		if err := json.Unmarshal(b, ae); err != nil || ae.Message == "" {
			ae.Message = fmt.Sprintf("(not an agent API error body) %.200q", b)
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode %.200q: %w", method, path, b, err)
		}
	}
	return nil
}

// AgentState is GET /agent/v1/state (and the answer of login, ready, notready).
type AgentState struct {
	Agent struct {
		ID       string `json:"agentId"`
		Nickname string `json:"nickname"`
		Role     string `json:"role"`
		State    string `json:"state"`
	} `json:"agent"`
	Chats []struct {
		ChatID        string `json:"chatId"`
		Mode          string `json:"mode"`
		ParticipantID string `json:"participantId"`
		NextIndex     uint64 `json:"nextIndex"`
		Connected     bool   `json:"connected"`
		// UserData is what the customer's page attached at chat start.
		UserData map[string]string `json:"userData"`
	} `json:"chats"`
	Offers []struct {
		ChatID   string            `json:"chatId"`
		Customer string            `json:"customer"`
		Subject  string            `json:"subject"`
		UserData map[string]string `json:"userData"`
	} `json:"offers"`
	Queue struct {
		Size int `json:"size"`
	} `json:"queue"`
	CoreConnected bool `json:"coreConnected"`
}

// AgentEvent is one chat event as the agent API shows it.
type AgentEvent struct {
	ChatID string `json:"chatId"`
	Index  uint64 `json:"index"`
	Kind   string `json:"kind"`
	Text   string `json:"text,omitempty"`
	From   *struct {
		ParticipantID string `json:"participantId"`
		Nickname      string `json:"nickname"`
		Type          string `json:"type"`
	} `json:"from,omitempty"`
	Visibility      string            `json:"visibility"`
	UTCTime         int64             `json:"utcTime"`
	ClientMessageID string            `json:"clientMessageId,omitempty"`
	Attrs           map[string]string `json:"attrs,omitempty"`
}

// Agent is one logged-in agent or supervisor. Once Connect has opened its
// push channel, it records every chat event it receives, by chat and index.
type Agent struct {
	API      *AgentAPI
	ID       string
	Nickname string
	Token    string

	mu       sync.Mutex
	chats    map[string]map[uint64]AgentEvent
	named    map[string]int // count of named push events seen (offer, reconnecting, ...)
	problems []string       // same index delivered with different content
	changed  chan struct{}
	stream   *Stream
	closed   bool
}

// Login logs in agentID with its password from Accounts and checks that
// the account's role is role ("agent" or "supervisor"): the role comes from
// the account, never from the request.
func (a *AgentAPI) Login(ctx context.Context, agentID, nickname, role string) (*Agent, error) {
	pw := a.Password(agentID)
	if pw == "" {
		return nil, fmt.Errorf("login %s: no such account in the cluster's credentials", agentID)
	}
	var out struct {
		Token string `json:"token"`
		Agent struct {
			Role string `json:"role"`
		} `json:"agent"`
	}
	if err := a.Do(ctx, http.MethodPost, "/agent/v1/login", "", map[string]string{"agentId": agentID, "nickname": nickname, "password": pw}, &out); err != nil {
		return nil, err
	}
	if out.Token == "" {
		return nil, errors.New("login answered no token")
	}
	if out.Agent.Role != role {
		return nil, fmt.Errorf("login %s: account role %q, want %q", agentID, out.Agent.Role, role)
	}
	return &Agent{API: a, ID: agentID, Nickname: nickname, Token: out.Token,
		chats: map[string]map[uint64]AgentEvent{}, named: map[string]int{}, changed: make(chan struct{})}, nil
}

// MustLogin logs in and opens the push channel; it fails the test on error.
// The push channel closes when the test ends.
func (a *AgentAPI) MustLogin(t testing.TB, agentID, role string) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ag, err := a.Login(ctx, agentID, agentID, role)
	if err != nil {
		t.Fatalf("login %s: %v", agentID, err)
	}
	if err := ag.Connect(context.Background()); err != nil {
		t.Fatalf("push channel of %s: %v", agentID, err)
	}
	t.Cleanup(ag.Close)
	return ag
}

// Ready makes the agent ready for offers.
func (ag *Agent) Ready(ctx context.Context) error {
	return ag.API.Do(ctx, http.MethodPost, "/agent/v1/ready", ag.Token, nil, nil)
}

// NotReady stops offers to the agent.
func (ag *Agent) NotReady(ctx context.Context) error {
	return ag.API.Do(ctx, http.MethodPost, "/agent/v1/notready", ag.Token, nil, nil)
}

// State reads the agent's state.
func (ag *Agent) State(ctx context.Context) (AgentState, error) {
	var st AgentState
	err := ag.API.Do(ctx, http.MethodGet, "/agent/v1/state", ag.Token, nil, &st)
	return st, err
}

// WaitOffer waits until chatID is offered to the agent.
func (ag *Agent) WaitOffer(ctx context.Context, chatID string) error {
	return pollCtx(ctx, func() error {
		st, err := ag.State(ctx)
		if err != nil {
			return err
		}
		for _, o := range st.Offers {
			if o.ChatID == chatID {
				return nil
			}
		}
		return fmt.Errorf("%s not offered to %s (offers %v, queue %d)", chatID, ag.ID, st.Offers, st.Queue.Size)
	})
}

// Accept accepts the offered chat.
func (ag *Agent) Accept(ctx context.Context, chatID string) error {
	return ag.API.Do(ctx, http.MethodPost, "/agent/v1/offers/"+url.PathEscape(chatID)+"/accept", ag.Token, nil, nil)
}

// Reject turns the offer down.
func (ag *Agent) Reject(ctx context.Context, chatID string) error {
	return ag.API.Do(ctx, http.MethodPost, "/agent/v1/offers/"+url.PathEscape(chatID)+"/reject", ag.Token, nil, nil)
}

// Take makes the agent ready, waits for the offer of chatID and accepts it.
func (ag *Agent) Take(ctx context.Context, chatID string) error {
	if err := ag.Ready(ctx); err != nil {
		return fmt.Errorf("ready: %w", err)
	}
	if err := ag.WaitOffer(ctx, chatID); err != nil {
		return err
	}
	if err := ag.Accept(ctx, chatID); err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	return nil
}

// Send sends a message to chatID and returns its index.
func (ag *Agent) Send(ctx context.Context, chatID, text, clientMessageID string) (uint64, bool, error) {
	var out struct {
		Index     uint64 `json:"index"`
		Duplicate bool   `json:"duplicate"`
	}
	body := map[string]string{"message": text}
	if clientMessageID != "" {
		body["clientMessageId"] = clientMessageID
	}
	err := ag.API.Do(ctx, http.MethodPost, "/agent/v1/chats/"+url.PathEscape(chatID)+"/send", ag.Token, body, &out)
	return out.Index, out.Duplicate, err
}

// Chat posts action (typing, pushUrl, transfer, leave, close, monitor,
// coach) for chatID with body.
func (ag *Agent) Chat(ctx context.Context, chatID, action string, body any) error {
	if body == nil {
		body = []byte("{}")
	}
	return ag.API.Do(ctx, http.MethodPost, "/agent/v1/chats/"+url.PathEscape(chatID)+"/"+action, ag.Token, body, nil)
}

// Connect opens the agent's push channel and records what it receives.
// Like the desktop's EventSource, it reopens the channel when the stream is
// cut (an edge or instance restarted) until Close, or until the server
// refuses the token (401, 403: the agent is logged out); interaction
// replays every chat's events on each new stream.
func (ag *Agent) Connect(ctx context.Context) error {
	s, err := ag.open(ctx)
	if err != nil {
		return err
	}
	go func() {
		for {
			ag.record(s)
			if s = ag.reopen(); s == nil {
				return
			}
		}
	}()
	return nil
}

func (ag *Agent) open(ctx context.Context) (*Stream, error) {
	s, err := OpenSSE(ctx, ag.API.Base+"/agent/v1/events", http.Header{"Authorization": {"Bearer " + ag.Token}})
	if err != nil {
		return nil, err
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if ag.closed {
		s.Close()
		return nil, errors.New("agent push channel closed")
	}
	ag.stream = s
	return s, nil
}

// reopen retries the push channel every 100ms (EventSource's pace); nil
// once closed or refused.
func (ag *Agent) reopen() *Stream {
	for {
		ag.mu.Lock()
		closed := ag.closed
		ag.mu.Unlock()
		if closed {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
		s, err := ag.open(context.Background())
		if err == nil {
			return s
		}
		if strings.Contains(err.Error(), "HTTP 401") || strings.Contains(err.Error(), "HTTP 403") || strings.Contains(err.Error(), "closed") {
			return nil
		}
	}
}

// Close closes the push channel.
func (ag *Agent) Close() {
	ag.mu.Lock()
	ag.closed = true
	s := ag.stream
	ag.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

func (ag *Agent) record(s *Stream) {
	for {
		ev, err := s.Next(context.Background())
		if err != nil {
			return
		}
		ag.mu.Lock()
		ag.named[ev.Event]++
		if ev.Event == "chat" {
			var ce AgentEvent
			if err := json.Unmarshal([]byte(ev.Data), &ce); err != nil {
				ag.problems = append(ag.problems, fmt.Sprintf("undecodable chat event %.200q: %v", ev.Data, err))
			} else {
				byIndex := ag.chats[ce.ChatID]
				if byIndex == nil {
					byIndex = map[uint64]AgentEvent{}
					ag.chats[ce.ChatID] = byIndex
				}
				if old, seen := byIndex[ce.Index]; seen && (old.Kind != ce.Kind || old.Text != ce.Text) {
					ag.problems = append(ag.problems, fmt.Sprintf("chat %s index %d delivered as %s %q and as %s %q",
						ce.ChatID, ce.Index, old.Kind, old.Text, ce.Kind, ce.Text))
				}
				byIndex[ce.Index] = ce
			}
		}
		close(ag.changed)
		ag.changed = make(chan struct{})
		ag.mu.Unlock()
	}
}

// Events returns the chat events of chatID received so far, by index.
func (ag *Agent) Events(chatID string) []AgentEvent {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	out := make([]AgentEvent, 0, len(ag.chats[chatID]))
	for _, ev := range ag.chats[chatID] {
		out = append(out, ev)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// Seen counts the named push events (offer, reconnecting, ...) received.
func (ag *Agent) Seen(event string) int {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return ag.named[event]
}

// Problems lists inconsistencies seen on the push channel (an index
// delivered twice with different content).
func (ag *Agent) Problems() []string {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return slices.Clone(ag.problems)
}

// WaitEvent waits until an event of chatID satisfies match and returns it.
func (ag *Agent) WaitEvent(ctx context.Context, chatID string, match func(AgentEvent) bool) (AgentEvent, error) {
	for {
		ag.mu.Lock()
		changed := ag.changed
		var found *AgentEvent
		for _, ev := range ag.chats[chatID] {
			if match(ev) && (found == nil || ev.Index < found.Index) {
				e := ev
				found = &e
			}
		}
		ag.mu.Unlock()
		if found != nil {
			return *found, nil
		}
		select {
		case <-ctx.Done():
			return AgentEvent{}, fmt.Errorf("agent %s, chat %s: no matching event: %w", ag.ID, chatID, ctx.Err())
		case <-changed:
		}
	}
}

// WaitText waits for a Message with this text in chatID.
func (ag *Agent) WaitText(ctx context.Context, chatID, text string) (AgentEvent, error) {
	return ag.WaitEvent(ctx, chatID, func(ev AgentEvent) bool { return ev.Kind == "Message" && ev.Text == text })
}

// Side makes the agent's part in chatID a workload Side.
func (ag *Agent) Side(chatID string) Side { return agentSide{ag, chatID} }

type agentSide struct {
	ag   *Agent
	chat string
}

func (s agentSide) Name() string { return "agent" }

// Agent returns the agent behind the side.
func (s agentSide) Agent() *Agent { return s.ag }

func (s agentSide) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	idx, _, err := s.ag.Send(ctx, s.chat, text, cmid)
	if err != nil {
		var ae *AgentError
		if errors.As(err, &ae) {
			return 0, ae.Retryable(), err
		}
		return 0, true, err // transport failure: the same id makes the resend safe
	}
	return idx, false, nil
}

func (s agentSide) View(ctx context.Context, through uint64) ([]ViewEvent, error) {
	if through > 0 {
		if _, err := s.ag.WaitEvent(ctx, s.chat, func(ev AgentEvent) bool { return ev.Index >= through }); err != nil {
			return nil, fmt.Errorf("push channel never reached index %d: %w", through, err)
		}
	}
	if p := s.ag.Problems(); len(p) > 0 {
		return nil, fmt.Errorf("push channel inconsistencies: %v", p)
	}
	evs := s.ag.Events(s.chat)
	out := make([]ViewEvent, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ViewEvent{Index: ev.Index, Type: ev.Kind, Text: ev.Text, ClientMessageID: ev.ClientMessageID})
	}
	return out, nil
}

// pollCtx polls cond every 20ms until it returns nil or ctx expires.
func pollCtx(ctx context.Context, cond func() error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// AcceptAnywhere waits until one of agents is offered chatID, accepts it as
// that agent and returns it.
func AcceptAnywhere(ctx context.Context, agents []*Agent, chatID string) (*Agent, error) {
	var taker *Agent
	err := pollCtx(ctx, func() error {
		for _, ag := range agents {
			st, err := ag.State(ctx)
			if err != nil {
				return err
			}
			for _, o := range st.Offers {
				if o.ChatID == chatID {
					taker = ag
					return nil
				}
			}
		}
		return fmt.Errorf("%s offered to none of %d agents", chatID, len(agents))
	})
	if err != nil {
		return nil, err
	}
	if err := taker.Accept(ctx, chatID); err != nil {
		return nil, fmt.Errorf("accept %s as %s: %w", chatID, taker.ID, err)
	}
	return taker, nil
}

// StartSessions starts n chats through the customer API, logs in n ready
// agents (pool accounts of the cluster), has each chat accepted by the
// agent it is offered to, and waits until the agent sees the customer's
// chat. Each session has a customer and an agent side, and the customer's
// push channel as a watcher.
func (c *Cluster) StartSessions(t testing.TB, n int) []*Session {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = c.nextPoolAgent(t)
	}
	return StartSessions(t, c.Customer(), c.Agents(), ids, n)
}

// StartSessions is Cluster.StartSessions on any deployment: the agents ids
// log in through agents (their passwords in agents.Accounts) and share the
// n chats that customers start through gms (each holds up to interaction's
// max-chats-per-agent). A chat start that is answered with a retryable
// error (a sidecar that has no upstream yet) is tried again until the
// setup's deadline.
func StartSessions(t testing.TB, gms *GMS, agents *AgentAPI, ids []string, n int) []*Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ready []*Agent
	for _, id := range ids {
		ag := agents.MustLogin(t, id, "agent")
		if err := ag.Ready(ctx); err != nil {
			t.Fatalf("ready: %v", err)
		}
		ready = append(ready, ag)
	}
	var sessions []*Session
	for i := range n {
		chat, err := startChat(ctx, gms, fmt.Sprintf("customer-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		ag, err := AcceptAnywhere(ctx, ready, chat.ChatID)
		if err != nil {
			t.Fatal(err)
		}
		// The agent's own join: the customer's comes first and would match too early.
		if _, err := ag.WaitEvent(ctx, chat.ChatID, func(ev AgentEvent) bool {
			return ev.Kind == "ParticipantJoined" && ev.From != nil && ev.From.Type == "Agent"
		}); err != nil {
			t.Fatalf("agent %s never saw chat %s: %v", ag.ID, chat.ChatID, err)
		}
		push := WatchPush(chat)
		t.Cleanup(push.Close)
		sessions = append(sessions, &Session{ChatID: chat.ChatID, Sides: []Side{CustomerSide(chat), ag.Side(chat.ChatID)},
			Watchers: []Viewer{push}, Customer: chat, Agent: ag, Push: push})
	}
	return sessions
}

// startChat starts a chat as nickname, trying again while the answer is a
// transport error or retryable, until ctx ends; any other refusal ends it.
func startChat(ctx context.Context, gms *GMS, nickname string) (*Chat, error) {
	var chat *Chat
	var refused error
	err := pollCtx(ctx, func() error {
		c, resp, err := gms.Start(ctx, url.Values{"nickname": {nickname}, "subject": {"e2e test"}})
		switch {
		case err != nil:
			return err
		case c == nil && !resp.Retryable():
			refused = fmt.Errorf("%w (%s)", resp.Err(), resp.Raw)
		case c == nil:
			return resp.Err()
		}
		chat = c
		return nil
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return nil, fmt.Errorf("start chat as %s: %w", nickname, err)
	}
	return chat, nil
}
