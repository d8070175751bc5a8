package chatcore

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"

	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// subscribeMethod is the full name of the unary Subscribe: each member of a
// SubscribeStream passes the gate and is counted as one Subscribe call.
const subscribeMethod = "/" + ChatServiceName + "/Subscribe"

// Bounds of a SubscribeStream's writer. A batch is what one Send carries:
// everything ready, up to subscribeBatchEvents events or about
// subscribeBatchBytes (at least one event). At most subscribeStreamQueued
// events wait for the writer; a member that finds the queue full waits,
// as it would in a Subscribe's blocked Send, and the fan-out drops it to
// catch up from the log when its SubscriberBuffer fills (ops.go tail): a
// slow client costs the core a bounded buffer, never an unbounded one.
const (
	subscribeBatchEvents  = 256
	subscribeBatchBytes   = 64 << 10
	subscribeStreamQueued = 1024
)

// subscribe is Subscribe's checks and operation under ctx, delivering with
// deliver: the gate (as the stream interceptor gives Subscribe), the
// participant's authorization, then tail.
// try (nil: none) is deliver without blocking, for fan-out to call under
// the session's lock (see subscriber); it reports whether it took the event.
func (c *Core) subscribe(ctx context.Context, req *chatpb.SubscribeRequest, deliver func(*chatpb.Event) error, try func(*chatpb.Event) bool) error {
	s, keyHash, err := c.checkAuth(ctx, req.GetAuth())
	if err != nil {
		return err
	}
	return c.tail(ctx, s, req.Auth.ParticipantId, keyHash, max(req.FromIndex, 1), deliver, try)
}

// subscribeStream serves one SubscribeStream: it reads member opens and
// cancels with recv, runs each member (Subscribe's gate, checks and tail)
// on its own goroutine, and writes what they deliver with send, packed in
// batches by one writer. It returns when recv fails (io.EOF: the client
// closed its side; nil is returned once every member has ended and its
// end is sent), when send fails, or when this core's term ends
// (errNotPrimary: every member resumes elsewhere). Every member and the
// writer have ended when it returns; the reader ends when recv fails, at
// the latest when the handler has returned, which ends the stream.
func (c *Core) subscribeStream(ctx context.Context, recv func() (*chatpb.SubscribeStreamRequest, error), send func(*chatpb.SubscribeStreamBatch) error) error {
	roleCtx := c.role.Stream()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &subStream{ctx: ctx, members: map[uint64]context.CancelFunc{},
		tokens: make(chan struct{}, subscribeStreamQueued), ready: make(chan struct{}, 1), finish: make(chan struct{})}
	wrote, writerDone := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(writerDone)
		wrote <- st.write(send)
	}()
	received := make(chan error, 1)
	go func() {
		received <- st.read(recv, func(mctx context.Context, id uint64, req *chatpb.SubscribeRequest) {
			st.serve(c, mctx, id, req)
		})
	}()

	var err error
	select {
	case err = <-received:
		if !errors.Is(err, io.EOF) {
			break
		}
		// The client opens no more members: serve those open until they
		// end, then send what is queued (their ends).
		err = nil
		select {
		case <-st.idle():
			close(st.finish)
			err = <-wrote
		case err = <-wrote:
		case <-roleCtx.Done():
			err = c.notPrimary()
		}
	case err = <-wrote:
	case <-roleCtx.Done():
		err = c.notPrimary()
	}
	// Ending ctx ends the members (their tail, or their wait for room in
	// the queue, returns) and the writer (after the Send it is in, as a
	// Subscribe's tail ends after its Send): no Send outlives the handler.
	st.mu.Lock()
	st.stopped = true
	st.mu.Unlock()
	cancel()
	st.running.Wait()
	<-writerDone
	return err
}

// subStream is what a SubscribeStream's reader, members and writer share.
type subStream struct {
	ctx     context.Context // the stream's: done when the handler ends it
	running sync.WaitGroup  // the members' goroutines

	mu       sync.Mutex
	members  map[uint64]context.CancelFunc // open members
	stopped  bool                          // no member may start
	idleCh   chan struct{}                 // closed when members empties (see idle)
	queue    []subItem                     // waiting for the writer
	queueOff bool                          // the writer ended: puts fail

	tokens chan struct{} // one per event queued: bounds the queue
	ready  chan struct{} // signals the writer
	finish chan struct{} // closed: the writer sends what is queued and returns
}

// subItem is an event of a member, or (ev nil) its end.
type subItem struct {
	id   uint64
	ev   *chatpb.Event
	code int32
	msg  string
}

var errStreamEnded = status.Error(status.Code(errNotPrimary), "subscribe stream ended")

// read receives opens and cancels until recv fails or the stream stops
// taking members; start runs a new member under its own context.
func (st *subStream) read(recv func() (*chatpb.SubscribeStreamRequest, error), start func(context.Context, uint64, *chatpb.SubscribeRequest)) error {
	for {
		r, err := recv()
		if err != nil {
			return err
		}
		st.mu.Lock()
		if st.stopped {
			st.mu.Unlock()
			return nil
		}
		if old := st.members[r.Id]; old != nil {
			// A member with the id is open: a cancel ends it; an open
			// with an id in use is the client's bug, and ends both.
			old()
			delete(st.members, r.Id)
			st.noteIdle()
			if !r.Cancel {
				st.queue = append(st.queue, subItem{id: r.Id, code: int32(status.Code(errDupMember)), msg: status.Convert(errDupMember).Message()})
				st.signal()
			}
			st.mu.Unlock()
			continue
		}
		if r.Cancel || r.Subscribe == nil {
			if !r.Cancel {
				st.queue = append(st.queue, subItem{id: r.Id, code: int32(status.Code(errNoSubscribe)), msg: status.Convert(errNoSubscribe).Message()})
				st.signal()
			}
			st.mu.Unlock()
			continue
		}
		mctx, mcancel := context.WithCancel(st.ctx)
		st.members[r.Id] = mcancel
		st.running.Add(1)
		st.mu.Unlock()
		go func() {
			defer st.running.Done()
			start(mctx, r.Id, r.Subscribe)
		}()
	}
}

var (
	errDupMember   = invalid("subscribe stream: member id already open")
	errNoSubscribe = invalid("subscribe stream request opens nothing: no subscribe request")
)

// serve runs member id: the unary Subscribe's gate, checks and tail, each
// event delivered to the writer's queue; then its end, unless the client
// cancelled it or the stream ended.
func (st *subStream) serve(c *Core, ctx context.Context, id uint64, req *chatpb.SubscribeRequest) {
	err := c.gate(ctx, subscribeMethod)
	if err == nil {
		err = c.subscribe(ctx, req, func(ev *chatpb.Event) error { return st.put(ctx, id, ev) },
			func(ev *chatpb.Event) bool { return st.tryPut(id, ev) })
	}
	if err != nil && ctx.Err() != nil {
		if _, ok := status.FromError(err); !ok {
			err = status.FromContextError(ctx.Err()).Err()
		}
	}
	c.countRPC(subscribeMethod, err)
	st.mu.Lock()
	defer st.mu.Unlock()
	cancel, open := st.members[id]
	if !open || st.ctx.Err() != nil {
		return // cancelled by the client (it expects no end), or the stream ended
	}
	cancel()
	delete(st.members, id)
	st.noteIdle()
	s := status.Convert(err)
	st.queue = append(st.queue, subItem{id: id, code: int32(s.Code()), msg: s.Message()})
	st.signal()
}

// put queues ev of member id for the writer, waiting while the queue is
// full, until ctx (the member's) is done.
func (st *subStream) put(ctx context.Context, id uint64, ev *chatpb.Event) error {
	select {
	case st.tokens <- struct{}{}:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	st.mu.Lock()
	if st.queueOff {
		st.mu.Unlock()
		return errStreamEnded
	}
	st.queue = append(st.queue, subItem{id: id, ev: ev})
	st.signal()
	st.mu.Unlock()
	return nil
}

// tryPut queues ev of member id for the writer if the queue has room and
// the writer still takes events; it never waits. Fan-out calls it under the
// session's lock (the lock order: a session's mu, then st.mu).
func (st *subStream) tryPut(id uint64, ev *chatpb.Event) bool {
	select {
	case st.tokens <- struct{}{}:
	default:
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.queueOff {
		<-st.tokens // ours: the writer has ended and takes none
		return false
	}
	st.queue = append(st.queue, subItem{id: id, ev: ev})
	st.signal()
	return true
}

// signal wakes the writer. Call with st.mu held.
func (st *subStream) signal() {
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

// noteIdle closes the channel idle returned when the last member has
// gone. Call with st.mu held.
func (st *subStream) noteIdle() {
	if len(st.members) == 0 && st.idleCh != nil {
		close(st.idleCh)
		st.idleCh = nil
	}
}

// idle returns a channel closed once no member is open.
func (st *subStream) idle() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	ch := make(chan struct{})
	if len(st.members) == 0 {
		close(ch)
	} else {
		st.idleCh = ch
	}
	return ch
}

// write sends batches of what is queued until the stream's context ends
// or send fails.
func (st *subStream) write(send func(*chatpb.SubscribeStreamBatch) error) error {
	defer func() {
		st.mu.Lock()
		st.queueOff = true
		st.mu.Unlock()
	}()
	var taken []subItem
	for {
		finishing := false
		select {
		case <-st.ready:
		case <-st.finish:
			finishing = true
		case <-st.ctx.Done():
			return status.FromContextError(st.ctx.Err()).Err()
		}
		// Let the members that fan-out has just woken queue their events
		// first: one batch for all of them, not a Send for each.
		runtime.Gosched()
		for st.ctx.Err() == nil {
			st.mu.Lock()
			taken = append(taken[:0], st.queue...)
			// The queue's array is reused: what the writer took is copied.
			clear(st.queue)
			st.queue = st.queue[:0]
			st.mu.Unlock()
			if len(taken) == 0 {
				if finishing {
					return nil
				}
				break
			}
			if err := st.sendAll(taken, send); err != nil {
				return err
			}
			clear(taken)
		}
	}
}

// sendAll sends items in batches of bounded size, returning the queue's
// tokens of the events as each batch is built.
func (st *subStream) sendAll(items []subItem, send func(*chatpb.SubscribeStreamBatch) error) error {
	for len(items) > 0 {
		n, events, ends, size := 0, 0, 0, 0
		for n < len(items) && (n == 0 || events < subscribeBatchEvents && size < subscribeBatchBytes) {
			if ev := items[n].ev; ev != nil {
				events++
				size += approxSize(ev)
			} else {
				ends++
			}
			n++
		}
		b := &chatpb.SubscribeStreamBatch{}
		if events > 0 {
			b.Ids, b.Events = make([]uint64, 0, events), make([]*chatpb.Event, 0, events)
			for _, it := range items[:n] {
				if it.ev != nil {
					<-st.tokens
					b.Ids, b.Events = append(b.Ids, it.id), append(b.Events, it.ev)
				}
			}
		}
		if ends > 0 {
			b.Ends = make([]*chatpb.SubscribeStreamBatch_End, 0, ends)
			for _, it := range items[:n] {
				if it.ev == nil {
					b.Ends = append(b.Ends, &chatpb.SubscribeStreamBatch_End{Id: it.id, Code: it.code, Message: it.msg})
				}
			}
		}
		items = items[n:]
		if err := send(b); err != nil {
			return err
		}
	}
	return nil
}

// approxSize is about the encoded size of ev: enough to bound a batch
// without encoding it twice.
func approxSize(ev *chatpb.Event) int {
	n := 48 + len(ev.SessionId) + len(ev.Text) + len(ev.ClientMessageId) + len(ev.From.GetId()) + len(ev.From.GetNickname())
	for k, v := range ev.Attrs {
		n += len(k) + len(v) + 4
	}
	return n
}
