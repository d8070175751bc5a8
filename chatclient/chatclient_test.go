package chatclient

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// fakeCore is a scripted chat core: it fails the first failSends sends with
// Unavailable, and serves Subscribe from a fixed log, breaking the stream
// after breakAfter events the first time.
type fakeCore struct {
	chatpb.UnimplementedChatServer
	mu         sync.Mutex
	failSends  int
	sendIDs    []string
	log        []*chatpb.Event
	breakAfter int
	subFrom    []uint64
	refuseSubs int // accept (send headers), then refuse this many subscriptions
	failJoins  int // fail this many StartSession/Join calls with Unavailable
	joinIDs    []string
}

func (f *fakeCore) joinAttempt(id string) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joinIDs = append(f.joinIDs, id)
	if f.failJoins > 0 {
		f.failJoins--
		return nil, status.Error(codes.Unavailable, "answer lost")
	}
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: "s1", ParticipantId: "p1", SecureKey: "k"}}, nil
}

func (f *fakeCore) StartSession(_ context.Context, in *chatpb.StartSessionRequest) (*chatpb.JoinResponse, error) {
	return f.joinAttempt(in.GetClientRequestId())
}

func (f *fakeCore) Join(_ context.Context, in *chatpb.JoinRequest) (*chatpb.JoinResponse, error) {
	return f.joinAttempt(in.GetClientRequestId())
}

func (f *fakeCore) Send(_ context.Context, in *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sendIDs = append(f.sendIDs, in.GetClientMessageId())
	if in.GetAuth().GetSecureKey() == "wrong" {
		return nil, status.Error(codes.PermissionDenied, "wrong secure key")
	}
	if f.failSends > 0 {
		f.failSends--
		return nil, status.Error(codes.Unavailable, "not primary")
	}
	return &chatpb.SendResponse{Index: 7}, nil
}

func (f *fakeCore) Subscribe(in *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	f.mu.Lock()
	f.subFrom = append(f.subFrom, in.GetFromIndex())
	first := len(f.subFrom) == 1
	refuse := f.refuseSubs > 0
	if refuse {
		f.refuseSubs--
	}
	f.mu.Unlock()
	if refuse {
		_ = st.SendHeader(nil)
		return status.Error(codes.Unavailable, "not primary")
	}
	sent := 0
	for _, ev := range f.log {
		if ev.GetIndex() < in.GetFromIndex() {
			continue
		}
		if first && sent == f.breakAfter {
			return status.Error(codes.Unavailable, "core stepping down")
		}
		if err := st.Send(ev); err != nil {
			return err
		}
		sent++
	}
	return nil
}

func serve(t *testing.T, srv chatpb.ChatServer) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	chatpb.RegisterChatServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String(), g.Stop
}

func newClient(t testing.TB, targets ...string) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Targets = targets
	cfg.RetryFor = 5 * time.Second
	c, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSendRetriesWithSameClientMessageID(t *testing.T) {
	f := &fakeCore{failSends: 2}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	resp, err := c.Send(context.Background(), &chatpb.SendRequest{Text: "hi"})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if resp.GetIndex() != 7 {
		t.Fatalf("index %d, want 7", resp.GetIndex())
	}
	if len(f.sendIDs) != 3 {
		t.Fatalf("core saw %d attempts, want 3", len(f.sendIDs))
	}
	for _, id := range f.sendIDs {
		if id == "" || id != f.sendIDs[0] {
			t.Fatalf("attempts carried ids %q, want one non-empty id", f.sendIDs)
		}
	}
}

func TestStartSessionAndJoinRetryWithOneClientRequestID(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(c *Client) error
	}{
		{"StartSession", func(c *Client) error {
			_, err := c.StartSession(context.Background(), &chatpb.StartSessionRequest{Service: "s", Nickname: "n"})
			return err
		}},
		{"Join", func(c *Client) error {
			_, err := c.Join(context.Background(), &chatpb.JoinRequest{SessionId: "s1"})
			return err
		}},
		{"given id kept", func(c *Client) error {
			_, err := c.Join(context.Background(), &chatpb.JoinRequest{SessionId: "s1", ClientRequestId: "mine"})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCore{failJoins: 2}
			addr, _ := serve(t, f)
			c := newClient(t, addr)
			if err := tc.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.joinIDs) != 3 {
				t.Fatalf("core saw %d attempts, want 3", len(f.joinIDs))
			}
			for _, id := range f.joinIDs {
				if id == "" || id != f.joinIDs[0] {
					t.Fatalf("attempts carried ids %q, want one non-empty id", f.joinIDs)
				}
			}
			if tc.name == "given id kept" && f.joinIDs[0] != "mine" {
				t.Fatalf("id %q, want the caller's", f.joinIDs[0])
			}
		})
	}
}

func TestErrorsThatAreNotRetryableReturnAtOnce(t *testing.T) {
	f := &fakeCore{}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	_, err := c.Send(context.Background(), &chatpb.SendRequest{Auth: &chatpb.Auth{SecureKey: "wrong"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err %v, want PermissionDenied", err)
	}
	if len(f.sendIDs) != 1 {
		t.Fatalf("%d attempts, want 1", len(f.sendIDs))
	}
}

func TestFailsOverToNextTarget(t *testing.T) {
	a, b := &fakeCore{}, &fakeCore{}
	addrA, stopA := serve(t, a)
	addrB, _ := serve(t, b)
	c := newClient(t, addrA, addrB)
	if _, err := c.Send(context.Background(), &chatpb.SendRequest{}); err != nil {
		t.Fatal(err)
	}
	stopA()
	if _, err := c.Send(context.Background(), &chatpb.SendRequest{}); err != nil {
		t.Fatalf("send after the first target died: %v", err)
	}
	if len(b.sendIDs) != 1 {
		t.Fatalf("second target saw %d sends, want 1", len(b.sendIDs))
	}
}

func TestRetryEndsWithCallerDeadline(t *testing.T) {
	f := &fakeCore{failSends: 1 << 30}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Send(ctx, &chatpb.SendRequest{})
	if status.Code(err) != codes.Unavailable && !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err %v, want the last retryable error", err)
	}
}

func TestSubscribeResumesFromLastIndex(t *testing.T) {
	f := &fakeCore{breakAfter: 3}
	for i := uint64(1); i <= 5; i++ {
		f.log = append(f.log, &chatpb.Event{Index: i, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE})
	}
	f.log = append(f.log, &chatpb.Event{Index: 6, Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED})
	addr, _ := serve(t, f)
	c := newClient(t, addr)

	var mu sync.Mutex
	var notes []bool
	ctx := WithStreamObserver(context.Background(), func(up bool, _ error) {
		mu.Lock()
		notes = append(notes, up)
		mu.Unlock()
	})
	st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		got = append(got, ev.GetIndex())
	}
	want := []uint64{1, 2, 3, 4, 5, 6}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if len(f.subFrom) != 2 || f.subFrom[1] != 4 {
		t.Fatalf("subscriptions from %v, want [1 4]", f.subFrom)
	}
	if len(notes) != 2 || notes[0] || !notes[1] {
		t.Fatalf("observer saw %v, want [false true]", notes)
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		code codes.Code
		want bool
	}{
		{codes.Unavailable, true}, {codes.Aborted, true}, {codes.DeadlineExceeded, true},
		{codes.InvalidArgument, false}, {codes.PermissionDenied, false}, {codes.NotFound, false},
		{codes.ResourceExhausted, false}, {codes.FailedPrecondition, false},
	} {
		if got := Retryable(status.Error(tc.code, "x")); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.code, got, tc.want)
		}
	}
}

func TestSubscribeBacksOffWhenAcceptedStreamsAreRefused(t *testing.T) {
	f := &fakeCore{refuseSubs: 4, breakAfter: 1 << 30}
	f.log = []*chatpb.Event{
		{Index: 1, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE},
		{Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, From: &chatpb.Participant{Id: "p1"}},
	}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	st, err := c.Subscribe(context.Background(), &chatpb.SubscribeRequest{Auth: &chatpb.Auth{ParticipantId: "p1"}, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break // the participant's own leave ends its stream
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		got = append(got, ev.GetIndex())
	}
	if len(got) != 2 {
		t.Fatalf("got %v, want [1 2]", got)
	}
	if c.Retries() < 3 {
		t.Fatalf("%d backed-off retries, want one per refused stream after the first", c.Retries())
	}
}

// stallingCore answers nothing to Send (a stopped process) while streams it
// accepted stay open and silent.
type stallingCore struct {
	chatpb.UnimplementedChatServer
}

func (stallingCore) Send(ctx context.Context, _ *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (stallingCore) Subscribe(_ *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	if err := st.Send(&chatpb.Event{Index: 1, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE}); err != nil {
		return err
	}
	<-st.Context().Done()
	return st.Context().Err()
}

func TestStreamsLeaveAStalledTarget(t *testing.T) {
	a := stallingCore{}
	b := &fakeCore{breakAfter: 1 << 30}
	for i := uint64(1); i <= 3; i++ {
		b.log = append(b.log, &chatpb.Event{Index: i, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE})
	}
	addrA, _ := serve(t, a)
	addrB, _ := serve(t, b)
	cfg := DefaultConfig()
	cfg.Targets = []string{addrA, addrB}
	cfg.AttemptTimeout = 200 * time.Millisecond
	c, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	st, err := c.Subscribe(context.Background(), &chatpb.SubscribeRequest{FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || ev.GetIndex() != 1 {
		t.Fatalf("first event %v, %v", ev, err)
	}
	// The stream now hangs on a. A send times out there and moves on to b;
	// the stream must follow instead of waiting for keepalive.
	if _, err := c.Send(context.Background(), &chatpb.SendRequest{}); err != nil {
		t.Fatalf("send: %v", err)
	}
	got := make(chan uint64, 1)
	go func() {
		ev, err := st.Recv()
		if err == nil {
			got <- ev.GetIndex()
		}
		close(got)
	}()
	select {
	case idx := <-got:
		if idx != 2 {
			t.Fatalf("resumed at index %d, want 2", idx)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream stayed on the stalled target")
	}
	if len(b.subFrom) != 1 || b.subFrom[0] != 2 {
		t.Fatalf("b saw subscriptions from %v, want [2]", b.subFrom)
	}
}

// TestStreamsAreForgottenWhenTheCallerStops checks that the Client forgets
// a stream however its caller stops with it: reading to io.EOF, stopping
// after the last event, or cancelling its context without another Recv (as
// the Interaction Server does). A stream the Client keeps tracking keeps its
// context, and every value the caller put in it, alive for ever.
func TestStreamsAreForgottenWhenTheCallerStops(t *testing.T) {
	f := &fakeCore{breakAfter: -1}
	f.log = []*chatpb.Event{
		{Index: 1, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE},
		{Index: 2, Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED},
	}
	addr, _ := serve(t, f)
	cases := []struct {
		name   string
		reads  int  // events read before stopping
		eof    bool // then read until io.EOF
		cancel bool // then cancel the context
	}{
		{"read to EOF", 2, true, false},
		{"stop after the last event", 2, false, false},
		{"cancel after the last event", 2, false, true},
		{"cancel mid-stream", 1, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, addr)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{FromIndex: 1})
			if err != nil {
				t.Fatal(err)
			}
			for range tc.reads {
				if _, err := st.Recv(); err != nil {
					t.Fatalf("recv: %v", err)
				}
			}
			if tc.eof {
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("recv after the end: %v, want io.EOF", err)
				}
			}
			if tc.cancel {
				cancel()
			}
			deadline := time.Now().Add(2 * time.Second)
			for c.OpenStreams() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the client still tracks %d open streams", c.OpenStreams())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestRetryDeadlineKeepsACallersDeadline: a call whose context has a
// deadline (webapi's have core-timeout) retries within that context itself,
// without a context of its own per call (a cancelCtx, and a map of children
// and a done channel in its parent); one without gets RetryFor.
func TestRetryDeadlineKeepsACallersDeadline(t *testing.T) {
	c := newClient(t, "127.0.0.1:1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, done := c.withRetryDeadline(ctx)
	done()
	if got != ctx {
		t.Errorf("a context with a deadline got a context of its own")
	}
	if ctx.Err() != nil {
		t.Errorf("the call's end cancelled the caller's context")
	}
	got, done = c.withRetryDeadline(context.Background())
	defer done()
	if dl, ok := got.Deadline(); !ok || time.Until(dl) > c.cfg.RetryFor || time.Until(dl) < c.cfg.RetryFor-time.Second {
		t.Errorf("a context without a deadline got %v, %v; want RetryFor (%v) from now", dl, ok, c.cfg.RetryFor)
	}
}

// TestRetryDeadlineOnlyOnceAnAttemptFailed: a call whose context has no
// deadline makes its first attempt in that context, bounded by RetryFor
// through the attempt's timeout (no context and no timer of its own per
// call); once an attempt failed, the retries run in a context with
// RetryFor's deadline, counted from the call's start.
func TestRetryDeadlineOnlyOnceAnAttemptFailed(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "down")
	caller, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name        string
		ctx         context.Context
		retryFor    time.Duration
		fails       int
		wantTimeout time.Duration // the first attempt's, at most (and not less than a second below)
		wantOwn     bool          // the retries get a context of their own with RetryFor's deadline
	}{
		{"no deadline, first attempt answers", context.Background(), 5 * time.Second, 0, 2 * time.Second, false},
		{"no deadline, RetryFor below the attempt timeout", context.Background(), 1500 * time.Millisecond, 0, 1500 * time.Millisecond, false},
		{"no deadline, retried", context.Background(), 5 * time.Second, 1, 2 * time.Second, true},
		{"caller's deadline, retried", caller, 5 * time.Second, 1, 2 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, "127.0.0.1:1")
			c.cfg.RetryFor, c.cfg.AttemptTimeout, c.cfg.MinBackoff, c.cfg.MaxBackoff = tc.retryFor, 2*time.Second, time.Millisecond, time.Millisecond
			start := time.Now()
			var ctxs []context.Context
			var timeouts []time.Duration
			_, err := retried(tc.ctx, c, "Test", true, 0, func(ctx context.Context, timeout time.Duration, _ int32, _ int) (int, error) {
				ctxs, timeouts = append(ctxs, ctx), append(timeouts, timeout)
				if len(ctxs) <= tc.fails {
					return 0, unavailable
				}
				return 1, nil
			})
			if err != nil {
				t.Fatalf("retried: %v", err)
			}
			if len(ctxs) != tc.fails+1 {
				t.Fatalf("%d attempts, want %d", len(ctxs), tc.fails+1)
			}
			if ctxs[0] != tc.ctx {
				t.Errorf("the first attempt got a context of its own")
			}
			if timeouts[0] > tc.wantTimeout || timeouts[0] < tc.wantTimeout-time.Second {
				t.Errorf("the first attempt's timeout is %v, want %v", timeouts[0], tc.wantTimeout)
			}
			for i, ctx := range ctxs[1:] {
				if !tc.wantOwn {
					if ctx != tc.ctx {
						t.Errorf("attempt %d got a context of its own", i+2)
					}
					continue
				}
				dl, ok := ctx.Deadline()
				if want := start.Add(tc.retryFor); !ok || dl.Before(start) || dl.After(want.Add(time.Second)) || dl.Before(want.Add(-time.Second)) {
					t.Errorf("attempt %d's context has deadline %v, %v; want RetryFor (%v) from the call's start", i+2, dl, ok, tc.retryFor)
				}
			}
		})
	}
}
