package chatcore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestFailoverChurnNoLossNoDuplicate runs concurrent senders that retry
// (same client message id) against whichever core answers, while the
// primary is killed twice and each time restarted as backup. Every
// acknowledged message must end up exactly once, at its acknowledged index,
// in the final primary's log.
func TestFailoverChurnNoLossNoDuplicate(t *testing.T) { churn(t, false) }

// TestSwitchoverUnderLoad is the same workload across two planned
// switchovers (a to b, then back).
func TestSwitchoverUnderLoad(t *testing.T) { churn(t, true) }

func churn(t *testing.T, switchover bool) {
	if testing.Short() {
		t.Skip("failover churn")
	}
	store := newMemStore()
	la, lb := listen(t), listen(t)
	addrs := []string{la.Addr().String(), lb.Addr().String()}
	mod := func(c *Config) { c.TranscriptAutoSave = 1; c.SendRate = 1000; c.SendBurst = 1000 }
	nodes := make([]*node, 2)
	nodes[0] = startNode(t, "core-a", RolePrimary, addrs[1], la, store, mod)
	waitFor(t, "a primary", func() bool { return nodes[0].c.role.IsPrimary() })
	nodes[1] = startNode(t, "core-b", RoleBackup, addrs[0], lb, store, mod)
	waitInSync(t, nodes[0], "core-b")

	var mu sync.Mutex
	current := func() []*node { mu.Lock(); defer mu.Unlock(); return []*node{nodes[0], nodes[1]} }

	const sessions, perSession = 6, 80
	type ack struct {
		cmid  string
		index uint64
	}
	auths := make([]*chatpb.Auth, sessions)
	for i := range auths {
		auths[i], _ = nodes[0].chat(t)
	}
	acks := make([][]ack, sessions)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	// The senders report only through acks and unacked, and they are done
	// before this function returns, even when it returns early on t.Fatal
	// (deferred calls run then too): a t.Errorf from a goroutine that
	// outlives its test panics and aborts the rest of the package run.
	unacked := make([]string, sessions)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: an early return stops the senders
	for i := range sessions {
		wg.Go(func() {
			for m := range perSession {
				cmid := fmt.Sprintf("s%d-m%d", i, m)
				for try := 0; ; try++ {
					if ctx.Err() != nil {
						unacked[i] = cmid
						return
					}
					n := current()[try%2]
					cctx, ccancel := context.WithTimeout(ctx, time.Second)
					r, err := n.cl.Send(cctx, msg(auths[i], cmid, cmid))
					ccancel()
					if err == nil {
						acks[i] = append(acks[i], ack{cmid, r.Index})
						break
					}
					time.Sleep(2 * time.Millisecond)
				}
				time.Sleep(3 * time.Millisecond)
			}
		})
	}

	kill := func(dead, alive int, role string) {
		mu.Lock()
		victim := nodes[dead]
		mu.Unlock()
		victim.kill()
		waitFor(t, "promotion", func() bool { return nodes[alive].c.role.IsPrimary() })
		ln := relisten(t, addrs[dead])
		n := startNode(t, victim.c.cfg.Name, role, addrs[alive], ln, store, mod)
		mu.Lock()
		nodes[dead] = n
		mu.Unlock()
		waitInSync(t, nodes[alive], victim.c.cfg.Name)
	}
	hand := func(from, to int) {
		r, err := nodes[from].cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "adm-token"})
		if err != nil {
			t.Fatalf("switchover: %v", err)
		}
		t.Logf("switchover to %s: pause %d µs", r.NewPrimary, r.PauseMicros)
		waitInSync(t, nodes[to], nodes[from].c.cfg.Name)
	}
	time.Sleep(80 * time.Millisecond)
	if switchover {
		hand(0, 1)
	} else {
		kill(0, 1, RolePrimary) // restarted with its old flags: joins as backup
	}
	time.Sleep(80 * time.Millisecond)
	if switchover {
		hand(1, 0)
	} else {
		kill(1, 0, RoleBackup)
	}
	wg.Wait()
	for i, cmid := range unacked {
		if cmid != "" {
			t.Errorf("session %d: %s never acknowledged within the test's deadline", i, cmid)
		}
	}

	final := nodes[0]
	if !final.c.role.IsPrimary() {
		final = nodes[1]
	}
	for i, a := range auths {
		log := final.log(a.SessionId)
		byIndex := map[uint64]*chatpb.Event{}
		seen := map[string]int{}
		for j, ev := range log {
			if ev.Index != uint64(j+1) {
				t.Fatalf("session %d: gap at %d (index %d)", i, j, ev.Index)
			}
			byIndex[ev.Index] = ev
			if ev.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE {
				seen[ev.ClientMessageId]++
			}
		}
		if len(acks[i]) != perSession {
			t.Errorf("session %d: %d of %d acknowledged", i, len(acks[i]), perSession)
		}
		for _, k := range acks[i] {
			ev := byIndex[k.index]
			if ev == nil || ev.ClientMessageId != k.cmid || ev.Text != k.cmid {
				t.Errorf("session %d: acknowledged %s at %d, log has %v", i, k.cmid, k.index, ev)
			}
			if seen[k.cmid] != 1 {
				t.Errorf("session %d: %s appears %d times", i, k.cmid, seen[k.cmid])
			}
		}
	}
}
