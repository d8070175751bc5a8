package chatcore

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

func TestIdempotentResend(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	first, err := tc.cl.Send(ctx, msg(cust, "hello", "m-1"))
	if err != nil || first.Duplicate {
		t.Fatalf("first send: %v %v", first, err)
	}
	if _, err := tc.cl.Send(ctx, msg(agent, "hi", "m-1")); err != nil { // same id, other participant: not a duplicate
		t.Fatal(err)
	}
	n := tc.logLen(cust.SessionId)
	again, err := tc.cl.Send(ctx, msg(cust, "hello (resent)", "m-1"))
	if err != nil || !again.Duplicate || again.Index != first.Index {
		t.Fatalf("resend: %v %v, want index %d duplicate", again, err, first.Index)
	}
	if tc.logLen(cust.SessionId) != n {
		t.Fatal("a resend changed the log")
	}
	// A resend after the session ended still answers the first index.
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: cust}); err != nil {
		t.Fatal(err)
	}
	again, err = tc.cl.Send(ctx, msg(cust, "hello", "m-1"))
	if err != nil || again.Index != first.Index || !again.Duplicate {
		t.Fatalf("resend after end: %v %v", again, err)
	}
	// Leave is idempotent too.
	l1, err1 := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: cust})
	if err1 != nil || l1.Index != 6 {
		t.Fatalf("second leave: %v %v", l1, err1)
	}
}

// TestBadInput is the bad-input matrix over real gRPC: each call gets its
// code and changes nothing.
func TestBadInput(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.MaxMessageSize = 64 })
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	wrongKey := &chatpb.Auth{SessionId: cust.SessionId, ParticipantId: cust.ParticipantId, SecureKey: agent.SecureKey}
	otherPID := &chatpb.Auth{SessionId: cust.SessionId, ParticipantId: "p9", SecureKey: cust.SecureKey}
	unknown := &chatpb.Auth{SessionId: "nope", ParticipantId: cust.ParticipantId, SecureKey: cust.SecureKey}
	big := strings.Repeat("x", 65)
	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"start without nickname", func() error {
			_, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s"})
			return err
		}, codes.InvalidArgument},
		{"start without service", func() error {
			_, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Nickname: "n"})
			return err
		}, codes.InvalidArgument},
		{"start with huge userData", func() error {
			_, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s", Nickname: "n", UserData: map[string]string{"k": strings.Repeat("v", maxUserDataSize)}})
			return err
		}, codes.InvalidArgument},
		{"send without auth", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "x"})
			return err
		}, codes.InvalidArgument},
		{"send oversized", func() error { _, err := tc.cl.Send(ctx, msg(cust, big, "")); return err }, codes.InvalidArgument},
		{"send empty message", func() error { _, err := tc.cl.Send(ctx, msg(cust, "  ", "")); return err }, codes.InvalidArgument},
		{"send join kind", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED})
			return err
		}, codes.InvalidArgument},
		{"send bad push url", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_PUSH_URL, Text: "javascript:alert(1)"})
			return err
		}, codes.InvalidArgument},
		{"notice without type", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_NOTICE, Text: "x"})
			return err
		}, codes.InvalidArgument},
		{"customer sends internal", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "x", Visibility: chatpb.Visibility_VISIBILITY_INTERNAL})
			return err
		}, codes.InvalidArgument},
		{"unknown visibility", func() error {
			_, err := tc.cl.Send(ctx, &chatpb.SendRequest{Auth: agent, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "x", Visibility: 9})
			return err
		}, codes.InvalidArgument},
		{"wrong secure key", func() error { _, err := tc.cl.Send(ctx, msg(wrongKey, "x", "")); return err }, codes.PermissionDenied},
		{"unknown participant", func() error { _, err := tc.cl.Send(ctx, msg(otherPID, "x", "")); return err }, codes.PermissionDenied},
		{"unknown session", func() error { _, err := tc.cl.Send(ctx, msg(unknown, "x", "")); return err }, codes.NotFound},
		{"events wrong key", func() error { _, err := tc.cl.Events(ctx, &chatpb.EventsRequest{Auth: wrongKey}); return err }, codes.PermissionDenied},
		{"events past end", func() error {
			_, err := tc.cl.Events(ctx, &chatpb.EventsRequest{Auth: cust, FromIndex: 99})
			return err
		}, codes.InvalidArgument},
		{"leave wrong key", func() error { _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: wrongKey}); return err }, codes.PermissionDenied},
		{"join wrong token", func() error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: cust.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "bad"})
			return err
		}, codes.PermissionDenied},
		{"join as customer", func() error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: cust.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER, ServiceToken: "svc-token"})
			return err
		}, codes.InvalidArgument},
		{"agent joins as monitor", func() error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: cust.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, Visibility: chatpb.Visibility_VISIBILITY_MONITOR, ServiceToken: "svc-token"})
			return err
		}, codes.InvalidArgument},
		{"join unknown session", func() error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: "nope", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc-token"})
			return err
		}, codes.NotFound},
		{"watch wrong token", func() error {
			st, err := tc.cl.WatchSessions(ctx, &chatpb.WatchSessionsRequest{ServiceToken: "bad"})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}, codes.PermissionDenied},
		{"switchover wrong token", func() error { _, err := tc.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "x"}); return err }, codes.PermissionDenied},
	}
	n := tc.logLen(cust.SessionId)
	sessions := len(tc.c.sessions)
	for _, c := range cases {
		if got := status.Code(c.call()); got != c.want {
			t.Errorf("%s: code %v, want %v", c.name, got, c.want)
		}
	}
	if tc.logLen(cust.SessionId) != n || len(tc.c.sessions) != sessions {
		t.Error("bad input changed state")
	}
}

func TestSendRateLimit(t *testing.T) {
	clock := newFakeClock(time.Unix(1000, 0))
	tc := startCore(t, func(c *Config) { c.SendBurst = 3; c.SendRate = 1 }, WithClock(clock.Now))
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	for i := range 3 {
		if _, err := tc.cl.Send(ctx, msg(cust, "x", "")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	n := tc.logLen(cust.SessionId)
	if _, err := tc.cl.Send(ctx, msg(cust, "x", "")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("4th send: %v", err)
	}
	if tc.logLen(cust.SessionId) != n {
		t.Fatal("a refused send changed the log")
	}
	if _, err := tc.cl.Send(ctx, msg(agent, "y", "")); err != nil { // per participant
		t.Fatalf("agent send: %v", err)
	}
	clock.Advance(time.Second) // one token back
	if _, err := tc.cl.Send(ctx, msg(cust, "x", "")); err != nil {
		t.Fatalf("send after refill: %v", err)
	}
}

func TestSessionLimit(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.MaxSessions = 2 })
	ctx := ctxT(t)
	cust, _ := tc.chat(t)
	tc.chat(t)
	if _, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s", Nickname: "n"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third session: %v", err)
	}
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: cust}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s", Nickname: "n"}); err != nil {
		t.Fatalf("session after one ended: %v", err)
	}
}

func TestFlexDisconnect(t *testing.T) {
	const timeout = 300 * time.Millisecond
	clock := newFakeClock(time.Now()) // the test's: a slow machine cannot end a session early
	tc := startCore(t, func(c *Config) { c.FlexDisconnectTimeout = timeout }, WithClock(clock.Now))
	ctx := ctxT(t)
	idle, agent := tc.chat(t)
	streaming, _ := tc.chat(t)
	sub, err := tc.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: streaming, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Recv(); err != nil { // the stream is open on the server
		t.Fatal(err)
	}
	s := tc.c.session(idle.SessionId)
	waitFor(t, "idle customer disconnected", func() bool {
		clock.Advance(timeout / 4)
		tc.c.sweep(ctx)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.log.State.Ended
	})
	evs := tc.events(t, agent)
	last2 := evs[len(evs)-2:]
	if last2[0].Kind != chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT || last2[0].Attrs["reason"] != "flex-disconnect-timeout" ||
		last2[1].Kind != chatpb.EventKind_EVENT_KIND_SESSION_ENDED || last2[1].Attrs["reason"] != "flex-disconnect-timeout" {
		t.Fatalf("tail %v", last2)
	}
	s2 := tc.c.session(streaming.SessionId)
	s2.mu.Lock()
	ended := s2.log.State.Ended
	s2.mu.Unlock()
	if ended {
		t.Fatal("a customer with an open stream was disconnected")
	}
}

// TestFlexDisconnectAfterActivity checks the janitor's deadlines move with
// the customer (janitor.go schedules only what is due): a customer who keeps
// polling past several timeouts stays, and one whose only stream closes is
// disconnected a timeout later.
func TestFlexDisconnectAfterActivity(t *testing.T) {
	const timeout = 800 * time.Millisecond
	// The core's clock is the test's: a loaded machine that takes longer
	// than the timeout between two calls cannot end a session early.
	clock := newFakeClock(time.Now())
	tc := startCore(t, func(c *Config) { c.FlexDisconnectTimeout = timeout }, WithClock(clock.Now))
	ctx := ctxT(t)
	polling, _ := tc.chat(t)
	streaming, _ := tc.chat(t)
	subCtx, closeSub := context.WithCancel(ctx)
	defer closeSub()
	sub, err := tc.cl.Subscribe(subCtx, &chatpb.SubscribeRequest{Auth: streaming, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Recv(); err != nil { // the stream is open on the server
		t.Fatal(err)
	}
	ended := func(id string) bool {
		s := tc.c.session(id)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.log.State.Ended
	}
	// Poll for three timeouts, a poll every quarter of one, a janitor pass
	// after each quarter.
	for range 12 {
		if _, err := tc.cl.Events(ctx, &chatpb.EventsRequest{Auth: polling, FromIndex: 1}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(timeout / 4)
		tc.c.sweep(ctx)
		if ended(polling.SessionId) {
			t.Fatal("a polling customer was disconnected")
		}
	}
	if ended(streaming.SessionId) {
		t.Fatal("a customer with an open stream was disconnected")
	}
	closeSub()
	idle := func(id string) func() bool {
		return func() bool {
			clock.Advance(timeout / 4)
			tc.c.sweep(ctx)
			return ended(id)
		}
	}
	waitFor(t, "customer disconnected after its stream closed", idle(streaming.SessionId))
	waitFor(t, "polling customer disconnected once it stopped", idle(polling.SessionId))
}
