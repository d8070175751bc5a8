package interaction

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestQueueCap: with max-queue 2 and no agent, the first two chats queue
// and the third is told that no agent is available and closed; a chat that
// ends frees its place, and an agent still gets the queued chats.
func TestQueueCap(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxQueue = 2 })
	a := e.customer("Ann")
	b := e.customer("Ben")
	e.waitFor("two chats queued", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.router.QueueLen() == 2
	})
	c := e.customer("Cat")
	e.waitFor("the third chat closed", func() bool { return e.core.ended(c.SessionId) })
	var notice *chatpb.Event
	for _, ev := range e.core.customerView(c.SessionId) {
		if ev.GetKind() == chatpb.EventKind_EVENT_KIND_NOTICE {
			notice = ev
		}
	}
	if notice == nil || notice.GetAttrs()["noticeType"] != NoticeNoAgent || notice.GetText() == "" ||
		notice.GetFrom().GetType() != chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM {
		t.Fatalf("the customer of the turned-away chat saw %v, want a system notice %q", e.core.customerView(c.SessionId), NoticeNoAgent)
	}
	e.srv.mu.Lock()
	_, known := e.srv.router.Chat(c.SessionId)
	qlen := e.srv.router.QueueLen()
	e.srv.mu.Unlock()
	if known || qlen != 2 {
		t.Fatalf("after the turn-away: router knows it %v, queue %d; want unknown and 2", known, qlen)
	}
	if e.core.ended(a.SessionId) || e.core.ended(b.SessionId) {
		t.Fatal("a queued chat was closed")
	}
	// An agent takes the queued chats as before.
	tok := e.login("a", "agent")
	e.mustDo("POST", "/agent/v1/ready", tok, map[string]any{"ready": true})
	e.waitFor("an offer", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.router.QueueLen() == 1
	})
	// With a place free, a new chat queues again.
	d := e.customer("Dan")
	e.waitFor("the new chat queued", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		_, ok := e.srv.router.Chat(d.SessionId)
		return ok
	})
	if e.core.ended(d.SessionId) {
		t.Fatal("a chat under the cap was closed")
	}
}

func TestQueueCapConfig(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.MaxQueue != 500 {
		t.Errorf("default max-queue %d, want 500", cfg.MaxQueue)
	}
	cfg.MaxQueue = -1
	if err := cfg.Validate(); err == nil {
		t.Error("negative max-queue accepted")
	}
}
