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

// handoverCore serves SendStream as a core at a switchover: the old primary
// (refuse) answers every send with the refusal of a core that handed over;
// the new one accepts it.
type handoverCore struct {
	chatpb.UnimplementedChatServer
	refuse bool

	mu   sync.Mutex
	seen map[string]int // client message id → times received
}

func (f *handoverCore) SendStream(st grpc.BidiStreamingServer[chatpb.SendStreamRequest, chatpb.SendStreamResult]) error {
	for {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.seen[r.GetRequest().GetClientMessageId()]++
		n := len(f.seen)
		f.mu.Unlock()
		res := &chatpb.SendStreamResult{Id: r.Id, Response: &chatpb.SendResponse{Index: uint64(n)}}
		if f.refuse {
			res = &chatpb.SendStreamResult{Id: r.Id, Code: int32(codes.Unavailable), Message: chatpb.HandedOverMessage}
		}
		if err := st.Send(res); err != nil {
			return err
		}
	}
}

func (f *handoverCore) times(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[id]
}

// movingProxy is a sidecar in miniature: it proxies each client connection
// to the current upstream, and move closes the connections it carries and
// sends the next ones to another upstream.
type movingProxy struct {
	ln net.Listener

	mu    sync.Mutex
	to    string
	conns []net.Conn
}

func newMovingProxy(t *testing.T, to string) *movingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &movingProxy{ln: ln, to: to}
	t.Cleanup(func() { ln.Close(); p.move("") })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			to := p.to
			p.mu.Unlock()
			u, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

// move closes every connection proxied so far; new ones go to to.
func (p *movingProxy) move(to string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns, p.to = nil, to
}

// onHandedOver is a stream interceptor that calls f when a send's result
// says its core handed over, once the client has received it.
func onHandedOver(f func()) grpc.DialOption {
	return grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		return &handoverWatch{ClientStream: cs, f: f}, err
	})
}

type handoverWatch struct {
	grpc.ClientStream
	f func()
}

func (w *handoverWatch) RecvMsg(m any) error {
	err := w.ClientStream.RecvMsg(m)
	if r, ok := m.(*chatpb.SendStreamResult); ok && err == nil && r.Message == chatpb.HandedOverMessage {
		w.f()
	}
	return err
}

// A send that the old primary refuses at a switchover, after it handed
// over, reaches the new primary on the next attempt, without a backoff:
// with one target (a sidecar) once the sidecar moved the connection, with
// two on the next target. The backoff here is an hour, so a retry that
// slept would outlive the call's deadline.
func TestSendRefusedAtAHandoverReachesTheNewPrimaryAtOnce(t *testing.T) {
	tests := []struct {
		name    string
		sidecar bool
	}{
		{"one target behind a sidecar", true},
		{"two targets", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oldCore := &handoverCore{refuse: true, seen: map[string]int{}}
			newCore := &handoverCore{seen: map[string]int{}}
			oldAddr, _ := serve(t, oldCore)
			newAddr, _ := serve(t, newCore)
			cfg := DefaultConfig()
			cfg.Targets = []string{oldAddr, newAddr}
			var opts []grpc.DialOption
			if tt.sidecar {
				p := newMovingProxy(t, oldAddr)
				cfg.Targets = []string{p.ln.Addr().String()}
				// The sidecar moves the connection after the old
				// primary's answer reached the client.
				opts = append(opts, onHandedOver(func() { p.move(newAddr) }))
			}
			cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
			c, err := New(cfg, telemetry.Discard(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			in := &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1", ParticipantId: "p1", SecureKey: "k"}, Text: "hi"}
			resp, err := c.Send(ctx, in)
			if err != nil {
				t.Fatalf("send: %v (a retry that waited for its backoff outlives the deadline)", err)
			}
			if resp.GetIndex() != 1 {
				t.Errorf("index %d, want 1", resp.GetIndex())
			}
			id := in.GetClientMessageId()
			if got := oldCore.times(id); got != 1 {
				t.Errorf("old primary received the send %d times, want 1", got)
			}
			if got := newCore.times(id); got != 1 {
				t.Errorf("new primary received the send %d times, want 1", got)
			}
			// One retry; two when the retry raced the sidecar's close
			// of the old connection and failed with it.
			if got := c.Retries(); got < 1 || got > maxHandoverRetries {
				t.Errorf("%d retries, want 1 to %d", got, maxHandoverRetries)
			}
		})
	}
}

// A core that keeps answering "handed over" (a connection nobody moves) is
// retried without a backoff maxHandoverRetries times only; then the
// backoff paces the attempts again.
func TestHandoverRetriesAreBounded(t *testing.T) {
	oldCore := &handoverCore{refuse: true, seen: map[string]int{}}
	addr, _ := serve(t, oldCore)
	cfg := DefaultConfig()
	cfg.Targets = []string{addr}
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	c, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1", ParticipantId: "p1", SecureKey: "k"}, Text: "hi"}
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, in)
		done <- err
	}()
	// The attempts without a backoff, then the first backoff (an hour).
	deadline := time.Now().Add(20 * time.Second)
	for c.Retries() < maxHandoverRetries+1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d retries after 20s, want %d", c.Retries(), maxHandoverRetries+1)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) && !HandedOver(err) {
		t.Logf("send ended with %v", err)
	}
	if got, want := oldCore.times(in.GetClientMessageId()), maxHandoverRetries+1; got != want {
		t.Errorf("core received the send %d times, want %d", got, want)
	}
}

// The retrier's handover budget, error by error: a refusal by a core that
// handed over is retried at once, and so is the connection failure that
// may follow it (the retry raced the sidecar's close of the old primary's
// connection), maxHandoverRetries attempts in all; any other failure backs
// off. The backoff here is an hour, so a wait that backs off runs into the
// short context and reports false.
func TestRetrierHandoverBudget(t *testing.T) {
	handedOver := status.Error(codes.Unavailable, chatpb.HandedOverMessage)
	closed := status.Error(codes.Unavailable, "error reading from server: EOF")
	tests := []struct {
		name string
		errs []error
		want []bool // true: retried at once
	}{
		{"a refusal, then the closed connection", []error{handedOver, closed}, []bool{true, true}},
		{"refusals past the budget", []error{handedOver, handedOver, handedOver}, []bool{true, true, false}},
		{"a closed connection past the budget", []error{handedOver, closed, closed}, []bool{true, true, false}},
		{"a closed connection without a refusal", []error{closed}, []bool{false}},
		{"a closed connection after a backed-off failure", []error{closed, closed}, []bool{false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Targets = []string{"127.0.0.1:1"} // never dialled: the retrier only reads its state
			cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
			c, err := New(cfg, telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			r := retrier{c: c}
			for i, err := range tt.errs {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				got := r.wait(ctx, err, 0)
				cancel()
				if got != tt.want[i] {
					t.Errorf("failure %d (%v): retried at once = %v, want %v", i+1, err, got, tt.want[i])
				}
			}
		})
	}
}
