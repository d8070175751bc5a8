package chatcore

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// sendStreamInFlight bounds the sends of one SendStream being processed at
// once. A client with more in flight waits (the core stops reading the
// stream, and HTTP/2 flow control holds the client's writes) until one
// finishes: backpressure, not a refusal.
const sendStreamInFlight = 512

// sendMethod is the full name of the unary Send: each send of a SendStream
// passes the gate and is counted as one Send call.
const sendMethod = "/" + ChatServiceName + "/Send"

// sendStream serves one SendStream: it reads sends with recv and processes
// each on its own goroutine (at most sendStreamInFlight at once, so that the
// group commit to the backup batches them), answering with send as each
// completes, in any order. It returns when recv fails (io.EOF: the client
// closed its side, nil is returned), after the sends in flight are
// answered, or when this core's term ends (errNotPrimary), after the sends
// in flight are answered: sends the client wrote after that get no answer,
// and the client retries them elsewhere.
func (c *Core) sendStream(ctx context.Context, recv func() (*chatpb.SendStreamRequest, error), send func(*chatpb.SendStreamResult) error) error {
	roleCtx := c.role.Stream()
	ss := &sendStreamState{sem: make(chan struct{}, sendStreamInFlight), stop: make(chan struct{})}
	received := make(chan error, 1)
	// The reader ends when recv fails: at the latest when this handler has
	// returned, which ends the stream and its context.
	go func() {
		received <- ss.read(recv, func(r *chatpb.SendStreamRequest) {
			res := c.sendOne(ss.deadlines.bound(ctx, r.TimeoutMs), r)
			ss.sendMu.Lock()
			err := send(res)
			ss.sendMu.Unlock()
			if err != nil {
				c.log.Debug("send stream: answer not sent", "err", err)
			}
		})
	}()
	var err error
	select {
	case err = <-received:
		if errors.Is(err, io.EOF) {
			err = nil
		}
	case <-roleCtx.Done():
		err = c.notPrimary()
	}
	ss.close()
	ss.deadlines.stop()
	return err
}

// sendStreamState is what a SendStream's reader and its send goroutines share.
type sendStreamState struct {
	sem    chan struct{} // one token per send in flight
	stop   chan struct{} // closed by close: read stops starting sends
	sendMu sync.Mutex    // serializes the answers: a gRPC stream takes one Send at a time

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // the sends in flight

	deadlines sendDeadlines
}

// sendDeadlineGrain is how far a send's deadline may be moved later so that
// the sends of a stream arriving together share one deadline (one timer).
const sendDeadlineGrain = 10 * time.Millisecond

// sendDeadlines gives the sends of one stream their deadlines. A deadline
// is rounded up to a multiple of sendDeadlineGrain, never earlier than the
// client asked, and the sends whose rounded deadlines are equal share one
// context: one timer for the hundreds of sends a busy stream carries within
// a grain, instead of a context and a runtime timer per send (3% of a
// primary's CPU in the bench chat profile).
type sendDeadlines struct {
	mu     sync.Mutex
	at     time.Time // the deadline of ctx
	ctx    context.Context
	cancel context.CancelFunc
}

// bound returns parent bounded by a deadline at least timeoutMs
// milliseconds from now (parent itself when timeoutMs <= 0). A context it
// returned ends at its deadline or with parent; the stream's handler ends
// parent when it returns.
func (d *sendDeadlines) bound(parent context.Context, timeoutMs int64) context.Context {
	if timeoutMs <= 0 {
		return parent
	}
	at := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
	if r := at.Truncate(sendDeadlineGrain); !r.Equal(at) {
		at = r.Add(sendDeadlineGrain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx != nil && d.at.Equal(at) {
		return d.ctx
	}
	// The context replaced is not canceled: sends in flight hold it. It
	// ends by its deadline or with parent.
	d.at = at
	d.ctx, d.cancel = context.WithDeadline(parent, at)
	return d.ctx
}

// stop ends the newest shared context (the others have ended by their
// deadlines or end with the stream). Call once no send is in flight.
func (d *sendDeadlines) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
	}
}

// read receives requests and runs do on each in its own goroutine, until
// recv fails or close is called.
func (ss *sendStreamState) read(recv func() (*chatpb.SendStreamRequest, error), do func(*chatpb.SendStreamRequest)) error {
	for {
		r, err := recv()
		if err != nil {
			return err
		}
		select {
		case ss.sem <- struct{}{}:
		case <-ss.stop:
			return nil
		}
		ss.mu.Lock()
		if ss.closed {
			ss.mu.Unlock()
			return nil
		}
		ss.wg.Add(1)
		ss.mu.Unlock()
		go func() {
			defer func() { <-ss.sem; ss.wg.Done() }()
			do(r)
		}()
	}
}

// close stops read from starting sends and waits for those in flight,
// which have answered when it returns.
func (ss *sendStreamState) close() {
	ss.mu.Lock()
	if !ss.closed {
		ss.closed = true
		close(ss.stop)
	}
	ss.mu.Unlock()
	ss.wg.Wait()
}

// sendOne is one send of a SendStream: the gate and the unary Send's checks
// and operation, under ctx, which carries the send's own deadline
// (sendDeadlines.bound) and, when the send carries trace context and this
// core exports spans, its own server span (as the otelgrpc handler gives
// a unary Send).
func (c *Core) sendOne(ctx context.Context, r *chatpb.SendStreamRequest) *chatpb.SendStreamResult {
	var span trace.Span
	if len(r.TraceContext) > 0 && c.tel.Tracing() {
		ctx = c.tel.Propagator.Extract(ctx, propagation.MapCarrier(r.TraceContext))
		ctx, span = c.tracer.Start(ctx, ChatServiceName+"/Send", trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", ChatServiceName),
				attribute.String("rpc.method", "Send"), attribute.Bool("hachat.send_stream", true)))
	}
	var resp *chatpb.SendResponse
	err := c.gate(ctx, sendMethod)
	if err == nil {
		if r.Request == nil {
			err = invalid("send stream request %d has no request", r.Id)
		} else {
			resp, err = c.Send(ctx, r.Request)
		}
	}
	c.countRPC(sendMethod, err)
	res := &chatpb.SendStreamResult{Id: r.Id, Response: resp}
	if err != nil {
		st, ok := status.FromError(err)
		if !ok && ctx.Err() != nil {
			st = status.FromContextError(ctx.Err())
		}
		res.Code, res.Message = int32(st.Code()), st.Message()
		res.Response = nil
	}
	if span != nil {
		if err != nil {
			span.SetStatus(otelcodes.Error, res.Message)
			span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(res.Code)))
		}
		span.End()
	}
	return res
}
