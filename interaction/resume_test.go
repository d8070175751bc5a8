package interaction

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestResumeAfterCoreStreamsBreak breaks every stream of the fake core, as a
// failover does, and checks that queue state survives (no duplicate queue
// entries from the repeated STARTED), the agent is told reconnecting and
// reconnected, and the chat goes on: every customer message reaches the
// desktop exactly once.
func TestResumeAfterCoreStreamsBreak(t *testing.T) {
	t.Run("plain client", func(t *testing.T) { testResume(t, newEnv(t, nil)) })
	t.Run("chatclient", func(t *testing.T) { testResume(t, newEnvClient(t, true, nil, nil)) })
}

func testResume(t *testing.T, e *env) {
	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)

	cust := e.customer("Kim")
	chat := cust.SessionId
	queued := e.customer("Lou").SessionId // stays queued: capacity allows, but a has an offer
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	pa.wait("offer of the second chat", offerFor(queued))
	e.customerSay(cust, "before", "c-1")
	pa.wait("message before the break", chatEv(chat, "Message", "before"))

	// The core goes away for a while, then comes back.
	e.core.setDown(true)
	pa.wait("reconnecting", func(ev pushEvent) bool { return ev.Event == evReconnecting && ev.Data["scope"] == "core" })
	if code, out := e.do("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "during", "clientMessageId": "a-1"}); code != http.StatusServiceUnavailable {
		t.Errorf("send while the core is down: %d %v, want 503", code, out)
	}
	e.core.setDown(false)
	pa.wait("reconnected", func(ev pushEvent) bool { return ev.Event == evReconnected && ev.Data["scope"] == "core" })

	// The resend with the same client message id goes through once.
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "during", "clientMessageId": "a-1"})
	e.customerSay(cust, "after", "c-2")
	pa.wait("message after the break", chatEv(chat, "Message", "after"))
	pa.wait("agent's resent message", chatEv(chat, "Message", "during"))

	// A second, abrupt break (streams cut, core still up).
	e.core.breakStreams()
	e.customerSay(cust, "after2", "c-3")
	pa.wait("message after the second break", chatEv(chat, "Message", "after2"))

	st := e.mustDo("GET", "/agent/v1/state", ta, nil)
	if n := len(st["chats"].([]any)); n != 1 {
		t.Errorf("agent holds %d chats after resume, want 1", n)
	}
	if n := len(st["offers"].([]any)); n != 1 {
		t.Errorf("agent has %d offers after resume, want 1 (the second chat)", n)
	}
	e.srv.mu.Lock()
	nchats, qlen := len(e.srv.router.Chats()), e.srv.router.QueueLen()
	e.srv.mu.Unlock()
	if nchats != 2 || qlen != 0 {
		t.Errorf("router holds %d chats, queue %d; want 2 and 0 (STARTED deduplicated)", nchats, qlen)
	}
	for _, text := range []string{"before", "during", "after", "after2"} {
		if n := pa.count(chatEv(chat, "Message", text)); n != 1 {
			t.Errorf("message %q delivered %d times, want once", text, n)
		}
	}
	// Indexes on the push channel are strictly increasing per chat.
	var last float64
	pa.mu.Lock()
	for _, ev := range pa.events {
		if ev.Event == evChat && ev.Data["chatId"] == chat {
			if idx := ev.Data["index"].(float64); idx <= last {
				t.Errorf("index %v after %v", idx, last)
			} else {
				last = idx
			}
		}
	}
	pa.mu.Unlock()

	// A desktop that reconnects gets the state and the transcript again.
	p2 := e.openPush(ta)
	p2.wait("replayed transcript", chatEv(chat, "Message", "after2"))
	if n := p2.count(chatEv(chat, "Message", "before")); n != 1 {
		t.Errorf("replay holds %q %d times", "before", n)
	}
}

// TestIdleCoreWithLazyHeaders: a core that sends a stream's headers only
// with its first message (the real one does) still counts as connected when
// idle, and an outage and recovery are told to the desktops.
func TestIdleCoreWithLazyHeaders(t *testing.T) {
	e := newEnv(t, nil)
	e.core.mu.Lock()
	e.core.lazyHeaders = true
	e.core.mu.Unlock()
	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	pa.wait("state", isEvent(evState))
	e.core.setDown(true)
	pa.wait("reconnecting", isEvent(evReconnecting))
	e.core.setDown(false)
	pa.wait("reconnected while idle", isEvent(evReconnected))
	e.waitFor("healthz says connected", func() bool {
		resp, err := http.Get(e.url + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "core=connected")
	})
	// And sessions still flow.
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	chat := e.customer("Sue").SessionId
	pa.wait("offer", offerFor(chat))
}

// TestResumePastEndRereads: when the serving core refuses the resume index
// (past the end of its log), the chat is read again from the start and the
// events already shown are not shown twice.
func TestResumePastEndRereads(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	cust := e.customer("Uma")
	chat := cust.SessionId
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	e.customerSay(cust, "one", "c-1")
	pa.wait("one", chatEv(chat, "Message", "one"))

	e.srv.mu.Lock()
	m := e.srv.members[memberKey{chat, "a"}]
	saved := m.next
	m.next = 1000 // as if the new primary's log were shorter
	e.srv.mu.Unlock()
	e.core.breakStreams()
	pa.wait("chat reread after the refusal", func(ev pushEvent) bool {
		return ev.Event == evReconnected && ev.Data["scope"] == "chat" && ev.Data["chatId"] == chat
	})
	e.srv.mu.Lock()
	m.next = saved // what the dedupe compares against
	e.srv.mu.Unlock()
	e.customerSay(cust, "two", "c-2")
	pa.wait("two", chatEv(chat, "Message", "two"))
	if n := pa.count(chatEv(chat, "Message", "one")); n != 1 {
		t.Errorf("message one shown %d times", n)
	}
}
