// Package chatclient is the chat core client that webapi and interaction use.
// Client implements chatpb.ChatClient, so callers code against the generated
// interface, and adds what a client of a highly available core needs: calls
// that fail with a retryable error are retried (on the next target, if there
// are several) as its one Policy says, until the caller's deadline; a Send
// carries a client message id so that its resend is idempotent; and
// Subscribe and WatchSessions streams reconnect by themselves, a Subscribe resuming from the index after the last
// event it delivered.
package chatclient

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pause"
	"github.com/hachat/hachat/telemetry"
)

// Config says where the chat core is and how hard to try.
type Config struct {
	// Targets are gRPC addresses of the chat service, tried in order. With a
	// sidecar this is the one local sidecar address; without one, the
	// primary's and the backup's addresses. The part that embeds this
	// config names them with its own "core" key, so it has no YAML key here.
	Targets []string `yaml:"-"`
	// Policy is the retry policy of every call (its flags and YAML keys
	// are core-retry-for, core-attempt-timeout, core-min-backoff,
	// core-max-backoff and core-max-attempts).
	Policy `yaml:",inline"`
}

// DefaultConfig returns the defaults: the demo's first core address and
// DefaultPolicy.
func DefaultConfig() Config {
	return Config{
		Targets: []string{"127.0.0.1:7101"},
		Policy:  DefaultPolicy(),
	}
}

// RegisterFlags binds the config to flags on fs: --core and the retry flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.RegisterRetryFlags(fs)
	fs.Func("core", "chat core gRPC address(es), comma-separated; with a sidecar, the sidecar's (default "+strings.Join(c.Targets, ",")+")", func(s string) error {
		var ts []string
		for _, t := range strings.Split(s, ",") {
			if t = strings.TrimSpace(t); t != "" {
				ts = append(ts, t)
			}
		}
		if len(ts) == 0 {
			return errors.New("no address")
		}
		c.Targets = ts
		return nil
	})
}

// RegisterRetryFlags binds only the retry settings, for a part that has its
// own --core flag.
func (c *Config) RegisterRetryFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.RetryFor, "core-retry-for", c.RetryFor, "how long a call to the chat core keeps retrying")
	fs.DurationVar(&c.AttemptTimeout, "core-attempt-timeout", c.AttemptTimeout, "timeout of one attempt of a call to the chat core")
	fs.DurationVar(&c.MinBackoff, "core-min-backoff", c.MinBackoff, "first pause between attempts")
	fs.DurationVar(&c.MaxBackoff, "core-max-backoff", c.MaxBackoff, "longest pause between attempts")
	fs.IntVar(&c.MaxAttempts, "core-max-attempts", c.MaxAttempts, "most attempts of one call to the chat core, the first included (0: until the deadline; 1: no retries)")
}

// Client is a chatpb.ChatClient that rides out core failovers.
type Client struct {
	cfg      Config
	log      *slog.Logger
	conns    []*grpc.ClientConn
	dials    []*dialRecord // how gRPC's last dial to each target went (PathUp)
	clients  []chatpb.ChatClient
	cur      atomic.Int32 // index of the target believed to be serving
	retries  atomic.Int64
	attempts atomic.Int64

	mu      sync.Mutex
	streams map[*streamCancel]int32 // open streams and their target
	live    liveness                // when each target was last heard from (liveness.go)

	sends streamSet[sendStream] // Send's multiplexed streams (sendstream.go)
	subs  streamSet[subStream]  // Subscribe's multiplexed streams (substream.go)
	// tracing is true when tel exports spans: the otelgrpc handler is
	// installed and each send on a stream gets its own client span.
	tracing bool
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
}

// streamCancel cancels one open stream.
type streamCancel struct {
	cancel context.CancelCauseFunc
	send   bool // one of Send's streams (sendstream.go), not a caller's
}

// errStalled is the cause a stream is cancelled with when a call to its
// target timed out and nothing else was heard from it for an attempt
// timeout (Client.timedOut): the target is silent (stopped, cut off), and a
// stream on it would hang until keepalive (10s at least in grpc-go) noticed.
var errStalled = errors.New("chatclient: target stalled")

// track registers a stream opened on target idx; the returned func forgets it.
func (c *Client) track(idx int32, cancel context.CancelCauseFunc) func() {
	return c.trackStream(&streamCancel{cancel: cancel}, idx)
}

// trackStream registers sc, open on target idx; the returned func forgets it.
func (c *Client) trackStream(sc *streamCancel, idx int32) func() {
	c.mu.Lock()
	if c.streams == nil {
		c.streams = map[*streamCancel]int32{}
	}
	c.streams[sc] = idx
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.streams, sc)
		c.mu.Unlock()
	}
}

// OpenStreams reports how many of its callers' streams (Subscribe,
// WatchSessions) the Client tracks as open (so that a stalled target's
// streams can be cancelled). A stream stops counting when it ends, fails for
// good, or its caller's context is done. Send's own streams do not count.
func (c *Client) OpenStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for sc := range c.streams {
		if !sc.send {
			n++
		}
	}
	return n
}

// stallIfSilent cancels every stream open on target idx when nothing was
// heard from it for quiet (always when quiet is 0), and reports how long it
// was silent and whether it was stalled. The target's silence is then
// counted again from now (liveness.restart): every attempt that was in
// flight on it times out within the next attempt timeout, and each of them
// moving the new streams again would make a storm of its own.
func (c *Client) stallIfSilent(idx int32, quiet time.Duration) (time.Duration, bool) {
	c.mu.Lock()
	silent := c.live.silentFor(idx)
	if quiet > 0 && silent < quiet {
		c.mu.Unlock()
		return silent, false
	}
	c.live.restart(idx)
	n := 0
	for sc, i := range c.streams {
		if i == idx {
			sc.cancel(errStalled)
			n++
		}
	}
	c.mu.Unlock()
	if n > 0 {
		c.log.Info("chat core silent: moving its streams", "target", c.cfg.Targets[idx], "silent-for", silent, "streams", n)
	}
	return silent, true
}

var _ chatpb.ChatClient = (*Client)(nil)

// New builds a Client; it does not block on connecting. Extra dial options
// (tests) are appended to the defaults.
func New(cfg Config, tel *telemetry.Telemetry, opts ...grpc.DialOption) (*Client, error) {
	if len(cfg.Targets) == 0 {
		return nil, errors.New("chatclient: no target")
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	if tel == nil {
		tel = telemetry.Discard()
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's default reconnect backoff starts at 1s; a failover is
		// measured in milliseconds, so reconnect almost at once.
		// A stopped (SIGSTOP) or cut-off core keeps its TCP connections open
		// and answers nothing. Keepalive pings find it (grpc-go allows no
		// interval under 10s); sooner, a call to it that times out, when
		// nothing else was heard from it for as long, cancels the streams
		// open on it (Client.timedOut), so they resume elsewhere.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 2 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	}
	if tel.Tracing() {
		// Only when spans are exported: with the no-op tracer the handler
		// still costs every call allocations.
		dopts = append(dopts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tel.Tracer), otelgrpc.WithPropagators(tel.Propagator))))
	}
	dopts = append(dopts, opts...)
	c := &Client{cfg: cfg, log: tel.Logger.With("component", "chatclient"),
		tracing: tel.Tracing(), tracer: tel.Tracer.Tracer("github.com/hachat/hachat/chatclient"), prop: tel.Propagator}
	c.sends.init()
	c.subs.init()
	c.live.init(len(cfg.Targets))
	for i, t := range cfg.Targets {
		c.dials = append(c.dials, &dialRecord{})
		// The recording dialer first: a test's own dialer (opts) wins.
		conn, err := grpc.NewClient(t, append([]grpc.DialOption{c.dialOption(i)}, dopts...)...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("chatclient: dial %s: %w", t, err)
		}
		c.conns = append(c.conns, conn)
		c.clients = append(c.clients, chatpb.NewChatClient(conn))
	}
	return c, nil
}

// Close ends Send's and Subscribe's streams (sends in flight and
// subscriptions fail with Canceled) and closes the connections.
func (c *Client) Close() error {
	c.live.close()
	c.sends.close()
	c.subs.close()
	var errs []error
	for _, conn := range c.conns {
		errs = append(errs, conn.Close())
	}
	return errors.Join(errs...)
}

// Retries reports how many attempts were retried since New.
func (c *Client) Retries() int64 { return c.retries.Load() }

// Attempts reports how many attempts of unary calls were made since New,
// first attempts included.
func (c *Client) Attempts() int64 { return c.attempts.Load() }

// NewClientMessageID returns a random id for a send's idempotency.
func NewClientMessageID() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RetryObserver is told of each retry of a unary call made with a context
// from WithRetryObserver: the method, the attempt that failed (1-based) and
// its error. webapi counts them in its metrics.
type RetryObserver func(method string, attempt int, err error)

type retryObserverKey struct{}

// WithRetryObserver returns a context whose unary calls report their retries
// to obs.
func WithRetryObserver(ctx context.Context, obs RetryObserver) context.Context {
	return context.WithValue(ctx, retryObserverKey{}, obs)
}

// retrier paces the attempts of one call.
type retrier struct {
	c          *Client
	attempt    int
	handovers  int           // attempts retried at once at a handover (see wait)
	handedOver bool          // the last attempt was refused by a core that handed over
	max        time.Duration // cap of the pause; Policy.MaxBackoff when zero
}

// reset starts the pacing over (a resumed stream delivered).
func (r *retrier) reset() { r.attempt, r.handovers, r.handedOver = 0, 0, false }

// maxHandoverRetries is how many attempts of one call refused by a core
// that handed over (HandedOver) are retried without a backoff: the new
// primary has claimed by then. The connection failure that may follow such
// a refusal (the retry raced the sidecar closing the old primary's
// connection) counts among them. Past them (a connection nobody moves) the
// backoff paces the attempts again.
const maxHandoverRetries = 2

// handoverReconnectWait bounds how long a retry after a refusal by a core
// that handed over waits for the connection to its one target (a sidecar)
// to be replaced: the sidecar closes the connections pinned to the old
// primary once it has seen the new one, a few milliseconds after its claim.
const handoverReconnectWait = 50 * time.Millisecond

// HandedOver reports whether err is the refusal of a core that has just
// handed the primary role over at a switchover (chatpb.HandedOverMessage).
func HandedOver(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && st.Message() == chatpb.HandedOverMessage
}

// wait sleeps before the next attempt and moves to the next target; it
// returns false when ctx is done.
//
// A refusal by a core that handed over (HandedOver) is retried without a
// backoff: the new primary claimed the role before the old one stepped
// down. With several targets the next attempt goes to the next one; with
// one (a sidecar, which carries this Client's connection to one core at a
// time) it waits, at most handoverReconnectWait, until that connection is
// no longer READY: the sidecar closes the connections of the superseded
// primary, and the next attempt dials a new one, which the sidecar routes
// to the new primary. Retried sooner, it would go to the old primary again
// on the old connection, be refused, and back off.
func (r *retrier) wait(ctx context.Context, err error, failed int32) bool {
	r.attempt++
	r.c.retries.Add(1)
	n := int32(len(r.c.clients))
	if n > 1 {
		// Move on from the target that failed, unless another call has
		// already moved on (two calls failing at once must not toggle
		// back to the dead target).
		r.c.cur.CompareAndSwap(failed, (failed+1)%n)
	}
	handedOver := HandedOver(err)
	closedAfterHandover := r.handedOver && status.Code(err) == codes.Unavailable
	r.handedOver = handedOver
	if (handedOver || closedAfterHandover) && r.handovers < maxHandoverRetries {
		r.handovers++
		r.attempt-- // the next failure backs off as the first one
		if n == 1 {
			r.c.awaitNewConn(ctx, failed, handoverReconnectWait)
		}
		r.c.log.Debug("retrying chat core call after a handover", "attempt", r.attempt+1, "err", err)
		return ctx.Err() == nil
	}
	d := r.c.cfg.Policy.Backoff(r.attempt, r.max)
	r.c.log.Debug("retrying chat core call", "attempt", r.attempt, "in", d, "err", err)
	return pause.For(ctx, d)
}

// awaitNewConn waits, at most max, until target idx's connection leaves
// READY (its transport closed: the next call dials a new one), or ctx ends.
func (c *Client) awaitNewConn(ctx context.Context, idx int32, max time.Duration) {
	conn := c.conns[idx]
	if conn.GetState() != connectivity.Ready {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	conn.WaitForStateChange(wctx, connectivity.Ready)
}

// boundedBy returns timeout (0: none) shortened to end by deadline, at
// least 1ns: an attempt timeout of 0 would mean none.
func boundedBy(timeout time.Duration, deadline time.Time) time.Duration {
	if left := max(time.Until(deadline), 1); timeout <= 0 || left < timeout {
		return left
	}
	return timeout
}

// withRetryDeadline gives ctx a deadline of RetryFor when it has none. A
// ctx that has one (webapi's calls have core-timeout) is used as it is: a
// context of its own would cost every call a cancelCtx, and its parent a
// map of children and a done channel, and cancel nothing the attempts
// leave behind (each attempt ends before the call returns).
func (c *Client) withRetryDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.cfg.RetryFor <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.RetryFor)
}

// unary runs call until it succeeds, fails for good, or the policy or ctx
// ends it. idempotent says whether the call may be retried at all.
func unary[Req, Resp any](ctx context.Context, c *Client, method string, idempotent bool, req Req, opts []grpc.CallOption,
	call func(chatpb.ChatClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	ctx = pairContext(ctx, any(req))
	return retried(ctx, c, method, idempotent, req, func(ctx context.Context, timeout time.Duration, idx int32, req Req) (Resp, error) {
		ctx, cancel := attemptContext(ctx, timeout)
		defer cancel()
		return call(c.clients[idx], ctx, req, opts...)
	})
}

// attemptContext bounds ctx by an attempt's timeout (none when 0).
func attemptContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}

// retried is unary's retry loop around attempt, which makes one attempt on
// target idx within ctx and timeout (Policy.AttemptTimeout; 0: none), and
// answers DeadlineExceeded when timeout passed. Send's attempts go through
// its stream, which bounds them with a timer rather than a context.
//
// A ctx without a deadline gets RetryFor's (withRetryDeadline) only once an
// attempt failed: the first attempt, most calls' only one, is bounded by
// that deadline through its timeout instead, which costs no context and no
// timer of its own per call (a send's attempt arms a pooled timer anyway).
func retried[Req, Resp any](ctx context.Context, c *Client, method string, idempotent bool, req Req,
	attempt func(ctx context.Context, timeout time.Duration, idx int32, req Req) (Resp, error)) (Resp, error) {
	var retryBy time.Time // RetryFor's deadline, while ctx does not carry it yet
	if _, ok := ctx.Deadline(); !ok && c.cfg.RetryFor > 0 {
		retryBy = time.Now().Add(c.cfg.RetryFor)
	}
	// own.cancel is the cancel of the context with retryBy, once made (in a
	// struct: vet's lostcancel check does not see the deferred call).
	var own struct{ cancel context.CancelFunc }
	defer func() {
		if own.cancel != nil {
			own.cancel()
		}
	}()
	obs, _ := ctx.Value(retryObserverKey{}).(RetryObserver)
	r := retrier{c: c}
	for attempts := 1; ; attempts++ {
		idx := c.cur.Load()
		c.attempts.Add(1)
		timeout := c.cfg.AttemptTimeout
		if !retryBy.IsZero() {
			timeout = boundedBy(timeout, retryBy)
		}
		resp, err := attempt(ctx, timeout, idx, req)
		if err == nil {
			c.live.hear(idx)
		}
		if err != nil && !retryBy.IsZero() {
			ctx, own.cancel = context.WithDeadline(ctx, retryBy)
			retryBy = time.Time{}
		}
		if err == nil || ctx.Err() != nil || !c.cfg.Policy.Retry(err, attempts, idempotent) {
			return resp, err
		}
		if status.Code(err) == codes.DeadlineExceeded {
			c.timedOut(idx) // streams on a silent target would hang: move them too
		}
		if obs != nil {
			obs(method, attempts, err)
		}
		if !r.wait(ctx, err, idx) {
			return resp, err
		}
	}
}

// StartSession starts a chat for a customer. If in has no client request id,
// StartSession gives it one (in is modified), so that a retry after an
// ambiguous failure (the first attempt committed, its answer lost) returns
// the first session instead of starting a second one.
func (c *Client) StartSession(ctx context.Context, in *chatpb.StartSessionRequest, opts ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	if in.GetClientRequestId() == "" {
		in.ClientRequestId = NewClientMessageID()
	}
	return unary(ctx, c, "StartSession", true, in, opts, chatpb.ChatClient.StartSession)
}

// Join adds an agent, supervisor or system participant. If in has no client
// request id, Join gives it one (in is modified), so that a retry after a
// lost answer returns the first join instead of adding a second participant.
func (c *Client) Join(ctx context.Context, in *chatpb.JoinRequest, opts ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	if in.GetClientRequestId() == "" {
		in.ClientRequestId = NewClientMessageID()
	}
	return unary(ctx, c, "Join", true, in, opts, chatpb.ChatClient.Join)
}

// Send appends an event. If in has no client message id, Send gives it one
// (in is modified), so that every retry is idempotent.
//
// Each attempt goes on the one SendStream the Client keeps per target and
// pair, shared by all concurrent sends (sendstream.go), and is retried by
// the Policy exactly as a unary call: a stream that breaks (the core killed,
// the sidecar closing the connection) fails its sends in flight with
// UNAVAILABLE, and each is retried, with its same client message id, on a
// new stream. A core that does not know SendStream (UNIMPLEMENTED) gets unary
// Sends, as does a call with grpc.CallOptions or a request a stream should
// not carry (see streamable).
func (c *Client) Send(ctx context.Context, in *chatpb.SendRequest, opts ...grpc.CallOption) (*chatpb.SendResponse, error) {
	if in.GetClientMessageId() == "" {
		in.ClientMessageId = NewClientMessageID()
	}
	if len(opts) > 0 || !streamable(in) {
		return unary(ctx, c, "Send", true, in, opts, chatpb.ChatClient.Send)
	}
	return retried(ctx, c, "Send", true, in, c.sendAttempt)
}

// SendStream opens a raw SendStream on the serving target, not retried:
// Send multiplexes its own streams and is what callers use.
func (c *Client) SendStream(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[chatpb.SendStreamRequest, chatpb.SendStreamResult], error) {
	return c.clients[c.cur.Load()].SendStream(ctx, opts...)
}

// SubscribeStream opens a raw SubscribeStream on the serving target, not
// retried: Subscribe multiplexes its own streams and is what callers use.
func (c *Client) SubscribeStream(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[chatpb.SubscribeStreamRequest, chatpb.SubscribeStreamBatch], error) {
	return c.clients[c.cur.Load()].SubscribeStream(ctx, opts...)
}

// Leave removes the participant, and ends the session if asked.
func (c *Client) Leave(ctx context.Context, in *chatpb.LeaveRequest, opts ...grpc.CallOption) (*chatpb.LeaveResponse, error) {
	return unary(ctx, c, "Leave", true, in, opts, chatpb.ChatClient.Leave)
}

// Events returns the events from an index on.
func (c *Client) Events(ctx context.Context, in *chatpb.EventsRequest, opts ...grpc.CallOption) (*chatpb.EventsResponse, error) {
	return unary(ctx, c, "Events", true, in, opts, chatpb.ChatClient.Events)
}

// Status asks the serving core for its status.
func (c *Client) Status(ctx context.Context, in *chatpb.StatusRequest, opts ...grpc.CallOption) (*chatpb.StatusResponse, error) {
	return unary(ctx, c, "Status", true, in, opts, chatpb.ChatClient.Status)
}

// Switchover asks the primary to hand over to the backup. It is not
// retried: a switchover is done once or reported as failed.
func (c *Client) Switchover(ctx context.Context, in *chatpb.SwitchoverRequest, opts ...grpc.CallOption) (*chatpb.SwitchoverResponse, error) {
	c.attempts.Add(1)
	return c.clients[c.cur.Load()].Switchover(ctx, in, opts...)
}

// StreamObserver is told when a resuming stream loses its core (connected
// false, with the error) and when it has opened a new stream (connected
// true). A core that accepts a stream and then refuses it (a backup while a
// promotion is under way) produces several such pairs in a row: an observer
// that tells people should wait until a resumed stream delivers or stays up.
type StreamObserver func(connected bool, err error)

type observerKey struct{}

// WithStreamObserver returns a context whose Subscribe and WatchSessions
// streams report their reconnects to obs: webapi uses it to tell the browser
// "reconnecting" and "reconnected".
func WithStreamObserver(ctx context.Context, obs StreamObserver) context.Context {
	return context.WithValue(ctx, observerKey{}, obs)
}

// EventTaker takes one event of a Subscribe straight from the shared
// stream's reader, without waking the goroutine that reads the Subscribe:
// it reports whether it took the event. It runs on the reader of a
// SubscribeStream that carries the events of many subscriptions, so it must
// never block: false (the taker cannot take it now) sends the event the
// usual way, through Recv, in order.
type EventTaker func(ev *chatpb.Event) bool

type takerKey struct{}

// WithEventTaker returns a context whose Subscribe streams offer each event
// to take while their reader is waiting in Recv with nothing queued; what
// take refuses, and the event that ends the stream, Recv returns as before.
// Events taken count as delivered: a resume starts after them.
func WithEventTaker(ctx context.Context, take EventTaker) context.Context {
	return context.WithValue(ctx, takerKey{}, take)
}

func observer(ctx context.Context) StreamObserver {
	if obs, ok := ctx.Value(observerKey{}).(StreamObserver); ok {
		return obs
	}
	return func(bool, error) {}
}

// Subscribe streams the participant's events from in.FromIndex on. The
// stream survives failovers: when the core goes away it reopens the
// subscription at the index after the last delivered event, so the caller
// sees each event once, in order. It ends when the session ends (io.EOF
// after SESSION_ENDED), on a non-retryable error, or when ctx is done.
//
// Each attempt is a member of the one SubscribeStream the Client keeps per
// target and pair, shared by all its Subscribes (substream.go): a broken
// stream ends its members with UNAVAILABLE, and each resumes as above. A
// core that does not know SubscribeStream (UNIMPLEMENTED), a call with
// grpc.CallOptions, and a Client that exports spans get unary Subscribes.
func (c *Client) Subscribe(ctx context.Context, in *chatpb.SubscribeRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.Event], error) {
	next := in.GetFromIndex()
	ctx = pairContext(ctx, in)
	// The core ends a participant's stream after the session ends and
	// after that participant's own leave.
	isFinal := func(ev *chatpb.Event) bool {
		return ev.GetKind() == chatpb.EventKind_EVENT_KIND_SESSION_ENDED ||
			ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT &&
				ev.GetFrom().GetId() == in.GetAuth().GetParticipantId()
	}
	s := &resumingStream[chatpb.Event]{
		c:     c,
		r:     retrier{c: c, max: refusedStreamBackoff},
		close: func() {},
		ctx:   ctx,
		obs:   observer(ctx),
		seen: func(ev *chatpb.Event) (deliver, final bool) {
			if ev.GetIndex() != 0 && ev.GetIndex() < next {
				return false, false // already delivered before the reconnect
			}
			next = ev.GetIndex() + 1
			return true, isFinal(ev)
		},
	}
	// take runs on the shared stream's reader while s's reader waits in
	// the member's Recv (subMember.push), so it may use s's state as Recv
	// does; the end of the stream is left to Recv.
	var take func(*chatpb.Event) bool
	if taker, _ := ctx.Value(takerKey{}).(EventTaker); taker != nil {
		take = func(ev *chatpb.Event) bool {
			dup := ev.GetIndex() != 0 && ev.GetIndex() < next
			if !dup && (isFinal(ev) || !taker(ev)) {
				return false
			}
			if !dup {
				next = ev.GetIndex() + 1
			}
			s.fresh = false
			s.r.reset()
			return true
		}
	}
	s.open = func(ctx context.Context, idx int32) (grpc.ServerStreamingClient[chatpb.Event], error) {
		req := &chatpb.SubscribeRequest{Auth: in.GetAuth(), FromIndex: next}
		if len(opts) > 0 || c.tracing {
			return c.clients[idx].Subscribe(ctx, req, opts...)
		}
		return c.subscribeAttempt(ctx, idx, req, take)
	}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

// WatchSessions streams session changes; it reopens the watch after a
// failover, and the core then sends STARTED again for every live session, so
// the caller must treat STARTED as idempotent.
func (c *Client) WatchSessions(ctx context.Context, in *chatpb.WatchSessionsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.SessionChange], error) {
	s := &resumingStream[chatpb.SessionChange]{
		c:     c,
		r:     retrier{c: c, max: refusedStreamBackoff},
		close: func() {},
		ctx:   ctx,
		obs:   observer(ctx),
		open: func(ctx context.Context, idx int32) (grpc.ServerStreamingClient[chatpb.SessionChange], error) {
			return c.clients[idx].WatchSessions(ctx, in, opts...)
		},
		seen: func(*chatpb.SessionChange) (bool, bool) { return true, false },
	}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

// refusedStreamBackoff caps the pause before reopening a stream that was
// refused before its first message: short, since a promotion takes
// milliseconds, but enough to keep a refusing core from a tight loop.
const refusedStreamBackoff = 50 * time.Millisecond

// resumingStream is a server stream that reopens itself on retryable errors.
// Like any gRPC stream, it is for one reading goroutine.
type resumingStream[T any] struct {
	c      *Client
	ctx    context.Context
	obs    StreamObserver
	open   func(ctx context.Context, idx int32) (grpc.ServerStreamingClient[T], error) // opens a stream on target idx
	seen   func(*T) (deliver, final bool)
	cur    grpc.ServerStreamingClient[T]
	curIdx int32           // the target cur was opened on
	sctx   context.Context // cur's context: cancelled with errStalled when its target stalls
	close  func()          // forgets and cancels cur
	ended  bool
	// fresh is true while the current stream has delivered nothing: a
	// stream a backup accepts and then refuses must not be reopened in a
	// tight loop, so its failure counts as a failed attempt (with backoff).
	fresh bool
	r     retrier
}

// connect opens the stream, retrying until it works or fails for good.
func (s *resumingStream[T]) connect() error {
	ctx, cancel := s.c.withRetryDeadline(s.ctx)
	defer cancel()
	r := retrier{c: s.c}
	for {
		// A stream is lazy: a refusal shows on the first Recv, where a
		// stream that failed before its first message backs off.
		idx := s.c.cur.Load()
		sctx, scancel := context.WithCancelCause(s.ctx)
		st, err := s.open(sctx, idx)
		if err == nil {
			s.close()
			// The stream is forgotten as soon as its context is done, by
			// close or by the caller: a caller that stops reading without a
			// last Recv (it cancels its context, as gRPC asks) leaves no
			// entry behind, nor the context and everything it carries.
			untrack := s.c.track(idx, scancel)
			context.AfterFunc(sctx, untrack)
			s.close = func() { untrack(); scancel(nil) }
			s.cur, s.curIdx, s.sctx = st, idx, sctx
			s.fresh = true
			return nil
		}
		scancel(nil)
		if !Retryable(err) || ctx.Err() != nil || !r.wait(ctx, err, idx) {
			return err
		}
	}
}

// Recv returns the next event, reconnecting as needed.
func (s *resumingStream[T]) Recv() (*T, error) {
	for {
		if s.ended {
			s.close()
			return nil, io.EOF
		}
		m, err := s.cur.Recv()
		if err == nil {
			s.c.live.hear(s.curIdx)
			s.fresh = false
			s.r.reset()
			deliver, final := s.seen(m)
			if s.ended = final; final {
				s.close() // nothing follows the last event: release the stream now
			}
			if deliver {
				return m, nil
			}
			continue
		}
		if s.ctx.Err() != nil {
			s.close()
			return nil, s.ctx.Err()
		}
		if errors.Is(context.Cause(s.sctx), errStalled) {
			err = status.Error(codes.Unavailable, "chat core stalled")
		}
		if !errors.Is(err, io.EOF) && !Retryable(err) {
			s.close()
			return nil, err
		}
		// EOF before the session ended means the core closed the stream
		// (step-down, shutdown): resume elsewhere.
		s.obs(false, err)
		if s.fresh || HandedOver(err) {
			// The stream failed before its first message (a backup that
			// accepts and then refuses while a promotion is under way):
			// back off instead of reopening it in a tight loop. A core that
			// handed over ended it: wait for the connection to move
			// (retrier.wait) rather than reopen it on the old primary.
			s.c.log.Debug("chat core refused the stream, retrying", "err", err)
			if !s.r.wait(s.ctx, err, s.curIdx) {
				return nil, err
			}
		} else {
			s.c.log.Info("chat core stream lost, resuming", "err", err)
		}
		if err := s.connect(); err != nil {
			return nil, err
		}
		s.obs(true, nil)
	}
}

// Header returns the current underlying stream's header.
func (s *resumingStream[T]) Header() (metadataMD, error) { return s.cur.Header() }

// Trailer returns the current underlying stream's trailer.
func (s *resumingStream[T]) Trailer() metadataMD { return s.cur.Trailer() }

// CloseSend closes the sending side of the current stream.
func (s *resumingStream[T]) CloseSend() error { return s.cur.CloseSend() }

// Context returns the caller's context.
func (s *resumingStream[T]) Context() context.Context { return s.ctx }

// SendMsg is not used on server streams after the request.
func (s *resumingStream[T]) SendMsg(m any) error { return s.cur.SendMsg(m) }

// RecvMsg receives into m through Recv, so it resumes too.
func (s *resumingStream[T]) RecvMsg(m any) error {
	v, err := s.Recv()
	if err != nil {
		return err
	}
	dst, ok := m.(proto.Message)
	src, ok2 := any(v).(proto.Message)
	if !ok || !ok2 {
		return fmt.Errorf("chatclient: RecvMsg into %T", m)
	}
	proto.Reset(dst)
	proto.Merge(dst, src)
	return nil
}
