package chatclient

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// subCore is a chat core whose sessions are named "<name>-<n>": session
// "x-<n>" has n events (index 1 to n, the last SESSION_ENDED), or, for
// n = 0, none and no end. It serves Subscribe and, unless unary, the
// SubscribeStream: each member's events go out in small batches,
// interleaved with the other members'; on its first stream it sends
// breakAfter events (0: no limit) and then fails the stream.
type subCore struct {
	chatpb.UnimplementedChatServer
	breakAfter int

	mu      sync.Mutex
	streams int
	unary   int
	opens   map[string][]uint64 // session → the from_index of each member opened
	cancels int
}

func newSubCore(breakAfter int) *subCore {
	return &subCore{breakAfter: breakAfter, opens: map[string][]uint64{}}
}

// sessionLen is the number of events of session id.
func sessionLen(id string) uint64 {
	n, _ := strconv.ParseUint(id[strings.LastIndexByte(id, '-')+1:], 10, 64)
	return n
}

func subEvent(sid string, i uint64) *chatpb.Event {
	ev := &chatpb.Event{SessionId: sid, Index: i, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE}
	if i == sessionLen(sid) {
		ev.Kind = chatpb.EventKind_EVENT_KIND_SESSION_ENDED
	}
	return ev
}

func (f *subCore) Subscribe(in *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	f.mu.Lock()
	f.unary++
	f.mu.Unlock()
	sid := in.GetAuth().GetSessionId()
	n := sessionLen(sid)
	for i := max(in.FromIndex, 1); i <= n; i++ {
		if err := st.Send(subEvent(sid, i)); err != nil {
			return err
		}
	}
	if n == 0 {
		<-st.Context().Done()
	}
	return nil
}

// unaryOnly hides subCore's SubscribeStream: an older core.
type unaryOnly struct {
	chatpb.UnimplementedChatServer
	f *subCore
}

func (u unaryOnly) Subscribe(in *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	return u.f.Subscribe(in, st)
}

func (f *subCore) SubscribeStream(st grpc.BidiStreamingServer[chatpb.SubscribeStreamRequest, chatpb.SubscribeStreamBatch]) error {
	f.mu.Lock()
	f.streams++
	limit := 0
	if f.streams == 1 {
		limit = f.breakAfter
	}
	f.mu.Unlock()
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	var (
		sendMu  sync.Mutex
		sent    int
		members = map[uint64]context.CancelFunc{}
		wg      sync.WaitGroup
	)
	broken := make(chan struct{})
	var once sync.Once
	// send sends b unless the stream is to break first.
	send := func(b *chatpb.SubscribeStreamBatch) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		if limit > 0 && sent+len(b.Events) > limit {
			once.Do(func() { close(broken) })
			return status.Error(codes.Unavailable, "core killed")
		}
		sent += len(b.Events)
		return st.Send(b)
	}
	recvd := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvd <- err
				return
			}
			if r.Cancel {
				f.mu.Lock()
				f.cancels++
				f.mu.Unlock()
				if c := members[r.Id]; c != nil {
					c()
				}
				continue
			}
			sid := r.Subscribe.GetAuth().GetSessionId()
			f.mu.Lock()
			f.opens[sid] = append(f.opens[sid], r.Subscribe.FromIndex)
			f.mu.Unlock()
			mctx, mcancel := context.WithCancel(ctx)
			members[r.Id] = mcancel
			wg.Go(func() {
				n := sessionLen(sid)
				for i := max(r.Subscribe.FromIndex, 1); i <= n; {
					b := &chatpb.SubscribeStreamBatch{}
					for ; i <= n && len(b.Events) < 7; i++ {
						b.Ids, b.Events = append(b.Ids, r.Id), append(b.Events, subEvent(sid, i))
					}
					if mctx.Err() != nil || send(b) != nil {
						return
					}
				}
				if n == 0 {
					<-mctx.Done()
					return
				}
				_ = send(&chatpb.SubscribeStreamBatch{Ends: []*chatpb.SubscribeStreamBatch_End{{Id: r.Id}}})
			})
		}
	}()
	select {
	case err := <-recvd:
		return err
	case <-broken:
		return status.Error(codes.Unavailable, "core killed")
	}
}

func (f *subCore) counts() (streams, unary, cancels int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.streams, f.unary, f.cancels
}

// subscribeStreamMethod is SubscribeStream's full method name.
const subscribeStreamMethod = "/hachat.chat.v1.Chat/SubscribeStream"

func newSubClient(t *testing.T, addr string) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Targets = []string{addr}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAll reads st to its end and checks that it delivered events 1 to n
// of sid, each once, in order, then io.EOF.
func readAll(st grpc.ServerStreamingClient[chatpb.Event], sid string) error {
	want := uint64(1)
	for {
		ev, err := st.Recv()
		if err == io.EOF {
			if want != sessionLen(sid)+1 {
				return fmt.Errorf("%s: io.EOF after %d events, want %d", sid, want-1, sessionLen(sid))
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", sid, err)
		}
		if ev.SessionId != sid || ev.Index != want {
			return fmt.Errorf("%s: got event %d of %s, want %d", sid, ev.Index, ev.SessionId, want)
		}
		want++
	}
}

// subscribeAll subscribes to sessions "s<i>-<n>" (i < subs) at once and
// reads each to its end.
func subscribeAll(t *testing.T, c *Client, subs int, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range subs {
		sid := fmt.Sprintf("s%d-%d", i, n)
		st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: &chatpb.Auth{SessionId: sid}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := readAll(st, sid); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// TestSubscribeMultiplexesOnOneStream subscribes many times through one
// Client: every Subscribe is a member of one stream, and each gets its own
// events once, in order, then io.EOF after SESSION_ENDED.
func TestSubscribeMultiplexesOnOneStream(t *testing.T) {
	f := newSubCore(0)
	addr, streams := serveCounting(t, f, subscribeStreamMethod)
	c := newSubClient(t, addr)
	subscribeAll(t, c, 40, 100)
	if s, u, _ := f.counts(); s != 1 || u != 0 || streams() != 1 {
		t.Fatalf("%d streams, %d unary Subscribes; want 1 stream, none unary", s, u)
	}
}

// TestSubscribeResumesAcrossABrokenStream breaks the shared stream
// mid-delivery: every member resumes on a new stream from its next index,
// and no subscriber sees a gap or a duplicate.
func TestSubscribeResumesAcrossABrokenStream(t *testing.T) {
	f := newSubCore(500)
	addr, _ := serveCounting(t, f, subscribeStreamMethod)
	c := newSubClient(t, addr)
	subscribeAll(t, c, 30, 60)
	if s, _, _ := f.counts(); s != 2 {
		t.Fatalf("%d streams, want 2 (the broken one and the next)", s)
	}
	resumed := 0
	f.mu.Lock()
	for _, from := range f.opens {
		if len(from) > 1 && from[1] > 1 {
			resumed++
		}
	}
	f.mu.Unlock()
	if resumed == 0 {
		t.Fatal("no member resumed past index 1 on the second stream")
	}
}

// TestSubscribeFallsBackToUnary subscribes through a core without
// SubscribeStream: each Subscribe becomes a unary Subscribe, and the
// stream is not asked for again until unimplementedRecheck.
func TestSubscribeFallsBackToUnary(t *testing.T) {
	f := newSubCore(0)
	addr, streams := serveCounting(t, unaryOnly{f: f}, subscribeStreamMethod)
	c := newSubClient(t, addr)
	subscribeAll(t, c, 10, 20)
	subscribeAll(t, c, 10, 20)
	if _, u, _ := f.counts(); u != 20 || streams() != 1 {
		t.Fatalf("%d unary Subscribes, %d SubscribeStream calls; want 20 and 1", u, streams())
	}
}

// TestSubscribeSlowMemberDoesNotStall leaves one subscriber unread while
// its events pour in: the others on the stream get theirs; the slow one,
// ended once it is subscribeMemberQueue events behind (its member
// cancelled at the core), resumes from its next index when read, and sees
// every event once, in order.
func TestSubscribeSlowMemberDoesNotStall(t *testing.T) {
	f := newSubCore(0)
	addr, _ := serveCounting(t, f, subscribeStreamMethod)
	c := newSubClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slowSID := fmt.Sprintf("slow-%d", 3*subscribeMemberQueue)
	slow, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: &chatpb.Auth{SessionId: slowSID}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the slow member's cancel", func() bool { _, _, n := f.counts(); return n >= 1 })
	subscribeAll(t, c, 10, 200)
	if err := readAll(slow, slowSID); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if from := f.opens[slowSID]; len(from) < 2 || from[1] != subscribeMemberQueue+1 {
		t.Fatalf("the slow member opened from %v, want a resume from %d", from, subscribeMemberQueue+1)
	}
}

// TestSubscribeCancelLeavesTheStream cancels a subscriber's context: its
// member is cancelled at the core, and the Client no longer counts it.
func TestSubscribeCancelLeavesTheStream(t *testing.T) {
	f := newSubCore(0)
	addr, _ := serveCounting(t, f, subscribeStreamMethod)
	c := newSubClient(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: &chatpb.Auth{SessionId: "idle-0"}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the member opens", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.opens["idle-0"]) == 1 })
	cancel()
	if _, err := st.Recv(); status.Code(err) != codes.Canceled && err != context.Canceled {
		t.Fatalf("Recv after cancel: %v", err)
	}
	waitUntil(t, "the member's cancel", func() bool { _, _, n := f.counts(); return n == 1 })
	waitUntil(t, "no open stream", func() bool { return c.OpenStreams() == 0 })
}

// waitUntil polls cond until it holds, failing the test after 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSubscribeEventTaker subscribes with an EventTaker: the events it
// takes (on the shared stream's reader) and the ones Recv returns make,
// per session, every event once and in order, the end through Recv; a
// broken stream resumes after the events taken.
func TestSubscribeEventTaker(t *testing.T) {
	for _, tc := range []struct {
		name       string
		breakAfter int
		subs       int
		n          uint64
		take       func(ev *chatpb.Event) bool
	}{
		{name: "takes every event", subs: 20, n: 100, take: func(*chatpb.Event) bool { return true }},
		// Index 1 is offered while the reader waits for its first event,
		// as in the case above; the refused index 2 then keeps the reader
		// busy while later events come, so both ways are used. (Refusing
		// index 1 instead could leave, with one P, no event offered while
		// the reader waits: nothing taken, the case proving nothing.)
		{name: "refuses even indexes", subs: 20, n: 100, take: func(ev *chatpb.Event) bool { return ev.Index%2 == 1 }},
		{name: "across a broken stream", breakAfter: 500, subs: 30, n: 60, take: func(ev *chatpb.Event) bool { return ev.Index%5 != 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newSubCore(tc.breakAfter)
			addr, _ := serveCounting(t, f, subscribeStreamMethod)
			c := newSubClient(t, addr)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var (
				mu    sync.Mutex
				seen  = map[string][]uint64{} // session → indexes, as handled
				taken int
			)
			record := func(ev *chatpb.Event) {
				mu.Lock()
				defer mu.Unlock()
				seen[ev.SessionId] = append(seen[ev.SessionId], ev.Index)
			}
			tctx := WithEventTaker(ctx, func(ev *chatpb.Event) bool {
				if !tc.take(ev) {
					return false
				}
				record(ev)
				mu.Lock()
				taken++
				mu.Unlock()
				return true
			})
			var wg sync.WaitGroup
			for i := range tc.subs {
				sid := fmt.Sprintf("s%d-%d", i, tc.n)
				st, err := c.Subscribe(tctx, &chatpb.SubscribeRequest{Auth: &chatpb.Auth{SessionId: sid}})
				if err != nil {
					t.Fatal(err)
				}
				wg.Go(func() {
					for {
						ev, err := st.Recv()
						if err == io.EOF {
							return
						}
						if err != nil {
							t.Errorf("%s: %v", sid, err)
							return
						}
						record(ev)
					}
				})
			}
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			for i := range tc.subs {
				sid := fmt.Sprintf("s%d-%d", i, tc.n)
				got := seen[sid]
				for j, idx := range got {
					if idx != uint64(j+1) {
						t.Fatalf("%s: handled %v, want 1 to %d once each, in order", sid, got, tc.n)
					}
				}
				if uint64(len(got)) != tc.n {
					t.Fatalf("%s: handled %d events, want %d", sid, len(got), tc.n)
				}
			}
			if taken == 0 {
				t.Fatal("the taker took no event: every one went through Recv")
			}
			if s, _, _ := f.counts(); tc.breakAfter > 0 && s != 2 {
				t.Fatalf("%d streams, want 2 (the broken one and the next)", s)
			}
		})
	}
}
