package chatclient

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
)

// Subscribe's streams. A Subscribe stream costs the core an HTTP/2 stream
// and a Send (its own frame, its own flow control) per event and
// subscriber; the load generator and webapi a Recv per event and stream.
// The Client keeps one SubscribeStream per target and pair, as it keeps one
// SendStream (sendstream.go), and each attempt of a Subscribe opens a
// member on it: a virtual stream (subMember) that resumingStream reads as
// it reads a Subscribe stream, so that its resuming, the liveness rules and
// StreamObserver are unchanged. The core packs the events of all members
// ready at once into one batch.
//
// A stream that fails ends every member on it (UNAVAILABLE unless the core
// refused the stream itself), and each resumes as after a lost Subscribe
// stream, from its next index, on the next stream. The stream's reader
// never waits for a member: each has its own queue, and a member whose
// reader falls subscribeMemberQueue events behind is ended (UNAVAILABLE:
// it resumes from its next index, nothing is lost). A Subscribe whose
// context carries an EventTaker (WithEventTaker) is offered each event on
// the reader itself while its own reader waits in Recv with nothing queued,
// which spares a goroutine hand-off per event; the taker never blocks, and
// what it refuses is queued as above, in order. A core that answers
// UNIMPLEMENTED (an older core) gets unary Subscribes for
// unimplementedRecheck, then the stream is tried again. When spans are
// exported, Subscribe stays a unary call, so that its trace is its own.

// subscribeMemberQueue is how many events a member's reader may leave
// unread before the member is ended (it resumes from its next index).
const subscribeMemberQueue = 1024

// errFellBehind ends a member whose reader fell too far behind.
var errFellBehind = status.Error(codes.Unavailable, "chatclient: subscriber fell behind its stream: resume")

// subStream is one open SubscribeStream and its members.
type subStream struct {
	c      *Client
	key    sendKey
	st     grpc.BidiStreamingClient[chatpb.SubscribeStreamRequest, chatpb.SubscribeStreamBatch]
	ctx    context.Context // the stream's: cancelled with errStalled when its target stalls
	cancel context.CancelCauseFunc
	wake   chan struct{} // signals the writer

	mu      sync.Mutex
	next    uint64
	members map[uint64]*subMember
	out     []*chatpb.SubscribeStreamRequest // opens and cancels waiting for the writer
	err     error                            // why the stream ended; nil while it works
}

// subscribeAttempt opens in as a member of the SubscribeStream of target
// idx and in's pair, or as a unary Subscribe when the core behind it does
// not implement SubscribeStream. ctx is the attempt's (resumingStream's);
// take, when not nil, is offered the member's events while its reader waits
// in Recv with nothing queued (subMember.push).
func (c *Client) subscribeAttempt(ctx context.Context, idx int32, in *chatpb.SubscribeRequest, take func(*chatpb.Event) bool) (grpc.ServerStreamingClient[chatpb.Event], error) {
	key := sendKey{target: idx, pair: pairs.Of(in.GetAuth().GetSessionId())}
	var err error
	// A stream that failed just before the join is already forgotten:
	// the second try opens the next one.
	for range 2 {
		var s *subStream
		if s, err = c.subStream(key); err != nil {
			break
		}
		var m *subMember
		if m, err = s.join(ctx, in, take); err == nil {
			return m, nil
		}
		if errors.Is(err, errUseUnary) {
			break
		}
	}
	if errors.Is(err, errUseUnary) {
		return c.clients[idx].Subscribe(ctx, in)
	}
	return nil, err
}

// subStream returns the open stream for key, opening it if there is none.
func (c *Client) subStream(key sendKey) (*subStream, error) {
	return c.subs.get(c, key, func(ctx context.Context, cancel context.CancelCauseFunc) (opened[subStream], error) {
		st, err := c.clients[key.target].SubscribeStream(ctx)
		if err != nil {
			return opened[subStream]{}, err
		}
		s := &subStream{c: c, key: key, st: st, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), members: map[uint64]*subMember{}}
		return opened[subStream]{s: s, read: s.read, write: s.write}, nil
	})
}

// write sends the queued opens and cancels until the stream ends.
func (s *subStream) write() {
	var reqs []*chatpb.SubscribeStreamRequest
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		reqs = append(reqs[:0], s.out...)
		clear(s.out)
		s.out = s.out[:0]
		s.mu.Unlock()
		for _, r := range reqs {
			if err := s.st.Send(r); err != nil {
				// The stream ended (io.EOF: Recv tells why) or Send ended
				// it: the reader ends every member.
				return
			}
		}
		clear(reqs)
	}
}

// queue hands r to the writer. Call with s.mu held.
func (s *subStream) queue(r *chatpb.SubscribeStreamRequest) {
	s.out = append(s.out, r)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// read hands each event to its member until the stream fails, then ends
// every member still open.
func (s *subStream) read() {
	for {
		b, err := s.st.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		if len(b.Ids) != len(b.Events) {
			s.fail(status.Errorf(codes.Internal, "chatclient: subscribe stream batch with %d ids for %d events", len(b.Ids), len(b.Events)))
			return
		}
		s.c.live.hear(s.key.target)
		s.mu.Lock()
		for i, ev := range b.Events {
			id := b.Ids[i]
			m := s.members[id]
			if m == nil {
				continue // it left (its context is done) or fell behind
			}
			if !m.push(ev) {
				delete(s.members, id)
				s.queue(&chatpb.SubscribeStreamRequest{Id: id, Cancel: true})
				m.end(errFellBehind)
			}
		}
		for _, e := range b.Ends {
			m := s.members[e.Id]
			if m == nil {
				continue
			}
			delete(s.members, e.Id)
			if e.Code == int32(codes.OK) {
				m.end(io.EOF)
			} else {
				m.end(status.Error(codes.Code(e.Code), e.Message))
			}
		}
		s.mu.Unlock()
	}
}

// fail ends the stream after Recv failed with err: it is forgotten (the
// next Subscribe attempt opens another) and its members end with what err
// means for them.
func (s *subStream) fail(err error) {
	err = s.c.subs.streamErr(s.ctx, err, "subscribe stream")
	s.c.subs.forget(s.key, s, err)
	s.cancel(nil)
	s.mu.Lock()
	s.err = err
	members := s.members
	s.members = nil
	s.mu.Unlock()
	for _, m := range members {
		m.end(err)
	}
	if !errors.Is(err, errUseUnary) && !s.c.subs.closed() {
		s.c.log.Debug("subscribe stream ended", "target", s.key.target, "pair", s.key.pair, "members", len(members), "err", err)
	}
}

// join opens in as a new member under ctx: the member leaves (the core is
// told to stop it) when ctx is done.
func (s *subStream) join(ctx context.Context, in *chatpb.SubscribeRequest, take func(*chatpb.Event) bool) (*subMember, error) {
	m := &subMember{s: s, ctx: ctx, req: in, take: take, wake: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	s.next++
	m.id = s.next
	s.members[m.id] = m
	s.queue(&chatpb.SubscribeStreamRequest{Id: m.id, Subscribe: in})
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, m.leave)
	m.mu.Lock()
	m.stopLeave = stop
	ended := m.err != nil
	m.mu.Unlock()
	if ended {
		stop()
	}
	return m, nil
}

// subMember is one Subscribe on a shared stream, read like a Subscribe
// stream (by one goroutine).
type subMember struct {
	s   *subStream
	id  uint64
	ctx context.Context
	req *chatpb.SubscribeRequest
	// take, when not nil, takes an event straight from the stream's reader
	// (push) instead of the member's reader; false: queue it.
	take func(*chatpb.Event) bool

	// Only the reading goroutine uses these (and push, while it has the
	// turn: busy).
	got   bool                                     // an event was delivered
	unary grpc.ServerStreamingClient[chatpb.Event] // after the core answered UNIMPLEMENTED

	mu        sync.Mutex
	q         []*chatpb.Event // events not yet read, from head on
	head      int
	err       error // how the member ended, once read past its events
	wake      chan struct{}
	stopLeave func() bool // stops leave running when ctx is done
	// The turn between the member's reader and take, so that events are
	// handled one at a time and in order: take is offered an event only
	// while the reader waits in Recv (waiting) with nothing queued; busy
	// while take runs, when Recv waits for it (busyWait) before it returns.
	waiting  bool
	busy     bool
	busyWait bool
}

var _ grpc.ServerStreamingClient[chatpb.Event] = (*subMember)(nil)

// push hands ev to take, when the member's reader waits in Recv with
// nothing queued, or queues it for the reader; false when the member is
// subscribeMemberQueue events behind (it must be ended).
func (m *subMember) push(ev *chatpb.Event) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.take != nil && m.waiting && m.head == len(m.q) && m.err == nil {
		m.busy = true
		m.mu.Unlock()
		took := m.take(ev)
		m.mu.Lock()
		m.busy = false
		if m.busyWait {
			m.busyWait = false
			m.signal()
		}
		if took {
			m.got = true
			return true
		}
	}
	if len(m.q)-m.head >= subscribeMemberQueue {
		return false
	}
	m.q = append(m.q, ev)
	m.signal()
	return true
}

// end records how the member ended, after the events already queued.
func (m *subMember) end(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.signal()
	stop := m.stopLeave
	m.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// signal wakes the reader. Call with m.mu held.
func (m *subMember) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// leave takes the member off its stream and tells the core to stop it,
// unless it has already ended.
func (m *subMember) leave() {
	s := m.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.members[m.id] != m {
		return
	}
	delete(s.members, m.id)
	s.queue(&chatpb.SubscribeStreamRequest{Id: m.id, Cancel: true})
}

// Recv returns the member's next event, io.EOF after its last (the core
// ended it with OK), or how it ended.
func (m *subMember) Recv() (*chatpb.Event, error) {
	if m.unary != nil {
		return m.unary.Recv()
	}
	cancelled := false
	for {
		m.mu.Lock()
		if m.busy {
			// take has the turn: wait until it is done with it.
			m.busyWait = true
			m.mu.Unlock()
			<-m.wake
			continue
		}
		m.waiting = false
		if cancelled {
			m.mu.Unlock()
			return nil, status.FromContextError(m.ctx.Err()).Err()
		}
		if m.head < len(m.q) {
			ev := m.q[m.head]
			m.q[m.head] = nil
			if m.head++; m.head == len(m.q) {
				m.q, m.head = m.q[:0], 0
			}
			m.mu.Unlock()
			m.got = true
			return ev, nil
		}
		err := m.err
		m.waiting = err == nil
		m.mu.Unlock()
		if err != nil {
			if !errors.Is(err, errUseUnary) {
				return nil, err
			}
			if m.got {
				return nil, status.Error(codes.Unavailable, "chatclient: subscribe stream unimplemented")
			}
			// An older core: this member becomes a unary Subscribe.
			st, err := m.s.c.clients[m.s.key.target].Subscribe(m.ctx, m.req)
			if err != nil {
				return nil, err
			}
			m.unary = st
			return st.Recv()
		}
		select {
		case <-m.wake:
		case <-m.ctx.Done():
			cancelled = true
		}
	}
}

// Header returns the shared stream's header.
func (m *subMember) Header() (metadata.MD, error) {
	if m.unary != nil {
		return m.unary.Header()
	}
	return m.s.st.Header()
}

// Trailer returns nil: a member has no trailer of its own.
func (m *subMember) Trailer() metadata.MD {
	if m.unary != nil {
		return m.unary.Trailer()
	}
	return nil
}

// CloseSend does nothing: the request was sent when the member opened.
func (m *subMember) CloseSend() error { return nil }

// Context returns the member's context.
func (m *subMember) Context() context.Context { return m.ctx }

// SendMsg is not used on a member: its request was sent when it opened.
func (m *subMember) SendMsg(any) error {
	return status.Error(codes.Internal, "chatclient: SendMsg on a subscribe stream member")
}

// RecvMsg receives into m through Recv.
func (m *subMember) RecvMsg(dst any) error {
	ev, err := m.Recv()
	if err != nil {
		return err
	}
	d, ok := dst.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "chatclient: RecvMsg into %T", dst)
	}
	proto.Reset(d)
	proto.Merge(d, ev)
	return nil
}
