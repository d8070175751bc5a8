package chatcore

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// streamSend sends r on st as request id and reads the next result, which
// must be its own (the test sends one at a time).
func streamSend(t *testing.T, st chatpb.Chat_SendStreamClient, id uint64, r *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	t.Helper()
	if err := st.Send(&chatpb.SendStreamRequest{Id: id, Request: r, TimeoutMs: 5000}); err != nil {
		t.Fatalf("stream send: %v", err)
	}
	res, err := st.Recv()
	if err != nil {
		t.Fatalf("stream recv: %v", err)
	}
	if res.Id != id {
		t.Fatalf("result for id %d, want %d", res.Id, id)
	}
	if res.Code != 0 {
		return nil, status.Error(codes.Code(res.Code), res.Message)
	}
	return res.Response, nil
}

// TestSendStreamErrors drives SendStream into each refusal of Send and
// checks that every send is answered as the unary Send answers it: same
// code, same message (the error table of rpc.go), and the same index for a
// resent client message id.
func TestSendStreamErrors(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SendRate = 0.001; c.SendBurst = 3 })
	ctx := ctxT(t)
	st, err := tc.cl.SendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cust, agent := tc.chat(t)
	endedCust, endedAgent := tc.chat(t)
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: endedAgent, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	_, leftAgent := tc.chat(t)
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: leftAgent}); err != nil {
		t.Fatal(err)
	}
	wrongKey := &chatpb.Auth{SessionId: cust.SessionId, ParticipantId: cust.ParticipantId, SecureKey: "not-the-key"}
	unknown := &chatpb.Auth{SessionId: cust.SessionId + "-nope", ParticipantId: "p1", SecureKey: "k"}
	limited, _ := tc.chat(t)

	id := uint64(0)
	for _, tt := range []struct {
		name    string
		req     *chatpb.SendRequest
		before  func() // runs before the send
		after   func()
		want    error // a sentinel; nil: only the code is checked
		code    codes.Code
		asUnary bool // the unary Send must answer the same (a refusal that changes nothing)
	}{
		{name: "bad key", req: msg(wrongKey, "hi", ""), want: errBadKey, code: codes.PermissionDenied, asUnary: true},
		{name: "unknown session", req: msg(unknown, "hi", ""), want: errUnknown, code: codes.NotFound, asUnary: true},
		{name: "ended session", req: msg(endedCust, "hi", ""), want: errEnded, code: codes.FailedPrecondition, asUnary: true},
		{name: "participant left", req: msg(leftAgent, "hi", ""), want: errLeft, code: codes.FailedPrecondition, asUnary: true},
		{name: "empty text", req: msg(cust, " ", ""), code: codes.InvalidArgument, asUnary: true},
		{name: "no auth", req: &chatpb.SendRequest{Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hi"}, code: codes.InvalidArgument, asUnary: true},
		{name: "draining for a switchover", req: msg(agent, "hi", ""), want: errDraining, code: codes.Unavailable, asUnary: true,
			before: func() { tc.c.role.SetDraining(true) }, after: func() { tc.c.role.SetDraining(false) }},
		{name: "rate limit", req: msg(limited, "4th", ""), code: codes.ResourceExhausted, before: func() {
			for i := range 3 {
				if _, err := tc.cl.Send(ctx, msg(limited, fmt.Sprint(i), "")); err != nil {
					t.Fatalf("send %d within the burst: %v", i, err)
				}
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			if tt.after != nil {
				defer tt.after()
			}
			id++
			_, err := streamSend(t, st, id, tt.req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %s (%v), want %s", got, err, tt.code)
			}
			if tt.want != nil && status.Convert(err).Message() != status.Convert(tt.want).Message() {
				t.Errorf("message %q, want the sentinel's %q", status.Convert(err).Message(), status.Convert(tt.want).Message())
			}
			if tt.asUnary {
				_, uerr := tc.cl.Send(ctx, tt.req)
				if status.Code(uerr) != status.Code(err) || status.Convert(uerr).Message() != status.Convert(err).Message() {
					t.Errorf("stream answered %v, unary Send %v", err, uerr)
				}
			}
		})
	}

	t.Run("idempotent resend", func(t *testing.T) {
		first, err := streamSend(t, st, 100, msg(cust, "once", "cmid-1"))
		if err != nil || first.Duplicate {
			t.Fatalf("first send: %v, %v", first, err)
		}
		again, err := streamSend(t, st, 101, msg(cust, "once", "cmid-1"))
		if err != nil || again.Index != first.Index || !again.Duplicate {
			t.Fatalf("resend: %v, %v; want index %d, duplicate", again, err, first.Index)
		}
		unary, err := tc.cl.Send(ctx, msg(cust, "once", "cmid-1"))
		if err != nil || unary.Index != first.Index || !unary.Duplicate {
			t.Fatalf("unary resend: %v, %v; want index %d, duplicate", unary, err, first.Index)
		}
		if n := len(tc.events(t, cust)); uint64(n) != first.Index {
			t.Errorf("%d events, want %d: the resends appended nothing", n, first.Index)
		}
	})
}

// TestSendStreamConcurrent writes many sends before reading any answer:
// all are processed at once (the stream does not wait for one answer to
// read the next) and each answer carries its request's id.
func TestSendStreamConcurrent(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.SendRate = 1e6; c.SendBurst = 1 << 20 })
	ctx := ctxT(t)
	const sessions, per = 10, 20
	auths := make([]*chatpb.Auth, sessions)
	for i := range auths {
		auths[i], _ = tc.chat(t)
	}
	st, err := tc.cl.SendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := map[uint64]string{}
	for i := range sessions * per {
		id := uint64(1000 + i)
		sent[id] = fmt.Sprintf("m%d", i)
		if err := st.Send(&chatpb.SendStreamRequest{Id: id, Request: msg(auths[i%sessions], sent[id], sent[id])}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for range sessions * per {
		res, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if _, ok := sent[res.Id]; !ok || res.Code != 0 || res.Response.GetIndex() == 0 {
			t.Fatalf("result %v: unknown id, answered twice, or failed", res)
		}
		delete(sent, res.Id)
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after the last answer: %v, want io.EOF (the core ends the stream when the client has closed its side)", err)
	}
	for _, a := range auths {
		if n := len(tc.events(t, a)); n != 3+per { // started, two joins, the messages
			t.Errorf("session %s: %d events, want %d", a.SessionId, n, 3+per)
		}
	}
}

// TestSendStreamEndsWhenNotPrimary checks that the core ends a SendStream
// (UNAVAILABLE) when it stops being primary, so that its clients move on
// and a graceful stop does not wait for the stream.
func TestSendStreamEndsWhenNotPrimary(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, _ := tc.chat(t)
	st, err := tc.cl.SendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := streamSend(t, st, 1, msg(cust, "hi", "")); err != nil {
		t.Fatal(err)
	}
	tc.c.stepDown("test", 0)
	_, err = st.Recv()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream after the step-down: %v, want UNAVAILABLE", err)
	}
}

// TestSendStreamSpanPerMessage checks that a send carrying trace context
// gets its own server span in the sender's trace (as the otelgrpc handler
// gives a unary Send), and a send without it none.
func TestSendStreamSpanPerMessage(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tel := telemetry.Discard()
	tel.Tracer, tel.Propagator = tp, propagation.TraceContext{}
	c, err := New(testConfig(), newMemStore(), tel)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if _, err := c.claimPrimary(ctx, claim{reason: "test"}); err != nil {
		t.Fatal(err)
	}
	cust, _ := localChat(t, c)

	parent, span := tp.Tracer("test").Start(ctx, "webapi send")
	carrier := propagation.MapCarrier{}
	tel.Propagator.Inject(parent, carrier)
	span.End()
	if res := c.sendOne(ctx, &chatpb.SendStreamRequest{Id: 1, Request: msg(cust, "traced", ""), TraceContext: carrier}); res.Code != 0 {
		t.Fatalf("traced send: %v", res)
	}
	if res := c.sendOne(ctx, &chatpb.SendStreamRequest{Id: 2, Request: msg(cust, "untraced", "")}); res.Code != 0 {
		t.Fatalf("untraced send: %v", res)
	}
	var sends []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == ChatServiceName+"/Send" {
			sends = append(sends, s)
		}
	}
	if len(sends) != 1 {
		t.Fatalf("%d send spans, want 1 (the traced send's)", len(sends))
	}
	s := sends[0]
	if s.SpanKind() != trace.SpanKindServer || s.SpanContext().TraceID() != span.SpanContext().TraceID() || s.Parent().SpanID() != span.SpanContext().SpanID() {
		t.Errorf("send span kind %s, trace %s parent %s; want server, child of %s/%s", s.SpanKind(), s.SpanContext().TraceID(),
			s.Parent().SpanID(), span.SpanContext().TraceID(), span.SpanContext().SpanID())
	}
}

// pairWithClient starts a pair (transcript-auto-save 1, no send rate
// limit) and a chatclient given both cores, closed when the test ends.
func pairWithClient(t *testing.T) (a, b *node, cl *chatclient.Client) {
	t.Helper()
	a, b = pair(t, newMemStore(), func(c *Config) { c.TranscriptAutoSave = 1; c.SendRate = 1e6; c.SendBurst = 1 << 20 })
	cfg := chatclient.DefaultConfig()
	cfg.Targets = []string{a.addr, b.addr}
	cfg.AttemptTimeout = time.Second
	cl, err := chatclient.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return a, b, cl
}

// TestSendStreamFailoverNoLossNoDuplicate sends through chatclient (one
// SendStream shared by every sender) to a pair and kills the primary while
// sends are in flight: the stream breaks, each unanswered send is retried
// at the promoted backup with its client message id, and every message ends
// up in the log exactly once, in its session's send order, at the index its
// sender was answered.
func TestSendStreamFailoverNoLossNoDuplicate(t *testing.T) {
	if testing.Short() {
		t.Skip("failover")
	}
	a, b, cl := pairWithClient(t)
	const sessions, per = 16, 60
	auths := make([]*chatpb.Auth, sessions)
	for i := range auths {
		auths[i], _ = a.chat(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acked := make([][]uint64, sessions)
	failed := make([]error, sessions)
	var sent sync.WaitGroup
	progress := make(chan struct{}, sessions*per)
	for i := range sessions {
		sent.Go(func() {
			for m := range per {
				cmid := fmt.Sprintf("s%d-m%d", i, m)
				r, err := cl.Send(ctx, msg(auths[i], cmid, cmid))
				if err != nil {
					failed[i] = fmt.Errorf("%s: %w", cmid, err)
					return
				}
				acked[i] = append(acked[i], r.Index)
				progress <- struct{}{}
			}
		})
	}
	for range sessions * per / 3 {
		<-progress
	}
	a.kill()
	sent.Wait()
	for i, err := range failed {
		if err != nil {
			t.Errorf("session %d: %v", i, err)
		}
	}
	if !b.c.role.IsPrimary() {
		t.Fatal("core-b is not primary after the kill")
	}
	for i, au := range auths {
		log := b.log(au.SessionId)
		at := map[string]uint64{}
		var order []string
		for _, ev := range log {
			if ev.Kind != chatpb.EventKind_EVENT_KIND_MESSAGE {
				continue
			}
			if _, dup := at[ev.ClientMessageId]; dup {
				t.Errorf("session %d: %s twice in the log", i, ev.ClientMessageId)
			}
			at[ev.ClientMessageId] = ev.Index
			order = append(order, ev.ClientMessageId)
		}
		for m := range per {
			cmid := fmt.Sprintf("s%d-m%d", i, m)
			if m >= len(order) || order[m] != cmid {
				t.Fatalf("session %d: message %d is %v, want %s (log order %v)", i, m, order[min(m, len(order)-1):], cmid, order)
			}
			if m < len(acked[i]) && acked[i][m] != at[cmid] {
				t.Errorf("session %d: %s answered index %d, logged at %d", i, cmid, acked[i][m], at[cmid])
			}
		}
	}
	t.Logf("client retries: %d", cl.Retries())
}

// TestSendStreamBackpressure drives sendStream with a client that writes
// sends endlessly and stops reading its results (send blocks): the core
// processes sendStreamInFlight sends, queues their results and reads no
// further, because a send's token is given back only once its result is
// written. Once the client reads again, reading resumes and every send
// read gets its result, once.
func TestSendStreamBackpressure(t *testing.T) {
	for _, tt := range []struct {
		name    string
		batches bool
	}{
		{"batches", true},
		{"one a message", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newLocalCore(t, func(cfg *Config) { cfg.SendRate = 1e6; cfg.SendBurst = 1 << 20 })
			cust, _ := localChat(t, c)
			ctx := ctxT(t)

			var reads atomic.Int64 // recv calls that handed out a send
			stop := make(chan struct{})
			stopReading := sync.OnceFunc(func() { close(stop) })
			recv := func() (*chatpb.SendStreamRequest, error) {
				select {
				case <-stop:
					return nil, io.EOF
				default:
				}
				id := uint64(reads.Add(1))
				return &chatpb.SendStreamRequest{Id: id, Request: msg(cust, fmt.Sprint("m", id), fmt.Sprint("m", id)), TimeoutMs: 5000}, nil
			}
			release := make(chan struct{})
			readResults := sync.OnceFunc(func() { close(release) })
			var mu sync.Mutex
			sends := 0                   // calls of send, the first blocked until release
			answered := map[uint64]int{} // results written, by id
			send := func(r *chatpb.SendStreamResult) error {
				mu.Lock()
				sends++
				mu.Unlock()
				<-release
				mu.Lock()
				defer mu.Unlock()
				for _, res := range append([]*chatpb.SendStreamResult{r}, r.More...) {
					if res.Code != 0 {
						t.Errorf("result %v: refused", res)
					}
					answered[res.Id]++
				}
				return nil
			}
			done := make(chan error, 1)
			go func() { done <- c.sendStream(ctx, recv, send, tt.batches) }()
			ended := sync.OnceValue(func() error { return <-done })
			// Whatever fails below, the stream ends before the test does.
			defer func() {
				readResults()
				stopReading()
				if err := ended(); err != nil {
					t.Errorf("sendStream: %v", err)
				}
			}()
			processed := func() int64 { return int64(testutil.ToFloat64(c.m.rpcs.WithLabelValues("Send", "OK"))) }
			writing := func() int { mu.Lock(); defer mu.Unlock(); return sends }

			// The reader takes a token per send: sendStreamInFlight sends
			// start (each counted as a Send call just before its result is
			// put), and the reader reads one more, for which it waits for
			// a token. The first result's writer is blocked in send, the
			// others wait in its pending.
			const held = sendStreamInFlight + 1
			waitFor(t, "the sends in flight processed, their results queued", func() bool {
				return processed() >= sendStreamInFlight && reads.Load() >= held && writing() >= 1
			})
			// Nothing signals that the reader will not read again, so the
			// negative check watches for a bounded window. A reader not held
			// by the unwritten results (a token freed when a send completes,
			// as before the results held them) had read 1000 and more past
			// the bound by the first look, so the window is ample; a pass
			// says only that no extra read came within it.
			const window = 200 * time.Millisecond
			for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(time.Millisecond) {
				if n, p, w := reads.Load(), processed(), writing(); n != held || p != sendStreamInFlight || w != 1 {
					t.Fatalf("with results unwritten: %d sends read, %d processed, %d results being written; want %d, %d, 1",
						n, p, w, held, sendStreamInFlight)
				}
			}

			// The client reads its results again: their tokens come back,
			// and the core reads well past the bound.
			readResults()
			waitFor(t, "reading resumed past the bound", func() bool { return reads.Load() > 2*sendStreamInFlight })
			stopReading()
			if err := ended(); err != nil {
				t.Fatalf("sendStream: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			n := reads.Load()
			if int64(len(answered)) != n || processed() != n {
				t.Errorf("%d sends read, %d processed, %d answered", n, processed(), len(answered))
			}
			for id := uint64(1); id <= uint64(n); id++ {
				if answered[id] != 1 {
					t.Errorf("send %d answered %d times, want once", id, answered[id])
				}
			}
		})
	}
}
