package webapi

import (
	"context"
	"net"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// startRealStack starts a real chatcore (in-memory UCS) on loopback, a
// chatclient to it, and a webapi in front, as `hachat webapi` wires them.
func startRealStack(tb testing.TB, mod func(*chatcore.Config)) (*chatclient.Client, *httptest.Server, *Server) {
	tb.Helper()
	return startRealStackWeb(tb, mod, nil)
}

// startRealStackWeb is startRealStack with webapi's Config changed by webMod.
func startRealStackWeb(tb testing.TB, mod func(*chatcore.Config), webMod func(*Config)) (*chatclient.Client, *httptest.Server, *Server) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tel := telemetry.Discard()
	cfg := chatcore.DefaultConfig()
	cfg.Name = "core-t"
	cfg.ServiceToken = "svc"
	if mod != nil {
		mod(&cfg)
	}
	core, err := chatcore.New(cfg, ucsmock.NewMemStore(1), tel)
	if err != nil {
		tb.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- core.Serve(ctx, gl, hl) }()
	tb.Cleanup(func() { cancel(); <-served })
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = []string{gl.Addr().String()}
	client, err := chatclient.New(ccfg, tel)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	wcfg := DefaultConfig()
	wcfg.SSEHeartbeat = 100 * time.Millisecond
	if webMod != nil {
		webMod(&wcfg)
	}
	srv, err := New(wcfg, client, tel)
	if err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(hs.Close)
	return client, hs, srv
}

// TestWithRealCore runs the customer API against a real chatcore (in-memory
// UCS) through package chatclient, as `hachat webapi` does: the contract
// between the two packages, not just webapi's reading of it.
func TestWithRealCore(t *testing.T) {
	ctx := t.Context()
	client, hs, srv := startRealStack(t, func(cfg *chatcore.Config) {
		cfg.SendBurst = 8
		cfg.SendRate = 0.01
	})
	tel := telemetry.Discard()
	e := &env{t: t, srv: srv, http: hs, tel: tel}

	code, r := e.postForm("/genesys/2/chat/customer-support", url.Values{"nickname": {"Ada"}, "subject": {"Order 42"}, "userData[order]": {"42"}})
	if code != 200 || r.StatusCode != 0 || r.ChatID == "" || r.SecureKey == "" {
		t.Fatalf("start: %d %+v", code, r)
	}
	c := chat{r.ChatID, r.UserID, r.SecureKey}
	var joined bool
	for _, m := range r.Messages {
		joined = joined || (m.Type == "ParticipantJoined" && m.From.Type == "Client" && m.From.Nickname == "Ada")
	}
	if !joined || r.NextPosition == 0 {
		t.Errorf("start transcript: %+v next %d", r.Messages, r.NextPosition)
	}
	s := e.openEvents(c, "", "")
	nextOf := func(typ string) message {
		t.Helper()
		for {
			ev := s.next()
			if ev.name != "" {
				t.Fatalf("unexpected %q event %s while waiting for %s", ev.name, ev.data, typ)
			}
			if m := ev.message(t); m.Type == typ {
				return m
			}
		}
	}
	nextOf("ParticipantJoined")

	// An agent joins and speaks (what interaction does).
	jr, err := client.Join(ctx, &chatpb.JoinRequest{SessionId: c.id, Nickname: "Kim", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc"})
	if err != nil {
		t.Fatalf("agent join: %v", err)
	}
	if m := nextOf("ParticipantJoined"); m.From.Type != "Agent" || m.From.Nickname != "Kim" {
		t.Errorf("agent join = %+v", m)
	}
	if _, err := client.Send(ctx, &chatpb.SendRequest{Auth: jr.Auth, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "Hello Ada"}); err != nil {
		t.Fatalf("agent send: %v", err)
	}
	if m := nextOf("Message"); m.Text != "Hello Ada" || m.From.Type != "Agent" {
		t.Errorf("agent message = %+v", m)
	}

	// The customer sends; a resend with the same id is a duplicate.
	_, first := e.op(c, "send", map[string]any{"message": "where is my order?", "clientMessageId": "c-1"})
	_, again := e.op(c, "send", map[string]any{"message": "where is my order?", "clientMessageId": "c-1"})
	if first.StatusCode != 0 || again.StatusCode != 0 || first.Index == 0 || again.Index != first.Index || !again.Duplicate {
		t.Fatalf("send and resend: %+v / %+v", first, again)
	}
	if m := nextOf("Message"); m.Index != first.Index || m.ClientMessageID != "c-1" {
		t.Errorf("own message = %+v", m)
	}
	if _, r := e.op(c, "startTyping", nil); r.StatusCode != 0 {
		t.Errorf("startTyping: %+v", r)
	}
	nextOf("TypingStarted")

	// Refresh from the message on returns it (and later events).
	_, rr := e.op(c, "refresh", map[string]any{"transcriptPosition": first.Index})
	if rr.StatusCode != 0 || len(rr.Messages) == 0 || rr.Messages[0].Index != first.Index || rr.NextPosition <= first.Index {
		t.Errorf("refresh: %+v", rr)
	}

	// The bad-input matrix against the real core.
	bad := []struct {
		name       string
		c          chat
		params     map[string]any
		wantHTTP   int
		wantStatus int
	}{
		{"oversized message", c, map[string]any{"message": strings.Repeat("x", 5000)}, 400, 2},
		{"wrong secureKey", chat{c.id, c.user, "nope"}, map[string]any{"message": "x"}, 403, 2},
		{"unknown chat", chat{"no-such-chat", c.user, c.key}, map[string]any{"message": "x"}, 404, 2},
	}
	for _, tc := range bad {
		if code, r := e.op(tc.c, "send", tc.params); code != tc.wantHTTP || r.StatusCode != tc.wantStatus {
			t.Errorf("%s: got %d %+v", tc.name, code, r)
		}
	}
	// Too many sends: the burst runs out and the answer says retry.
	limited := false
	for i := 0; i < 12 && !limited; i++ {
		code, r := e.op(c, "send", map[string]any{"message": "spam"})
		if code == 429 {
			limited = r.StatusCode == 1
			if !limited {
				t.Errorf("429 with statusCode %d", r.StatusCode)
			}
		}
	}
	if !limited {
		t.Errorf("no 429 after a burst of sends")
	}

	// The customer leaves: the stream shows the end and closes.
	if code, r := e.op(c, "disconnect", nil); code != 200 || r.StatusCode != 0 || !r.ChatEnded {
		t.Errorf("disconnect: %d %+v", code, r)
	}
	for {
		ev := s.next()
		if ev.name == sseEnded {
			break
		}
		if ev.name != "" {
			t.Fatalf("unexpected %q event before the end: %s", ev.name, ev.data)
		}
		t.Logf("event %s %s", ev.id, ev.data)
	}
	s.expectEnd()
}
