package chatcore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// memberEnd is how one member of a raw SubscribeStream ended.
type memberEnd struct {
	code codes.Code
	msg  string
}

// rawMembers reads a raw SubscribeStream: the events and the end of each
// member, until the stream fails.
type rawMembers struct {
	mu     sync.Mutex
	events map[uint64][]*chatpb.Event
	ends   map[uint64]memberEnd
	err    error // the stream's end
	done   chan struct{}
}

func readMembers(st chatpb.Chat_SubscribeStreamClient) *rawMembers {
	r := &rawMembers{events: map[uint64][]*chatpb.Event{}, ends: map[uint64]memberEnd{}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			b, err := st.Recv()
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			for i, ev := range b.Events {
				id := b.Ids[i]
				if _, ended := r.ends[id]; ended {
					r.err = fmt.Errorf("member %d: event %d after its end", id, ev.Index)
				}
				r.events[id] = append(r.events[id], ev)
			}
			for _, e := range b.Ends {
				r.ends[e.Id] = memberEnd{codes.Code(e.Code), e.Message}
			}
			r.mu.Unlock()
		}
	}()
	return r
}

// end waits for member id's end.
func (r *rawMembers) end(t *testing.T, id uint64) memberEnd {
	t.Helper()
	var e memberEnd
	waitFor(t, fmt.Sprintf("member %d ends", id), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		var ok bool
		e, ok = r.ends[id]
		return ok
	})
	return e
}

func (r *rawMembers) got(id uint64) []*chatpb.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*chatpb.Event(nil), r.events[id]...)
}

// unaryEnd subscribes with the unary Subscribe and returns how it ended
// (after its events, if any).
func unaryEnd(t *testing.T, cl chatpb.ChatClient, req *chatpb.SubscribeRequest) memberEnd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cl.Subscribe(ctx, req)
	for err == nil {
		_, err = st.Recv()
	}
	if err == io.EOF {
		return memberEnd{codes.OK, ""}
	}
	s := status.Convert(err)
	return memberEnd{s.Code(), s.Message()}
}

// upToEnd is evs up to the event that ends participant pid's
// subscription: SESSION_ENDED, or its own PARTICIPANT_LEFT.
func upToEnd(evs []*chatpb.Event, pid string) []*chatpb.Event {
	for i, e := range evs {
		if e.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED || e.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && e.From.GetId() == pid {
			return evs[:i+1]
		}
	}
	return evs
}

// recvFrom is a SubscribeStream's recv that reads the client's requests
// from reqs until ctx is done.
func recvFrom(ctx context.Context, reqs <-chan *chatpb.SubscribeStreamRequest) func() (*chatpb.SubscribeStreamRequest, error) {
	return func() (*chatpb.SubscribeStreamRequest, error) {
		select {
		case r := <-reqs:
			return r, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func indexes(evs []*chatpb.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Index
	}
	return out
}

// TestSubscribeStreamMembers opens many members on one SubscribeStream,
// customers and agents of several sessions, and sends to every session:
// each member gets exactly the events a unary Subscribe gets (those its
// participant may see), once, in order, and ends with OK after
// SESSION_ENDED (the customer) or its own PARTICIPANT_LEFT (the agent,
// who ends the session).
func TestSubscribeStreamMembers(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SendRate = 1e6; c.SendBurst = 1 << 20 })
	ctx := ctxT(t)
	const sessions, per = 12, 40
	var auths []*chatpb.Auth
	for range sessions {
		cust, agent := tc.chat(t)
		auths = append(auths, cust, agent)
	}
	st, err := tc.cl.SubscribeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := readMembers(st)
	for i, a := range auths {
		if err := st.Send(&chatpb.SubscribeStreamRequest{Id: uint64(100 + i), Subscribe: &chatpb.SubscribeRequest{Auth: a, FromIndex: 2}}); err != nil {
			t.Fatal(err)
		}
	}
	var sent sync.WaitGroup
	for i := range sessions {
		sent.Go(func() {
			for m := range per {
				// Customer and agent in turn.
				req := msg(auths[2*i+m%2], fmt.Sprintf("m%d", m), "")
				if _, err := tc.cl.Send(ctx, req); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
			if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: auths[2*i+1], EndSession: true}); err != nil {
				t.Errorf("leave: %v", err)
			}
		})
	}
	sent.Wait()
	for i, a := range auths {
		id := uint64(100 + i)
		if e := r.end(t, id); e.code != codes.OK {
			t.Fatalf("member %d ended %v, want OK after SESSION_ENDED", id, e)
		}
		var want []*chatpb.Event
		for _, e := range tc.events(t, a) {
			if e.Index >= 2 {
				want = append(want, e)
			}
		}
		want = upToEnd(want, a.ParticipantId)
		got := r.got(id)
		if fmt.Sprint(indexes(got)) != fmt.Sprint(indexes(want)) {
			t.Errorf("member %d got indexes %v, want %v", id, indexes(got), indexes(want))
		}

	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	<-r.done
	if r.err != io.EOF {
		t.Fatalf("stream after every member ended and the client closed its side: %v, want io.EOF", r.err)
	}
	if n := tc.metric(t, "hachat_core_rpcs_total", "method", "Subscribe", "code", "OK"); n != float64(len(auths)) {
		t.Errorf("%v Subscribe calls counted OK, want %d (one per member)", n, len(auths))
	}
}

// TestSubscribeStreamErrors opens members the unary Subscribe refuses:
// each ends alone, with Subscribe's code and message, while a member open
// on the same stream goes on receiving.
func TestSubscribeStreamErrors(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	_, leftAgent := tc.chat(t)
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: leftAgent}); err != nil {
		t.Fatal(err)
	}
	st, err := tc.cl.SubscribeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := readMembers(st)
	if err := st.Send(&chatpb.SubscribeStreamRequest{Id: 1, Subscribe: &chatpb.SubscribeRequest{Auth: agent}}); err != nil {
		t.Fatal(err)
	}
	wrongKey := &chatpb.Auth{SessionId: cust.SessionId, ParticipantId: cust.ParticipantId, SecureKey: "not-the-key"}
	unknown := &chatpb.Auth{SessionId: cust.SessionId + "-nope", ParticipantId: "p1", SecureKey: "k"}
	id := uint64(10)
	for _, tt := range []struct {
		name string
		req  *chatpb.SubscribeRequest
		code codes.Code
	}{
		{"bad key", &chatpb.SubscribeRequest{Auth: wrongKey}, codes.PermissionDenied},
		{"unknown session", &chatpb.SubscribeRequest{Auth: unknown}, codes.NotFound},
		{"no auth", &chatpb.SubscribeRequest{}, codes.InvalidArgument},
		{"past the end", &chatpb.SubscribeRequest{Auth: cust, FromIndex: 1000}, codes.InvalidArgument},
		{"participant left", &chatpb.SubscribeRequest{Auth: leftAgent, FromIndex: 1}, codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id++
			if err := st.Send(&chatpb.SubscribeStreamRequest{Id: id, Subscribe: tt.req}); err != nil {
				t.Fatal(err)
			}
			got, want := r.end(t, id), unaryEnd(t, tc.cl, tt.req)
			if got != want || got.code != tt.code {
				t.Errorf("member ended %v; the unary Subscribe %v; want code %s", got, want, tt.code)
			}
		})
	}
	// The first member still works.
	if _, err := tc.cl.Send(ctx, msg(cust, "after the refusals", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "member 1 gets the message", func() bool {
		for _, e := range r.got(1) {
			if e.Text == "after the refusals" {
				return true
			}
		}
		return false
	})
	r.mu.Lock()
	_, ended := r.ends[1]
	r.mu.Unlock()
	if ended {
		t.Fatal("member 1 ended")
	}
}

// TestSubscribeStreamCancel checks that a member the client cancels stops
// at the core (it is no longer a subscriber) and gets no end, and that the
// stream's other members go on.
func TestSubscribeStreamCancel(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	st, err := tc.cl.SubscribeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := readMembers(st)
	for id, a := range map[uint64]*chatpb.Auth{1: cust, 2: agent} {
		if err := st.Send(&chatpb.SubscribeStreamRequest{Id: id, Subscribe: &chatpb.SubscribeRequest{Auth: a}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two subscribers", func() bool { return tc.metric(t, "hachat_core_subscribers") == 2 })
	if err := st.Send(&chatpb.SubscribeStreamRequest{Id: 1, Cancel: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one subscriber", func() bool { return tc.metric(t, "hachat_core_subscribers") == 1 })
	if _, err := tc.cl.Send(ctx, msg(cust, "still there", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "member 2 gets the message", func() bool { return len(r.got(2)) == 4 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ended := r.ends[1]; ended {
		t.Error("the cancelled member got an end")
	}
}

// TestSubscribeStreamBackupRefuses checks that a backup refuses a
// SubscribeStream with the code it refuses Subscribe with, and that the
// primary ends the stream (UNAVAILABLE, so every member resumes) when it
// steps down.
func TestSubscribeStreamBackupRefuses(t *testing.T) {
	a, b := pair(t, newMemStore(), nil)
	cust, _ := a.chat(t)
	ctx := ctxT(t)
	req := &chatpb.SubscribeRequest{Auth: cust}
	want := unaryEnd(t, b.cl, req)
	if want.code != codes.Unavailable {
		t.Fatalf("backup's Subscribe: %v", want)
	}
	st, err := b.cl.SubscribeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&chatpb.SubscribeStreamRequest{Id: 1, Subscribe: req}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if s := status.Convert(err); s.Code() != want.code || s.Message() != want.msg {
		t.Fatalf("backup's SubscribeStream: %v, want %v", err, want)
	}

	st, err = a.cl.SubscribeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := readMembers(st)
	if err := st.Send(&chatpb.SubscribeStreamRequest{Id: 1, Subscribe: req}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "member 1's backlog", func() bool { return len(r.got(1)) == 3 })
	a.c.stepDown("test", 0)
	<-r.done
	if status.Code(r.err) != codes.Unavailable {
		t.Fatalf("stream after the step-down: %v, want UNAVAILABLE", r.err)
	}
}

// TestSubscribeStreamSlowClient blocks the stream's writer (a client that
// reads nothing) while a burst is sent: the core buffers a bounded amount
// (the stream's queue and each member's SubscriberBuffer), drops the
// members from fan-out, and once the client reads again each member
// catches up from the log: every event once, in order.
func TestSubscribeStreamSlowClient(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SubscriberBuffer = 4; c.SendRate = 1e6; c.SendBurst = 1 << 20 })
	// A minute, not ctxT's ten seconds: 1,600 sends under -race on a
	// loaded machine have taken longer than ten.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cust, agent := tc.chat(t)
	reqs := make(chan *chatpb.SubscribeStreamRequest, 2)
	reqs <- &chatpb.SubscribeStreamRequest{Id: 1, Subscribe: &chatpb.SubscribeRequest{Auth: cust}}
	reqs <- &chatpb.SubscribeStreamRequest{Id: 2, Subscribe: &chatpb.SubscribeRequest{Auth: agent}}
	recv := recvFrom(ctx, reqs)
	release := make(chan struct{})
	var mu sync.Mutex
	got := map[uint64][]uint64{}
	send := func(b *chatpb.SubscribeStreamBatch) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		defer mu.Unlock()
		for i, ev := range b.Events {
			got[b.Ids[i]] = append(got[b.Ids[i]], ev.Index)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- tc.c.subscribeStream(ctx, recv, send) }()
	waitFor(t, "two subscribers", func() bool { return tc.metric(t, "hachat_core_subscribers") == 2 })
	const n = subscribeStreamQueued + 600
	for i := range n {
		if _, err := tc.cl.Send(ctx, msg(cust, fmt.Sprintf("m%d", i), "")); err != nil {
			t.Fatal(err)
		}
	}
	if d := tc.metric(t, "hachat_core_subscriber_drops_total"); d == 0 {
		t.Fatal("no member was dropped from fan-out while the client read nothing")
	}
	close(release)
	last := uint64(3 + n)
	waitFor(t, "both members caught up", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got[1]) > 0 && got[1][len(got[1])-1] == last && len(got[2]) > 0 && got[2][len(got[2])-1] == last
	})
	for id, idx := range got {
		for i, x := range idx {
			if x != uint64(i+1) {
				t.Fatalf("member %d: event %d has index %d (a gap or a duplicate)", id, i, x)
			}
		}
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("stream end: %v, want CANCELED (the client went away)", err)
	}
}

// TestSubscribeStreamFailoverNoGapNoDuplicate subscribes through
// chatclient (one SubscribeStream shared by every subscriber) to a pair,
// sends, and kills the primary mid-stream: the stream breaks, every member
// resumes at the promoted backup from its next index, and each subscriber
// sees every event it may see exactly once, in order.
func TestSubscribeStreamFailoverNoGapNoDuplicate(t *testing.T) {
	if testing.Short() {
		t.Skip("failover")
	}
	a, b, cl := pairWithClient(t)
	const sessions, per = 12, 60
	var auths []*chatpb.Auth
	for range sessions {
		cust, agent := a.chat(t)
		auths = append(auths, cust, agent)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make([][]*chatpb.Event, len(auths))
	failed := make([]error, len(auths))
	var subs sync.WaitGroup
	for i, au := range auths {
		st, err := cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: au, FromIndex: 1})
		if err != nil {
			t.Fatal(err)
		}
		subs.Go(func() {
			for {
				ev, err := st.Recv()
				if err == io.EOF {
					return
				}
				if err != nil {
					failed[i] = err
					return
				}
				got[i] = append(got[i], ev)
			}
		})
	}
	waitFor(t, "subscribers", func() bool { return (&testCore{c: a.c}).metric(t, "hachat_core_subscribers") == float64(len(auths)) })

	var sent sync.WaitGroup
	progress := make(chan struct{}, sessions*per)
	for i := range sessions {
		sent.Go(func() {
			for m := range per {
				cmid := fmt.Sprintf("s%d-m%d", i, m)
				if _, err := cl.Send(ctx, msg(auths[2*i+m%2], cmid, cmid)); err != nil {
					t.Errorf("%s: %v", cmid, err)
					return
				}
				progress <- struct{}{}
			}
			if _, err := cl.Leave(ctx, &chatpb.LeaveRequest{Auth: auths[2*i+1], EndSession: true}); err != nil {
				t.Errorf("leave: %v", err)
			}
		})
	}
	for range sessions * per / 3 {
		<-progress
	}
	a.kill()
	sent.Wait()
	subs.Wait()
	if !b.c.role.IsPrimary() {
		t.Fatal("core-b is not primary after the kill")
	}
	// The subscribers were members of a SubscribeStream (the kill ended it).
	if n := (&testCore{c: a.c}).metric(t, "hachat_core_rpcs_total", "method", "SubscribeStream"); n == 0 {
		t.Error("no SubscribeStream at core-a: the subscribers were not multiplexed")
	}
	bc := &testCore{c: b.c, cl: b.cl}
	for i, au := range auths {
		if failed[i] != nil {
			t.Errorf("subscriber %d: %v", i, failed[i])
			continue
		}
		want := indexes(upToEnd(bc.events(t, au), au.ParticipantId))
		if g := indexes(got[i]); fmt.Sprint(g) != fmt.Sprint(want) {
			t.Errorf("subscriber %d (%s) got %v, want %v", i, au.ParticipantId, g, want)
		}
	}
	t.Logf("client retries: %d", cl.Retries())
}

// TestSubscribeStreamDirectFanOut holds that fan-out hands the live events
// of a caught-up SubscribeStream member straight to the stream's writer
// (subscriber.direct), not through the member's mailbox and goroutine, and
// that the member still gets every event it may see, once, in order, and
// ends on the event that ends it (which goes through the mailbox).
func TestSubscribeStreamDirectFanOut(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SendRate = 1e6; c.SendBurst = 1 << 20 })
	cust, agent := tc.chat(t)
	cases := []struct {
		name string
		id   uint64
		auth *chatpb.Auth
	}{
		{"customer", 1, cust},
		{"agent", 2, agent},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reqs := make(chan *chatpb.SubscribeStreamRequest, len(cases))
	for _, c := range cases {
		reqs <- &chatpb.SubscribeStreamRequest{Id: c.id, Subscribe: &chatpb.SubscribeRequest{Auth: c.auth}}
	}
	recv := recvFrom(ctx, reqs)
	var mu sync.Mutex
	got := map[uint64][]*chatpb.Event{}
	ended := map[uint64]codes.Code{}
	send := func(b *chatpb.SubscribeStreamBatch) error {
		mu.Lock()
		defer mu.Unlock()
		for i, ev := range b.Events {
			got[b.Ids[i]] = append(got[b.Ids[i]], ev)
		}
		for _, e := range b.Ends {
			ended[e.Id] = codes.Code(e.Code)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- tc.c.subscribeStream(ctx, recv, send) }()

	s := tc.c.session(cust.SessionId)
	subs := func() []*subscriber {
		s.mu.Lock()
		defer s.mu.Unlock()
		var out []*subscriber
		for sub := range s.subs {
			out = append(out, sub)
		}
		return out
	}
	waitFor(t, "both members caught up and in fan-out", func() bool {
		ss := subs()
		return len(ss) == len(cases) && ss[0].held.Load() == 0 && ss[1].held.Load() == 0
	})
	const n = 50
	for i := range n {
		if _, err := tc.cl.Send(ctx, msg(cust, fmt.Sprintf("m%d", i), "")); err != nil {
			t.Fatal(err)
		}
	}
	last := uint64(tc.logLen(cust.SessionId))
	for _, sub := range subs() {
		if next := sub.next.Load(); next != last+1 {
			t.Errorf("direct took the events before index %d, want every live one (before %d)", next, last+1)
		}
		if len(sub.ch) != 0 || sub.held.Load() != 0 {
			t.Errorf("mailbox holds %d events (held %d), want none", len(sub.ch), sub.held.Load())
		}
	}
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: agent, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			waitFor(t, c.name+" ends", func() bool {
				mu.Lock()
				defer mu.Unlock()
				_, ok := ended[c.id]
				return ok
			})
			mu.Lock()
			defer mu.Unlock()
			if ended[c.id] != codes.OK {
				t.Errorf("ended with %v, want OK", ended[c.id])
			}
			w := upToEnd(tc.events(t, c.auth), c.auth.ParticipantId)
			if len(w) < n || fmt.Sprint(indexes(got[c.id])) != fmt.Sprint(indexes(w)) {
				t.Errorf("got indexes %v, want %v", indexes(got[c.id]), indexes(w))
			}
		})
	}
	cancel()
	<-done
}
