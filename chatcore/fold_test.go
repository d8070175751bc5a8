package chatcore

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

var (
	pCust  = &chatpb.Participant{Id: "p1", Nickname: "Ann", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}
	pAgent = &chatpb.Participant{Id: "p2", Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT}
	pMon   = &chatpb.Participant{Id: "p3", Nickname: "Sue", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR, Visibility: chatpb.Visibility_VISIBILITY_MONITOR}
)

// TestFoldMatchesLiveState checks that a state rebuilt from the log (what a
// backup or a restoration does) equals the state the primary built while
// appending.
func TestFoldMatchesLiveState(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	for i, r := range []*chatpb.SendRequest{msg(cust, "a", "c1"), typing(agent), msg(agent, "b", "x"), typing(cust)} {
		if _, err := tc.cl.Send(ctx, r); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	s := tc.c.session(cust.SessionId)
	s.mu.Lock()
	defer s.mu.Unlock()
	var log []*chatpb.Event
	for _, e := range s.log.Entries() {
		log = append(log, e.Ev)
	}
	re := sessionlog.Fold(log)
	if re.Ended != s.log.State.Ended || re.Service != s.log.State.Service || len(re.Members) != len(s.log.State.Members) || re.NextPID != s.log.State.NextPID {
		t.Fatalf("refold differs: %+v vs %+v", re, s.log.State)
	}
	for id, m := range s.log.State.Members {
		r := re.Members[id]
		if r.KeyHash != m.KeyHash || r.Typing != m.Typing || r.Left != m.Left || len(r.ClientIDs) != len(m.ClientIDs) {
			t.Errorf("member %s differs", id)
		}
	}
}

// TestLaggingSubscriberDropped checks that fan-out never blocks: a full
// subscriber is dropped and its channel closed.
func TestLaggingSubscriberDropped(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SubscriberBuffer = 2 })
	cust, _ := tc.chat(t)
	s := tc.c.session(cust.SessionId)
	sub := &subscriber{ch: make(chan *chatpb.Event, 2)}
	s.mu.Lock()
	if s.subs == nil {
		s.subs = map[*subscriber]struct{}{}
	}
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	for range 3 {
		if _, err := tc.cl.Send(ctxT(t), msg(cust, "x", "")); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range sub.ch {
		n++
	}
	if n != 2 || tc.metric(t, "hachat_core_subscriber_drops_total") != 1 {
		t.Fatalf("got %d buffered events, drops %v", n, tc.metric(t, "hachat_core_subscriber_drops_total"))
	}
}

// TestSubscribeGapFreeUnderBurst sends a burst to a stream with a tiny
// buffer: the stream may be dropped from fan-out any number of times but the
// client sees every index once, in order.
func TestSubscribeGapFreeUnderBurst(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SubscriberBuffer = 1; c.SendBurst = 1000; c.SendRate = 1000 })
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	sub, err := tc.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: agent, FromIndex: 2})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range n {
			if _, err := tc.cl.Send(ctx, msg(cust, "burst", "")); err != nil {
				t.Errorf("send %d: %v", i, err)
				return
			}
		}
	}()
	want := uint64(2)
	for want < 3+n {
		ev, err := sub.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if ev.Index != want {
			t.Fatalf("got index %d, want %d", ev.Index, want)
		}
		want++
	}
	<-sent
}
