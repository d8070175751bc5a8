package interaction

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestEndedChatsAndLogoutsReleaseEverything runs chats through every way a
// chat can end, logs the agents out, closes their push connections, and
// checks that the server (its maps, the router, the push hub), the chat
// client it owns and the goroutines are back where they started: a soak
// showed interaction keeping ~23 KB per ended chat.
func TestEndedChatsAndLogoutsReleaseEverything(t *testing.T) {
	const chats = 6
	// end runs one chat (already offered to agent a) to its end.
	type ender func(e *env, ta, ts string, pa *push, cust *chatpb.Auth)
	customerEnds := func(e *env, ta, _ string, pa *push, cust *chatpb.Auth) {
		chat := cust.SessionId
		e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
		e.customerSay(cust, "hello", "c-1")
		e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "hi"})
		pa.wait("agent's message", chatEv(chat, "Message", "hi"))
		if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: cust, EndSession: true}); err != nil {
			t.Fatal(err)
		}
		pa.wait("chat removed", func(ev pushEvent) bool { return ev.Event == evChatRemoved && ev.Data["chatId"] == chat })
	}
	cases := []struct {
		name      string
		resilient bool
		end       ender
	}{
		{"customer ends", false, customerEnds},
		{"customer ends, resilient client", true, customerEnds},
		{"agent closes, resilient client", true, func(e *env, ta, _ string, pa *push, cust *chatpb.Auth) {
			chat := cust.SessionId
			e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
			e.customerSay(cust, "hello", "c-1")
			pa.wait("customer's message", chatEv(chat, "Message", "hello"))
			e.mustDo("POST", "/agent/v1/chats/"+chat+"/close", ta, nil)
		}},
		{"ended while offered, resilient client", true, func(e *env, _, _ string, pa *push, cust *chatpb.Auth) {
			if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: cust, EndSession: true}); err != nil {
				t.Fatal(err)
			}
			pa.wait("offer withdrawn", func(ev pushEvent) bool {
				return ev.Event == evWithdrawn && ev.Data["chatId"] == cust.SessionId
			})
		}},
		{"supervised, resilient client", true, func(e *env, ta, ts string, pa *push, cust *chatpb.Auth) {
			chat := cust.SessionId
			e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
			e.mustDo("POST", "/agent/v1/chats/"+chat+"/monitor", ts, nil)
			e.mustDo("POST", "/agent/v1/chats/"+chat+"/coach", ts, nil)
			e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "be nice"})
			pa.wait("coaching", chatEv(chat, "Message", "be nice"))
			e.mustDo("POST", "/agent/v1/chats/"+chat+"/close", ta, nil)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvClient(t, tc.resilient, nil, nil)
			// The customer's connection to the core is lazy: open it before
			// counting goroutines.
			if _, err := e.cc.Status(context.Background(), &chatpb.StatusRequest{}); err != nil {
				t.Fatal(err)
			}
			http.DefaultClient.CloseIdleConnections()
			baseGoroutines := runtime.NumGoroutine()
			base, baseStreams := e.srv.heldNow(), 0
			if e.client != nil {
				baseStreams = e.client.OpenStreams() // the session watch
			}

			ta := e.login("a", "agent")
			ts := e.login("s", "supervisor")
			pa, ps := e.openPush(ta), e.openPush(ts)
			pa.wait("state", isEvent(evState))
			ps.wait("state", isEvent(evState))
			e.mustDo("POST", "/agent/v1/ready", ta, nil)
			for i := range chats {
				cust := e.customer(fmt.Sprintf("cust-%d", i))
				pa.wait("offer", offerFor(cust.SessionId))
				tc.end(e, ta, ts, pa, cust)
			}
			// An ended chat's participations linger up to 2 s (the grace
			// period of endChatLocked); until then its agent cannot log out.
			e.waitFor("chats forgotten", func() bool { h := e.srv.heldNow(); return h.Chats == 0 && h.Members == 0 })
			e.mustDo("POST", "/agent/v1/logout", ta, nil)
			e.mustDo("POST", "/agent/v1/logout", ts, nil)
			pa.wait("logged out", isEvent(evLoggedOut))
			ps.wait("logged out", isEvent(evLoggedOut))
			pa.cancel()
			ps.cancel()
			http.DefaultClient.CloseIdleConnections()

			deadline := time.Now().Add(10 * time.Second)
			for {
				got, streams, g := e.srv.heldNow(), 0, runtime.NumGoroutine()
				if e.client != nil {
					streams = e.client.OpenStreams()
				}
				if got == base && streams == baseStreams && g <= baseGoroutines {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after %d ended chats and every logout the server holds %+v (at start %+v), "+
						"its chat client tracks %d open streams (at start %d), goroutines %d (at start %d)\n%s",
						chats, got, base, streams, baseStreams, g, baseGoroutines, goroutines())
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestNoPushConnectionAfterLogout checks that a push connection whose token
// was checked just before its agent logged out is refused, not registered
// for an agent who is gone (it would stay open, and in the hub, for ever).
func TestNoPushConnectionAfterLogout(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.login("a", "agent")
	e.mustDo("POST", "/agent/v1/logout", tok, nil)
	if sub, err := e.srv.subscribe("a"); err == nil || sub != nil {
		t.Errorf("subscribe after logout: %v, %v; want ErrUnauthorized", sub, err)
	}
	if h := e.srv.heldNow(); h.PushAgents != 0 || h.PushConns != 0 {
		t.Errorf("hub holds %+v after a refused subscription", h)
	}
}

// goroutines returns the stacks of every goroutine, for a failure message.
func goroutines() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}
