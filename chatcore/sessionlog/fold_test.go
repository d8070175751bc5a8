package sessionlog

import (
	"slices"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

var (
	pSys   = &chatpb.Participant{Id: "system", Nickname: "system", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}
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
		return ev(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, pSys, func(e *chatpb.Event) {
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
			ev(chatpb.EventKind_EVENT_KIND_SESSION_ENDED, pSys, func(e *chatpb.Event) { e.Attrs = map[string]string{"reason": "customer-left"} })),
			ended: true, reason: "customer-left", customerLeft: true},
		{name: "unknown participant is ignored", log: numbered(started(), ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pAgent), ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, nil))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := Fold(c.log)
			var present, typing []string
			for _, p := range st.Participants() {
				present = append(present, p.Id)
			}
			for _, id := range st.Order {
				if st.Members[id].Typing {
					typing = append(typing, id)
				}
			}
			if !slices.Equal(present, c.present) || !slices.Equal(typing, c.typing) {
				t.Errorf("present %v typing %v, want %v %v", present, typing, c.present, c.typing)
			}
			if st.Ended != c.ended || st.EndReason != c.reason {
				t.Errorf("ended %v %q, want %v %q", st.Ended, st.EndReason, c.ended, c.reason)
			}
			for k, want := range c.clientIDs {
				pid, cmid, _ := cut(k)
				if got := st.Members[pid].ClientIDs[cmid]; got != want {
					t.Errorf("client id %s -> %d, want %d", k, got, want)
				}
			}
			if cu := st.Customer(); cu != nil && (cu.Left != 0) != c.customerLeft {
				t.Errorf("customer left = %v", cu.Left)
			}
			if len(c.log) > 0 && c.log[0].Kind == chatpb.EventKind_EVENT_KIND_SESSION_STARTED &&
				(st.Service != "support" || st.UserData["order"] != "42") {
				t.Errorf("service %q userData %v", st.Service, st.UserData)
			}
			for _, id := range st.Order {
				if st.Members[id].KeyHash != "h-"+id {
					t.Errorf("key hash of %s: %q", id, st.Members[id].KeyHash)
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
		if got := VisibleTo(c.viewer, &chatpb.Event{Visibility: c.vis}); got != c.want {
			t.Errorf("%v sees %v: %v, want %v", c.viewer.Type, c.vis, got, c.want)
		}
	}
}

func TestPublicStripsKeyHash(t *testing.T) {
	e := &chatpb.Event{Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pCust, KeyHash: "secret"}
	p := Public(e)
	if p.KeyHash != "" || e.KeyHash != "secret" || p.Index != 2 || p.From != pCust {
		t.Fatalf("public: %v (orig %v)", p, e)
	}
	plain := &chatpb.Event{Index: 3}
	if Public(plain) != plain {
		t.Fatal("an event without a key hash was copied")
	}
}

// TestLogCommit checks that the log and its fold move together: Commit
// numbers nothing itself, folds the event, keeps the public copy and serves
// the entries from an index.
func TestLogCommit(t *testing.T) {
	l := NewLog()
	if l.LastIndex() != 0 || len(l.Entries()) != 0 || len(l.From(1)) != 0 {
		t.Fatalf("new log: last %d, %d entries", l.LastIndex(), len(l.Entries()))
	}
	evs := numbered(
		ev(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, pSys, func(e *chatpb.Event) { e.Attrs = map[string]string{"service": "s"} }),
		ev(chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, pCust, func(e *chatpb.Event) { e.KeyHash = "secret" }),
		ev(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust),
	)
	for _, e := range evs {
		got := l.Commit(e)
		if got.Ev != e {
			t.Fatalf("entry %d holds another event", e.Index)
		}
	}
	if l.LastIndex() != 3 || l.State.Service != "s" || l.State.Members["p1"] == nil {
		t.Fatalf("after 3 commits: last %d state %+v", l.LastIndex(), l.State)
	}
	join := l.Entries()[1]
	if join.Pub.KeyHash != "" || join.Ev.KeyHash != "secret" {
		t.Fatalf("join entry: public %q, committed %q", join.Pub.KeyHash, join.Ev.KeyHash)
	}
	if msg := l.Entries()[2]; msg.Pub != msg.Ev {
		t.Fatal("an entry with nothing to strip was copied")
	}
	if from := l.From(2); len(from) != 2 || from[0].Ev.Index != 2 || len(l.From(4)) != 0 {
		t.Fatalf("From(2): %d entries", len(from))
	}
	re := Fold([]*chatpb.Event{evs[0], evs[1], evs[2]})
	if re.Service != l.State.Service || re.NextPID != l.State.NextPID || len(re.Order) != len(l.State.Order) {
		t.Fatalf("fold of the entries differs from the log's state: %+v vs %+v", re, l.State)
	}
}

func TestTokenBucket(t *testing.T) {
	const sec = int64(1e9)
	var b TokenBucket
	now := 100 * sec
	for i := range 3 {
		if !b.Take(now, 1, 3) {
			t.Fatalf("take %d of a full bucket of 3 refused", i)
		}
	}
	if b.Take(now, 1, 3) {
		t.Fatal("a fourth take at once was allowed")
	}
	if !b.Take(now+sec, 1, 3) {
		t.Fatal("no token one second later at 1/s")
	}
	if b.Take(now+sec, 1, 3) {
		t.Fatal("two tokens one second later at 1/s")
	}
	for i := range 3 {
		if !b.Take(now+100*sec, 1, 3) {
			t.Fatalf("take %d after a long pause refused", i)
		}
	}
	if b.Take(now+100*sec, 1, 3) {
		t.Fatal("refill went past the burst")
	}
}
