package chatclient

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/pairs"
)

// sendKey names one shared stream: Send's and Subscribe's streams are
// kept per target and pair.
type sendKey struct {
	target int32  // index of the target it is open on
	pair   string // the pair its calls are about (pairs.Of of the session id)
}

// streamSet is the Client's set of shared streams of one kind (Send's,
// Subscribe's): one per target and pair, opened at first use, each with a
// reader and a writer goroutine that end with it; and the targets and
// pairs that answered UNIMPLEMENTED, which get unary calls for
// unimplementedRecheck.
type streamSet[S any] struct {
	base context.Context // parent of every stream; done when the Client closes
	stop context.CancelFunc

	mu      sync.Mutex
	open    map[sendKey]*S
	unaryTo map[sendKey]time.Time // answered UNIMPLEMENTED: unary until then
	running sync.WaitGroup        // a reader and a writer per stream opened
}

func (ss *streamSet[S]) init() {
	ss.base, ss.stop = context.WithCancel(context.Background())
	ss.open = map[sendKey]*S{}
	ss.unaryTo = map[sendKey]time.Time{}
}

// close cancels every stream and waits for their readers (which fail what
// is in flight on them) and writers.
func (ss *streamSet[S]) close() {
	if ss.stop == nil {
		return
	}
	ss.stop()
	ss.running.Wait()
}

// opened is a stream start has opened: the stream, and its reader and
// writer, which must return once the stream's context is done.
type opened[S any] struct {
	s           *S
	read, write func()
}

// get returns the stream open for key, or opens one with start: errUseUnary
// while key answers UNIMPLEMENTED. start gets the stream's context (with the
// pair header; cancelled by Close, by cancel, or with errStalled when its
// target stalls) and must not wait for the core: a refusal shows on the
// first Recv.
func (ss *streamSet[S]) get(c *Client, key sendKey, start func(ctx context.Context, cancel context.CancelCauseFunc) (opened[S], error)) (*S, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s := ss.open[key]; s != nil {
		return s, nil
	}
	if until, ok := ss.unaryTo[key]; ok {
		if time.Now().Before(until) {
			return nil, errUseUnary
		}
		delete(ss.unaryTo, key)
	}
	if ss.base.Err() != nil {
		return nil, status.Error(codes.Canceled, "chatclient: closed")
	}
	ctx, cancel := context.WithCancelCause(ss.base)
	if key.pair != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, pairs.Header, key.pair)
	}
	o, err := start(ctx, cancel)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	untrack := c.trackStream(&streamCancel{cancel: cancel, send: true}, key.target) // a stalled target cancels it (Client.stallIfSilent)
	ss.open[key] = o.s
	// Both end with the stream: the reader when Recv fails (the stream's
	// context cancelled, by Close or a stall, or the core gone), the writer
	// when that context is done or its Send fails.
	ss.running.Add(2)
	go func() {
		defer ss.running.Done()
		defer untrack()
		o.read()
	}()
	go func() {
		defer ss.running.Done()
		o.write()
	}()
	return o.s, nil
}

// forget drops s, the stream of key, after it failed with err (the next
// call opens another); errUseUnary sends key's calls unary for
// unimplementedRecheck.
func (ss *streamSet[S]) forget(key sendKey, s *S, err error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.open[key] == s {
		delete(ss.open, key)
	}
	if errors.Is(err, errUseUnary) {
		ss.unaryTo[key] = time.Now().Add(unimplementedRecheck)
	}
}

// streamErr says what the failure of a stream (its context ctx, what Recv
// returned err; what names the stream in the message) means for the calls
// in flight on it: each is retried (UNAVAILABLE) unless the core refused
// the stream itself; errUseUnary when the core does not implement it.
func (ss *streamSet[S]) streamErr(ctx context.Context, err error, what string) error {
	if ss.closed() {
		return status.Error(codes.Canceled, "chatclient: closed")
	}
	if errors.Is(context.Cause(ctx), errStalled) {
		return status.Error(codes.Unavailable, "chat core stalled")
	}
	switch status.Code(err) {
	case codes.Unimplemented:
		return errUseUnary
	case codes.PermissionDenied, codes.Unauthenticated:
		return err // who we are will not change on a retry
	case codes.Unavailable:
		return err
	}
	return status.Errorf(codes.Unavailable, "chatclient: %s failed: %v", what, err)
}

// closed reports whether the Client has closed.
func (ss *streamSet[S]) closed() bool { return ss.base.Err() != nil }
