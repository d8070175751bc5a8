package interaction

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestTakeChatEvent: the chat events interaction takes on the core client's
// stream reader (takeChatEvent) are recorded and published as follow would,
// and the ones it must not take there (the ending kinds, a participation
// gone, the server's lock busy: the reader must never wait) are declined,
// untouched, for follow to read through Recv.
func TestTakeChatEvent(t *testing.T) {
	msg := func(i uint64) *chatpb.Event {
		return &chatpb.Event{Index: i, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hi"}
	}
	tests := []struct {
		name      string
		ev        *chatpb.Event
		gone      bool
		lockHeld  bool
		disconn   bool // the member's stream was down: taking an event is its reconnect
		want      bool
		published []string // the agent's push messages, by event name
		next      uint64   // the member's next index after
	}{
		{name: "message", ev: msg(5), want: true, published: []string{evChat}, next: 6},
		{name: "resumed stream", ev: msg(5), disconn: true, want: true, published: []string{evReconnected, evChat}, next: 6},
		{name: "already delivered", ev: msg(4), want: true, next: 5},
		{name: "session ended", ev: &chatpb.Event{Index: 5, Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED}, next: 5},
		{name: "a participant left", ev: &chatpb.Event{Index: 5, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT,
			From: &chatpb.Participant{Id: "someone"}}, next: 5},
		{name: "participation gone", ev: msg(5), gone: true, next: 5},
		{name: "server lock busy", ev: msg(5), lockHeld: true, next: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			s := e.srv
			m := &member{key: memberKey{chat: "c1", agent: "a1"}, auth: &chatpb.Auth{ParticipantId: "p1"},
				mode: ModeAgent, next: 5, connected: !tt.disconn, everUp: true, gone: tt.gone}
			sub := s.hub.add("a1", nil)
			defer s.hub.remove("a1", sub)
			if tt.lockHeld {
				s.mu.Lock()
			}
			got := s.takeChatEvent(m, tt.ev)
			if tt.lockHeld {
				s.mu.Unlock()
			}
			if got != tt.want {
				t.Fatalf("takeChatEvent = %v, want %v", got, tt.want)
			}
			var names []string
			for len(sub.ch) > 0 {
				names = append(names, (<-sub.ch).event)
			}
			if len(names) != len(tt.published) {
				t.Fatalf("published %v, want %v", names, tt.published)
			}
			for i := range names {
				if names[i] != tt.published[i] {
					t.Fatalf("published %v, want %v", names, tt.published)
				}
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if m.next != tt.next {
				t.Fatalf("member's next = %d, want %d", m.next, tt.next)
			}
			if tt.want && !m.connected {
				t.Fatal("a taken event did not mark the member's stream up")
			}
		})
	}
}
