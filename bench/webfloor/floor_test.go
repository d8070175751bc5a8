package webfloor

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// sseEvent is one event read from a push channel.
type sseEvent struct{ id, name, data string }

// openEvents opens a push channel and returns its events; the reader ends
// with the test.
func openEvents(t *testing.T, url string, header http.Header) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET %s: HTTP %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sseEvent, 16)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			field, value, _ := strings.Cut(sc.Text(), ": ")
			switch field {
			case "id":
				ev.id = value
			case "event":
				ev.name = value
			case "data":
				ev.data = value
			case "":
				if ev.data != "" {
					select {
					case out <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			}
		}
	}()
	return out
}

// next returns the next event of ch, within 5 s.
func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return sseEvent{}
	}
}

// call posts body to url with header and returns the status and answer.
func call(t *testing.T, url, contentType, body string, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const formType = "application/x-www-form-urlencoded"

// floorChat is one chat set up on a floor: an agent logged in, ready, with
// its push channel open, and a chat it accepted, with the customer's push
// channel open.
type floorChat struct {
	base, chatPath, form string
	bearer               http.Header
	customer, agent      <-chan sseEvent
}

func setUp(t *testing.T) floorChat {
	t.Helper()
	hs := httptest.NewServer(New().Handler())
	t.Cleanup(hs.Close)
	f := floorChat{base: hs.URL}
	code, body := call(t, hs.URL+"/agent/v1/login", "application/json", `{"agentId":"agent0","password":"x"}`, nil)
	var login struct{ Token string }
	if code != http.StatusOK || json.Unmarshal([]byte(body), &login) != nil || login.Token == "" {
		t.Fatalf("login: HTTP %d %s", code, body)
	}
	f.bearer = http.Header{"Authorization": {"Bearer " + login.Token}}
	f.agent = openEvents(t, hs.URL+"/agent/v1/events", f.bearer)
	if code, body := call(t, hs.URL+"/agent/v1/ready", "application/json", "", f.bearer); code != http.StatusOK {
		t.Fatalf("ready: HTTP %d %s", code, body)
	}
	code, body = call(t, hs.URL+"/genesys/2/chat/svc", formType, "nickname=ann&subject=bench", nil)
	var start struct {
		StatusCode                int
		ChatID, UserID, SecureKey string
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &start) != nil || start.ChatID == "" {
		t.Fatalf("start: HTTP %d %s", code, body)
	}
	if ev := next(t, f.agent); ev.name != "offer" || !strings.Contains(ev.data, `"chatId":"`+start.ChatID+`"`) {
		t.Fatalf("agent's first event %+v, want the offer of %s", ev, start.ChatID)
	}
	if code, body := call(t, hs.URL+"/agent/v1/offers/"+start.ChatID+"/accept", "application/json", "", f.bearer); code != http.StatusOK {
		t.Fatalf("accept: HTTP %d %s", code, body)
	}
	f.chatPath = hs.URL + "/genesys/2/chat/svc/" + start.ChatID
	f.form = url.Values{"userId": {start.UserID}, "secureKey": {start.SecureKey}}.Encode()
	f.customer = openEvents(t, f.chatPath+"/events?"+f.form, nil)
	return f
}

// TestSend checks a send's answer and its events: webapi's answer, the
// customer's unnamed event with the index as id, and the agent's "chat"
// event, each with the message and its client message id.
func TestSend(t *testing.T) {
	f := setUp(t)
	for i, id := range []string{"w7", "w8"} {
		code, body := call(t, f.chatPath+"/send", formType, f.form+"&message=hello+there&clientMessageId="+id, nil)
		if code != http.StatusOK || !strings.HasPrefix(body, `{"statusCode":0,`) {
			t.Fatalf("send: HTTP %d %s", code, body)
		}
		index := []string{"2", "3"}[i]
		if !strings.Contains(body, `"index":`+index) {
			t.Errorf("send answer %s, want index %s", body, index)
		}
		ev := next(t, f.customer)
		if ev.name != "" || ev.id != index || !strings.Contains(ev.data, `"text":"hello there"`) || !strings.Contains(ev.data, `"clientMessageId":"`+id+`"`) {
			t.Errorf("customer event %+v, want the message %s with id %s", ev, id, index)
		}
		ev = next(t, f.agent)
		if ev.name != "chat" || !strings.Contains(ev.data, `"kind":"Message"`) || !strings.Contains(ev.data, `"clientMessageId":"`+id+`"`) {
			t.Errorf("agent event %+v, want the chat event of %s", ev, id)
		}
	}
}

// TestRefusals checks that bad calls get a clear 4xx (or 503 to retry)
// with the API's error shape.
func TestRefusals(t *testing.T) {
	f := setUp(t)
	other := httptest.NewServer(New().Handler()) // no agent ready
	defer other.Close()
	wrongKey := strings.Replace(f.form, "secureKey=", "secureKey=x", 1)
	for _, tc := range []struct {
		name, url, contentType, body string
		header                       http.Header
		code                         int
		want                         string
	}{
		{"send with the wrong key", f.chatPath + "/send", formType, wrongKey + "&message=hi", nil, 403, `"code":105`},
		{"send without credentials", f.chatPath + "/send", formType, "message=hi", nil, 400, `"code":102`},
		{"send without a message", f.chatPath + "/send", formType, f.form, nil, 400, `"code":102`},
		{"send with a malformed form", f.chatPath + "/send", formType, f.form + "&message=%zz", nil, 400, `"code":101`},
		{"send to an unknown chat", f.base + "/genesys/2/chat/svc/nope/send", formType, f.form + "&message=hi", nil, 404, `"code":104`},
		{"send to another service", strings.Replace(f.chatPath, "/svc/", "/other/", 1) + "/send", formType, f.form + "&message=hi", nil, 404, `"code":104`},
		{"start without a nickname", f.base + "/genesys/2/chat/svc", formType, "subject=x", nil, 400, `"code":102`},
		{"start with no agent ready", other.URL + "/genesys/2/chat/svc", formType, "nickname=x", nil, 503, `"statusCode":1`},
		{"login without a password", f.base + "/agent/v1/login", "application/json", `{"agentId":"a"}`, nil, 400, `"error"`},
		{"login that is not JSON", f.base + "/agent/v1/login", "application/json", `agentId=a`, nil, 400, `"error"`},
		{"ready without a token", f.base + "/agent/v1/ready", "application/json", "", nil, 401, `"error"`},
		{"accept with a wrong token", f.base + "/agent/v1/offers/nope/accept", "application/json", "", http.Header{"Authorization": {"Bearer nope"}}, 401, `"error"`},
		{"accept of an unknown chat", f.base + "/agent/v1/offers/nope/accept", "application/json", "", f.bearer, 404, `"error"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, tc.url, tc.contentType, tc.body, tc.header)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("HTTP %d %s, want %d with %s", code, body, tc.code, tc.want)
			}
		})
	}
	req, _ := http.NewRequest(http.MethodGet, f.base+"/agent/v1/events", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("agent push channel without a token: %v %v, want 401", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
}

// TestAcceptOnlyOffered checks that a chat is accepted only by the agent
// it was offered to.
func TestAcceptOnlyOffered(t *testing.T) {
	hs := httptest.NewServer(New().Handler())
	defer hs.Close()
	var tokens []http.Header
	for _, a := range []string{"a0", "a1"} {
		_, body := call(t, hs.URL+"/agent/v1/login", "application/json", `{"agentId":"`+a+`","password":"x"}`, nil)
		var login struct{ Token string }
		_ = json.Unmarshal([]byte(body), &login)
		tokens = append(tokens, http.Header{"Authorization": {"Bearer " + login.Token}})
	}
	call(t, hs.URL+"/agent/v1/ready", "application/json", "", tokens[0]) // only a0 is ready
	_, body := call(t, hs.URL+"/genesys/2/chat/svc", formType, "nickname=n", nil)
	var start struct{ ChatID string }
	_ = json.Unmarshal([]byte(body), &start)
	if code, _ := call(t, hs.URL+"/agent/v1/offers/"+start.ChatID+"/accept", "application/json", "", tokens[1]); code != http.StatusConflict {
		t.Errorf("accept by the agent not offered: HTTP %d, want 409", code)
	}
	if code, _ := call(t, hs.URL+"/agent/v1/offers/"+start.ChatID+"/accept", "application/json", "", tokens[0]); code != http.StatusOK {
		t.Errorf("accept by the agent offered: HTTP %d, want 200", code)
	}
}

// TestServeStops checks that Serve returns once its context ends, with a
// push channel open.
func TestServeStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- New().Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()
	_, body := call(t, base+"/agent/v1/login", "application/json", `{"agentId":"a","password":"x"}`, nil)
	var login struct{ Token string }
	_ = json.Unmarshal([]byte(body), &login)
	openEvents(t, base+"/agent/v1/events", http.Header{"Authorization": {"Bearer " + login.Token}})
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5s of its context's end")
	}
}
