package soakbench

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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/pause"
)

// callTimeout bounds one API call of the workload.
const callTimeout = 20 * time.Second

// sideTimeout bounds how long one side of a chat waits for the other (the
// agent for the customer to leave, the customer for the agent's messages)
// before it ends its part anyway.
const sideTimeout = 60 * time.Second

// counters are the workload's running totals.
type counters struct {
	chatsStarted, chatsEnded atomic.Int64
	messages                 atomic.Int64 // acknowledged sends, both sides
	logins, logouts          atomic.Int64
	errors                   atomic.Int64
	lastErr                  atomic.Pointer[string]
}

func (c *counters) fail(err error) {
	c.errors.Add(1)
	s := err.Error()
	c.lastErr.Store(&s)
}

// workload drives the cluster the way a contact centre does: customers on
// the customer API of webapi, agents on the agent API of interaction.
type workload struct {
	opts        Options
	passwords   map[string]string // agent id -> password
	webapi      string            // base URL
	interaction string            // base URL
	http        *http.Client
	n           *counters
	nextChat    atomic.Int64 // numbers the customers
}

// ---- customers ----

// gmsResponse is the part of a customer API answer the workload reads.
type gmsResponse struct {
	StatusCode int    `json:"statusCode"`
	ChatID     string `json:"chatId"`
	UserID     string `json:"userId"`
	SecureKey  string `json:"secureKey"`
	Alias      string `json:"alias"`
}

func (w *workload) gms(ctx context.Context, path string, form url.Values) (gmsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.webapi+path, strings.NewReader(form.Encode()))
	if err != nil {
		return gmsResponse{}, fmt.Errorf("customer request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := w.http.Do(req)
	if err != nil {
		return gmsResponse{}, fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	var out gmsResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("POST %s: HTTP %d: %w", path, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || out.StatusCode != 0 {
		return out, fmt.Errorf("POST %s: HTTP %d statusCode %d", path, resp.StatusCode, out.StatusCode)
	}
	return out, nil
}

// customer runs one chat from the customer's side: start it, follow its
// push channel, send the messages, wait for the agent's, leave.
func (w *workload) customer(ctx context.Context, i int64) {
	base := "/genesys/2/chat/" + url.PathEscape(w.opts.Service)
	start, err := w.gms(ctx, base, url.Values{"nickname": {fmt.Sprintf("soak-customer-%d", i)}, "subject": {"soak"}})
	if err != nil {
		w.n.fail(fmt.Errorf("start chat: %w", err))
		return
	}
	w.n.chatsStarted.Add(1)
	cred := url.Values{"userId": {start.UserID}, "secureKey": {start.SecureKey}}
	if start.Alias != "" {
		cred.Set("alias", start.Alias)
	}
	chat := base + "/" + url.PathEscape(start.ChatID)

	// The push channel, as the web sample's browser opens it; it counts
	// the agent's messages.
	var fromAgent atomic.Int64
	pushCtx, stopPush := context.WithCancel(ctx)
	var push sync.WaitGroup
	push.Go(func() {
		err := w.sse(pushCtx, w.webapi+chat+"/events?"+cred.Encode(), func(_ string, data []byte) {
			var m struct {
				Type string `json:"type"`
				From struct {
					ParticipantID string `json:"participantId"`
				} `json:"from"`
			}
			if json.Unmarshal(data, &m) == nil && m.Type == "Message" && m.From.ParticipantID != start.UserID {
				fromAgent.Add(1)
			}
		})
		if err != nil && pushCtx.Err() == nil {
			w.n.fail(fmt.Errorf("customer push channel: %w", err))
		}
	})
	defer func() { stopPush(); push.Wait() }()

	for m := range w.opts.Messages {
		if !pause.For(ctx, w.opts.MessageInterval) {
			break
		}
		p := url.Values{"message": {fmt.Sprintf("customer message %d of chat %d", m, i)},
			"clientMessageId": {fmt.Sprintf("c%d-%d", i, m)}}
		for k, v := range cred {
			p[k] = v
		}
		if _, err := w.gms(ctx, chat+"/send", p); err != nil {
			w.n.fail(fmt.Errorf("customer send: %w", err))
			continue
		}
		w.n.messages.Add(1)
	}
	// Wait for the agent's answers (a GMS client also polls refresh).
	deadline := time.Now().Add(sideTimeout)
	for fromAgent.Load() < int64(w.opts.Messages) && time.Now().Before(deadline) {
		if !pause.For(ctx, 250*time.Millisecond) {
			break
		}
	}
	if _, err := w.gms(ctx, chat+"/refresh", cred); err != nil {
		w.n.fail(fmt.Errorf("customer refresh: %w", err))
	}
	if _, err := w.gms(context.WithoutCancel(ctx), chat+"/disconnect", cred); err != nil {
		w.n.fail(fmt.Errorf("customer disconnect: %w", err))
	}
}

// ---- agents ----

// agentAPI calls the agent API; out, if not nil, receives the JSON answer.
func (w *workload) agentAPI(ctx context.Context, path, token string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("agent request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.interaction+path, rd)
	if err != nil {
		return fmt.Errorf("agent request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: HTTP %d: %.200s", path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("POST %s: %w", path, err)
		}
	}
	return nil
}

// agentChat is one chat an agent holds, fed by the agent's push channel.
type agentChat struct {
	customerLeft chan struct{}
	once         sync.Once
}

// agent logs in, takes offered chats, answers each customer, closes the
// chat, and after opts.ChatsPerShift chats logs out and in again, until
// stop is done; then it finishes its chats and logs out. When ctx (the
// run) is done it gives up at once.
func (w *workload) agent(ctx, stop context.Context, id string) {
	for ctx.Err() == nil && stop.Err() == nil {
		if err := w.shift(ctx, stop, id); err != nil && stop.Err() == nil {
			w.n.fail(fmt.Errorf("agent %s: %w", id, err))
			pause.For(ctx, time.Second)
		}
		pause.For(stop, w.opts.MessageInterval)
	}
}

// shift is one login to logout of an agent: it takes chats until stop is
// done, finishes them and logs out; it gives up when ctx is done.
func (w *workload) shift(ctx, stop context.Context, id string) error {
	var login struct {
		Token string `json:"token"`
	}
	if err := w.agentAPI(ctx, "/agent/v1/login", "", map[string]string{"agentId": id, "password": w.passwords[id]}, &login); err != nil {
		return err
	}
	w.n.logins.Add(1)
	tok := login.Token

	var mu sync.Mutex
	chats := map[string]*agentChat{}
	offers := make(chan string, 16)
	pushCtx, stopPush := context.WithCancel(ctx)
	var tasks sync.WaitGroup
	tasks.Go(func() {
		err := w.sse(pushCtx, w.interaction+"/agent/v1/events?token="+url.QueryEscape(tok), func(event string, data []byte) {
			var ev struct {
				ChatID string `json:"chatId"`
				Kind   string `json:"kind"`
				From   struct {
					Type string `json:"type"`
				} `json:"from"`
			}
			_ = json.Unmarshal(data, &ev)
			switch {
			case event == "offer":
				select {
				case offers <- ev.ChatID:
				case <-pushCtx.Done():
				}
			case event == "chat" && ev.Kind == "ParticipantLeft" && !strings.EqualFold(ev.From.Type, "agent"):
				mu.Lock()
				if c := chats[ev.ChatID]; c != nil {
					c.once.Do(func() { close(c.customerLeft) })
				}
				mu.Unlock()
			}
		})
		if err != nil && pushCtx.Err() == nil {
			w.n.fail(fmt.Errorf("agent %s push channel: %w", id, err))
		}
	})
	defer func() { stopPush(); tasks.Wait() }()

	if err := w.agentAPI(ctx, "/agent/v1/ready", tok, nil, nil); err != nil {
		return err
	}
	var chatsDone sync.WaitGroup
	taken := 0
take:
	for taken < w.opts.ChatsPerShift {
		select {
		case <-stop.Done():
			break take
		case chat := <-offers:
			c := &agentChat{customerLeft: make(chan struct{})}
			mu.Lock()
			chats[chat] = c
			mu.Unlock()
			if err := w.agentAPI(ctx, "/agent/v1/offers/"+url.PathEscape(chat)+"/accept", tok, nil, nil); err != nil {
				w.n.fail(fmt.Errorf("agent %s accept: %w", id, err))
				continue
			}
			taken++
			chatsDone.Go(func() { w.agentChat(ctx, id, tok, chat, c) })
		}
	}
	// Not ready: no more offers; finish the chats held, then log out.
	bg := ctx
	if err := w.agentAPI(bg, "/agent/v1/notready", tok, nil, nil); err != nil {
		w.n.fail(fmt.Errorf("agent %s notready: %w", id, err))
	}
	chatsDone.Wait()
	for range 50 {
		err := w.agentAPI(bg, "/agent/v1/logout", tok, nil, nil)
		if err == nil {
			w.n.logouts.Add(1)
			return nil
		}
		if !strings.Contains(err.Error(), "HTTP 409") { // still holds an ended chat for a moment
			return err
		}
		if !pause.For(bg, 200*time.Millisecond) {
			return bg.Err()
		}
	}
	return errors.New("logout refused for 10s")
}

// agentChat answers a customer: the agent's messages, then, once the
// customer has left (or after sideTimeout), it closes the chat.
func (w *workload) agentChat(ctx context.Context, id, tok, chat string, c *agentChat) {
	base := "/agent/v1/chats/" + url.PathEscape(chat)
	for m := range w.opts.Messages {
		if !pause.For(ctx, w.opts.MessageInterval) {
			return
		}
		err := w.agentAPI(ctx, base+"/send", tok, map[string]string{
			"message": fmt.Sprintf("agent %s message %d", id, m), "clientMessageId": fmt.Sprintf("a-%s-%d", chat, m)}, nil)
		if err != nil {
			w.n.fail(fmt.Errorf("agent send: %w", err))
			continue
		}
		w.n.messages.Add(1)
	}
	t := time.NewTimer(sideTimeout)
	defer t.Stop()
	select {
	case <-c.customerLeft:
	case <-t.C:
	case <-ctx.Done():
		return
	}
	// The customer's leave may have ended the session already: 404 (the
	// chat is gone) or 409 (ended) is the same outcome as a close.
	if err := w.agentAPI(ctx, base+"/close", tok, nil, nil); err != nil && !endedAnswer(err) {
		w.n.fail(fmt.Errorf("agent close: %w", err))
		return
	}
	w.n.chatsEnded.Add(1)
}

// endedAnswer reports an agent API answer saying the chat has ended or is
// gone.
func endedAnswer(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "HTTP 404") || strings.Contains(msg, "HTTP 409") && strings.Contains(msg, "ended")
}

// ---- shared ----

// sse reads a Server-Sent Events stream until ctx is done or the server
// ends it, calling fn for every event.
func (w *workload) sse(ctx context.Context, u string, fn func(event string, data []byte)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("push request: %w", err)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return fmt.Errorf("push channel: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("push channel: HTTP %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var event string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("event:")):
			event = strings.TrimSpace(string(line[len("event:"):]))
		case bytes.HasPrefix(line, []byte("data:")):
			data = append(data, bytes.TrimSpace(line[len("data:"):])...)
		case len(line) == 0:
			if event != "" || len(data) > 0 {
				fn(event, data)
			}
			event, data = "", nil
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("push channel: %w", err)
	}
	return nil
}
