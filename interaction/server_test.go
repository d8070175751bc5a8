package interaction

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

func TestAgentChatsWithCustomer(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.login("a1", "agent")
	p := e.openPush(tok)
	p.wait("state", isEvent(evState))
	e.mustDo("POST", "/agent/v1/ready", tok, nil)

	cust := e.customer("Carol")
	chat := cust.SessionId
	e.customerSay(cust, "hello?", "c-1")
	off := p.wait("offer", offerFor(chat))
	if off.Data["customer"] != "Carol" {
		t.Errorf("offer customer %v, want Carol", off.Data["customer"])
	}
	st := e.mustDo("GET", "/agent/v1/state", tok, nil)
	if offers := st["offers"].([]any); len(offers) != 1 {
		t.Fatalf("state offers %v", offers)
	}

	cj := e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", tok, nil)
	if cj["mode"] != ModeAgent || cj["chatId"] != chat {
		t.Fatalf("accept answered %v", cj)
	}
	p.wait("chatAdded", isEvent(evChatAdded))
	p.wait("customer's earlier message", chatEv(chat, "Message", "hello?"))
	p.wait("own join", func(ev pushEvent) bool {
		return chatEv(chat, "ParticipantJoined", "")(ev) && ev.Data["from"].(map[string]any)["nickname"] == "Nick a1"
	})

	// Reply; a resend with the same clientMessageId is idempotent.
	r1 := e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", tok, map[string]string{"message": "Hi Carol", "clientMessageId": "m-1"})
	r2 := e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", tok, map[string]string{"message": "Hi Carol", "clientMessageId": "m-1"})
	if r1["index"] != r2["index"] || r2["duplicate"] != true {
		t.Errorf("resend: %v then %v, want same index and duplicate", r1, r2)
	}
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/typing", tok, map[string]any{"typing": true})
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/pushUrl", tok, map[string]any{"url": "https://example.com/faq"})
	p.wait("own message", chatEv(chat, "Message", "Hi Carol"))
	p.wait("typing", chatEv(chat, "TypingStarted", ""))
	p.wait("push url", chatEv(chat, "PushUrl", "https://example.com/faq"))

	// The customer's later messages arrive live, each once.
	e.customerSay(cust, "thanks", "c-2")
	p.wait("customer reply", chatEv(chat, "Message", "thanks"))
	var msgs int
	for _, ev := range e.core.customerView(chat) {
		if ev.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE && ev.Text == "Hi Carol" {
			msgs++
		}
	}
	if msgs != 1 {
		t.Errorf("customer sees the agent's message %d times, want 1", msgs)
	}

	// Close ends the session; the chat leaves the agent's state.
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/close", tok, nil)
	if !e.core.ended(chat) {
		t.Error("close did not end the session")
	}
	p.wait("chatRemoved", func(ev pushEvent) bool { return ev.Event == evChatRemoved && ev.Data["reason"] == "closed" })
	st = e.mustDo("GET", "/agent/v1/state", tok, nil)
	if chats := st["chats"].([]any); len(chats) != 0 {
		t.Errorf("chats after close: %v", chats)
	}
	code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", tok, map[string]string{"message": "late"})
	if code != http.StatusNotFound {
		t.Errorf("send after close: %d, want 404", code)
	}
	e.mustDo("POST", "/agent/v1/logout", tok, nil)
	p.wait("loggedOut", isEvent(evLoggedOut))
	if code, _ := e.do("GET", "/agent/v1/state", tok, nil); code != http.StatusUnauthorized {
		t.Errorf("state after logout: %d, want 401", code)
	}
}

func TestOfferTimeoutMovesToNextAgent(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.OfferTimeout = 150 * time.Millisecond })
	ta := e.login("a", "agent")
	tb := e.login("b", "agent")
	pa, pb := e.openPush(ta), e.openPush(tb)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	// a went ready first (on a tie of idleSince, "a" < "b" decides the same)
	e.mustDo("POST", "/agent/v1/ready", tb, nil)

	chat := e.customer("Dan").SessionId
	pa.wait("offer to a", offerFor(chat))
	pa.wait("withdrawn from a", func(ev pushEvent) bool {
		return ev.Event == evWithdrawn && ev.Data["chatId"] == chat && ev.Data["reason"] == ReasonTimeout
	})
	pb.wait("offer to b", offerFor(chat))
	if code, _ := e.do("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil); code != http.StatusNotFound {
		t.Errorf("late accept by a: %d, want 404", code)
	}
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", tb, nil)
	if got := testCounter(t, e, "hachat_interaction_offer_timeouts_total"); got < 1 {
		t.Errorf("offer timeouts metric %v, want >= 1", got)
	}
}

func TestRejectAndNotReady(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	tb := e.login("b", "agent")
	pb := e.openPush(tb)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	chat := e.customer("Eve").SessionId
	e.waitFor("offer to a", func() bool {
		st := e.mustDo("GET", "/agent/v1/state", ta, nil)
		return len(st["offers"].([]any)) == 1
	})
	e.mustDo("POST", "/agent/v1/ready", tb, nil)
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/reject", ta, nil)
	pb.wait("offer to b after reject", offerFor(chat))
	e.mustDo("POST", "/agent/v1/notready", tb, nil)
	pb.wait("withdrawn on not ready", func(ev pushEvent) bool { return ev.Event == evWithdrawn && ev.Data["reason"] == ReasonNotReady })
	// a declined it, b is not ready: a gets it again since nobody else can.
	e.waitFor("offer back to a", func() bool {
		st := e.mustDo("GET", "/agent/v1/state", ta, nil)
		return len(st["offers"].([]any)) == 1
	})
}

func TestTransfer(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	tb := e.login("b", "agent")
	pa, pb := e.openPush(ta), e.openPush(tb)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	cust := e.customer("Fay")
	chat := cust.SessionId
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "let me get a colleague"})

	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/transfer", tb, map[string]string{"toAgentId": "a"}); code != http.StatusForbidden {
		t.Errorf("transfer by a non-holder: %d, want 403", code)
	}
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/transfer", ta, map[string]string{"toAgentId": "nobody"}); code != http.StatusNotFound {
		t.Errorf("transfer to unknown agent: %d, want 404", code)
	}
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/transfer", ta, map[string]string{"toAgentId": "b"})
	pa.wait("chat removed from a", func(ev pushEvent) bool { return ev.Event == evChatRemoved && ev.Data["reason"] == "transferred" })
	pb.wait("chat added to b", func(ev pushEvent) bool { return ev.Event == evChatAdded && ev.Data["chatId"] == chat })
	pb.wait("b sees the history", chatEv(chat, "Message", "let me get a colleague"))
	e.customerSay(cust, "hi b", "c-1")
	pb.wait("b gets live messages", chatEv(chat, "Message", "hi b"))

	// In the core: b joined, then a left.
	var joinedB, leftA bool
	for _, ev := range e.core.log(chat) {
		if ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED && ev.From.Nickname == "Nick b" {
			joinedB = true
		}
		if ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.From.Nickname == "Nick a" {
			leftA = joinedB
		}
	}
	e.waitFor("a left after b joined", func() bool {
		for _, ev := range e.core.log(chat) {
			if ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.From.Nickname == "Nick a" {
				return joinedB
			}
		}
		return false
	})
	_ = leftA
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "x"}); code != http.StatusForbidden {
		t.Errorf("old agent sends after transfer: %d, want 403", code)
	}
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", tb, map[string]string{"message": "b here"})
}

func TestLeaveRequeues(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	tb := e.login("b", "agent")
	pb := e.openPush(tb)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	chat := e.customer("Gus").SessionId
	e.waitFor("offer to a", func() bool {
		return len(e.mustDo("GET", "/agent/v1/state", ta, nil)["offers"].([]any)) == 1
	})
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	e.mustDo("POST", "/agent/v1/ready", tb, nil)
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/leave", ta, nil)
	if e.core.ended(chat) {
		t.Fatal("leave ended the session")
	}
	pb.wait("requeued chat offered to b", offerFor(chat))
}

func TestSupervisorMonitorAndCoach(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	ts := e.login("s", "supervisor")
	pa, ps := e.openPush(ta), e.openPush(ts)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	cust := e.customer("Hal")
	chat := cust.SessionId
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)

	if code, _ := e.do("GET", "/agent/v1/chats", ta, nil); code != http.StatusForbidden {
		t.Errorf("agent lists chats: %d, want 403", code)
	}
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/monitor", ta, nil); code != http.StatusForbidden {
		t.Errorf("agent monitors: %d, want 403", code)
	}
	if code, _ := e.do("POST", "/agent/v1/ready", ts, nil); code != http.StatusConflict {
		t.Errorf("supervisor ready: %d, want 409", code)
	}
	list := e.mustDo("GET", "/agent/v1/chats", ts, nil)["chats"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["agentId"] != "a" {
		t.Fatalf("live chats %v", list)
	}

	// Monitor: silent, unseen by the customer.
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/monitor", ts, nil)
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "psst"}); code != http.StatusConflict {
		t.Errorf("monitoring supervisor sends: %d, want 409", code)
	}
	e.customerSay(cust, "is anyone there", "c-1")
	ps.wait("supervisor sees the customer", chatEv(chat, "Message", "is anyone there"))

	// Coach: messages reach the agent, not the customer.
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/coach", ts, nil)
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "offer the discount"})
	pa.wait("agent sees coaching", func(ev pushEvent) bool {
		return chatEv(chat, "Message", "offer the discount")(ev) && ev.Data["visibility"] == "internal"
	})
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "we have a discount"})
	ps.wait("supervisor sees the agent", chatEv(chat, "Message", "we have a discount"))
	for _, ev := range e.core.customerView(chat) {
		if ev.From.GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR {
			t.Errorf("customer sees a supervisor event: %v %q", ev.Kind, ev.Text)
		}
	}
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/leave", ts, nil)
	ps.wait("supervisor's chat removed", isEvent(evChatRemoved))
	if list := e.mustDo("GET", "/agent/v1/chats", ts, nil)["chats"].([]any); len(list[0].(map[string]any)["supervisors"].([]any)) != 0 {
		t.Errorf("supervisor still listed after leave: %v", list)
	}
}

func TestCapacity(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxChatsPerAgent = 2 })
	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	var chats []string
	for i := range 3 {
		chats = append(chats, e.customer(fmt.Sprint("cust", i)).SessionId)
	}
	for _, c := range chats[:2] {
		pa.wait("offer "+c, offerFor(c))
		e.mustDo("POST", "/agent/v1/offers/"+c+"/accept", ta, nil)
	}
	e.waitFor("queue of one", func() bool {
		return e.mustDo("GET", "/agent/v1/state", ta, nil)["queue"].(map[string]any)["size"] == 1.0
	})
	if pa.count(offerFor(chats[2])) != 0 {
		t.Fatal("third chat offered beyond capacity")
	}
	e.mustDo("POST", "/agent/v1/chats/"+chats[0]+"/close", ta, nil)
	pa.wait("third offer after a close", offerFor(chats[2]))
}

// TestSessionEndedByCustomer checks that an ended session leaves the
// agent's desktop, and that an offer of an ended session is withdrawn.
func TestSessionEndedByCustomer(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	c1 := e.customer("Ivy")
	pa.wait("offer", offerFor(c1.SessionId))
	if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: c1, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	pa.wait("offer withdrawn", func(ev pushEvent) bool { return ev.Event == evWithdrawn && ev.Data["reason"] == ReasonEnded })

	c2 := e.customer("Jon")
	pa.wait("offer 2", offerFor(c2.SessionId))
	e.mustDo("POST", "/agent/v1/offers/"+c2.SessionId+"/accept", ta, nil)
	if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: c2, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	pa.wait("session ended event", chatEv(c2.SessionId, "SessionEnded", ""))
	pa.wait("chat removed", func(ev pushEvent) bool { return ev.Event == evChatRemoved && ev.Data["chatId"] == c2.SessionId })
}

func TestHealthzMetricsDesktop(t *testing.T) {
	e := newEnv(t, nil)
	for _, path := range []string{"/healthz", "/metrics", "/agent", "/agent/app.js", "/agent/style.css"} {
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}
	resp, err := http.Get(e.url + "/agent")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("desktop content type %q", ct)
	}
	if got := testGauge(t, e, "hachat_interaction_core_connected"); got != 1 {
		t.Errorf("core connected gauge %v", got)
	}
}

func TestMetricsByState(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	e.login("b", "agent")
	e.login("s", "supervisor")
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	e.customer("Quinn")
	e.customer("Rae")
	e.waitFor("one offered, one queued", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.router.QueueLen() == 1
	})
	mfs, err := e.srv.tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"hachat_interaction_agents/ready":       1,
		"hachat_interaction_agents/not_ready":   1,
		"hachat_interaction_agents/supervisor":  1,
		"hachat_interaction_queue_length":       1,
		"hachat_interaction_live_chats/offered": 1,
		"hachat_interaction_live_chats/queued":  1,
		"hachat_interaction_offers_total":       1,
		"hachat_interaction_chats_total":        2,
		"hachat_interaction_core_connected":     1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}
