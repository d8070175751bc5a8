package chatclient

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
)

// streamCore is a chat core that serves SendStream: it gives each client
// message id one index (a resend of the id gets the same index, duplicate),
// answers in batches of batch sends in reverse order of arrival, and on its
// first stream takes breakAfter sends without answering, then fails the
// stream (a core killed with sends in flight). With batches it announces
// them, reads the sends of a message's more, and answers a batch in one
// message to a client that announced them.
type streamCore struct {
	chatpb.UnimplementedChatServer
	batch      int
	breakAfter int
	batches    bool

	mu      sync.Mutex
	streams int
	unary   int
	index   map[string]uint64 // client message id → its index
	seen    map[string]int    // client message id → times received
	pairs   []string          // the pair header of each stream
	traces  []string          // the traceparent of each send received
	msgs    int               // stream messages received
	results int               // stream messages of results written
}

func newStreamCore(batch, breakAfter int) *streamCore {
	return &streamCore{batch: batch, breakAfter: breakAfter, index: map[string]uint64{}, seen: map[string]int{}}
}

func (f *streamCore) answer(r *chatpb.SendRequest) *chatpb.SendResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.GetClientMessageId()
	f.seen[id]++
	if idx, ok := f.index[id]; ok {
		return &chatpb.SendResponse{Index: idx, Duplicate: true}
	}
	f.index[id] = uint64(len(f.index) + 1)
	return &chatpb.SendResponse{Index: f.index[id]}
}

func (f *streamCore) Send(_ context.Context, in *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	f.mu.Lock()
	f.unary++
	f.mu.Unlock()
	return f.answer(in), nil
}

func (f *streamCore) SendStream(st grpc.BidiStreamingServer[chatpb.SendStreamRequest, chatpb.SendStreamResult]) error {
	md, _ := metadata.FromIncomingContext(st.Context())
	f.mu.Lock()
	f.streams++
	first := f.streams == 1
	f.pairs = append(f.pairs, md.Get(pairs.Header)...)
	f.mu.Unlock()
	batchResults := false
	if f.batches {
		batchResults = len(md.Get(chatpb.SendBatchHeader)) > 0
		if err := st.SendHeader(metadata.Pairs(chatpb.SendBatchHeader, "1")); err != nil {
			return err
		}
	}
	var held []*chatpb.SendStreamRequest
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.msgs++
		f.mu.Unlock()
		sends := []*chatpb.SendStreamRequest{m}
		if f.batches {
			sends = append(sends, m.More...)
		}
		for _, r := range sends {
			f.mu.Lock()
			f.traces = append(f.traces, r.TraceContext["traceparent"])
			f.mu.Unlock()
			if first && f.breakAfter > 0 {
				f.mu.Lock()
				f.seen[r.GetRequest().GetClientMessageId()]++ // received, never answered
				f.mu.Unlock()
				if held = append(held, r); len(held) == f.breakAfter {
					return status.Error(codes.Unavailable, "core killed")
				}
				continue
			}
			if held = append(held, r); len(held) < max(f.batch, 1) {
				continue
			}
			slices.Reverse(held)
			var out []*chatpb.SendStreamResult
			for _, h := range held {
				out = append(out, &chatpb.SendStreamResult{Id: h.Id, Response: f.answer(h.Request)})
			}
			if batchResults {
				out[0].More, out = out[1:], out[:1]
			}
			for _, res := range out {
				f.mu.Lock()
				f.results++
				f.mu.Unlock()
				if err := st.Send(res); err != nil {
					return err
				}
			}
			held = held[:0]
		}
	}
}

// sendStreamMethod is SendStream's full method name.
const sendStreamMethod = "/hachat.chat.v1.Chat/SendStream"

// serveCounting is serve with a count of the calls of method (a full
// method name, e.g. "/hachat.chat.v1.Chat/SendStream") the server was asked
// for (implemented or not).
func serveCounting(t testing.TB, srv chatpb.ChatServer, method string) (addr string, streams func() int) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	g := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod == method {
			mu.Lock()
			n++
			mu.Unlock()
		}
		return h(srv, ss)
	}))
	chatpb.RegisterChatServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// sendAll sends n messages at once (ids m0..m(n-1) of session sid) and
// returns each answer by client message id.
func sendAll(t *testing.T, c *Client, sid string, n int) map[string]*chatpb.SendResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	got := map[string]*chatpb.SendResponse{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("m%d", i)
			r, err := c.Send(ctx, &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: sid}, Text: "hi", ClientMessageId: id})
			if err != nil {
				errs <- fmt.Errorf("send %s: %w", id, err)
				return
			}
			mu.Lock()
			got[id] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return got
}

// TestSendMultiplexesOnOneStream sends concurrently through one Client: the
// sends share one stream (per pair), and each gets its own answer although
// the core answers them out of order.
func TestSendMultiplexesOnOneStream(t *testing.T) {
	for _, tt := range []struct {
		name     string
		session  string
		wantPair string
		sends    int
		batch    int
	}{
		{"default pair, answers reversed in batches of 10", "s1", pairs.Default, 40, 10},
		{"pair p2, one at a time", "p2" + pairs.Sep + "s1", "p2", 8, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newStreamCore(tt.batch, 0)
			addr, streams := serveCounting(t, f, sendStreamMethod)
			c := newClient(t, addr)
			got := sendAll(t, c, tt.session, tt.sends)
			for id, r := range got {
				f.mu.Lock()
				want := f.index[id]
				f.mu.Unlock()
				if r.GetIndex() != want || r.GetDuplicate() {
					t.Errorf("%s answered %v, want index %d (its own)", id, r, want)
				}
			}
			if len(got) != tt.sends {
				t.Fatalf("%d answers, want %d", len(got), tt.sends)
			}
			if n := streams(); n != 1 {
				t.Errorf("%d streams opened, want 1 shared by every send", n)
			}
			if f.unary != 0 {
				t.Errorf("%d unary Sends, want 0", f.unary)
			}
			if !slices.Equal(f.pairs, []string{tt.wantPair}) {
				t.Errorf("stream pair headers %q, want [%q]", f.pairs, tt.wantPair)
			}
		})
	}
}

// TestSendBatches sends concurrently to a core that takes batches and
// answers ten sends in one message: each send gets its own answer from the
// results' more (the client announced batches), and the sends share one
// stream; a core that predates batches gets a message per send.
func TestSendBatches(t *testing.T) {
	for _, tt := range []struct {
		name    string
		batches bool
	}{
		{"core takes batches", true},
		{"core predates batches", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const sends = 40
			f := newStreamCore(10, 0)
			f.batches = tt.batches
			addr, streams := serveCounting(t, f, sendStreamMethod)
			c := newClient(t, addr)
			got := sendAll(t, c, "s1", sends)
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(got) != sends || len(f.index) != sends {
				t.Fatalf("%d answers, %d sends applied, want %d", len(got), len(f.index), sends)
			}
			for id, r := range got {
				if r.GetIndex() != f.index[id] || r.GetDuplicate() {
					t.Errorf("%s answered %v, want index %d (its own)", id, r, f.index[id])
				}
			}
			if tt.batches && f.results != sends/10 {
				t.Errorf("%d result messages, want %d (ten results each)", f.results, sends/10)
			}
			if !tt.batches && f.msgs != sends {
				t.Errorf("%d stream messages, want %d (one a send to a core without batches)", f.msgs, sends)
			}
			if n := streams(); n != 1 {
				t.Errorf("%d streams, want 1", n)
			}
		})
	}
}

// recordingStream is the client side of a SendStream that records what the
// writer sends.
type recordingStream struct {
	grpc.BidiStreamingClient[chatpb.SendStreamRequest, chatpb.SendStreamResult]
	mu   sync.Mutex
	msgs []int // sends per message
}

func (r *recordingStream) Send(m *chatpb.SendStreamRequest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, 1+len(m.More))
	return nil
}

func (r *recordingStream) sent() (n int, msgs []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		n += m
	}
	return n, slices.Clone(r.msgs)
}

// TestSendWriterBatches queues sends before the writer runs: to a core that
// takes batches they go together, within maxSendBatch and
// maxSendBatchBytes (a send that does not fit opens the next message);
// otherwise one a message.
func TestSendWriterBatches(t *testing.T) {
	small := &chatpb.SendRequest{Text: "hi"}
	large := &chatpb.SendRequest{Text: strings.Repeat("x", 200<<10)}
	for _, tt := range []struct {
		name    string
		batches bool
		queued  []*chatpb.SendRequest
		want    []int
	}{
		{"no batches", false, slices.Repeat([]*chatpb.SendRequest{small}, 5), []int{1, 1, 1, 1, 1}},
		{"batches", true, slices.Repeat([]*chatpb.SendRequest{small}, 5), []int{5}},
		{"at most maxSendBatch", true, slices.Repeat([]*chatpb.SendRequest{small}, 100), []int{maxSendBatch, 100 - maxSendBatch}},
		{"at most maxSendBatchBytes", true, []*chatpb.SendRequest{large, large, large, small}, []int{2, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			st := &recordingStream{}
			s := &sendStream{st: st, ctx: ctx, cancel: cancel, out: make(chan *chatpb.SendStreamRequest, len(tt.queued))}
			s.batches.Store(tt.batches)
			for i, r := range tt.queued {
				s.out <- &chatpb.SendStreamRequest{Id: uint64(i + 1), Request: r}
			}
			done := make(chan struct{})
			go func() { defer close(done); s.write() }()
			deadline := time.Now().Add(5 * time.Second)
			for n, _ := st.sent(); n < len(tt.queued); n, _ = st.sent() {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d sends written after 5s", n, len(tt.queued))
				}
				time.Sleep(time.Millisecond)
			}
			cancel(nil)
			<-done
			if _, msgs := st.sent(); !slices.Equal(msgs, tt.want) {
				t.Errorf("sends per message %v, want %v", msgs, tt.want)
			}
		})
	}
}

// TestSendFallsBackToUnary checks that a core without SendStream (an older
// core: UNIMPLEMENTED) gets unary Sends, and is not asked for a stream again
// on every send.
func TestSendFallsBackToUnary(t *testing.T) {
	f := &fakeCore{}
	addr, streams := serveCounting(t, f, sendStreamMethod)
	c := newClient(t, addr)
	for i := range 3 {
		r, err := c.Send(context.Background(), &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi"})
		if err != nil || r.GetIndex() != 7 {
			t.Fatalf("send %d: %v, %v", i, r, err)
		}
	}
	if len(f.sendIDs) != 3 {
		t.Errorf("core saw %d unary sends, want 3", len(f.sendIDs))
	}
	if n := streams(); n != 1 {
		t.Errorf("asked for SendStream %d times, want 1 (then unary until the recheck)", n)
	}
}

// TestSendRetriesInFlightAcrossABrokenStream breaks the first stream with
// sends in flight and unanswered (as kill -9 of the core, or the sidecar
// closing the connection, would): each is retried on a new stream with its
// client message id, so no send is lost and none is applied twice.
func TestSendRetriesInFlightAcrossABrokenStream(t *testing.T) {
	const sends = 20
	f := newStreamCore(1, sends)
	addr, streams := serveCounting(t, f, sendStreamMethod)
	c := newClient(t, addr)
	got := sendAll(t, c, "s1", sends)
	if len(got) != sends {
		t.Fatalf("%d answers, want %d", len(got), sends)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.index) != sends {
		t.Errorf("core applied %d distinct sends, want %d", len(f.index), sends)
	}
	for id, r := range got {
		if r.GetIndex() != f.index[id] {
			t.Errorf("%s answered index %d, core applied it at %d", id, r.GetIndex(), f.index[id])
		}
		if f.seen[id] != 2 {
			t.Errorf("%s reached the core %d times, want 2 (the broken stream, then the retry)", id, f.seen[id])
		}
	}
	if n := streams(); n != 2 {
		t.Errorf("%d streams, want 2", n)
	}
	if c.Retries() < sends {
		t.Errorf("%d retries, want at least %d", c.Retries(), sends)
	}
}

// TestSendOnStreamHeedsContext checks that a send on a stream whose core
// does not answer returns when its context ends, and that its late answer
// does not disturb the sends after it.
func TestSendOnStreamHeedsContext(t *testing.T) {
	f := newStreamCore(2, 0) // answers in pairs: a lone send waits
	addr, _ := serveCounting(t, f, sendStreamMethod)
	c := newClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Send(ctx, &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi", ClientMessageId: "lonely"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("send: %v, want DeadlineExceeded", err)
	}
	// The next send completes the pair: both are answered, "lonely" to nobody.
	r, err := c.Send(context.Background(), &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi", ClientMessageId: "next"})
	f.mu.Lock()
	want, lonely := f.index["next"], f.index["lonely"]
	f.mu.Unlock()
	if err != nil || r.GetIndex() != want || lonely == 0 {
		t.Fatalf("next send: %v, %v; want index %d (and lonely applied, at %d)", r, err, want, lonely)
	}
}

// TestStreamable lists the requests Send keeps off the shared stream.
func TestStreamable(t *testing.T) {
	for _, tt := range []struct {
		name string
		req  *chatpb.SendRequest
		want bool
	}{
		{"plain", &chatpb.SendRequest{Text: "hi", Attrs: map[string]string{"a": "b"}}, true},
		{"text not UTF-8", &chatpb.SendRequest{Text: "\xff"}, false},
		{"attr not UTF-8", &chatpb.SendRequest{Text: "hi", Attrs: map[string]string{"a": "\xfe"}}, false},
		{"auth not UTF-8", &chatpb.SendRequest{Text: "hi", Auth: &chatpb.Auth{SecureKey: "\xc0"}}, false},
		{"too large", &chatpb.SendRequest{Text: string(make([]byte, maxStreamedSend+1))}, false},
	} {
		if got := streamable(tt.req); got != tt.want {
			t.Errorf("%s: streamable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestSendOnStreamTraced checks that with tracing on each send on a stream
// gets a client span (with the server address and port, as otelgrpc gives a
// unary call) whose context travels in the message; with tracing off the
// message carries none.
func TestSendOnStreamTraced(t *testing.T) {
	for _, traced := range []bool{true, false} {
		t.Run(fmt.Sprint("traced=", traced), func(t *testing.T) {
			f := newStreamCore(1, 0)
			addr, _ := serveCounting(t, f, sendStreamMethod)
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			tel := telemetry.Discard()
			tel.Tracer, tel.Propagator = tp, propagation.TraceContext{}
			if !traced {
				tel = telemetry.Discard()
			}
			cfg := DefaultConfig()
			cfg.Targets = []string{addr}
			c, err := New(cfg, tel)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if _, err := c.Send(context.Background(), &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi"}); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			got := slices.Clone(f.traces)
			f.mu.Unlock()
			if len(got) != 1 || (got[0] != "") != traced {
				t.Fatalf("traceparents received %q, want one, set: %v", got, traced)
			}
			if !traced {
				return
			}
			spans := rec.Ended()
			if len(spans) != 1 || spans[0].Name() != "hachat.chat.v1.Chat/Send" || spans[0].SpanKind() != trace.SpanKindClient {
				t.Fatalf("spans %v, want one client span hachat.chat.v1.Chat/Send", spans)
			}
			if !strings.Contains(got[0], spans[0].SpanContext().SpanID().String()) {
				t.Errorf("traceparent %s does not name the client span %s", got[0], spans[0].SpanContext().SpanID())
			}
			_, port, _ := net.SplitHostPort(addr)
			found := false
			for _, a := range spans[0].Attributes() {
				found = found || (a.Key == "server.port" && fmt.Sprint(a.Value.AsInt64()) == port)
			}
			if !found {
				t.Errorf("span attributes %v lack server.port %s", spans[0].Attributes(), port)
			}
		})
	}
}

// TestSendOnStreamLeavesAStalledTarget checks the attempt timeout on a
// stream: a core that takes sends and answers none (a stopped process)
// holds a send for one attempt timeout, then the send moves to the next
// target, as a unary call's would.
func TestSendOnStreamLeavesAStalledTarget(t *testing.T) {
	silent := newStreamCore(1<<30, 0) // answers once 2^30 sends have come: never
	addrA, _ := serveCounting(t, silent, sendStreamMethod)
	addrB, _ := serveCounting(t, newStreamCore(1, 0), sendStreamMethod)
	cfg := DefaultConfig()
	cfg.Targets = []string{addrA, addrB}
	cfg.AttemptTimeout = 200 * time.Millisecond
	c, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	start := time.Now()
	r, err := c.Send(context.Background(), &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi"})
	if err != nil || r.GetIndex() != 1 {
		t.Fatalf("send: %v, %v", r, err)
	}
	if d := time.Since(start); d < cfg.AttemptTimeout || d > 5*time.Second {
		t.Errorf("send took %v, want one attempt timeout (%v) and a retry", d, cfg.AttemptTimeout)
	}
	if c.Retries() != 1 {
		t.Errorf("%d retries, want 1", c.Retries())
	}
}

// BenchmarkSendOnStream measures one Send on the shared stream, against a
// core that answers each send at once (over loopback gRPC): the client's
// part of a customer message. Run it with -benchmem: allocations per send
// are the client's and gRPC's.
func BenchmarkSendOnStream(b *testing.B) {
	f := newStreamCore(1, 0)
	addr, _ := serveCounting(b, f, sendStreamMethod)
	c := newClient(b, addr)
	ctx := context.Background()
	req := &chatpb.SendRequest{Auth: &chatpb.Auth{SessionId: "s1"}, Text: "hi", ClientMessageId: "m"}
	b.ReportAllocs()
	for b.Loop() {
		// One client message id: the core answers the repeats as
		// duplicates, and its map stays small.
		if _, err := c.Send(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
