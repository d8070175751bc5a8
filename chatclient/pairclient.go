package chatclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
)

// WeightsFunc returns the placement weights of the pairs (pair name to
// weight) as the control plane last published them, or nil while none is
// known. A pair with weight 0 (draining, degraded, full) takes no new chat.
type WeightsFunc func() map[string]uint32

// PairClient is a chatpb.ChatClient over several pairs of cores for a
// client behind hachat sidecars, which serve one listener per pair (see
// docs/design.md, "Many pairs"): it holds one client per pair's local
// listener and sends every call about a chat to the client of the chat's
// pair (pairs.Of of its session id), places a new chat (StartSession) on a
// pair picked at random by the control plane's weights, as Envoy and grpc-go
// pick from the route's weighted_clusters, and watches sessions on every
// pair at once. Status and Switchover go to the default pair.
type PairClient struct {
	clients map[string]chatpb.ChatClient
	order   []string // the pairs, sorted: the pick is reproducible for a seed
	weights WeightsFunc
	log     *slog.Logger

	mu     sync.Mutex
	rnd    *rand.Rand
	placed map[string]int64
}

var _ chatpb.ChatClient = (*PairClient)(nil)

// ErrNoPairClient marks a call about a chat of a pair the PairClient has no
// client for.
var ErrNoPairClient = errors.New("chatclient: no client for the chat's pair")

// NewPairClient builds a PairClient over clients (pair name to its client;
// the default pair, pairs.Default, is required). weights may be nil: every
// new chat then goes to the default pair. seed seeds the weighted pick.
func NewPairClient(clients map[string]chatpb.ChatClient, weights WeightsFunc, seed uint64, log *slog.Logger) (*PairClient, error) {
	if clients[pairs.Default] == nil {
		return nil, fmt.Errorf("chatclient: no client for the default pair %q", pairs.Default)
	}
	var order []string
	for p, c := range clients {
		if err := pairs.Validate(p); err != nil {
			return nil, fmt.Errorf("chatclient: pair %q: %w", p, err)
		}
		if c == nil {
			return nil, fmt.Errorf("chatclient: pair %q has no client", p)
		}
		order = append(order, p)
	}
	slices.Sort(order)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PairClient{
		clients: clients, order: order, weights: weights, log: log.With("component", "chatclient"),
		rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), placed: map[string]int64{},
	}, nil
}

// Pairs returns the pairs the client reaches, sorted.
func (c *PairClient) Pairs() []string { return slices.Clone(c.order) }

// Placed reports how many new chats each pair was picked for since
// NewPairClient.
func (c *PairClient) Placed() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.placed))
	for p, n := range c.placed {
		out[p] = n
	}
	return out
}

// Register exports, on reg, the chats placed on each pair
// (hachat_chatclient_pair_placed_total) and each pair's weight as last read
// (hachat_chatclient_pair_weight).
func (c *PairClient) Register(reg prometheus.Registerer) error {
	for _, p := range c.order {
		placed := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "hachat_chatclient_pair_placed_total", Help: "New chats this client placed on the pair.",
			ConstLabels: prometheus.Labels{"pair": p},
		}, func() float64 { return float64(c.Placed()[p]) })
		weight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hachat_chatclient_pair_weight", Help: "The pair's placement weight as the control plane last published it (0: no new chat).",
			ConstLabels: prometheus.Labels{"pair": p},
		}, func() float64 {
			if c.weights == nil {
				return 0
			}
			return float64(c.weights()[p])
		})
		for _, m := range []prometheus.Collector{placed, weight} {
			if err := reg.Register(m); err != nil {
				return fmt.Errorf("chatclient: pair metrics: %w", err)
			}
		}
	}
	return nil
}

// pick chooses the pair of a new chat: at random, in proportion to the
// weights of the pairs this client reaches. With no weights known, or none
// above 0 (every pair drained or degraded), it picks the default pair,
// whose client then retries as its Policy says, as a one-pair client would.
func (c *PairClient) pick() string {
	var w map[string]uint32
	if c.weights != nil {
		w = c.weights()
	}
	var total uint64
	for _, p := range c.order {
		total += uint64(w[p])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := pairs.Default
	if total > 0 {
		n := c.rnd.Uint64N(total)
		for _, q := range c.order {
			if n < uint64(w[q]) {
				p = q
				break
			}
			n -= uint64(w[q])
		}
	}
	c.placed[p]++
	return p
}

// of returns the client of the chat id's pair.
func (c *PairClient) of(id string) (chatpb.ChatClient, error) {
	p := pairs.Of(id)
	cl := c.clients[p]
	if cl == nil {
		return nil, status.Errorf(codes.Unavailable, "%v: chat %q is in pair %q, this client reaches pairs %v", ErrNoPairClient, id, p, c.order)
	}
	return cl, nil
}

// StartSession starts a chat on a pair picked by the weights. A retry of
// the same request (same client request id) is the caller's new call and
// may pick another pair; the chosen pair's client retries within the call.
func (c *PairClient) StartSession(ctx context.Context, in *chatpb.StartSessionRequest, opts ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	p := c.pick()
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("hachat.pair", p))
	c.log.Debug("placing new chat", "pair", p)
	return c.clients[p].StartSession(ctx, in, opts...)
}

// Join goes to the pair of in's session.
func (c *PairClient) Join(ctx context.Context, in *chatpb.JoinRequest, opts ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	cl, err := c.of(in.GetSessionId())
	if err != nil {
		return nil, err
	}
	return cl.Join(ctx, in, opts...)
}

// Send goes to the pair of in's session.
func (c *PairClient) Send(ctx context.Context, in *chatpb.SendRequest, opts ...grpc.CallOption) (*chatpb.SendResponse, error) {
	cl, err := c.of(in.GetAuth().GetSessionId())
	if err != nil {
		return nil, err
	}
	return cl.Send(ctx, in, opts...)
}

// Leave goes to the pair of in's session.
func (c *PairClient) Leave(ctx context.Context, in *chatpb.LeaveRequest, opts ...grpc.CallOption) (*chatpb.LeaveResponse, error) {
	cl, err := c.of(in.GetAuth().GetSessionId())
	if err != nil {
		return nil, err
	}
	return cl.Leave(ctx, in, opts...)
}

// Events goes to the pair of in's session.
func (c *PairClient) Events(ctx context.Context, in *chatpb.EventsRequest, opts ...grpc.CallOption) (*chatpb.EventsResponse, error) {
	cl, err := c.of(in.GetAuth().GetSessionId())
	if err != nil {
		return nil, err
	}
	return cl.Events(ctx, in, opts...)
}

// Subscribe goes to the pair of in's session.
func (c *PairClient) Subscribe(ctx context.Context, in *chatpb.SubscribeRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.Event], error) {
	cl, err := c.of(in.GetAuth().GetSessionId())
	if err != nil {
		return nil, err
	}
	return cl.Subscribe(ctx, in, opts...)
}

// Status asks the default pair.
func (c *PairClient) Status(ctx context.Context, in *chatpb.StatusRequest, opts ...grpc.CallOption) (*chatpb.StatusResponse, error) {
	return c.clients[pairs.Default].Status(ctx, in, opts...)
}

// Switchover asks the default pair.
func (c *PairClient) Switchover(ctx context.Context, in *chatpb.SwitchoverRequest, opts ...grpc.CallOption) (*chatpb.SwitchoverResponse, error) {
	return c.clients[pairs.Default].Switchover(ctx, in, opts...)
}

// SendStream opens a raw SendStream on the default pair, not retried: Send
// multiplexes its own streams per pair (see Client.Send).
func (c *PairClient) SendStream(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[chatpb.SendStreamRequest, chatpb.SendStreamResult], error) {
	return c.clients[pairs.Default].SendStream(ctx, opts...)
}

// SubscribeStream opens a raw SubscribeStream on the default pair, not
// retried: Subscribe multiplexes its own streams per pair (see
// Client.Subscribe).
func (c *PairClient) SubscribeStream(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[chatpb.SubscribeStreamRequest, chatpb.SubscribeStreamBatch], error) {
	return c.clients[pairs.Default].SubscribeStream(ctx, opts...)
}

// WatchSessions watches every pair: it opens one watch per pair (each
// resuming on its own when its pair's client does) and delivers their
// changes as one stream, in the order they arrive. The stream fails with the
// first error of any pair's watch (the caller reopens it, and every pair
// then repeats STARTED for its live sessions); it ends when ctx is done.
func (c *PairClient) WatchSessions(ctx context.Context, in *chatpb.WatchSessionsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.SessionChange], error) {
	wctx, cancel := context.WithCancelCause(ctx)
	m := &mergedWatch{ctx: ctx, cancel: cancel, ch: make(chan *chatpb.SessionChange), errc: make(chan error, len(c.order))}
	streams := make([]grpc.ServerStreamingClient[chatpb.SessionChange], 0, len(c.order))
	for _, p := range c.order {
		st, err := c.clients[p].WatchSessions(wctx, in, opts...)
		if err != nil {
			cancel(err)
			return nil, fmt.Errorf("watch sessions of pair %s: %w", p, err)
		}
		streams = append(streams, st)
	}
	// One reader per pair, owned by m: each ends when its stream fails or
	// wctx is done (the caller's ctx, or m's first failure).
	for i, st := range streams {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				ch, err := st.Recv()
				if err != nil {
					if err == io.EOF {
						err = status.Errorf(codes.Unavailable, "watch of pair %s ended", c.order[i])
					}
					m.errc <- err
					cancel(err)
					return
				}
				select {
				case m.ch <- ch:
				case <-wctx.Done():
					return
				}
			}
		}()
	}
	return m, nil
}

// mergedWatch is the one stream of WatchSessions over several pairs. Like
// any gRPC stream, it is for one reading goroutine.
type mergedWatch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	ch     chan *chatpb.SessionChange
	errc   chan error
	wg     sync.WaitGroup
}

// Recv returns the next change of any pair, or the first error of any.
func (m *mergedWatch) Recv() (*chatpb.SessionChange, error) {
	select {
	case ch := <-m.ch:
		return ch, nil
	case err := <-m.errc:
		m.stop(err)
		return nil, err
	case <-m.ctx.Done():
		m.stop(m.ctx.Err())
		return nil, m.ctx.Err()
	}
}

// stop cancels every pair's watch and waits for their readers.
func (m *mergedWatch) stop(err error) {
	m.cancel(err)
	m.wg.Wait()
}

// Header has no single stream to report on.
func (m *mergedWatch) Header() (metadata.MD, error) { return metadata.MD{}, nil }

// Trailer has no single stream to report on.
func (m *mergedWatch) Trailer() metadata.MD { return metadata.MD{} }

// CloseSend is a no-op: the request was sent when each watch opened.
func (m *mergedWatch) CloseSend() error { return nil }

// Context returns the caller's context.
func (m *mergedWatch) Context() context.Context { return m.ctx }

// SendMsg is not used on server streams after the request.
func (m *mergedWatch) SendMsg(any) error { return errors.New("chatclient: SendMsg on a session watch") }

// RecvMsg receives into m through Recv.
func (m *mergedWatch) RecvMsg(dst any) error {
	v, err := m.Recv()
	if err != nil {
		return err
	}
	d, ok := dst.(*chatpb.SessionChange)
	if !ok {
		return fmt.Errorf("chatclient: RecvMsg into %T", dst)
	}
	proto.Reset(d)
	proto.Merge(d, v)
	return nil
}
