package webapi

import (
	"context"
	"net/http"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rotation is whether the instance is in the edge's rotation: out while it
// has no path to the chat cores (its sidecar died). Leaving ends what the
// instance holds open, so that its clients come back through the edge to
// another instance.
type rotation struct {
	mu     sync.Mutex
	out    bool
	reason string
	gone   context.Context // cancelled when the instance leaves rotation; replaced when it returns
	leave  context.CancelFunc
	srv    *http.Server // the server Serve runs, nil before
}

func newRotation() *rotation {
	r := &rotation{}
	r.gone, r.leave = context.WithCancel(context.Background())
	return r
}

// state returns the context that is cancelled when the instance next
// leaves rotation, and an error when it is out now.
func (r *rotation) state() (context.Context, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out {
		return r.gone, status.Error(codes.Unavailable, "this instance has no path to the chat cores ("+r.reason+"); the edge sends new connections to another")
	}
	return r.gone, nil
}

// serving records the HTTP server, so that leaving rotation can stop its
// keep-alives; it applies a leave that came first.
func (r *rotation) serving(srv *http.Server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv = srv
	if r.out {
		srv.SetKeepAlivesEnabled(false)
	}
}

// LeaveRotation takes the instance out of the edge's rotation because it
// has no path to the chat cores (reason says why): the instance's gossip
// registration is withdrawn by the caller (membership.Presence), and here
// every open push channel ends (each browser's EventSource reconnects with
// Last-Event-ID through the edge to an instance that can serve it), calls
// in flight to the core give up at once and answer "send the same request
// again", new calls do so without trying, and keep-alive connections close
// after their current answer (idle ones at once): the edge is L4 and keeps
// a client's connection on this instance as long as it stays open. The
// process itself stays up (/healthz, /metrics). It does nothing if the
// instance is out already.
func (s *Server) LeaveRotation(reason string) {
	r := s.rotation
	r.mu.Lock()
	if r.out {
		r.mu.Unlock()
		return
	}
	r.out, r.reason = true, reason
	// Keep-alives go off before the calls in flight are cancelled, so that
	// their answers carry Connection: close (the other order raced).
	if r.srv != nil {
		r.srv.SetKeepAlivesEnabled(false) // closes the idle connections too
	}
	r.leave()
	r.mu.Unlock()
	s.metrics.inRotation.Set(0)
	s.metrics.sseEnded.Inc()
	s.log.Warn("out of the edge's rotation: push channels ended, calls refused, keep-alives off; clients reconnect through the edge to another instance",
		"reason", reason)
}

// ReturnToRotation undoes LeaveRotation once the path to the chat cores is
// back. It does nothing if the instance is in rotation.
func (s *Server) ReturnToRotation() {
	r := s.rotation
	r.mu.Lock()
	if !r.out {
		r.mu.Unlock()
		return
	}
	r.out, r.reason = false, ""
	r.gone, r.leave = context.WithCancel(context.Background())
	if r.srv != nil {
		r.srv.SetKeepAlivesEnabled(true)
	}
	r.mu.Unlock()
	s.metrics.inRotation.Set(1)
	s.log.Info("back in the edge's rotation: the path to the chat cores is up")
}
