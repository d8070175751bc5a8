package chatcore

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// sendStreamInFlight bounds the sends of one SendStream being processed or
// with a result not yet written. A client with more in flight waits (the
// core stops reading the stream, and HTTP/2 flow control holds the
// client's writes) until one's result is written: backpressure, not a
// refusal.
const sendStreamInFlight = 512

// sendMethod is the full name of the unary Send: each send of a SendStream
// passes the gate and is counted as one Send call.
const sendMethod = "/" + ChatServiceName + "/Send"

// sendStream serves one SendStream: it reads sends with recv and processes
// each (a stream message's first send and each of its more) on its own
// goroutine (at most sendStreamInFlight at once, so that the group commit
// to the backup batches them), answering with send as each completes, in
// any order: the results ready together go in one stream message (the
// first, with the others as its more) when batches is set, else one a
// message. It returns when recv fails (io.EOF: the client closed its side,
// nil is returned), after the sends in flight are answered, or when this
// core's term ends (errNotPrimary), after the sends in flight are
// answered: sends the client wrote after that get no answer, and the
// client retries them elsewhere.
func (c *Core) sendStream(ctx context.Context, recv func() (*chatpb.SendStreamRequest, error), send func(*chatpb.SendStreamResult) error, batches bool) error {
	roleCtx := c.role.Stream()
	ss := &sendStreamState{sem: make(chan struct{}, sendStreamInFlight), stop: make(chan struct{}), batch: c.m.sendStreamBatch}
	// A send's token is given back once its result is written: a client
	// that stops reading its results stops the core reading its sends.
	answers := &resultWriter{send: send, batches: batches, log: c.log, written: func(n int) {
		for range n {
			<-ss.sem
		}
	}}
	received := make(chan error, 1)
	// The reader ends when recv fails: at the latest when this handler has
	// returned, which ends the stream and its context.
	go func() {
		received <- ss.read(recv, func(r *chatpb.SendStreamRequest) {
			answers.put(c.sendOne(ss.deadlines.bound(ctx, r.TimeoutMs), r))
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

// resultWriter writes a SendStream's results. The send that completes
// while no other is writing writes its result and every result completed
// meanwhile (those of one group commit complete together), until none is
// left; the others leave theirs and return. So the results ready together
// cost one stream message (batches) and one writer, not a message and a
// wait on a lock each.
type resultWriter struct {
	send    func(*chatpb.SendStreamResult) error // the stream's: one caller at a time
	batches bool                                 // the client takes results with more
	written func(n int)                          // called once n results were written (or failed to be)
	log     *slog.Logger

	mu      sync.Mutex
	pending []*chatpb.SendStreamResult
	writing bool // a put is writing: it writes pending before it returns
}

// put writes res, with the results pending, or leaves it to the put
// writing. Every result put has been written (or failed to be) once each
// put has returned.
func (w *resultWriter) put(res *chatpb.SendStreamResult) {
	w.mu.Lock()
	w.pending = append(w.pending, res)
	if w.writing {
		w.mu.Unlock()
		return
	}
	w.writing = true
	var spare []*chatpb.SendStreamResult
	for len(w.pending) > 0 {
		batch := w.pending
		w.pending = spare[:0]
		w.mu.Unlock()
		w.write(batch)
		w.written(len(batch))
		clear(batch)
		spare = batch
		w.mu.Lock()
	}
	w.writing = false
	w.mu.Unlock()
}

// write sends batch: in one stream message when the client takes batches.
func (w *resultWriter) write(batch []*chatpb.SendStreamResult) {
	var err error
	if w.batches {
		first := batch[0]
		first.More = batch[1:]
		err = w.send(first)
		first.More = nil
	} else {
		for _, res := range batch {
			if err = w.send(res); err != nil {
				break
			}
		}
	}
	if err != nil {
		w.log.Debug("send stream: answer not sent", "err", err, "results", len(batch))
	}
}

// sendStreamState is what a SendStream's reader and its send goroutines share.
type sendStreamState struct {
	sem   chan struct{}       // one token per send in flight
	stop  chan struct{}       // closed by close: read stops starting sends
	batch prometheus.Observer // sends per stream message read; nil: not observed

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

// read receives requests and runs do on each send in its own goroutine
// (a request's more, each as if it had come alone), until recv fails or
// close is called.
func (ss *sendStreamState) read(recv func() (*chatpb.SendStreamRequest, error), do func(*chatpb.SendStreamRequest)) error {
	for {
		r, err := recv()
		if err != nil {
			return err
		}
		more := r.More
		r.More = nil
		if ss.batch != nil {
			ss.batch.Observe(float64(1 + len(more)))
		}
		if !ss.start(r, do) {
			return nil
		}
		for _, m := range more {
			m.More = nil // no nesting: a send's own more is ignored
			if !ss.start(m, do) {
				return nil
			}
		}
	}
}

// start runs do(r) on its own goroutine once a token is free (do gives it
// back once r's result is written: resultWriter.written); false when close
// was called first.
func (ss *sendStreamState) start(r *chatpb.SendStreamRequest, do func(*chatpb.SendStreamRequest)) bool {
	select {
	case ss.sem <- struct{}{}:
	case <-ss.stop:
		return false
	}
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		return false
	}
	ss.wg.Add(1)
	ss.mu.Unlock()
	go func() {
		defer ss.wg.Done()
		do(r)
	}()
	return true
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
