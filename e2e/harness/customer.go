package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// GMS is a client of the Web API Server's customer API (GMS Chat API v2
// shape, docs/api.md): POST /genesys/2/chat/{service}[/{chatId}/{action}]
// with form bodies, and the SSE push channel GET .../{chatId}/events.
type GMS struct {
	// Base is the webapi URL, e.g. http://127.0.0.1:8080.
	Base string
	// Service is the chat service name.
	Service string
	// HTTP is the client used; its timeout bounds one call.
	HTTP *http.Client
}

// Customer returns a customer API client for the cluster's webapi.
func (c *Cluster) Customer() *GMS {
	return &GMS{Base: c.WebAPIURL(), Service: c.Service(), HTTP: &http.Client{Timeout: 15 * time.Second}}
}

// APIError is one entry of a response's errors array.
type APIError struct {
	Code   int    `json:"code"`
	Advice string `json:"advice"`
}

// From says who caused a message.
type From struct {
	Nickname      string `json:"nickname"`
	ParticipantID string `json:"participantId"`
	Type          string `json:"type"`
}

// Message is one transcript entry as the customer API shows it.
type Message struct {
	Index           uint64 `json:"index"`
	Type            string `json:"type"`
	Text            string `json:"text,omitempty"`
	UTCTime         int64  `json:"utcTime"`
	From            From   `json:"from"`
	ClientMessageID string `json:"clientMessageId,omitempty"`
	NoticeType      string `json:"noticeType,omitempty"`
	Reason          string `json:"reason,omitempty"`
}

// Response is the body of every customer API answer, with the HTTP status.
type Response struct {
	HTTPStatus   int        `json:"-"`
	StatusCode   int        `json:"statusCode"`
	ChatID       string     `json:"chatId,omitempty"`
	UserID       string     `json:"userId,omitempty"`
	SecureKey    string     `json:"secureKey,omitempty"`
	Alias        string     `json:"alias,omitempty"`
	Messages     []Message  `json:"messages,omitempty"`
	NextPosition uint64     `json:"nextPosition,omitempty"`
	ChatEnded    bool       `json:"chatEnded"`
	Index        uint64     `json:"index,omitempty"`
	Duplicate    bool       `json:"duplicate,omitempty"`
	Errors       []APIError `json:"errors,omitempty"`
	// Raw is the body as received.
	Raw string `json:"-"`
}

// OK reports HTTP 200 with statusCode 0.
func (r *Response) OK() bool { return r.HTTPStatus == http.StatusOK && r.StatusCode == 0 }

// Retryable reports an answer the client should resend as is (statusCode 1).
func (r *Response) Retryable() bool { return r.StatusCode == 1 }

// Err returns nil for an OK response, else an error describing it.
func (r *Response) Err() error {
	if r.OK() {
		return nil
	}
	return fmt.Errorf("%w: HTTP %d statusCode %d errors %v", ErrNotOK, r.HTTPStatus, r.StatusCode, r.Errors)
}

// ErrNotOK is wrapped by Response.Err for any answer but HTTP 200 statusCode 0.
var ErrNotOK = errors.New("request not accepted")

// Post sends a raw body to path (relative to Base) with the given content
// type and decodes the answer. Tests of malformed input use it directly.
func (g *GMS) Post(ctx context.Context, path, contentType string, body []byte) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.Base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := g.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("POST %s: read body: %w", path, err)
	}
	out := &Response{HTTPStatus: resp.StatusCode, Raw: string(b)}
	if err := json.Unmarshal(b, out); err != nil {
		return out, fmt.Errorf("POST %s: HTTP %d, body not JSON (%v): %.200q", path, resp.StatusCode, err, b)
	}
	return out, nil
}

// PostForm posts form values to path.
func (g *GMS) PostForm(ctx context.Context, path string, form url.Values) (*Response, error) {
	return g.Post(ctx, path, "application/x-www-form-urlencoded", []byte(form.Encode()))
}

// Start starts a chat with the given form (nickname, firstName, subject,
// userData[key], ...). The answer is returned whatever its status; the
// error reports transport failures only.
func (g *GMS) Start(ctx context.Context, form url.Values) (*Chat, *Response, error) {
	resp, err := g.PostForm(ctx, "/genesys/2/chat/"+url.PathEscape(g.Service), form)
	if err != nil {
		return nil, resp, err
	}
	if !resp.OK() {
		return nil, resp, nil
	}
	return &Chat{GMS: g, ChatID: resp.ChatID, UserID: resp.UserID, SecureKey: resp.SecureKey, Alias: resp.Alias}, resp, nil
}

// MustStart starts a chat as nickname and fails the test if that does not work.
func (g *GMS) MustStart(t testing.TB, nickname string) *Chat {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chat, resp, err := g.Start(ctx, url.Values{"nickname": {nickname}, "subject": {"e2e test"}})
	if err != nil {
		t.Fatalf("start chat: %v", err)
	}
	if chat == nil {
		t.Fatalf("start chat: %v (%s)", resp.Err(), resp.Raw)
	}
	return chat
}

// Chat is one customer's chat session.
type Chat struct {
	*GMS
	ChatID, UserID, SecureKey, Alias string
}

// Call posts action (send, refresh, startTyping, stopTyping, customNotice,
// pushUrl, disconnect) with the chat's credentials plus params.
func (c *Chat) Call(ctx context.Context, action string, params url.Values) (*Response, error) {
	form := url.Values{"userId": {c.UserID}, "secureKey": {c.SecureKey}}
	if c.Alias != "" {
		form.Set("alias", c.Alias)
	}
	for k, v := range params {
		form[k] = v
	}
	return c.PostForm(ctx, c.path(action), form)
}

func (c *Chat) path(action string) string {
	return "/genesys/2/chat/" + url.PathEscape(c.Service) + "/" + url.PathEscape(c.ChatID) + "/" + action
}

// Send sends a message with an optional client message id.
func (c *Chat) Send(ctx context.Context, text, clientMessageID string) (*Response, error) {
	p := url.Values{"message": {text}}
	if clientMessageID != "" {
		p.Set("clientMessageId", clientMessageID)
	}
	return c.Call(ctx, "send", p)
}

// Refresh returns the transcript from position pos (1: everything).
func (c *Chat) Refresh(ctx context.Context, pos uint64) (*Response, error) {
	return c.Call(ctx, "refresh", url.Values{"transcriptPosition": {strconv.FormatUint(pos, 10)}})
}

// Disconnect makes the customer leave.
func (c *Chat) Disconnect(ctx context.Context) (*Response, error) {
	return c.Call(ctx, "disconnect", nil)
}

// Transcript returns everything the customer sees, via refresh from 1.
func (c *Chat) Transcript(ctx context.Context) ([]Message, bool, error) {
	r, err := c.Refresh(ctx, 1)
	if err != nil {
		return nil, false, err
	}
	if err := r.Err(); err != nil {
		return nil, r.ChatEnded, err
	}
	return r.Messages, r.ChatEnded, nil
}

// SSEEvent is one Server-Sent Event of the push channel.
type SSEEvent struct {
	ID    string
	Event string // "" for transcript messages; reconnecting, reconnected, heartbeat, ended, chat-error
	Data  string
}

// Message decodes a transcript message event.
func (e SSEEvent) Message() (Message, error) {
	var m Message
	err := json.Unmarshal([]byte(e.Data), &m)
	return m, err
}

// Stream is an open push channel.
type Stream struct {
	resp   *http.Response
	events chan SSEEvent
	done   chan struct{}
	quit   chan struct{}
	err    error

	closeOnce sync.Once
	cancel    context.CancelFunc
}

// Events opens the push channel from transcript position from.
func (c *Chat) Events(ctx context.Context, from uint64) (*Stream, error) {
	q := url.Values{"userId": {c.UserID}, "secureKey": {c.SecureKey}, "transcriptPosition": {strconv.FormatUint(from, 10)}}
	return OpenSSE(ctx, c.Base+c.path("events")+"?"+q.Encode(), nil)
}

// OpenSSE opens a Server-Sent Events stream at url with the given extra
// request headers.
func OpenSSE(ctx context.Context, url string, header http.Header) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{}).Do(req) // no timeout: the stream lives long
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open push channel: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("open push channel: HTTP %d: %s", resp.StatusCode, b)
	}
	s := &Stream{resp: resp, events: make(chan SSEEvent, 1024), done: make(chan struct{}), quit: make(chan struct{}), cancel: cancel}
	go s.read()
	return s, nil
}

func (s *Stream) read() {
	defer close(s.done)
	defer close(s.events)
	s.err = ParseSSE(s.resp.Body, func(ev SSEEvent) bool {
		select {
		case s.events <- ev:
			return true
		case <-s.quit:
			return false
		}
	})
}

// ParseSSE reads a text/event-stream from r and calls emit for every
// complete event (comments and retry fields are skipped; data lines are
// joined with newlines) until r ends, r fails, or emit returns false.
func ParseSSE(r io.Reader, emit func(SSEEvent) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var ev SSEEvent
	var data []string
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			if data != nil || ev.Event != "" {
				ev.Data = strings.Join(data, "\n")
				if !emit(ev) {
					return nil
				}
			}
			ev, data = SSEEvent{}, nil
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Event = value
		case "data":
			data = append(data, value)
		}
	}
	return sc.Err()
}

// Next returns the next event, or an error when the stream ended or ctx expired.
func (s *Stream) Next(ctx context.Context) (SSEEvent, error) {
	select {
	case ev, ok := <-s.events:
		if !ok {
			if s.err != nil {
				return SSEEvent{}, fmt.Errorf("push channel: %w", s.err)
			}
			return SSEEvent{}, io.EOF
		}
		return ev, nil
	case <-ctx.Done():
		return SSEEvent{}, ctx.Err()
	}
}

// NextMessage skips heartbeats and returns the next transcript message or
// named event other than heartbeat.
func (s *Stream) NextMessage(ctx context.Context) (SSEEvent, error) {
	for {
		ev, err := s.Next(ctx)
		if err != nil || ev.Event != "heartbeat" {
			return ev, err
		}
	}
}

// Close closes the push channel.
func (s *Stream) Close() {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.cancel()
		s.resp.Body.Close()
		<-s.done
	})
}

// Done is closed when the stream has ended (closed by either side).
func (s *Stream) Done() <-chan struct{} { return s.done }

// CustomerSide makes a customer's chat a workload Side.
func CustomerSide(c *Chat) Side { return customerSide{c} }

type customerSide struct{ c *Chat }

// Chat returns the customer's chat behind the side.
func (s customerSide) Chat() *Chat { return s.c }

func (s customerSide) Name() string { return "customer" }

func (s customerSide) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	r, err := s.c.Send(ctx, text, cmid)
	if err != nil {
		return 0, true, err // transport failure: the same id makes the resend safe
	}
	if err := r.Err(); err != nil {
		return 0, r.Retryable(), err
	}
	return r.Index, false, nil
}

func (s customerSide) View(ctx context.Context, _ uint64) ([]ViewEvent, error) {
	msgs, _, err := s.c.Transcript(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ViewEvent, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, ViewEvent{Index: m.Index, Type: m.Type, Text: m.Text, ClientMessageID: m.ClientMessageID})
	}
	return out, nil
}
