package chatclient

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
)

// Send's streams. A unary Send costs an HTTP/2 stream, its headers and a
// few hundred allocations on both sides, more than the core's work; a send
// on an open SendStream costs one message each way. The Client keeps one
// SendStream per target and pair (the pair header routes a stream, as it
// routes a call, to the chat's pair), opened at the first send and shared
// by every concurrent Send: each send gets an id on its stream, and the
// stream's reader hands each result to the send with that id.
//
// A stream that fails fails every send in flight on it (UNAVAILABLE unless
// the core refused the stream itself), and each send's retry, under the
// same Policy as any unary call, opens the next stream. A core that answers
// UNIMPLEMENTED (an older core) gets unary Sends for unimplementedRecheck,
// then the stream is tried again (behind a sidecar, the core behind the
// same target may have been upgraded).

// unimplementedRecheck is how long a target and pair that answered
// UNIMPLEMENTED to SendStream get unary Sends before a stream is tried again.
const unimplementedRecheck = time.Minute

// maxStreamedSend is the largest request sent on a stream (proto size);
// larger ones go unary. A message the core refuses for its size (1 MiB)
// would end the stream, and every send in flight on it, not just its own call.
const maxStreamedSend = 256 << 10

// errUseUnary is what a send on a stream fails with when the core does not
// implement SendStream: the attempt is made again as a unary Send.
var errUseUnary = errors.New("chatclient: SendStream unimplemented, use unary Send")

// streamable reports whether in may go on a shared stream: a request that
// cannot be encoded (a string that is not UTF-8) or is too large would end
// the stream for every send on it, so it goes unary, where it fails alone.
func streamable(in *chatpb.SendRequest) bool {
	a := in.GetAuth()
	for _, s := range [...]string{in.Text, in.ClientMessageId, a.GetSessionId(), a.GetParticipantId(), a.GetSecureKey()} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for k, v := range in.Attrs {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return proto.Size(in) <= maxStreamedSend
}

// Batches (chatpb.SendBatchHeader). The client announces in each stream's
// metadata that it takes results with more; a core that takes requests with
// more says so in the stream's header, and from then on the writer puts
// the sends waiting together (at most maxSendBatch, maxSendBatchBytes) in
// one stream message: the core reads them with one wakeup, and they join
// one group commit. Each send keeps its own id, deadline, trace context and
// result, so nothing else changes for it. Before the header has come, and
// to a core that does not announce it, the writer writes one send a message.

// maxSendBatch is the most sends in one stream message.
const maxSendBatch = 64

// maxSendBatchBytes bounds the proto size of one stream message carrying
// more than one send, well under the core's 1 MiB limit on a message
// (a single send may be up to maxStreamedSend).
const maxSendBatchBytes = 2 * maxStreamedSend

// sendStream is one open SendStream and the sends in flight on it.
type sendStream struct {
	c      *Client
	key    sendKey
	st     grpc.BidiStreamingClient[chatpb.SendStreamRequest, chatpb.SendStreamResult]
	ctx    context.Context // the stream's: cancelled with errStalled when its target stalls
	cancel context.CancelCauseFunc
	attrs  []attribute.KeyValue // of each send's client span, when tracing

	// out feeds the writer, the stream's one caller of SendMsg: a send
	// waiting to be written still heeds its context, even when the stream
	// is blocked (a stalled core's flow control).
	out chan *chatpb.SendStreamRequest
	// batches is set once the core's header announced that it takes
	// requests with more.
	batches atomic.Bool

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan<- sendOutcome
	err     error // why the stream ended; nil while it works
}

// sendOutcome is a send's answer on a stream.
type sendOutcome struct {
	resp *chatpb.SendResponse
	err  error
}

// sendAttempt is one attempt of Send on target idx: on its stream, or unary
// when the core behind it does not implement SendStream.
func (c *Client) sendAttempt(ctx context.Context, timeout time.Duration, idx int32, in *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	key := sendKey{target: idx, pair: pairs.Of(in.GetAuth().GetSessionId())}
	s, err := c.sendStream(key)
	if err == nil {
		var resp *chatpb.SendResponse
		resp, err = s.send(ctx, timeout, in)
		if !errors.Is(err, errUseUnary) {
			return resp, err
		}
	}
	if errors.Is(err, errUseUnary) {
		// A stream names its pair once, when it opens; a call, every time.
		actx, cancel := attemptContext(pairContext(ctx, in), timeout)
		defer cancel()
		return c.clients[idx].Send(actx, in)
	}
	return nil, err
}

// sendStream returns the open stream for key, opening it if there is none.
func (c *Client) sendStream(key sendKey) (*sendStream, error) {
	return c.sends.get(c, key, func(ctx context.Context, cancel context.CancelCauseFunc) (opened[sendStream], error) {
		st, err := c.clients[key.target].SendStream(metadata.AppendToOutgoingContext(ctx, chatpb.SendBatchHeader, "1"))
		if err != nil {
			return opened[sendStream]{}, err
		}
		s := &sendStream{c: c, key: key, st: st, ctx: ctx, cancel: cancel, pending: map[uint64]chan<- sendOutcome{},
			out: make(chan *chatpb.SendStreamRequest, sendQueue)}
		if c.tracing {
			s.attrs = spanAttrs(c.cfg.Targets[key.target])
		}
		return opened[sendStream]{s: s, read: s.read, write: s.write}, nil
	})
}

// sendQueue is how many sends may wait for a stream's writer.
const sendQueue = 256

// write writes the queued sends until the stream ends: those waiting
// together in one message once the core takes batches.
func (s *sendStream) write() {
	var next *chatpb.SendStreamRequest // taken from out, did not fit the last message
	for {
		req := next
		next = nil
		if req == nil {
			select {
			case <-s.ctx.Done():
				return
			case req = <-s.out:
			}
		}
		if s.batches.Load() {
			next = s.gather(req)
		}
		if err := s.st.Send(req); err != nil {
			// The stream ended (io.EOF: Recv tells why) or SendMsg
			// ended it: the reader fails every send in flight (next too:
			// it is registered).
			return
		}
	}
}

// gather moves the sends waiting in out into req.More, as many as fit
// (maxSendBatch, maxSendBatchBytes), without waiting for more. It returns
// the send taken that did not fit (nil if none), the first of the next
// message.
func (s *sendStream) gather(req *chatpb.SendStreamRequest) *chatpb.SendStreamRequest {
	size := -1
	for len(req.More) < maxSendBatch-1 {
		var m *chatpb.SendStreamRequest
		select {
		case m = <-s.out:
		default:
			return nil
		}
		if size < 0 {
			size = proto.Size(req)
		}
		// Each of more costs its size, a tag and a length (at most 4 bytes).
		if size += proto.Size(m) + 4; size > maxSendBatchBytes {
			return m
		}
		req.More = append(req.More, m)
	}
	return nil
}

// read hands each result to its send until the stream fails, then fails
// every send still in flight.
func (s *sendStream) read() {
	// The core's header says whether it takes batches: it comes as the
	// stream opens (with the first result from a core that predates them).
	// Failing, the stream ends, and Recv says why.
	if md, err := s.st.Header(); err == nil && len(md.Get(chatpb.SendBatchHeader)) > 0 {
		s.batches.Store(true)
	}
	for {
		res, err := s.st.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		s.c.live.hear(s.key.target)
		s.answer(res)
		for _, m := range res.More {
			s.answer(m)
		}
	}
}

// answer hands res to the send waiting for it.
func (s *sendStream) answer(res *chatpb.SendStreamResult) {
	s.mu.Lock()
	ch := s.pending[res.Id]
	delete(s.pending, res.Id)
	s.mu.Unlock()
	if ch == nil {
		return // its send gave up (its context is done)
	}
	if res.Code != int32(codes.OK) {
		err := status.Error(codes.Code(res.Code), res.Message)
		if HandedOver(err) {
			// Its core handed over: the send's retry (retrier.wait)
			// opens a new stream, on a new connection behind a sidecar,
			// rather than write to this one, which ends with the
			// connection the sidecar closes.
			s.c.sends.forget(s.key, s, err)
		}
		ch <- sendOutcome{err: err}
	} else {
		ch <- sendOutcome{resp: res.Response}
	}
}

// fail ends the stream after Recv failed with err: it is forgotten (the
// next send opens another) and its sends in flight fail with what err means
// for them (streamSet.streamErr). None of them was answered: the core may
// or may not have appended them, so they are retried (their client message
// id makes that idempotent) unless the core refused the stream itself.
func (s *sendStream) fail(err error) {
	err = s.c.sends.streamErr(s.ctx, err, "send stream")
	s.c.sends.forget(s.key, s, err)
	s.cancel(nil)
	s.mu.Lock()
	s.err = err
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, ch := range pending {
		ch <- sendOutcome{err: err}
	}
	if !errors.Is(err, errUseUnary) && !s.c.sends.closed() {
		s.c.log.Debug("send stream ended", "target", s.key.target, "pair", s.key.pair, "in-flight", len(pending), "err", err)
	}
}

// send sends in on the stream and waits for its answer, the stream's
// failure, the end of ctx, or timeout (0: none; then DeadlineExceeded).
func (s *sendStream) send(ctx context.Context, timeout time.Duration, in *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	req := &chatpb.SendStreamRequest{Request: in}
	left := timeout
	if dl, ok := ctx.Deadline(); ok {
		if l := time.Until(dl); timeout <= 0 || l < timeout {
			left = l
		}
		if left <= 0 {
			return nil, status.FromContextError(context.DeadlineExceeded).Err()
		}
	}
	if left > 0 {
		// The core's deadline for this send, as a unary call's grpc-timeout.
		req.TimeoutMs = int64((left + time.Millisecond - 1) / time.Millisecond)
	}
	var span trace.Span
	if s.c.tracing {
		ctx, span = s.c.tracer.Start(ctx, "hachat.chat.v1.Chat/Send", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(s.attrs...))
		defer span.End()
		if span.SpanContext().IsValid() {
			req.TraceContext = map[string]string{}
			s.c.prop.Inject(ctx, propagation.MapCarrier(req.TraceContext))
		}
	}
	resp, err := s.roundTrip(ctx, timeout, req)
	if span != nil {
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(status.Code(err))))
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
	}
	return resp, err
}

// spanAttrs are the attributes of the client span of a send on a stream to
// target, those otelgrpc gives a unary call's span (the server's address and
// port: where the call went, the sidecar's listener behind a sidecar).
func spanAttrs(target string) []attribute.KeyValue {
	attrs := []attribute.KeyValue{attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", "hachat.chat.v1.Chat"),
		attribute.String("rpc.method", "Send"), attribute.Bool("hachat.send_stream", true)}
	if host, port, err := net.SplitHostPort(target); err == nil {
		attrs = append(attrs, attribute.String("server.address", host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", p))
		}
	} else {
		attrs = append(attrs, attribute.String("server.address", target))
	}
	return attrs
}

// errAttemptTimeout is what a send on a stream answers when its attempt's
// timeout passed, as a unary call whose attempt context expired.
var errAttemptTimeout = status.Error(codes.DeadlineExceeded, "chatclient: send attempt timed out")

// roundTrip registers req under a new id, writes it and waits, at most
// timeout (0: no limit but ctx's). A timer, not a context per attempt:
// cheaper, and the stream needs no context of its own per send. The
// answer's channel and the timer come from a pool and go back to it once
// the answer was received.
func (s *sendStream) roundTrip(ctx context.Context, timeout time.Duration, req *chatpb.SendStreamRequest) (*chatpb.SendResponse, error) {
	w := waiters.Get().(*waiter)
	expired := w.arm(timeout)
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		w.release()
		return nil, err
	}
	s.next++
	req.Id = s.next
	s.pending[req.Id] = w.ch
	s.mu.Unlock()

	// On the ways out below that do not receive the answer, w is not
	// reused: the reader may still send on its channel.
	select {
	case s.out <- req:
	case <-s.ctx.Done():
		// The stream ended: the reader fails every send in flight, this
		// one included.
	case <-ctx.Done():
		w.stop()
		return nil, s.forget(req.Id, status.FromContextError(ctx.Err()).Err())
	case <-expired:
		return nil, s.forget(req.Id, errAttemptTimeout)
	}
	select {
	case o := <-w.ch:
		w.release()
		return o.resp, o.err
	case <-ctx.Done():
		w.stop()
		return nil, s.forget(req.Id, status.FromContextError(ctx.Err()).Err())
	case <-expired:
		return nil, s.forget(req.Id, errAttemptTimeout)
	}
}

// waiter is what one send attempt waits on: the channel of its answer and
// the timer of its attempt timeout.
type waiter struct {
	ch chan sendOutcome // buffered 1: the reader never blocks on it
	t  *time.Timer      // nil until an attempt has a timeout
}

// waiters keeps the waiters of answered attempts: a channel whose one
// answer was received is sent nothing more (the reader sends once per
// registered id, and only to the attempt that registered it), and a
// stopped timer delivers no stale tick (Go 1.23 timers).
var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan sendOutcome, 1)} }}

// arm starts the attempt's timer and returns its channel (nil, which never
// fires, when timeout is 0).
func (w *waiter) arm(timeout time.Duration) <-chan time.Time {
	if timeout <= 0 {
		return nil
	}
	if w.t == nil {
		w.t = time.NewTimer(timeout)
	} else {
		w.t.Reset(timeout)
	}
	return w.t.C
}

// stop stops the timer of an attempt that ends without its answer (w is
// not reused).
func (w *waiter) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// release stops the timer and puts w back for another attempt; only for
// an attempt that received its answer or never registered.
func (w *waiter) release() {
	w.stop()
	waiters.Put(w)
}

// forget drops the send id from those waiting for an answer (a late answer
// is then ignored) and returns err.
func (s *sendStream) forget(id uint64, err error) error {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
	return err
}
