package interaction

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// step is one operation on a Router in a table-driven scenario. at is the
// offset of the injected clock from t0; want lists the notices the step must
// emit, each rendered by noticeString; wantErr the error class.
type step struct {
	at      time.Duration
	op      string // login, sup, ready, notready, chat, end, accept, joinfail, reject, tick, transfer, transferfail, leave, close, logout
	agent   string
	chat    string
	to      string
	want    []string
	wantErr error
}

func noticeString(n Notice) string {
	switch n.Kind {
	case NoticeOffer:
		return "offer " + n.Chat.ID + ">" + n.Agent
	case NoticeWithdrawn:
		return "withdraw " + n.Chat.ID + "<" + n.Agent + " " + n.Reason
	case NoticeQueue:
		return fmt.Sprintf("queue %d", n.Queue)
	}
	return "?"
}

var t0 = time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)

func runSteps(t *testing.T, r *Router, steps []step) {
	t.Helper()
	for i, s := range steps {
		now := t0.Add(s.at)
		var ns []Notice
		var err error
		switch s.op {
		case "login":
			err = r.Login(s.agent, "nick-"+s.agent, RoleAgent, now)
		case "sup":
			err = r.Login(s.agent, "nick-"+s.agent, RoleSupervisor, now)
		case "ready":
			ns, err = r.SetReady(s.agent, true, now)
		case "notready":
			ns, err = r.SetReady(s.agent, false, now)
		case "chat":
			var added bool
			added, ns = r.AddChat(ChatInfo{ID: s.chat}, now)
			if !added {
				err = ErrConflict // stands for "deduplicated" in the tables
			}
		case "end":
			_, ns, _ = r.EndChat(s.chat, now)
		case "accept":
			ns, err = r.Accept(s.agent, s.chat, now)
			if err == nil {
				var ns2 []Notice
				ns2, err = r.JoinDone(s.agent, s.chat, true, now)
				ns = append(ns, ns2...)
			}
		case "joinfail":
			ns, err = r.Accept(s.agent, s.chat, now)
			if err == nil {
				var ns2 []Notice
				ns2, err = r.JoinDone(s.agent, s.chat, false, now)
				ns = append(ns, ns2...)
			}
		case "reject":
			ns, err = r.Reject(s.agent, s.chat, now)
		case "tick":
			ns = r.Tick(now)
		case "transfer", "transferfail":
			err = r.BeginTransfer(s.agent, s.chat, s.to)
			if err == nil {
				ns = r.FinishTransfer(s.chat, s.op == "transfer", now)
			}
		case "leave", "close":
			err = r.Begin(s.agent, s.chat)
			if err == nil {
				ns = r.End(s.agent, s.chat, true, s.op == "leave", now)
			}
		case "logout":
			ns, err = r.Logout(s.agent, now)
		default:
			t.Fatalf("step %d: unknown op %q", i, s.op)
		}
		if s.wantErr == nil && err != nil || s.wantErr != nil && !errors.Is(err, s.wantErr) {
			t.Fatalf("step %d (%s %s %s): err %v, want %v", i, s.op, s.agent, s.chat, err, s.wantErr)
		}
		got := make([]string, len(ns))
		for j, n := range ns {
			got[j] = noticeString(n)
		}
		if !slices.Equal(got, s.want) && !(len(got) == 0 && len(s.want) == 0) {
			t.Fatalf("step %d (%s %s %s): notices\n got  %q\n want %q", i, s.op, s.agent, s.chat, got, s.want)
		}
	}
}

func TestRouter(t *testing.T) {
	const timeout = 15 * time.Second
	tests := []struct {
		name     string
		maxChats int
		steps    []step
		check    func(t *testing.T, r *Router)
	}{
		{
			name: "chat waits until an agent is ready",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"queue 1"}},
				{at: time.Second, op: "ready", agent: "a", want: []string{"offer c1>a", "queue 0"}},
			},
		},
		{
			name: "longest idle agent gets the offer",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{op: "login", agent: "c"},
				{at: 3 * time.Second, op: "ready", agent: "a"},
				{at: 1 * time.Second, op: "ready", agent: "b"},
				{at: 2 * time.Second, op: "ready", agent: "c"},
				{at: 4 * time.Second, op: "chat", chat: "c1", want: []string{"offer c1>b"}},
				{at: 4 * time.Second, op: "chat", chat: "c2", want: []string{"offer c2>c"}},
				{at: 4 * time.Second, op: "chat", chat: "c3", want: []string{"offer c3>a"}},
				{at: 4 * time.Second, op: "chat", chat: "c4", want: []string{"queue 1"}},
				// b accepts: b now idle since 5s, so after a and c; but c4 goes to b, the only one without an offer.
				{at: 5 * time.Second, op: "accept", agent: "b", chat: "c1", want: []string{"offer c4>b", "queue 0"}},
			},
		},
		{
			name: "ties broken by agent id",
			steps: []step{
				{op: "login", agent: "b"},
				{op: "login", agent: "a"},
				{op: "ready", agent: "b"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
			},
		},
		{
			name:     "capacity counts held chats and the pending offer",
			maxChats: 2,
			steps: []step{
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "chat", chat: "c2", want: []string{"queue 1"}},
				{op: "chat", chat: "c3", want: []string{"queue 2"}},
				{op: "accept", agent: "a", chat: "c1", want: []string{"offer c2>a", "queue 1"}},
				{op: "accept", agent: "a", chat: "c2"}, // at capacity: c3 stays queued
				{op: "close", agent: "a", chat: "c1", want: []string{"offer c3>a", "queue 0"}},
			},
		},
		{
			name: "offer timeout goes to the next agent and keeps the chat's place",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{at: 1 * time.Second, op: "ready", agent: "a"},
				{at: 2 * time.Second, op: "ready", agent: "b"},
				{at: 3 * time.Second, op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{at: 4 * time.Second, op: "chat", chat: "c2", want: []string{"offer c2>b"}},
				{at: 3*time.Second + timeout - time.Millisecond, op: "tick"},
				{at: 3*time.Second + timeout, op: "tick", want: []string{"withdraw c1<a timeout", "queue 1"}},
				{at: 4*time.Second + timeout, op: "tick", want: []string{"withdraw c2<b timeout", "offer c1>b", "offer c2>a", "queue 0"}},
			},
		},
		{
			name: "declined chat returns to the decliner only when nobody else is free",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "reject", agent: "a", chat: "c1", want: []string{"withdraw c1<a rejected", "offer c1>a"}},
				{op: "login", agent: "b"},
				{at: time.Hour, op: "ready", agent: "b"},
				{at: time.Hour, op: "reject", agent: "a", chat: "c1", want: []string{"withdraw c1<a rejected", "offer c1>b"}},
			},
		},
		{
			name: "a chat waiting for a non-decliner is passed by later chats",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{at: 1 * time.Second, op: "ready", agent: "a"},
				{at: 2 * time.Second, op: "ready", agent: "b"},
				{at: 3 * time.Second, op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{at: 3 * time.Second, op: "chat", chat: "c2", want: []string{"offer c2>b"}},
				{at: 3 * time.Second, op: "chat", chat: "c3", want: []string{"queue 1"}},
				// a rejects c1: b (who has not declined it) is busy with an
				// offer, so c1 waits and c3 goes to a.
				{at: 4 * time.Second, op: "reject", agent: "a", chat: "c1", want: []string{"withdraw c1<a rejected", "offer c3>a"}},
				{at: 5 * time.Second, op: "accept", agent: "b", chat: "c2", want: []string{"offer c1>b", "queue 0"}},
			},
		},
		{
			name: "not ready withdraws the offer; nobody else: queued",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "notready", agent: "a", want: []string{"withdraw c1<a notReady", "queue 1"}},
				{op: "tick"},
				{op: "accept", agent: "a", chat: "c1", wantErr: ErrNoOffer},
				{op: "chat", chat: "c2", want: []string{"queue 2"}},
			},
			check: func(t *testing.T, r *Router) {
				if q := r.Queue(); !slices.Equal(q, []string{"c1", "c2"}) {
					t.Errorf("queue %v, want [c1 c2]", q)
				}
			},
		},
		{
			name: "requeued chat keeps its place ahead of later chats",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "chat", chat: "c2", want: []string{"queue 1"}},
				{op: "joinfail", agent: "a", chat: "c1", want: []string{"offer c2>a", "queue 0", "queue 1"}},
			},
			check: func(t *testing.T, r *Router) {
				if q := r.Queue(); !slices.Equal(q, []string{"c1"}) {
					t.Errorf("queue %v, want [c1]", q)
				}
			},
		},
		{
			name: "duplicate STARTED is ignored",
			steps: []step{
				{op: "chat", chat: "c1", want: []string{"queue 1"}},
				{op: "chat", chat: "c1", wantErr: ErrConflict},
			},
		},
		{
			name: "wrong agent cannot accept or reject",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "accept", agent: "b", chat: "c1", wantErr: ErrNoOffer},
				{op: "reject", agent: "b", chat: "c1", wantErr: ErrNoOffer},
				{op: "accept", agent: "a", chat: "nope", wantErr: ErrNoOffer},
				{op: "accept", agent: "zz", chat: "c1", wantErr: ErrUnknownAgent},
			},
		},
		{
			name:     "transfer moves the chat and respects capacity",
			maxChats: 1,
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{op: "sup", agent: "s"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "accept", agent: "a", chat: "c1"},
				{op: "transfer", agent: "a", chat: "c1", to: "a", wantErr: ErrConflict},
				{op: "transfer", agent: "a", chat: "c1", to: "zz", wantErr: ErrUnknownAgent},
				{op: "transfer", agent: "a", chat: "c1", to: "s", wantErr: ErrConflict},
				{op: "transfer", agent: "b", chat: "c1", to: "a", wantErr: ErrNotYourChat},
				{op: "transferfail", agent: "a", chat: "c1", to: "b"},
				{op: "transfer", agent: "a", chat: "c1", to: "b"}, // b not ready: allowed
				{op: "transfer", agent: "a", chat: "c1", to: "b", wantErr: ErrNotYourChat},
				{op: "chat", chat: "c2", want: []string{"offer c2>a"}}, // a is free again
				{op: "transfer", agent: "b", chat: "c1", to: "a", wantErr: ErrAtCapacity},
			},
			check: func(t *testing.T, r *Router) {
				b, _ := r.Agent("b")
				if !slices.Equal(b.Chats, []string{"c1"}) {
					t.Errorf("b holds %v, want [c1]", b.Chats)
				}
			},
		},
		{
			name: "leave requeues, close forgets, end withdraws",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "accept", agent: "a", chat: "c1"},
				{at: time.Second, op: "leave", agent: "a", chat: "c1", want: []string{"offer c1>a"}},
				{op: "end", chat: "c1", want: []string{"withdraw c1<a ended"}},
				{op: "chat", chat: "c2", want: []string{"offer c2>a"}},
				{op: "accept", agent: "a", chat: "c2"},
				{op: "close", agent: "a", chat: "c2"},
				{op: "close", agent: "a", chat: "c2", wantErr: ErrUnknownChat},
			},
			check: func(t *testing.T, r *Router) {
				if len(r.Chats()) != 0 {
					t.Errorf("chats left: %v", r.Chats())
				}
			},
		},
		{
			name: "supervisors take no offers; logout rules",
			steps: []step{
				{op: "sup", agent: "s"},
				{op: "ready", agent: "s", wantErr: ErrNotRoutable},
				{op: "login", agent: "s", wantErr: ErrRoleMismatch},
				{op: "login", agent: "a"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
				{op: "chat", chat: "c2", want: []string{"queue 1"}},
				{op: "accept", agent: "a", chat: "c1", want: []string{"offer c2>a", "queue 0"}},
				{op: "logout", agent: "a", wantErr: ErrHoldsChats},
				{op: "close", agent: "a", chat: "c1"},
				{op: "logout", agent: "a", want: []string{"withdraw c2<a logout", "queue 1"}},
				{op: "logout", agent: "a", wantErr: ErrUnknownAgent},
			},
		},
		{
			name: "busy chat refuses a second operation",
			steps: []step{
				{op: "login", agent: "a"},
				{op: "login", agent: "b"},
				{op: "ready", agent: "a"},
				{op: "chat", chat: "c1", want: []string{"offer c1>a"}},
			},
			check: func(t *testing.T, r *Router) {
				if _, err := r.Accept("a", "c1", t0); err != nil {
					t.Fatal(err)
				}
				if err := r.Begin("a", "c1"); !errors.Is(err, ErrBusy) {
					t.Errorf("begin while joining: %v, want ErrBusy", err)
				}
				if _, err := r.JoinDone("a", "c1", true, t0); err != nil {
					t.Fatal(err)
				}
				if err := r.BeginTransfer("a", "c1", "b"); err != nil {
					t.Fatal(err)
				}
				if err := r.Begin("a", "c1"); !errors.Is(err, ErrBusy) {
					t.Errorf("begin while transferring: %v, want ErrBusy", err)
				}
				r.EndChat("c1", t0)
				if b, _ := r.Agent("b"); b.Chats == nil && r.agents["b"].reserved != 0 {
					t.Errorf("reservation kept after end: %d", r.agents["b"].reserved)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.maxChats
			if max == 0 {
				max = 3
			}
			r := NewRouter(max, timeout)
			runSteps(t, r, tc.steps)
			if tc.check != nil {
				tc.check(t, r)
			}
			checkInvariants(t, r)
		})
	}
}

// checkInvariants verifies the router's internal consistency.
func checkInvariants(t *testing.T, r *Router) {
	t.Helper()
	var problems []string
	queued := map[string]bool{}
	for i, c := range r.queue {
		queued[c.info.ID] = true
		if c.state != ChatQueued {
			problems = append(problems, c.info.ID+" in queue but "+string(c.state))
		}
		if i > 0 && r.queue[i-1].seq >= c.seq {
			problems = append(problems, "queue out of order at "+c.info.ID)
		}
	}
	for id, c := range r.chats {
		switch c.state {
		case ChatQueued:
			if !queued[id] {
				problems = append(problems, id+" queued but not in queue")
			}
		case ChatOffered:
			if a := r.agents[c.agent]; a == nil || a.offer != id {
				problems = append(problems, id+" offered to an agent who does not know")
			}
		case ChatAssigned:
			if a := r.agents[c.agent]; a == nil || !a.chats[id] {
				problems = append(problems, id+" assigned to an agent who does not hold it")
			}
		}
	}
	for id, a := range r.agents {
		if len(a.chats)+a.reserved > r.maxChats {
			problems = append(problems, id+" over capacity")
		}
		for c := range a.chats {
			if rc := r.chats[c]; rc == nil || rc.agent != id {
				problems = append(problems, id+" holds "+c+" which is not assigned to it")
			}
		}
	}
	if len(problems) > 0 {
		t.Errorf("router invariants broken:\n%s", strings.Join(problems, "\n"))
	}
}

func TestRouterNextDeadline(t *testing.T) {
	r := NewRouter(3, 10*time.Second)
	if _, ok := r.NextDeadline(); ok {
		t.Fatal("deadline without offers")
	}
	r.Login("a", "a", RoleAgent, t0)
	r.Login("b", "b", RoleAgent, t0)
	r.SetReady("a", true, t0)
	r.AddChat(ChatInfo{ID: "c1"}, t0.Add(time.Second))
	r.SetReady("b", true, t0.Add(2*time.Second))
	r.AddChat(ChatInfo{ID: "c2"}, t0.Add(3*time.Second))
	d, ok := r.NextDeadline()
	if !ok || !d.Equal(t0.Add(11*time.Second)) {
		t.Fatalf("next deadline %v %v, want %v", d, ok, t0.Add(11*time.Second))
	}
}
