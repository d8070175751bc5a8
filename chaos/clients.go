package chaos

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
	"time"

	"github.com/hachat/hachat/pause"
	"github.com/hachat/hachat/workload"
)

// customer is one customer's chat through the customer API (docs/api.md).
type customer struct {
	hc                               *http.Client
	base, service                    string
	chatID, userID, secureKey, alias string
}

type gmsAnswer struct {
	StatusCode int    `json:"statusCode"`
	ChatID     string `json:"chatId"`
	UserID     string `json:"userId"`
	SecureKey  string `json:"secureKey"`
	Alias      string `json:"alias"`
	Index      uint64 `json:"index"`
	// NextPosition is where the next refresh starts.
	NextPosition uint64 `json:"nextPosition"`
	Messages     []struct {
		Index           uint64 `json:"index"`
		Type            string `json:"type"`
		Text            string `json:"text"`
		ClientMessageID string `json:"clientMessageId"`
	} `json:"messages"`
	Errors []struct {
		Code   int    `json:"code"`
		Advice string `json:"advice"`
	} `json:"errors"`
	httpStatus int
}

func (a gmsAnswer) ok() bool        { return a.httpStatus == http.StatusOK && a.StatusCode == 0 }
func (a gmsAnswer) retryable() bool { return a.StatusCode == 1 || a.httpStatus >= 500 }
func (a gmsAnswer) err() error {
	return fmt.Errorf("customer API: HTTP %d statusCode %d errors %v", a.httpStatus, a.StatusCode, a.Errors)
}

func postForm(ctx context.Context, hc *http.Client, u string, form url.Values) (gmsAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return gmsAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return gmsAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return gmsAnswer{}, err
	}
	a := gmsAnswer{httpStatus: resp.StatusCode}
	if err := json.Unmarshal(b, &a); err != nil {
		a.StatusCode = 1 // not our API's answer (a proxy's 503 page): worth a retry
		return a, nil
	}
	return a, nil
}

// startCustomer starts a chat as nickname, retrying retryable answers
// until ctx ends.
func startCustomer(ctx context.Context, hc *http.Client, base, service, nickname string) (*customer, error) {
	var last error
	for {
		a, err := postForm(ctx, hc, base+"/genesys/2/chat/"+url.PathEscape(service), url.Values{"nickname": {nickname}, "subject": {"chaos"}})
		switch {
		case err == nil && a.ok():
			return &customer{hc: hc, base: base, service: service, chatID: a.ChatID, userID: a.UserID, secureKey: a.SecureKey, alias: a.Alias}, nil
		case err == nil && !a.retryable():
			return nil, a.err()
		case err == nil:
			last = a.err()
		default:
			last = err
		}
		if !pause.For(ctx, 200*time.Millisecond) {
			return nil, fmt.Errorf("start chat: %w (last: %v)", ctx.Err(), last)
		}
	}
}

func (c *customer) call(ctx context.Context, action string, p url.Values) (gmsAnswer, error) {
	form := url.Values{"userId": {c.userID}, "secureKey": {c.secureKey}}
	if c.alias != "" {
		form.Set("alias", c.alias)
	}
	for k, v := range p {
		form[k] = v
	}
	return postForm(ctx, c.hc, c.base+"/genesys/2/chat/"+url.PathEscape(c.service)+"/"+url.PathEscape(c.chatID)+"/"+action, form)
}

func (c *customer) Name() string { return "customer" }

func (c *customer) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	a, err := c.call(ctx, "send", url.Values{"message": {text}, "clientMessageId": {cmid}})
	if err != nil {
		return 0, true, err // transport failure: the same id makes the resend safe
	}
	if !a.ok() {
		return 0, a.retryable(), a.err()
	}
	return a.Index, false, nil
}

// View reads the whole transcript the customer sees, page by page
// (a refresh answers a bounded number of events and the next position).
func (c *customer) View(ctx context.Context, _ uint64) ([]workload.ViewEvent, error) {
	var out []workload.ViewEvent
	pos := uint64(1)
	for {
		a, err := c.refresh(ctx, pos)
		if err != nil {
			return nil, err
		}
		for _, m := range a.Messages {
			out = append(out, workload.ViewEvent{Index: m.Index, Type: m.Type, Text: m.Text, ClientMessageID: m.ClientMessageID})
		}
		if len(a.Messages) == 0 || a.NextPosition <= pos {
			return out, nil
		}
		pos = a.NextPosition
	}
}

// refresh reads the transcript from pos, retrying failures until ctx ends.
func (c *customer) refresh(ctx context.Context, pos uint64) (gmsAnswer, error) {
	var last error
	for {
		a, err := c.call(ctx, "refresh", url.Values{"transcriptPosition": {strconv.FormatUint(pos, 10)}})
		if err == nil && a.ok() {
			return a, nil
		}
		if err == nil {
			last = a.err()
		} else {
			last = err
		}
		if !pause.For(ctx, 200*time.Millisecond) {
			return gmsAnswer{}, fmt.Errorf("refresh from %d: %w (last: %v)", pos, ctx.Err(), last)
		}
	}
}

func (c *customer) disconnect(ctx context.Context) error {
	a, err := c.call(ctx, "disconnect", nil)
	if err != nil {
		return err
	}
	if !a.ok() {
		return a.err()
	}
	return nil
}

// agentErr is an agent API error answer.
type agentErr struct {
	status int
	Msg    string `json:"error"`
	Code   string `json:"code"`
}

func (e *agentErr) Error() string {
	return fmt.Sprintf("agent API: HTTP %d %s: %s", e.status, e.Code, e.Msg)
}

// deskEvent is one chat event of the agent push channel.
type deskEvent struct {
	ChatID          string `json:"chatId"`
	Index           uint64 `json:"index"`
	Kind            string `json:"kind"`
	Text            string `json:"text"`
	ClientMessageID string `json:"clientMessageId"`
}

// desk is one agent or supervisor logged in to the agent API, with its push
// channel recorded by chat and index. It logs in again when its session is
// gone (an interaction instance that lost it) and reopens the push channel
// whenever it ends.
type desk struct {
	hc             *http.Client
	base, id, pass string

	mu       sync.Mutex
	token    string
	chats    map[string]map[uint64]deskEvent
	problems map[string][]string // by chat: the same index delivered with different content
	changed  chan struct{}
	relogins int
}

func newDesk(hc *http.Client, base, id, pass string) *desk {
	return &desk{hc: hc, base: base, id: id, pass: pass, chats: map[string]map[uint64]deskEvent{}, problems: map[string][]string{}, changed: make(chan struct{})}
}

func (d *desk) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	d.mu.Lock()
	tok := d.token
	d.mu.Unlock()
	if tok != "" && path != "/agent/v1/login" { // a login with a bearer is the identity provider's kind
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		e := &agentErr{status: resp.StatusCode}
		_ = json.Unmarshal(b, e)
		return e
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// login logs the desk in; a retryable refusal (no interaction leader right
// now, a takeover under way: 503 with Retry-After) is tried again for up to
// loginRetryFor, as the desktop does.
func (d *desk) login(ctx context.Context) error {
	var out struct {
		Token string `json:"token"`
	}
	deadline := time.Now().Add(loginRetryFor)
	for {
		err := d.do(ctx, http.MethodPost, "/agent/v1/login", map[string]string{"agentId": d.id, "password": d.pass}, &out)
		if err == nil {
			break
		}
		var ae *agentErr
		if !errors.As(err, &ae) || ae.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return fmt.Errorf("login %s: %w", d.id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("login %s: %w", d.id, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	d.mu.Lock()
	d.token = out.Token
	d.mu.Unlock()
	return nil
}

// loginRetryFor bounds how long a login retries a 503 (an interaction
// takeover waits for a 2 s lease).
const loginRetryFor = 15 * time.Second

// call runs one agent API request; a 401 (the session is gone) logs in
// again and tries once more.
func (d *desk) call(ctx context.Context, method, path string, body, out any) error {
	err := d.do(ctx, method, path, body, out)
	var ae *agentErr
	if errors.As(err, &ae) && ae.status == http.StatusUnauthorized {
		d.mu.Lock()
		d.relogins++
		d.mu.Unlock()
		if lerr := d.login(ctx); lerr != nil {
			return lerr
		}
		err = d.do(ctx, method, path, body, out)
	}
	return err
}

// retryableAgent says whether an agent API failure may be resent as is.
func retryableAgent(err error) bool {
	var ae *agentErr
	if errors.As(err, &ae) {
		return ae.status == http.StatusServiceUnavailable || ae.status == http.StatusTooManyRequests ||
			ae.status == http.StatusBadGateway || ae.status == http.StatusUnauthorized || ae.status == http.StatusGatewayTimeout
	}
	return true // transport failure
}

// push keeps the push channel open until ctx ends.
func (d *desk) push(ctx context.Context) {
	for ctx.Err() == nil {
		err := d.stream(ctx)
		var ae *agentErr
		if errors.As(err, &ae) && ae.status == http.StatusUnauthorized {
			d.mu.Lock()
			d.relogins++
			d.mu.Unlock()
			_ = d.login(ctx)
		}
		pause.For(ctx, 300*time.Millisecond)
	}
}

func (d *desk) stream(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/agent/v1/events", nil)
	if err != nil {
		return err
	}
	d.mu.Lock()
	req.Header.Set("Authorization", "Bearer "+d.token)
	d.mu.Unlock()
	req.Header.Set("Accept", "text/event-stream")
	hc := *d.hc
	hc.Timeout = 0 // a stream lasts
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &agentErr{status: resp.StatusCode}
	}
	return readSSE(resp.Body, func(event, data string) {
		if event == "chat" {
			d.record(data)
		}
	})
}

func (d *desk) record(data string) {
	var ev deskEvent
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := json.Unmarshal([]byte(data), &ev); err != nil {
		d.problems[""] = append(d.problems[""], fmt.Sprintf("undecodable chat event %.200q", data))
		return
	}
	by := d.chats[ev.ChatID]
	if by == nil {
		by = map[uint64]deskEvent{}
		d.chats[ev.ChatID] = by
	}
	if old, ok := by[ev.Index]; ok && (old.Kind != ev.Kind || old.Text != ev.Text) {
		d.problems[ev.ChatID] = append(d.problems[ev.ChatID], fmt.Sprintf("index %d delivered as %s %q and as %s %q", ev.Index, old.Kind, old.Text, ev.Kind, ev.Text))
	}
	by[ev.Index] = ev
	close(d.changed)
	d.changed = make(chan struct{})
}

// view returns chatID's events in index order once index through has
// arrived (or ctx ends).
func (d *desk) view(ctx context.Context, chatID string, through uint64) ([]workload.ViewEvent, error) {
	for {
		d.mu.Lock()
		by, ch := d.chats[chatID], d.changed
		var top uint64
		for i := range by {
			top = max(top, i)
		}
		probs := append(append([]string(nil), d.problems[""]...), d.problems[chatID]...)
		d.mu.Unlock()
		if len(probs) > 0 {
			return nil, &workload.Violation{Kind: workload.Conflict, Msg: fmt.Sprintf("push channel of %s: %d indexes delivered twice with different events, first: %s", d.id, len(probs), probs[0])}
		}
		if top >= through {
			out := make([]workload.ViewEvent, 0, len(by))
			d.mu.Lock()
			for _, ev := range by {
				out = append(out, workload.ViewEvent{Index: ev.Index, Type: ev.Kind, Text: ev.Text, ClientMessageID: ev.ClientMessageID})
			}
			d.mu.Unlock()
			sortEvents(out)
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("push channel of %s never reached index %d of %s (at %d): %w", d.id, through, chatID, top, ctx.Err())
		case <-ch:
		}
	}
}

// offered returns the chats offered to the agent now.
func (d *desk) offered(ctx context.Context) ([]string, error) {
	var st struct {
		Offers []struct {
			ChatID string `json:"chatId"`
		} `json:"offers"`
	}
	if err := d.call(ctx, http.MethodGet, "/agent/v1/state", nil, &st); err != nil {
		return nil, err
	}
	var out []string
	for _, o := range st.Offers {
		out = append(out, o.ChatID)
	}
	return out, nil
}

// supervisorView is a monitoring supervisor's view of one chat.
type supervisorView struct {
	d    *desk
	chat string
}

func (s supervisorView) Name() string { return "supervisor" }

func (s supervisorView) View(ctx context.Context, through uint64) ([]workload.ViewEvent, error) {
	return s.d.view(ctx, s.chat, through)
}

// readSSE calls emit for every event of a Server-Sent Events stream until
// it ends.
func readSSE(r io.Reader, emit func(event, data string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var event string
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				emit(event, strings.Join(data, "\n"))
			}
			event, data = "", nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}

func sortEvents(evs []workload.ViewEvent) {
	for i := 1; i < len(evs); i++ {
		for j := i; j > 0 && evs[j].Index < evs[j-1].Index; j-- {
			evs[j], evs[j-1] = evs[j-1], evs[j]
		}
	}
}
