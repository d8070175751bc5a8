package chatcore

import (
	"slices"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

var (
	pCust  = &chatpb.Participant{Id: "p1", Nickname: "Ann", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}
	pAgent = &chatpb.Participant{Id: "p2", Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT}
	pMon   = &chatpb.Participant{Id: "p3", Nickname: "Sue", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR, Visibility: chatpb.Visibility_VISIBILITY_MONITOR}
)

func ev(kind chatpb.EventKind, from *chatpb.Participant, mod ...func(*chatpb.Event)) *chatpb.Event {
	e := &chatpb.Event{Kind: kind, From: from}
	for _, m := range mod {
		m(e)
	}
	return e
}

func numbered(evs ...*chatpb.Event) []*chatpb.Event {
	for i, e := range evs {
		e.Index = uint64(i + 1)
	}
	return evs
}

func TestFold(t *testing.T) {
	started := func() *chatpb.Event {
		return ev(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, systemParticipant, func(e *chatpb.Event) {
			e.Attrs = map[string]string{"service": "support", "subject": "help", "userData.order": "42"}
		})
	}
	join := func(p *chatpb.Participant) *chatpb.Event {
		return ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, p, func(e *chatpb.Event) { e.KeyHash = "h-" + p.Id })
	}
	cases := []struct {
		name         string
		log          []*chatpb.Event
		present      []string
		typing       []string
		ended        bool
		reason       string
		clientIDs    map[string]uint64 // "pid/cmid" -> index
		customerLeft bool
	}{
		{name: "empty", log: nil},
		{name: "started and joined", log: numbered(started(), join(pCust), join(pAgent)), present: []string{"p1", "p2"}},
		{name: "typing then message stops typing", log: numbered(started(), join(pCust), join(pAgent),
			ev(chatpb.EventKind_EVENT_KIND_TYPING_STARTED, pCust), ev(chatpb.EventKind_EVENT_KIND_TYPING_STARTED, pAgent),
			ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust)), present: []string{"p1", "p2"}, typing: []string{"p2"}},
		{name: "client ids keep the first index", log: numbered(started(), join(pCust),
			ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust, func(e *chatpb.Event) { e.ClientMessageId = "a" }),
			ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust, func(e *chatpb.Event) { e.ClientMessageId = "a" }),
			ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust, func(e *chatpb.Event) { e.ClientMessageId = "b" })),
			present: []string{"p1"}, clientIDs: map[string]uint64{"p1/a": 3, "p1/b": 5}},
		{name: "monitor leaves", log: numbered(started(), join(pCust), join(pMon), ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, pMon)),
			present: []string{"p1"}},
		{name: "ended clears typing", log: numbered(started(), join(pCust), ev(chatpb.EventKind_EVENT_KIND_TYPING_STARTED, pCust),
			ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, pCust),
			ev(chatpb.EventKind_EVENT_KIND_SESSION_ENDED, systemParticipant, func(e *chatpb.Event) { e.Attrs = map[string]string{"reason": "customer-left"} })),
			ended: true, reason: "customer-left", customerLeft: true},
		{name: "unknown participant is ignored", log: numbered(started(), ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pAgent), ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, nil))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := fold(c.log)
			var present, typing []string
			for _, p := range st.participants() {
				present = append(present, p.Id)
			}
			for _, id := range st.order {
				if st.members[id].typing {
					typing = append(typing, id)
				}
			}
			if !slices.Equal(present, c.present) || !slices.Equal(typing, c.typing) {
				t.Errorf("present %v typing %v, want %v %v", present, typing, c.present, c.typing)
			}
			if st.ended != c.ended || st.endReason != c.reason {
				t.Errorf("ended %v %q, want %v %q", st.ended, st.endReason, c.ended, c.reason)
			}
			for k, want := range c.clientIDs {
				pid, cmid, _ := cut(k)
				if got := st.members[pid].clientIDs[cmid]; got != want {
					t.Errorf("client id %s -> %d, want %d", k, got, want)
				}
			}
			if cu := st.customer(); cu != nil && (cu.left != 0) != c.customerLeft {
				t.Errorf("customer left = %v", cu.left)
			}
			if len(c.log) > 0 && c.log[0].Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED &&
				(st.service != "support" || st.userData["order"] != "42") {
				t.Errorf("service %q userData %v", st.service, st.userData)
			}
			for _, id := range st.order {
				if st.members[id].keyHash != "h-"+id {
					t.Errorf("key hash of %s: %q", id, st.members[id].keyHash)
				}
			}
		})
	}
}

func cut(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

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
	for _, e := range s.log {
		log = append(log, e.ev)
	}
	re := fold(log)
	if re.ended != s.st.ended || re.service != s.st.service || len(re.members) != len(s.st.members) || re.nextPID != s.st.nextPID {
		t.Fatalf("refold differs: %+v vs %+v", re, s.st)
	}
	for id, m := range s.st.members {
		r := re.members[id]
		if r.keyHash != m.keyHash || r.typing != m.typing || r.left != m.left || len(r.clientIDs) != len(m.clientIDs) {
			t.Errorf("member %s differs", id)
		}
	}
}

func TestVisibleTo(t *testing.T) {
	cases := []struct {
		viewer *chatpb.Participant
		vis    chatpb.Visibility
		want   bool
	}{
		{pCust, chatpb.Visibility_VISIBILITY_ALL, true},
		{pCust, chatpb.Visibility_VISIBILITY_INTERNAL, false},
		{pCust, chatpb.Visibility_VISIBILITY_MONITOR, false},
		{pAgent, chatpb.Visibility_VISIBILITY_INTERNAL, true},
		{pAgent, chatpb.Visibility_VISIBILITY_MONITOR, true},
		{pMon, chatpb.Visibility_VISIBILITY_ALL, true},
	}
	for _, c := range cases {
		if got := visibleTo(c.viewer, &chatpb.Event{Visibility: c.vis}); got != c.want {
			t.Errorf("%v sees %v: %v, want %v", c.viewer.Type, c.vis, got, c.want)
		}
	}
}

func TestPublicStripsKeyHash(t *testing.T) {
	e := &chatpb.Event{Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pCust, KeyHash: "secret"}
	p := public(e)
	if p.KeyHash != "" || e.KeyHash != "secret" || p.Index != 2 || p.From != pCust {
		t.Fatalf("public: %v (orig %v)", p, e)
	}
	plain := &chatpb.Event{Index: 3}
	if public(plain) != plain {
		t.Fatal("an event without a key hash was copied")
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
