package webapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// env is one webapi in front of a fake core.
type env struct {
	t    *testing.T
	core *fakeCore
	srv  *Server
	http *httptest.Server
	tel  *telemetry.Telemetry
}

func newEnv(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	tel := telemetry.Discard()
	return newEnvTel(t, tel, mutate)
}

func newEnvTel(t *testing.T, tel *telemetry.Telemetry, mutate func(*Config)) *env {
	t.Helper()
	return newEnvPolicy(t, tel, mutate, nil)
}

// newEnvPolicy is newEnv with the chat client's retry policy changed by
// policy (the default policy with 1-2 ms pauses, when nil).
func newEnvPolicy(t *testing.T, tel *telemetry.Telemetry, mutate func(*Config), policy func(*chatclient.Policy)) *env {
	t.Helper()
	cfg := DefaultConfig()
	cfg.CoreTimeout = 2 * time.Second
	cfg.SSEHeartbeat = time.Hour
	// Tests of other behaviour start many chats from one address; the start
	// limits have their own tests (edge_test.go), which set them.
	cfg.ClientStartRate, cfg.StartRate = 0, 0
	if mutate != nil {
		mutate(&cfg)
	}
	p := chatclient.DefaultPolicy()
	p.MinBackoff, p.MaxBackoff = time.Millisecond, 2*time.Millisecond
	if policy != nil {
		policy(&p)
	}
	f := newFakeCore()
	client := startFakeCoreClient(t, f, tel, p)
	s, err := New(cfg, client, tel)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return &env{t: t, core: f, srv: s, http: hs, tel: tel}
}

// post sends a raw body and decodes the JSON answer.
func (e *env) post(path, contentType string, body []byte) (int, response) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.http.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := e.http.Client().Do(req)
	if err != nil {
		e.t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	var r response
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatalf("POST %s: answer %d is not JSON: %q", path, res.StatusCode, b)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		e.t.Errorf("POST %s: content type %q", path, ct)
	}
	return res.StatusCode, r
}

func (e *env) postJSON(path string, v any) (int, response) {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.post(path, "application/json", b)
}

func (e *env) postForm(path string, v url.Values) (int, response) {
	e.t.Helper()
	return e.post(path, "application/x-www-form-urlencoded", []byte(v.Encode()))
}

// chat is a started chat's identity.
type chat struct{ id, user, key string }

func (c chat) params(extra map[string]any) map[string]any {
	m := map[string]any{"userId": c.user, "secureKey": c.key, "alias": "fake-core"}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func (e *env) start(nick string) chat {
	e.t.Helper()
	code, r := e.postJSON("/genesys/2/chat/customer-support", map[string]any{"nickname": nick, "subject": "help"})
	if code != 200 || r.StatusCode != 0 || r.ChatID == "" {
		e.t.Fatalf("start: %d %+v", code, r)
	}
	return chat{r.ChatID, r.UserID, r.SecureKey}
}

func (e *env) op(c chat, op string, extra map[string]any) (int, response) {
	e.t.Helper()
	return e.postJSON("/genesys/2/chat/customer-support/"+c.id+"/"+op, c.params(extra))
}

// TestStartRetriesKeepOneRequestID: webapi retries a start the core could
// not answer with the same client request id, so a retry after a lost answer
// gets the first session back instead of a second one.
func TestStartRetriesKeepOneRequestID(t *testing.T) {
	e := newEnv(t, nil)
	e.core.setFailNext(2)
	e.start("Ann")
	e.core.mu.Lock()
	ids := append([]string(nil), e.core.startIDs...)
	e.core.mu.Unlock()
	if len(ids) != 3 {
		t.Fatalf("%d StartSession attempts, want 3", len(ids))
	}
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("attempts carried request ids %q, want one non-empty id", ids)
		}
	}
}

func TestStartChat(t *testing.T) {
	e := newEnv(t, nil)
	mp := func() (string, []byte) {
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		_ = w.WriteField("nickname", "Multi")
		_ = w.WriteField("userData[order]", "77")
		_ = w.Close()
		return w.FormDataContentType(), buf.Bytes()
	}
	mpType, mpBody := mp()
	cases := []struct {
		name        string
		contentType string
		body        string
		wantNick    string
		wantSubject string
		wantUD      map[string]string
	}{
		{"json", "application/json", `{"nickname":"Ada","subject":"Order","emailAddress":"ada@example.com","userData":{"order":"42","vip":true}}`,
			"Ada", "Order", map[string]string{"order": "42", "vip": "true"}},
		{"json userData brackets", "application/json; charset=utf-8", `{"nickname":"Bob","userData[order]":7}`,
			"Bob", "", map[string]string{"order": "7"}},
		{"form", "application/x-www-form-urlencoded", "nickname=Cy&subject=Refund&userData%5Border%5D=9&userData%5Blang%5D=en",
			"Cy", "Refund", map[string]string{"order": "9", "lang": "en"}},
		{"form without content type", "", "nickname=Dee", "Dee", "", nil},
		{"json without content type", "", `{"nickname":"Eve"}`, "Eve", "", nil},
		{"first and last name", "application/json", `{"firstName":"Grace","lastName":"Hopper"}`, "Grace Hopper", "", nil},
		{"multipart", mpType, string(mpBody), "Multi", "", map[string]string{"order": "77"}},
		{"unknown fields ignored", "application/json", `{"nickname":"Fay","colour":"blue"}`, "Fay", "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, r := e.post("/genesys/2/chat/sales", tc.contentType, []byte(tc.body))
			if code != 200 || r.StatusCode != 0 {
				t.Fatalf("got %d %+v", code, r)
			}
			if r.ChatID == "" || r.UserID == "" || r.SecureKey == "" || r.Alias != "fake-core" {
				t.Errorf("identity missing: %+v", r)
			}
			if r.ChatEnded {
				t.Errorf("chatEnded on a new chat")
			}
			// The transcript so far: SESSION_STARTED (hidden) and the join.
			if len(r.Messages) != 1 || r.Messages[0].Type != "ParticipantJoined" || r.Messages[0].Index != 2 || r.Messages[0].From.Type != "Client" {
				t.Errorf("messages = %+v", r.Messages)
			}
			if r.NextPosition != 3 {
				t.Errorf("nextPosition = %d, want 3", r.NextPosition)
			}
			e.core.mu.Lock()
			st := e.core.lastStart
			e.core.mu.Unlock()
			if st.Service != "sales" || st.Nickname != tc.wantNick || st.Subject != tc.wantSubject {
				t.Errorf("core got service=%q nickname=%q subject=%q", st.Service, st.Nickname, st.Subject)
			}
			if len(st.UserData) != len(tc.wantUD) {
				t.Errorf("userData = %v, want %v", st.UserData, tc.wantUD)
			}
			for k, v := range tc.wantUD {
				if st.UserData[k] != v {
					t.Errorf("userData[%s] = %q, want %q", k, st.UserData[k], v)
				}
			}
		})
	}
}

func TestRoutesHappyPath(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	agent := e.core.addAgent(t, c.id, "Kim")
	cases := []struct {
		op       string
		params   map[string]any
		wantKind chatpb.EventKind
		wantText string
		attr     string
	}{
		{"send", map[string]any{"message": "hello"}, chatpb.EventKind_EVENT_KIND_MESSAGE, "hello", ""},
		{"startTyping", nil, chatpb.EventKind_EVENT_KIND_TYPING_STARTED, "", ""},
		{"stopTyping", nil, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED, "", ""},
		{"customNotice", map[string]any{"message": "page closed", "noticeType": "pageHidden"}, chatpb.EventKind_EVENT_KIND_NOTICE, "page closed", "pageHidden"},
		{"pushUrl", map[string]any{"pushUrl": "https://example.com/help"}, chatpb.EventKind_EVENT_KIND_PUSH_URL, "https://example.com/help", ""},
	}
	for _, tc := range cases {
		t.Run(tc.op, func(t *testing.T) {
			before := e.core.eventCount(c.id)
			code, r := e.op(c, tc.op, tc.params)
			if code != 200 || r.StatusCode != 0 || r.ChatEnded {
				t.Fatalf("got %d %+v", code, r)
			}
			evs := e.core.events(c.id)
			if len(evs) != before+1 {
				t.Fatalf("core has %d events, want %d", len(evs), before+1)
			}
			ev := evs[len(evs)-1]
			if ev.Kind != tc.wantKind || ev.Text != tc.wantText || ev.From.Id != c.user {
				t.Errorf("core event = %v", ev)
			}
			if ev.ClientMessageId == "" {
				t.Errorf("webapi sent no client message id")
			}
			if tc.attr != "" && ev.Attrs["noticeType"] != tc.attr {
				t.Errorf("noticeType = %q", ev.Attrs["noticeType"])
			}
			if r.Index != ev.Index {
				t.Errorf("answer index %d, core index %d", r.Index, ev.Index)
			}
			if r.Messages != nil {
				t.Errorf("messages without transcriptPosition: %+v", r.Messages)
			}
		})
	}
	// Agent speaks; a send with transcriptPosition returns it and our own.
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "hi Ada", chatpb.Visibility_VISIBILITY_ALL)
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "coaching", chatpb.Visibility_VISIBILITY_INTERNAL)
	pos := uint64(e.core.eventCount(c.id) - 1)
	code, r := e.op(c, "send", map[string]any{"message": "thanks", "transcriptPosition": pos})
	if code != 200 || r.StatusCode != 0 {
		t.Fatalf("send with position: %d %+v", code, r)
	}
	var texts []string
	for _, m := range r.Messages {
		texts = append(texts, m.From.Type+":"+m.Text)
	}
	if strings.Join(texts, "|") != "Agent:hi Ada|Client:thanks" {
		t.Errorf("messages = %v", texts)
	}
	if r.NextPosition != uint64(e.core.eventCount(c.id)+1) {
		t.Errorf("nextPosition = %d", r.NextPosition)
	}

	// Disconnect ends the chat; a second disconnect still succeeds.
	for i := range 2 {
		code, r = e.op(c, "disconnect", nil)
		if code != 200 || r.StatusCode != 0 || !r.ChatEnded {
			t.Fatalf("disconnect %d: %d %+v", i, code, r)
		}
	}
	// Sending on an ended chat: HTTP 200, statusCode 2, chatEnded.
	before := e.core.eventCount(c.id)
	code, r = e.op(c, "send", map[string]any{"message": "anyone?"})
	if code != 200 || r.StatusCode != 2 || !r.ChatEnded || len(r.Errors) != 1 || r.Errors[0].Code != codeChatEnded {
		t.Errorf("send after end: %d %+v", code, r)
	}
	if e.core.eventCount(c.id) != before {
		t.Errorf("send after end changed the log")
	}
	code, r = e.op(c, "refresh", map[string]any{"transcriptPosition": before})
	if code != 200 || r.StatusCode != 0 || !r.ChatEnded || len(r.Messages) != 1 || r.Messages[0].Type != "ChatEnded" || r.Messages[0].Reason != "customer left" {
		t.Errorf("refresh after end: %d %+v", code, r)
	}
}

func TestRefresh(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	agent := e.core.addAgent(t, c.id, "Kim") // index 3
	for _, txt := range []string{"one", "two", "three"} {
		if code, r := e.op(c, "send", map[string]any{"message": txt}); code != 200 || r.StatusCode != 0 {
			t.Fatalf("send: %d %+v", code, r)
		}
	}
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "secret", chatpb.Visibility_VISIBILITY_INTERNAL) // 7, hidden
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "four", chatpb.Visibility_VISIBILITY_ALL)        // 8
	cases := []struct {
		name    string
		params  map[string]any
		form    bool
		indexes []uint64
	}{
		{"no position: whole transcript", nil, false, []uint64{2, 3, 4, 5, 6, 8}},
		{"position zero", map[string]any{"transcriptPosition": 0}, false, []uint64{2, 3, 4, 5, 6, 8}},
		{"from 5", map[string]any{"transcriptPosition": 5}, false, []uint64{5, 6, 8}},
		{"from 5 as a string", map[string]any{"transcriptPosition": "5"}, false, []uint64{5, 6, 8}},
		{"form from 6", map[string]any{"transcriptPosition": "6"}, true, []uint64{6, 8}},
		{"from the end", map[string]any{"transcriptPosition": 9}, false, nil},
		{"past the end", map[string]any{"transcriptPosition": 100}, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			var r response
			if tc.form {
				v := url.Values{}
				for k, x := range c.params(tc.params) {
					v.Set(k, x.(string))
				}
				code, r = e.postForm("/genesys/2/chat/customer-support/"+c.id+"/refresh", v)
			} else {
				code, r = e.op(c, "refresh", tc.params)
			}
			if code != 200 || r.StatusCode != 0 {
				t.Fatalf("got %d %+v", code, r)
			}
			var got []uint64
			for _, m := range r.Messages {
				got = append(got, m.Index)
				if m.Text == "secret" {
					t.Errorf("internal event shown to the customer")
				}
				if m.UTCTime == 0 {
					t.Errorf("message %d without utcTime", m.Index)
				}
			}
			if !equalU64(got, tc.indexes) {
				t.Errorf("indexes = %v, want %v", got, tc.indexes)
			}
			if r.NextPosition != 9 {
				t.Errorf("nextPosition = %d, want 9", r.NextPosition)
			}
		})
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIdempotentResend(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	code, first := e.op(c, "send", map[string]any{"message": "pay me", "clientMessageId": "m-1"})
	if code != 200 || first.StatusCode != 0 || first.Duplicate {
		t.Fatalf("first send: %d %+v", code, first)
	}
	// The same id again (a browser retry after a lost answer), as a form.
	v := url.Values{"message": {"pay me"}, "clientMessageId": {"m-1"}, "userId": {c.user}, "secureKey": {c.key}}
	code, again := e.postForm("/genesys/2/chat/customer-support/"+c.id+"/send", v)
	if code != 200 || again.StatusCode != 0 || !again.Duplicate || again.Index != first.Index {
		t.Fatalf("resend: %d %+v, first index %d", code, again, first.Index)
	}
	n := 0
	for _, ev := range e.core.events(c.id) {
		if ev.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE {
			n++
		}
	}
	if n != 1 {
		t.Errorf("core holds %d messages, want 1", n)
	}
}

func TestRetryWhileCoreUnavailable(t *testing.T) {
	t.Run("the chat client retries within core-timeout", func(t *testing.T) {
		e := newEnv(t, nil)
		c := e.start("Ada")
		e.core.setFailNext(3)
		code, r := e.op(c, "send", map[string]any{"message": "through the failover"})
		if code != 200 || r.StatusCode != 0 {
			t.Fatalf("got %d %+v", code, r)
		}
		if got := counterValue(t, e.srv.metrics.coreRetries.WithLabelValues("Send")); got != 3 {
			t.Errorf("retries counted = %v, want 3", got)
		}
	})
	t.Run("statusCode 1 when the retries run out", func(t *testing.T) {
		e := newEnvPolicy(t, telemetry.Discard(), nil, func(p *chatclient.Policy) { p.MaxAttempts = 1 })
		c := e.start("Ada")
		before := e.core.eventCount(c.id)
		e.core.setFailNext(1)
		code, r := e.op(c, "send", map[string]any{"message": "lost?"})
		if code != http.StatusServiceUnavailable || r.StatusCode != 1 || len(r.Errors) != 1 || r.Errors[0].Code != codeUnavailable {
			t.Fatalf("got %d %+v", code, r)
		}
		if e.core.eventCount(c.id) != before {
			t.Errorf("log changed")
		}
	})
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBody = 8 << 10 })
	c := e.start("Ada")
	base := "/genesys/2/chat/customer-support/"
	auth := func(extra string) string {
		return `{"userId":"` + c.user + `","secureKey":"` + c.key + `"` + extra + `}`
	}
	cases := []struct {
		name        string
		path        string
		contentType string
		body        string
		wantHTTP    int
		wantStatus  int
		wantCode    int
	}{
		{"start: malformed JSON", "/genesys/2/chat/customer-support", "application/json", `{"nickname":`, 400, 2, codeMalformed},
		{"start: JSON array", "/genesys/2/chat/customer-support", "application/json", `["nickname"]`, 400, 2, codeMalformed},
		{"start: trailing data", "/genesys/2/chat/customer-support", "application/json", `{"nickname":"a"} {}`, 400, 2, codeMalformed},
		{"start: no nickname", "/genesys/2/chat/customer-support", "application/json", `{"subject":"x"}`, 400, 2, codeInvalidParam},
		{"start: object nickname", "/genesys/2/chat/customer-support", "application/json", `{"nickname":{"a":1}}`, 400, 2, codeInvalidParam},
		{"start: userData not an object", "/genesys/2/chat/customer-support", "application/json", `{"nickname":"a","userData":"x"}`, 400, 2, codeInvalidParam},
		{"start: invalid UTF-8", "/genesys/2/chat/customer-support", "application/x-www-form-urlencoded", "nickname=%ff%fe", 400, 2, codeInvalidParam},
		{"start: bad form encoding", "/genesys/2/chat/customer-support", "application/x-www-form-urlencoded", "nickname=%zz", 400, 2, codeMalformed},
		{"start: long nickname", "/genesys/2/chat/customer-support", "application/json", `{"nickname":"` + strings.Repeat("n", 200) + `"}`, 400, 2, codeInvalidParam},
		{"start: unsupported content type", "/genesys/2/chat/customer-support", "application/xml", `<nickname/>`, 400, 2, codeMalformed},
		{"start: body over max-body", "/genesys/2/chat/customer-support", "application/json", `{"nickname":"` + strings.Repeat("n", 9<<10) + `"}`, 400, 2, codeTooLarge},
		{"send: body over max-body", base + c.id + "/send", "application/json", auth(`,"message":"` + strings.Repeat("m", 9<<10) + `"`), 400, 2, codeTooLarge},
		{"send: oversized message", base + c.id + "/send", "application/json", auth(`,"message":"` + strings.Repeat("m", 5000) + `"`), 400, 2, codeInvalidParam},
		{"send: empty message", base + c.id + "/send", "application/json", auth(`,"message":""`), 400, 2, codeInvalidParam},
		{"send: no userId", base + c.id + "/send", "application/json", `{"secureKey":"` + c.key + `","message":"x"}`, 400, 2, codeInvalidParam},
		{"send: no secureKey", base + c.id + "/send", "application/json", `{"userId":"` + c.user + `","message":"x"}`, 400, 2, codeInvalidParam},
		{"send: wrong secureKey", base + c.id + "/send", "application/json", `{"userId":"` + c.user + `","secureKey":"guess","message":"x"}`, 403, 2, codeForbidden},
		{"send: unknown chat", base + "no-such-chat/send", "application/json", auth(`,"message":"x"`), 404, 2, codeUnknownChat},
		{"send: malformed JSON", base + c.id + "/send", "application/json", `{"userId":`, 400, 2, codeMalformed},
		{"refresh: bad transcriptPosition", base + c.id + "/refresh", "application/json", auth(`,"transcriptPosition":"-1"`), 400, 2, codeInvalidParam},
		{"refresh: fractional transcriptPosition", base + c.id + "/refresh", "application/json", auth(`,"transcriptPosition":1.5`), 400, 2, codeInvalidParam},
		{"refresh: wrong secureKey", base + c.id + "/refresh", "application/json", `{"userId":"` + c.user + `","secureKey":"guess"}`, 403, 2, codeForbidden},
		{"refresh: unknown chat", base + "nope/refresh", "application/json", auth(""), 404, 2, codeUnknownChat},
		{"startTyping: wrong secureKey", base + c.id + "/startTyping", "application/json", `{"userId":"` + c.user + `","secureKey":"x"}`, 403, 2, codeForbidden},
		{"stopTyping: unknown chat", base + "nope/stopTyping", "application/json", auth(""), 404, 2, codeUnknownChat},
		{"customNotice: malformed", base + c.id + "/customNotice", "application/json", `nope`, 400, 2, codeMalformed},
		{"pushUrl: missing", base + c.id + "/pushUrl", "application/json", auth(""), 400, 2, codeInvalidParam},
		{"pushUrl: not http", base + c.id + "/pushUrl", "application/json", auth(`,"pushUrl":"javascript:alert(1)"`), 400, 2, codeInvalidParam},
		{"pushUrl: relative", base + c.id + "/pushUrl", "application/json", auth(`,"pushUrl":"/help"`), 400, 2, codeInvalidParam},
		{"disconnect: wrong secureKey", base + c.id + "/disconnect", "application/json", `{"userId":"` + c.user + `","secureKey":"x"}`, 403, 2, codeForbidden},
		{"disconnect: unknown chat", base + "nope/disconnect", "application/json", auth(""), 404, 2, codeUnknownChat},
		{"unknown route", base + c.id + "/dance", "application/json", auth(""), 404, 2, codeNotFoundRoute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sessions, events := e.core.sessionCount(), e.core.eventCount(c.id)
			code, r := e.post(tc.path, tc.contentType, []byte(tc.body))
			if code != tc.wantHTTP || r.StatusCode != tc.wantStatus {
				t.Errorf("got HTTP %d statusCode %d, want %d %d (%+v)", code, r.StatusCode, tc.wantHTTP, tc.wantStatus, r)
			}
			if len(r.Errors) != 1 || r.Errors[0].Code != tc.wantCode || r.Errors[0].Advice == "" {
				t.Errorf("errors = %+v, want one with code %d and advice", r.Errors, tc.wantCode)
			}
			if e.core.sessionCount() != sessions || e.core.eventCount(c.id) != events {
				t.Errorf("bad input changed the core: sessions %d->%d, events %d->%d",
					sessions, e.core.sessionCount(), events, e.core.eventCount(c.id))
			}
		})
	}
}

func TestTooManySends(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	e.core.mu.Lock()
	e.core.sendLimit = 2
	e.core.mu.Unlock()
	for i := range 2 {
		if code, r := e.op(c, "send", map[string]any{"message": "spam"}); code != 200 || r.StatusCode != 0 {
			t.Fatalf("send %d: %d %+v", i, code, r)
		}
	}
	before := e.core.eventCount(c.id)
	req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/genesys/2/chat/customer-support/"+c.id+"/send",
		strings.NewReader(`{"userId":"`+c.user+`","secureKey":"`+c.key+`","message":"spam"}`))
	req.Header.Set("Content-Type", "application/json")
	res, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r response
	_ = json.NewDecoder(res.Body).Decode(&r)
	if res.StatusCode != http.StatusTooManyRequests || r.StatusCode != 1 || r.Errors[0].Code != codeTooMany {
		t.Errorf("got %d %+v", res.StatusCode, r)
	}
	if res.Header.Get("Retry-After") == "" {
		t.Errorf("no Retry-After")
	}
	if e.core.eventCount(c.id) != before {
		t.Errorf("refused send changed the log")
	}
}

func TestPageStaticHealthMetrics(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Service = "vip-support" })
	get := func(path string) (int, string, string) {
		res, err := e.http.Client().Get(e.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("Content-Type"), string(b)
	}
	code, ct, body := get("/")
	if code != 200 || !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("/: %d %s", code, ct)
	}
	if !strings.Contains(body, `data-service="vip-support"`) || !strings.Contains(body, `src="/static/app.js"`) {
		t.Errorf("page lacks its service or its script:\n%s", body)
	}
	// The chat card's markup lives in app.js, which the page and the
	// embeddable widget share.
	_, _, script := get("/static/app.js")
	for _, id := range []string{`id="nickname"`, `id="subject"`, `id="start"`, `id="message"`, `id="send"`, `id="transcript"`, `id="status"`, `id="end"`} {
		if !strings.Contains(script, id) {
			t.Errorf("the chat card lacks %s", id)
		}
	}
	for _, p := range []string{"/static/app.js", "/static/style.css", "/static/widget.js"} {
		if code, _, body := get(p); code != 200 || len(body) < 100 {
			t.Errorf("%s: %d, %d bytes", p, code, len(body))
		}
	}
	// Another site loads the widget with a script tag: it must be served as
	// JavaScript (nosniff refuses anything else).
	if _, ct, _ := get("/static/widget.js"); !strings.HasPrefix(ct, "text/javascript") {
		t.Errorf("/static/widget.js: Content-Type %q, want text/javascript", ct)
	}
	if code, _, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _, _ := get("/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	e.start("Ada")
	e.post("/genesys/2/chat/customer-support", "application/json", []byte("{"))
	code, _, body = get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`hachat_webapi_requests_total{code="200",route="POST /genesys/2/chat/{service}"} 1`,
		`hachat_webapi_requests_total{code="400",route="POST /genesys/2/chat/{service}"} 1`,
		`hachat_webapi_sse_clients 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	client := chatpb.NewChatClient(nil)
	cases := []struct {
		name   string
		mutate func(*Config)
	}{
		{"max-body", func(c *Config) { c.MaxBody = 0 }},
		{"sse-heartbeat", func(c *Config) { c.SSEHeartbeat = 0 }},
		{"core-timeout", func(c *Config) { c.CoreTimeout = -1 }},
		{"retry-budget", func(c *Config) { c.RetryBudget = -1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			if _, err := New(cfg, client, telemetry.Discard()); err == nil {
				t.Errorf("New accepted a bad %s", tc.name)
			}
		})
	}
	if _, err := New(DefaultConfig(), nil, telemetry.Discard()); err == nil {
		t.Errorf("New accepted a nil client")
	}
}

func TestRunServesAndStops(t *testing.T) {
	e := newEnv(t, nil)
	cfg := DefaultConfig()
	cfg.HTTP = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tel := telemetry.Discard()
	s, err := New(cfg, startFakeCore(t, e.core, tel), tel)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := (&netListenConfig{}).listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()
	res, err := http.Get(base + "/healthz")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", res, err)
	}
	res.Body.Close()
	// An open push channel must not hold up the shutdown.
	c := e.start("Ada")
	stream, err := http.Get(base + "/genesys/2/chat/customer-support/" + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key)
	if err != nil || stream.StatusCode != 200 {
		t.Fatalf("events: %v %v", stream, err)
	}
	defer stream.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := io.ReadAll(stream.Body); err != nil {
		t.Logf("stream ended with %v", err)
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
