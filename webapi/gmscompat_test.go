package webapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/chatcore/chatpb"
)

// The tests in this file replay, against a real chat core, the request
// sequences of third-party clients written for the real GMS Chat API v2, as
// their documented wire behaviour shows them (our own code, not theirs):
//
//   - a test bot written with Python's requests: form-urlencoded bodies,
//     every path with a trailing slash (POST /genesys/2/chat/{service}/),
//     polling refresh from the nextPosition of the last answer;
//   - a React Native app written with axios: form-urlencoded bodies that
//     carry every field (alias, secureKey and userId empty at the start,
//     text, message: "" on refresh, a dozen userData[...] fields), an apikey
//     header, refresh from transcriptPosition = max(0, nextPosition - 1),
//     and nextPosition read from the answer of every call, send included,
//     so that a missing nextPosition becomes transcriptPosition=NaN;
//   - the same app built with axios before 1.0, which sends its plain
//     objects as JSON while they are labelled form-urlencoded;
//   - the GMS documentation's request chat with a multipart/form-data body.
//
// Without the GMS leniencies (trailing slash, nextPosition on every answer,
// NaN read as "from the start") the first never starts a chat and the
// second polls into 400s; these tests fail then.

// gmsClient speaks the customer API as a GMS client does.
type gmsClient struct {
	t         *testing.T
	base      string // http://host/genesys/2/chat/{service}
	slash     bool   // append "/" to every path, as the Python bot does
	multipart bool   // send multipart/form-data instead of urlencoded
	// jsonAsForm sends a JSON object labelled form-urlencoded, as axios
	// before 1.0 does with a plain object whatever Content-Type is set.
	jsonAsForm bool
	header     http.Header // sent with every request (apikey)
}

// gmsAnswer is a decoded answer, as a client without our types sees it.
type gmsAnswer struct {
	HTTP int
	Raw  map[string]any
	Resp response
}

func (g *gmsClient) path(chatID, op string) string {
	p := g.base
	if chatID != "" {
		p += "/" + chatID + "/" + op
	}
	if g.slash {
		p += "/"
	}
	return p
}

// post sends form values to the chat (chatID "" starts one).
func (g *gmsClient) post(chatID, op string, form url.Values) gmsAnswer {
	g.t.Helper()
	var body bytes.Buffer
	ct := "application/x-www-form-urlencoded"
	switch {
	case g.jsonAsForm:
		obj := map[string]string{}
		for k := range form {
			obj[k] = form.Get(k)
		}
		if err := json.NewEncoder(&body).Encode(obj); err != nil {
			g.t.Fatal(err)
		}
	case g.multipart:
		mw := multipart.NewWriter(&body)
		names := make([]string, 0, len(form))
		for k := range form {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if err := mw.WriteField(k, form.Get(k)); err != nil {
				g.t.Fatal(err)
			}
		}
		if err := mw.Close(); err != nil {
			g.t.Fatal(err)
		}
		ct = mw.FormDataContentType()
	default:
		body.WriteString(form.Encode())
	}
	req, err := http.NewRequest(http.MethodPost, g.path(chatID, op), &body)
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	for k, vs := range g.header {
		req.Header[k] = vs
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("POST %s: %v", req.URL.Path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	a := gmsAnswer{HTTP: res.StatusCode}
	if err := json.Unmarshal(b, &a.Raw); err != nil {
		g.t.Fatalf("POST %s: %d %q is not a JSON object: %v", req.URL.Path, res.StatusCode, b, err)
	}
	if err := json.Unmarshal(b, &a.Resp); err != nil {
		g.t.Fatalf("POST %s: %v", req.URL.Path, err)
	}
	return a
}

// interaction asserts that a successful answer carries the chat
// interaction as GMS does: statusCode 0, chatId, userId, secureKey, alias,
// chatEnded and a numeric nextPosition.
func (a gmsAnswer) interaction(t *testing.T, what string, c chat, alias string) uint64 {
	t.Helper()
	if a.HTTP != 200 || a.Resp.StatusCode != 0 {
		t.Fatalf("%s: HTTP %d %v", what, a.HTTP, a.Raw)
	}
	// alias: as the client sent it (GMS clients echo the start answer's);
	// a client that sent none gets the serving core's, never nothing.
	for k, want := range map[string]string{"chatId": c.id, "userId": c.user, "secureKey": c.key, "alias": alias} {
		if k == "alias" && want == "" {
			if got, ok := a.Raw[k].(string); !ok || got == "" {
				t.Errorf("%s: alias = %v, want the serving core's (the client sent none; answer %v)", what, a.Raw[k], a.Raw)
			}
			continue
		}
		if got, ok := a.Raw[k].(string); !ok || got != want {
			t.Errorf("%s: %s = %v, want %q (answer %v)", what, k, a.Raw[k], want, a.Raw)
		}
	}
	if _, ok := a.Raw["chatEnded"].(bool); !ok {
		t.Errorf("%s: no chatEnded in %v", what, a.Raw)
	}
	n, ok := a.Raw["nextPosition"].(float64)
	if !ok || n < 1 {
		t.Fatalf("%s: nextPosition = %v, want a number >= 1 (answer %v)", what, a.Raw["nextPosition"], a.Raw)
	}
	return uint64(n)
}

// agentOf joins chatID as an agent through the core, as interaction does.
func agentOf(t *testing.T, client *chatclient.Client, chatID string) *chatpb.Auth {
	t.Helper()
	jr, err := client.Join(t.Context(), &chatpb.JoinRequest{SessionId: chatID, Nickname: "Kim",
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc"})
	if err != nil {
		t.Fatalf("agent join: %v", err)
	}
	return jr.GetAuth()
}

func agentSays(t *testing.T, client *chatclient.Client, agent *chatpb.Auth, text string) uint64 {
	t.Helper()
	out, err := client.Send(t.Context(), &chatpb.SendRequest{Auth: agent, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text})
	if err != nil {
		t.Fatalf("agent send: %v", err)
	}
	return out.GetIndex()
}

// agentUserData is the userData interaction shows the agent for chatID (the
// core's WatchSessions, which feeds the agent desktop).
func agentUserData(t *testing.T, client *chatclient.Client, chatID string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	st, err := client.WatchSessions(ctx, &chatpb.WatchSessionsRequest{ServiceToken: "svc"})
	if err != nil {
		t.Fatalf("watch sessions: %v", err)
	}
	for {
		ch, err := st.Recv()
		if err != nil {
			t.Fatalf("chat %s never offered to agents: %v", chatID, err)
		}
		if ch.GetSessionId() == chatID {
			return ch.GetUserData()
		}
	}
}

// poller is a client that reads the transcript only through refresh, each
// time from the nextPosition of the previous answer. seen counts each
// index it was given.
type poller struct {
	g    *gmsClient
	c    chat
	next uint64
	seen map[uint64]int
	msgs map[uint64]*message
}

func (p *poller) refresh(t *testing.T, alias string, position string) gmsAnswer {
	t.Helper()
	a := p.g.post(p.c.id, "refresh", url.Values{"userId": {p.c.user}, "secureKey": {p.c.key}, "alias": {alias}, "transcriptPosition": {position}})
	p.next = a.interaction(t, "refresh", p.c, alias)
	for _, m := range a.Resp.Messages {
		p.seen[m.Index]++
		p.msgs[m.Index] = m
	}
	return a
}

// until refreshes until cond holds on what was seen, for up to 5 s.
func (p *poller) until(t *testing.T, alias string, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("polling never saw %s; seen %v", what, p.seen)
		}
		p.refresh(t, alias, fmt.Sprint(p.next))
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *poller) sawText(text string) func() bool {
	return func() bool {
		for _, m := range p.msgs {
			if m.Text == text {
				return true
			}
		}
		return false
	}
}

// exactlyOnce checks that every visible event up to the last one seen was
// given exactly once, against a fresh refresh from the beginning.
func (p *poller) exactlyOnce(t *testing.T, alias string) {
	t.Helper()
	all := p.g.post(p.c.id, "refresh", url.Values{"userId": {p.c.user}, "secureKey": {p.c.key}, "alias": {alias}, "transcriptPosition": {"1"}})
	var last uint64
	for i := range p.seen {
		last = max(last, i)
	}
	want := 0
	for _, m := range all.Resp.Messages {
		if m.Index > last {
			break
		}
		want++
		if n := p.seen[m.Index]; n != 1 {
			t.Errorf("event %d (%s %q) seen %d times by the polling client", m.Index, m.Type, m.Text, n)
		}
	}
	if len(p.seen) != want {
		t.Errorf("polling client saw %d events, the transcript has %d up to %d: %v", len(p.seen), want, last, p.seen)
	}
}

// TestGMSClientPythonBot replays the Python test bot: every path with a
// trailing slash, form bodies, refresh polling from nextPosition.
func TestGMSClientPythonBot(t *testing.T) {
	client, hs, _ := startRealStack(t, nil)
	g := &gmsClient{t: t, base: hs.URL + "/genesys/2/chat/customer-support", slash: true}

	a := g.post("", "", url.Values{"firstName": {"Ada"}, "lastName": {"Lovelace"}, "subject": {"Order 42"},
		"emailAddress": {"ada@example.com"}, "userData[OrderId]": {"42"}})
	c := chat{a.Resp.ChatID, a.Resp.UserID, a.Resp.SecureKey}
	alias := a.Resp.Alias
	if alias == "" {
		t.Fatalf("start: no alias in %v", a.Raw)
	}
	p := &poller{g: g, c: c, seen: map[uint64]int{}, msgs: map[uint64]*message{}}
	p.next = a.interaction(t, "start", c, alias)
	for _, m := range a.Resp.Messages {
		p.seen[m.Index]++
		p.msgs[m.Index] = m
	}
	if ud := agentUserData(t, client, c.id); ud["OrderId"] != "42" {
		t.Errorf("agent sees userData %v, want OrderId=42", ud)
	}

	agent := agentOf(t, client, c.id)
	agentSays(t, client, agent, "Hello Ada")
	p.until(t, alias, "the agent's greeting", p.sawText("Hello Ada"))

	s := g.post(c.id, "send", url.Values{"userId": {c.user}, "secureKey": {c.key}, "alias": {alias}, "message": {"where is my order?"}})
	if next := s.interaction(t, "send", c, alias); next != s.Resp.Index {
		t.Errorf("send: nextPosition %d, want the message's own index %d", next, s.Resp.Index)
	} else {
		p.next = next
	}
	for i := range 3 {
		agentSays(t, client, agent, fmt.Sprintf("answer %d", i))
	}
	p.until(t, alias, "the agent's answers", p.sawText("answer 2"))
	if !p.sawText("where is my order?")() {
		t.Errorf("the bot's own message never came back through refresh")
	}
	p.exactlyOnce(t, alias)

	for _, op := range []string{"startTyping", "stopTyping"} {
		tp := g.post(c.id, op, url.Values{"userId": {c.user}, "secureKey": {c.key}, "alias": {alias}})
		tp.interaction(t, op, c, alias)
	}
	d := g.post(c.id, "disconnect", url.Values{"userId": {c.user}, "secureKey": {c.key}, "alias": {alias}})
	d.interaction(t, "disconnect", c, alias)
	if !d.Resp.ChatEnded {
		t.Errorf("disconnect: chatEnded false")
	}
}

// TestGMSClientReactNative replays the React Native app: axios form
// bodies with every field, an apikey header, refresh from nextPosition - 1,
// nextPosition taken from every answer, NaN when it had none.
func TestGMSClientReactNative(t *testing.T) {
	const key = "rn-app-key"
	client, hs, _ := startRealStackWeb(t, nil, func(c *Config) { c.APIKey = key })
	g := &gmsClient{t: t, base: hs.URL + "/genesys/2/chat/request-chat", header: http.Header{"Apikey": {key}}}

	startForm := url.Values{"alias": {""}, "secureKey": {""}, "userId": {""}, "nickname": {"Sara Ali"},
		"firstName": {"Sara"}, "lastName": {"Ali"}, "emailAddress": {"sara@example.com"}, "subject": {"شكوى"}, "text": {""},
		"userData[GCTI_LanguageCode]": {"ar"}, "userData[_genesys_source]": {"mobile"}, "userData[_genesys_referrer]": {""},
		"userData[_genesys_url]": {"https://example.com/mobile"}, "userData[_genesys_pageTitle]": {"Mobile App"},
		"userData[_genesys_browser]": {"Chrome"}, "userData[_genesys_OS]": {"Android"}, "userData[_genesys_widgets]": {"9.0.017.00"}}

	// The apikey is checked where configured: missing or wrong is 401.
	for name, h := range map[string]http.Header{"missing": nil, "wrong": {"Apikey": {"nope"}}} {
		bad := &gmsClient{t: t, base: g.base, header: h}
		if a := bad.post("", "", startForm); a.HTTP != 401 || a.Resp.StatusCode != 2 || len(a.Resp.Errors) != 1 || a.Resp.Errors[0].Code != codeAPIKey || a.Resp.ChatID != "" {
			t.Errorf("%s apikey: %d %v", name, a.HTTP, a.Raw)
		}
	}

	a := g.post("", "", startForm)
	c := chat{a.Resp.ChatID, a.Resp.UserID, a.Resp.SecureKey}
	alias := a.Resp.Alias
	next := a.interaction(t, "start", c, alias)
	ud := agentUserData(t, client, c.id)
	if ud["GCTI_LanguageCode"] != "ar" || ud["_genesys_widgets"] != "9.0.017.00" || len(ud) < 8 {
		t.Errorf("agent sees userData %v", ud)
	}
	auth := url.Values{"alias": {alias}, "secureKey": {c.key}, "userId": {c.user}}
	with := func(kv ...string) url.Values {
		v := url.Values{}
		for k, vs := range auth {
			v[k] = vs
		}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	refreshFrom := func(n uint64) string { return fmt.Sprint(max(0, int64(n)-1)) } // Math.max(0, nextPosition - 1)

	agent := agentOf(t, client, c.id)
	greet := agentSays(t, client, agent, "مرحبا")
	r := g.post(c.id, "refresh", with("transcriptPosition", refreshFrom(next), "message", ""))
	next = r.interaction(t, "refresh", c, alias)
	if last := r.Resp.Messages[len(r.Resp.Messages)-1]; last.Index != greet || next != greet+1 {
		t.Errorf("refresh: last message %+v, nextPosition %d; want the greeting %d, then %d", last, next, greet, greet+1)
	}

	s := g.post(c.id, "send", with("message", "my bill is wrong", "messageType", "text"))
	next = s.interaction(t, "send", c, alias)
	r = g.post(c.id, "refresh", with("transcriptPosition", refreshFrom(next), "message", ""))
	next = r.interaction(t, "refresh", c, alias)
	var own bool
	for _, m := range r.Resp.Messages {
		own = own || (m.Text == "my bill is wrong" && m.From.Type == "Client")
	}
	if !own {
		t.Errorf("refresh after send does not show the sent message: %+v", r.Resp.Messages)
	}
	ty := g.post(c.id, "startTyping", with("transcriptPosition", refreshFrom(next), "message", "my"))
	next = ty.interaction(t, "startTyping", c, alias)

	// A refresh with nothing new still carries "messages": [] (clients
	// iterate it without checking), and the same nextPosition.
	empty := g.post(c.id, "refresh", with("transcriptPosition", fmt.Sprint(next)))
	if msgs, ok := empty.Raw["messages"].([]any); !ok || len(msgs) != 0 || empty.interaction(t, "empty refresh", c, alias) != next {
		t.Errorf("refresh with nothing new: %v", empty.Raw)
	}

	// What the app sent before nextPosition was on every answer:
	// transcriptPosition=NaN. It reads as "from the start", not a 400.
	for _, ph := range []string{"NaN", "undefined", "null", ""} {
		r := g.post(c.id, "refresh", with("transcriptPosition", ph, "message", ""))
		r.interaction(t, "refresh NaN", c, alias)
		if len(r.Resp.Messages) == 0 || r.Resp.Messages[0].Type != "ParticipantJoined" || r.Resp.Messages[0].From.Nickname != "Sara Ali" {
			t.Errorf("refresh from %q: want the whole transcript, got %+v", ph, r.Resp.Messages)
		}
	}
	// Truly bad input is still a clear error and changes nothing.
	for _, bad := range []string{"abc", "-1", "1.5", "1e3", "+2"} {
		r := g.post(c.id, "send", with("message", "must not be sent", "transcriptPosition", bad))
		if r.HTTP != 400 || r.Resp.StatusCode != 2 || len(r.Resp.Errors) != 1 || r.Resp.Errors[0].Code != codeInvalidParam {
			t.Errorf("transcriptPosition %q: %d %v", bad, r.HTTP, r.Raw)
		}
	}
	all := g.post(c.id, "refresh", with("transcriptPosition", "1"))
	for _, m := range all.Resp.Messages {
		if m.Text == "must not be sent" {
			t.Errorf("a refused send reached the transcript: %+v", m)
		}
	}

	// The push channel takes the key as a query parameter (EventSource
	// cannot set headers); without it, 401.
	ev := hs.URL + "/genesys/2/chat/request-chat/" + c.id + "/events?userId=" + url.QueryEscape(c.user) + "&secureKey=" + url.QueryEscape(c.key)
	for _, tc := range []struct {
		q    string
		want int
	}{{"", 401}, {"&apikey=nope", 401}, {"&apikey=" + key, 200}} {
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ev+tc.q, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != tc.want {
			t.Errorf("events%s: %d, want %d", tc.q, res.StatusCode, tc.want)
		}
		res.Body.Close()
		cancel()
	}

	d := g.post(c.id, "disconnect", auth)
	d.interaction(t, "disconnect", c, alias)
}

// TestGMSMultipartStart starts a chat as the GMS documentation's request
// chat example may (multipart/form-data), userData included, and polls.
func TestGMSMultipartStart(t *testing.T) {
	client, hs, _ := startRealStack(t, nil)
	g := &gmsClient{t: t, base: hs.URL + "/genesys/2/chat/customer-support", multipart: true}
	a := g.post("", "", url.Values{"firstName": {"First"}, "lastName": {"Last"}, "subject": {"Subject to"},
		"userData[TimeZone]": {"-480"}, "userData[CustomerId]": {"C-7"}})
	c := chat{a.Resp.ChatID, a.Resp.UserID, a.Resp.SecureKey}
	a.interaction(t, "start", c, a.Resp.Alias)
	if ud := agentUserData(t, client, c.id); ud["TimeZone"] != "-480" || ud["CustomerId"] != "C-7" {
		t.Errorf("agent sees userData %v", ud)
	}
	r := g.post(c.id, "refresh", url.Values{"userId": {c.user}, "secureKey": {c.key}})
	r.interaction(t, "refresh", c, "")
	if len(r.Resp.Messages) == 0 || r.Resp.Messages[0].From.Nickname != "First Last" {
		t.Errorf("refresh: %+v", r.Resp.Messages)
	}
	// This client never sends alias: every answer still carries the
	// serving core's (core-t), as GMS answers carry the server's alias.
	s := g.post(c.id, "send", url.Values{"userId": {c.user}, "secureKey": {c.key}, "message": {"no alias here"}})
	s.interaction(t, "send", c, "")
	d := g.post(c.id, "disconnect", url.Values{"userId": {c.user}, "secureKey": {c.key}})
	d.interaction(t, "disconnect", c, "")
	for what, a := range map[string]gmsAnswer{"refresh": r, "send": s, "disconnect": d} {
		if a.Resp.Alias != "core-t" {
			t.Errorf("%s without alias: alias %q, want the serving core's core-t", what, a.Resp.Alias)
		}
	}
}

// TestGMSPollingSeesEveryEventOnce: while an agent speaks as fast as it
// can, a client that reads only through refresh, each time from the last
// nextPosition, sees every event exactly once.
func TestGMSPollingSeesEveryEventOnce(t *testing.T) {
	client, hs, _ := startRealStack(t, func(cfg *chatcore.Config) { cfg.SendRate, cfg.SendBurst = 1000, 1000 })
	g := &gmsClient{t: t, base: hs.URL + "/genesys/2/chat/customer-support"}
	a := g.post("", "", url.Values{"nickname": {"Ada"}})
	c := chat{a.Resp.ChatID, a.Resp.UserID, a.Resp.SecureKey}
	p := &poller{g: g, c: c, seen: map[uint64]int{}, msgs: map[uint64]*message{}}
	p.next = a.interaction(t, "start", c, a.Resp.Alias)
	for _, m := range a.Resp.Messages {
		p.seen[m.Index]++
		p.msgs[m.Index] = m
	}
	agent := agentOf(t, client, c.id)
	const n = 40
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		for i := range n {
			if _, err := client.Send(context.Background(), &chatpb.SendRequest{Auth: agent, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: fmt.Sprintf("line %d", i)}); err != nil {
				t.Errorf("agent send %d: %v", i, err)
				return
			}
		}
	}()
	p.until(t, "", "the agent's last line", p.sawText(fmt.Sprintf("line %d", n-1)))
	p.exactlyOnce(t, "")
	lines := 0
	for _, m := range p.msgs {
		if strings.HasPrefix(m.Text, "line ") {
			lines++
		}
	}
	if lines != n {
		t.Errorf("saw %d of %d lines", lines, n)
	}
}

// TestGMSClientOldAxios: the React Native app built with axios before 1.0
// sends JSON labelled form-urlencoded; it starts, polls and sends all the
// same, its userData reaches the agent. It sends its apikey header to a
// webapi that has no key configured: the header is accepted and ignored.
func TestGMSClientOldAxios(t *testing.T) {
	client, hs, _ := startRealStack(t, nil)
	g := &gmsClient{t: t, base: hs.URL + "/genesys/2/chat/request-chat", jsonAsForm: true, header: http.Header{"Apikey": {"rn-app-key"}}}
	a := g.post("", "", url.Values{"alias": {""}, "secureKey": {""}, "userId": {""}, "nickname": {"Old Axios"},
		"userData[GCTI_LanguageCode]": {"en"}})
	c := chat{a.Resp.ChatID, a.Resp.UserID, a.Resp.SecureKey}
	next := a.interaction(t, "start", c, a.Resp.Alias)
	if ud := agentUserData(t, client, c.id); ud["GCTI_LanguageCode"] != "en" {
		t.Errorf("agent sees userData %v", ud)
	}
	s := g.post(c.id, "send", url.Values{"alias": {a.Resp.Alias}, "secureKey": {c.key}, "userId": {c.user}, "message": {"hi"}})
	next = s.interaction(t, "send", c, a.Resp.Alias)
	r := g.post(c.id, "refresh", url.Values{"alias": {a.Resp.Alias}, "secureKey": {c.key}, "userId": {c.user}, "transcriptPosition": {fmt.Sprint(next)}})
	r.interaction(t, "refresh", c, a.Resp.Alias)
	if len(r.Resp.Messages) != 1 || r.Resp.Messages[0].Text != "hi" {
		t.Errorf("refresh from the send's nextPosition: %+v", r.Resp.Messages)
	}
	res, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if want := `hachat_webapi_lenient_total{kind="json-as-form"} 3`; !strings.Contains(string(b), want) {
		t.Errorf("metrics lack %s", want)
	}
}
