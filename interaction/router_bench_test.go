package interaction

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkRouterChatLifecycle routes one chat through its whole life (queue,
// offer, accept, close) among 100 ready agents holding other chats.
func BenchmarkRouterChatLifecycle(b *testing.B) {
	r := NewRouter(3, 15*time.Second)
	now := t0
	for i := range 100 {
		id := fmt.Sprintf("a%03d", i)
		r.Login(id, id, RoleAgent, now)
		r.SetReady(id, true, now)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Millisecond)
		chat := fmt.Sprintf("c%d", i)
		r.AddChat(ChatInfo{ID: chat}, now)
		cv, _ := r.Chat(chat)
		if cv.State != ChatOffered {
			b.Fatalf("chat %s %s", chat, cv.State)
		}
		r.Accept(cv.Agent, chat, now)
		r.JoinDone(cv.Agent, chat, true, now)
		r.Begin(cv.Agent, chat)
		r.End(cv.Agent, chat, true, false, now)
	}
}

// BenchmarkRouterDeepQueue adds chats to a queue of 10,000 while every
// agent is busy: the cost a burst of new sessions pays.
func BenchmarkRouterDeepQueue(b *testing.B) {
	r := NewRouter(1, 15*time.Second)
	now := t0
	for i := range 100 {
		id := fmt.Sprintf("a%03d", i)
		r.Login(id, id, RoleAgent, now)
		r.SetReady(id, true, now)
	}
	for i := range 10000 {
		r.AddChat(ChatInfo{ID: fmt.Sprintf("q%d", i)}, now)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.AddChat(ChatInfo{ID: fmt.Sprintf("c%d", i)}, now)
	}
}
