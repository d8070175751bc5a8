package interaction

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestBadInput sends malformed, unauthorised and out-of-place requests and
// checks each gets its clear error and changes nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	tb := e.login("b", "agent")
	ts := e.login("s", "supervisor")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	chat := e.customer("Max").SessionId
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	pa.wait("joined", chatEv(chat, "ParticipantJoined", ""))
	queued := e.customer("Ned").SessionId // offered to a, who keeps the offer
	pa.wait("second offer", offerFor(queued))

	before := len(e.core.log(chat))
	stateBefore := e.mustDo("GET", "/agent/v1/state", ta, nil)

	send := "/agent/v1/chats/" + chat + "/send"
	big := `{"message":"` + strings.Repeat("x", 70<<10) + `"}`
	cases := []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"login malformed", "POST", "/agent/v1/login", "", `{"agentId":`, 400},
		{"login empty body", "POST", "/agent/v1/login", "", ``, 400},
		{"login unknown field", "POST", "/agent/v1/login", "", `{"agentId":"x","pw":"y"}`, 400},
		{"login trailing data", "POST", "/agent/v1/login", "", `{"agentId":"x"} {}`, 400},
		{"login no id", "POST", "/agent/v1/login", "", `{"nickname":"x"}`, 400},
		{"login bad id", "POST", "/agent/v1/login", "", `{"agentId":"a b"}`, 400},
		{"login role in the request", "POST", "/agent/v1/login", "", `{"agentId":"a","password":"pw-a-secret","role":"supervisor"}`, 400},
		{"login no password", "POST", "/agent/v1/login", "", `{"agentId":"a"}`, 401},
		{"login wrong password", "POST", "/agent/v1/login", "", `{"agentId":"a","password":"guess"}`, 401},
		{"login unknown account", "POST", "/agent/v1/login", "", `{"agentId":"mallory","password":"x"}`, 401},
		{"login control char nickname", "POST", "/agent/v1/login", "", `{"agentId":"x","nickname":"a\u0007"}`, 400},
		{"login wrong method", "GET", "/agent/v1/login", "", nil, 405},
		{"no token", "GET", "/agent/v1/state", "", nil, 401},
		{"bad token", "GET", "/agent/v1/state", "nope", nil, 401},
		{"token in query only for events", "GET", "/agent/v1/state?token=" + ta, "", nil, 401},
		{"unknown route", "GET", "/agent/v1/nope", ta, nil, 404},
		{"unknown route without token", "POST", "/agent/v1/explode", "", nil, 404},
		{"send malformed", "POST", send, ta, `{"message":`, 400},
		{"send empty message", "POST", send, ta, `{"message":"  "}`, 400},
		{"send wrong type", "POST", send, ta, `{"message":5}`, 400},
		{"send body too large", "POST", send, ta, big, 400},
		{"send too large for the core", "POST", send, ta, map[string]string{"message": strings.Repeat("y", 5000)}, 400},
		{"send bad client id", "POST", send, ta, `{"message":"hi","clientMessageId":"a b"}`, 400},
		{"send unknown chat", "POST", "/agent/v1/chats/nochat/send", ta, `{"message":"hi"}`, 404},
		{"send not your chat", "POST", send, tb, `{"message":"hi"}`, 403},
		{"send by non-monitoring supervisor", "POST", send, ts, `{"message":"hi"}`, 403},
		{"typing missing", "POST", "/agent/v1/chats/" + chat + "/typing", ta, `{}`, 400},
		{"typing wrong type", "POST", "/agent/v1/chats/" + chat + "/typing", ta, `{"typing":"yes"}`, 400},
		{"pushUrl javascript", "POST", "/agent/v1/chats/" + chat + "/pushUrl", ta, `{"url":"javascript:alert(1)"}`, 400},
		{"pushUrl relative", "POST", "/agent/v1/chats/" + chat + "/pushUrl", ta, `{"url":"/faq"}`, 400},
		{"transfer no target", "POST", "/agent/v1/chats/" + chat + "/transfer", ta, `{}`, 400},
		{"transfer to self", "POST", "/agent/v1/chats/" + chat + "/transfer", ta, `{"toAgentId":"a"}`, 409},
		{"transfer to supervisor", "POST", "/agent/v1/chats/" + chat + "/transfer", ta, `{"toAgentId":"s"}`, 409},
		{"transfer unknown agent", "POST", "/agent/v1/chats/" + chat + "/transfer", ta, `{"toAgentId":"zed"}`, 404},
		{"accept unknown offer", "POST", "/agent/v1/offers/nochat/accept", ta, nil, 404},
		{"accept someone else's offer", "POST", "/agent/v1/offers/" + queued + "/accept", tb, nil, 404},
		{"reject unknown offer", "POST", "/agent/v1/offers/nochat/reject", ta, nil, 404},
		{"leave not your chat", "POST", "/agent/v1/chats/" + chat + "/leave", tb, nil, 403},
		{"close not your chat", "POST", "/agent/v1/chats/" + chat + "/close", tb, nil, 403},
		{"logout holding chats", "POST", "/agent/v1/logout", ta, nil, 409},
		{"supervisor ready", "POST", "/agent/v1/ready", ts, nil, 409},
		{"agent lists chats", "GET", "/agent/v1/chats", ta, nil, 403},
		{"agent coaches", "POST", "/agent/v1/chats/" + chat + "/coach", ta, nil, 403},
		{"monitor unknown chat", "POST", "/agent/v1/chats/nochat/monitor", ts, nil, 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := e.do(tc.method, tc.path, tc.token, tc.body)
			if code != tc.want {
				t.Fatalf("%s %s: %d %v, want %d", tc.method, tc.path, code, out, tc.want)
			}
			if out["error"] == nil || out["error"] == "" {
				t.Errorf("no error message in %v", out)
			}
		})
	}
	if after := len(e.core.log(chat)); after != before {
		t.Errorf("bad input changed the chat log: %d events, was %d", after, before)
	}
	stateAfter := e.mustDo("GET", "/agent/v1/state", ta, nil)
	if !reflect.DeepEqual(stateBefore, stateAfter) {
		t.Errorf("bad input changed the agent state:\n before %v\n after  %v", stateBefore, stateAfter)
	}
}

// checkDecoded asserts the invariants of a successful decode or the class of
// a failed one.
func checkDecoded(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrBadRequest) {
		t.Fatalf("decode error not ErrBadRequest: %v", err)
	}
}

func fuzzSeeds(f *testing.F, seeds ...string) {
	for _, s := range append(seeds, "", "{}", "null", "[]", `{"a":1}`, "{", `"x"`, "{} {}", "\xff") {
		f.Add([]byte(s))
	}
}

func FuzzDecodeLogin(f *testing.F) {
	fuzzSeeds(f, `{"agentId":"a1","nickname":"Ann","password":"pw"}`, `{"agentId":"s","role":"supervisor"}`,
		`{"agentId":"a b"}`, `{"agentId":"x","nickname":"\u0000"}`, `{"agentId":"x","password":"\u0000\ud800"}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeLogin(body)
		checkDecoded(t, err)
		if err != nil {
			return
		}
		if checkID("agentId", req.AgentID) != nil || !utf8.ValidString(req.Nickname) || strings.TrimSpace(req.Nickname) != req.Nickname ||
			utf8.RuneCountInString(req.Nickname) > maxNicknameLen || len(req.Password) > maxPasswordLen {
			t.Fatalf("accepted an invalid login: %+v", req)
		}
	})
}

func FuzzDecodeSend(f *testing.F) {
	fuzzSeeds(f, `{"message":"hi","clientMessageId":"m-1"}`, `{"message":"a\nb"}`, `{"message":""}`, `{"message":"x","clientMessageId":"a b"}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeSend(body)
		checkDecoded(t, err)
		if err != nil {
			return
		}
		if strings.TrimSpace(req.Message) == "" || len(req.Message) > maxMessageBytes || !utf8.ValidString(req.Message) ||
			checkClientMessageID(req.ClientMessageID) != nil {
			t.Fatalf("accepted an invalid send: %+v", req)
		}
	})
}

func FuzzDecodeTyping(f *testing.F) {
	fuzzSeeds(f, `{"typing":true}`, `{"typing":false}`, `{"typing":1}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		typing, err := decodeTyping(body)
		checkDecoded(t, err)
		if err == nil {
			var v struct{ Typing bool }
			if json.Unmarshal(body, &v) != nil || v.Typing != typing {
				t.Fatalf("decoded typing %v from %q", typing, body)
			}
		}
	})
}

func FuzzDecodePushURL(f *testing.F) {
	fuzzSeeds(f, `{"url":"https://example.com/x?y=1"}`, `{"url":"javascript:alert(1)"}`, `{"url":"http://"}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodePushURL(body)
		checkDecoded(t, err)
		if err == nil && !(strings.HasPrefix(req.URL, "http://") || strings.HasPrefix(req.URL, "https://")) {
			t.Fatalf("accepted a non-http url: %q", req.URL)
		}
	})
}

func FuzzDecodeTransfer(f *testing.F) {
	fuzzSeeds(f, `{"toAgentId":"b"}`, `{"toAgentId":""}`, `{"toAgentId":"../x"}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeTransfer(body)
		checkDecoded(t, err)
		if err == nil && checkID("toAgentId", req.ToAgentID) != nil {
			t.Fatalf("accepted a bad target: %q", req.ToAgentID)
		}
	})
}

func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{badRequest("x"), 400}, {ErrUnauthorized, 401}, {ErrNotYourChat, 403}, {ErrSupervisorOnly, 403},
		{ErrNoOffer, 404}, {ErrUnknownChat, 404}, {ErrAtCapacity, 409}, {ErrChatEnded, 409},
		{ErrTooMany, 429}, {ErrCoreUnavailable, 503}, {ErrCore, 502}, {errors.New("other"), 502},
	} {
		if got, _ := statusOf(tc.err); got != tc.want {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	_ = http.StatusOK
}
