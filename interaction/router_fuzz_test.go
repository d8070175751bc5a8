package interaction

import (
	"testing"
	"time"
)

// FuzzRouter drives the router with arbitrary operation sequences (each
// byte pair is an operation and its argument) and checks its invariants
// after every step: queue order, offers and assignments known to both sides,
// capacity never exceeded, and at most one pending offer per agent.
func FuzzRouter(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 1, 0, 2, 0, 2, 1, 3, 0, 4, 0})
	f.Add([]byte{0, 0, 1, 0, 2, 0, 2, 1, 2, 2, 2, 3, 5, 0, 6, 0, 7, 1, 8, 0, 9, 0})
	f.Add([]byte{0, 0, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 3, 0, 10, 1, 11, 0, 12, 2, 13, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := NewRouter(2, 10*time.Second)
		now := t0
		agents := []string{"a", "b", "c"}
		chats := []string{"c0", "c1", "c2", "c3", "c4"}
		for i := 0; i+1 < len(ops); i += 2 {
			arg := int(ops[i+1])
			ag, ch := agents[arg%len(agents)], chats[arg%len(chats)]
			now = now.Add(time.Duration(ops[i+1]) * time.Second / 4)
			switch ops[i] % 14 {
			case 0:
				_ = r.Login(ag, ag, RoleAgent, now)
			case 1:
				_, _ = r.SetReady(ag, true, now)
			case 2:
				r.AddChat(ChatInfo{ID: ch}, now)
			case 3:
				if v, ok := r.Agent(ag); ok && v.Offer != "" {
					if _, err := r.Accept(ag, v.Offer, now); err == nil {
						_, _ = r.JoinDone(ag, v.Offer, arg%3 != 0, now)
					}
				}
			case 4:
				if v, ok := r.Agent(ag); ok && v.Offer != "" {
					_, _ = r.Reject(ag, v.Offer, now)
				}
			case 5:
				r.Tick(now)
			case 6:
				_, _ = r.SetReady(ag, false, now)
			case 7:
				r.EndChat(ch, now)
			case 8:
				if v, ok := r.Agent(ag); ok && len(v.Chats) > 0 {
					c := v.Chats[arg%len(v.Chats)]
					if r.Begin(ag, c) == nil {
						r.End(ag, c, arg%2 == 0, arg%4 == 0, now)
					}
				}
			case 9:
				_, _ = r.Logout(ag, now)
			case 10:
				if v, ok := r.Agent(ag); ok && len(v.Chats) > 0 {
					c := v.Chats[0]
					to := agents[(arg+1)%len(agents)]
					if r.BeginTransfer(ag, c, to) == nil {
						if arg%5 == 0 {
							r.EndChat(c, now) // the session ends mid-transfer
						}
						r.FinishTransfer(c, arg%2 == 0, now)
					}
				}
			case 11:
				now = now.Add(11 * time.Second)
				r.Tick(now)
			case 12:
				_ = r.Login(ag, ag, RoleSupervisor, now)
			case 13:
				if v, ok := r.Agent(ag); ok && v.Offer != "" {
					if _, err := r.Accept(ag, v.Offer, now); err == nil {
						r.EndChat(v.Offer, now) // ends while joining
						_, _ = r.JoinDone(ag, v.Offer, true, now)
					}
				}
			}
			checkInvariants(t, r)
			for _, a := range r.agents {
				if a.reserved < 0 {
					t.Fatalf("agent %s reserved %d", a.id, a.reserved)
				}
				if a.offer != "" && a.load() > r.maxChats {
					t.Fatalf("agent %s offered beyond capacity", a.id)
				}
			}
			if r.lastQueue != len(r.queue) {
				t.Fatalf("queue notice out of date: %d vs %d", r.lastQueue, len(r.queue))
			}
		}
	})
}
