package interaction

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestEndedChatReachesReopenedPush: a chat ends while the agent's push
// channel is not open at the instance that leads (the desktop reconnecting,
// or its channel still at a deposed leader when the new one learns of the
// end, as hachat chaos --seed 2026 found). The channel the desktop opens
// next still carries every event of the chat, the end included, each index
// once, then chatRemoved. Before the fix the participation was forgotten at
// the end and the new channel carried nothing of the chat.
func TestEndedChatReachesReopenedPush(t *testing.T) {
	for _, tc := range []struct {
		name     string
		takeover bool
		endFirst bool // the chat ends at the old leader, which then dies
	}{
		{"reconnect", false, false},
		{"takeover", true, false},
		{"ended before takeover", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *env
			var p *haPair
			store := NewMemStore()
			if tc.takeover {
				p = newHAPair(t, func() (StateStore, func()) { return store, nil })
				e = p.env
			} else {
				e = newEnv(t, nil)
			}
			ta := e.login("a", "agent")
			e.mustDo("POST", "/agent/v1/ready", ta, nil)
			first := e.openPush(ta)
			cust := e.customer("Kim")
			chat := cust.GetSessionId()
			first.wait("offer", offerFor(chat))
			e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
			e.customerSay(cust, "before", "m1")
			first.wait("the first message", chatEv(chat, "Message", "before"))
			first.cancel() // the desktop's channel goes down

			lead := e.srv
			if tc.endFirst {
				old := p.inst[0].srv
				e.waitFor("the channel closed at the old leader", func() bool { return old.heldNow().PushConns == 0 })
				e.customerSay(cust, "after", "m2")
				if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: cust, EndSession: true}); err != nil {
					t.Fatal(err)
				}
				e.waitFor("the ended participation saved", func() bool {
					raw, err := store.Load(context.Background())
					if err != nil || raw == nil {
						return false
					}
					var snap Snapshot
					return json.Unmarshal(raw, &snap) == nil && len(snap.Members) == 0 && len(snap.Ended) > 0
				})
				p.inst[0].crash()
				p.waitFor("the follower leads", p.inst[1].srv.Leading)
			} else if tc.takeover {
				p.inst[0].crash()
				p.waitFor("the follower leads", p.inst[1].srv.Leading)
				lead = p.inst[1].srv
				p.waitFor("the new leader follows the chat", func() bool {
					lead.mu.Lock()
					defer lead.mu.Unlock()
					m := lead.byAgent["a"][chat]
					return m != nil && len(m.events) > 0
				})
			} else {
				e.waitFor("the channel closed", func() bool { return lead.heldNow().PushConns == 0 })
			}
			if !tc.endFirst {
				e.customerSay(cust, "after", "m2")
				if _, err := e.cc.Leave(context.Background(), &chatpb.LeaveRequest{Auth: cust, EndSession: true}); err != nil {
					t.Fatal(err)
				}
				e.waitFor("the participation ended", func() bool { return lead.heldNow().Members == 0 })
			}

			again := e.openPush(ta)
			again.wait("the message sent while away", chatEv(chat, "Message", "after"))
			again.wait("the end", chatEv(chat, "SessionEnded", ""))
			again.wait("chat removed", func(ev pushEvent) bool {
				return ev.Event == evChatRemoved && ev.Data["chatId"] == chat && ev.Data["reason"] == ReasonEnded
			})
			var want []uint64
			for _, ev := range e.core.log(chat) {
				want = append(want, ev.GetIndex())
			}
			for _, i := range want {
				n := again.count(func(ev pushEvent) bool {
					return ev.Event == evChat && ev.Data["chatId"] == chat && fmt.Sprint(ev.Data["index"]) == fmt.Sprint(i)
				})
				if n > 1 {
					t.Errorf("index %d delivered %d times on one connection", i, n)
				}
			}
		})
	}
}
