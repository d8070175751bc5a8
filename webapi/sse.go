package webapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/jsonenc"
	"github.com/hachat/hachat/sse"
)

// SSE event names of the push channel besides the transcript messages, which
// are sent as unnamed events (the browser's "message" event) with id = index.
const (
	sseReconnecting = "reconnecting" // the core subscription broke; resuming
	sseReconnected  = "reconnected"  // resumed from the last index
	sseHeartbeat    = "heartbeat"    // the channel is alive
	sseEnded        = "ended"        // the chat has ended; the stream closes
	sseChatError    = "chat-error"   // unrecoverable (403/404 after start); the stream closes
)

// event writes one event of the push channel with JSON data; an empty name
// is the default "message" event and id 0 leaves the browser's last event id
// unchanged.
func (pc *pushChannel) event(name string, id uint64, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("encode sse data: %w", err)
	}
	var ids string
	if id > 0 {
		ids = strconv.FormatUint(id, 10)
	}
	return pc.out.Event(ids, name, b)
}

// notice is the data of the push channel's own events.
type notice struct {
	Text         string     `json:"text,omitempty"`
	NextPosition uint64     `json:"nextPosition,omitempty"`
	UTCTime      int64      `json:"utcTime"`
	Errors       []apiError `json:"errors,omitempty"`
}

// errStreamDone ends a push channel without error.
var errStreamDone = errors.New("push channel done")

// pushChannel is the state of one browser's push channel.
type pushChannel struct {
	s      *Server
	out    *sse.Writer
	auth   *chatpb.Auth
	next   uint64 // index of the next event to write
	events int
	reset  <-chan struct{} // closed when the instance leaves the edge's rotation
	data   []byte          // an event's JSON, reused: the sse.Writer copies it

	// mu makes follow's loop and its reader take turns at out, next,
	// events, data and follow's reconnecting flag while the reader runs;
	// run alone uses them otherwise.
	mu sync.Mutex
}

// handleEvents serves the push channel: GET .../{chatId}/events?userId=
// &secureKey=&transcriptPosition=. It writes the transcript from the
// position (or from the browser's Last-Event-ID + 1), then every new event as
// it is committed. If the core subscription breaks (failover, restart), it
// writes a "reconnecting" event, resumes from the last index and writes
// "reconnected"; the HTTP stream itself stays open throughout.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	req, auth, ok := s.parseChat(w, r)
	if !ok {
		return
	}
	from := req.TranscriptPosition
	if n, ok, err := sse.ParseLastEventID(r.Header.Get("Last-Event-ID")); err != nil {
		s.writeError(w, r, errorf("Last-Event-ID must be a transcript index"))
		return
	} else if ok {
		from = n + 1
	}
	if from == 0 {
		from = 1
	}
	// The first read answers with a plain HTTP error when the chat is
	// unknown or the key wrong, so the browser's EventSource stops there.
	var first *chatpb.EventsResponse
	err := s.call(r.Context(), "Events", func(ctx context.Context) error {
		var err error
		first, err = s.core.Events(ctx, &chatpb.EventsRequest{Auth: auth, FromIndex: from})
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The stream starts with the advice to reconnect after 1 s if it drops.
	out, err := sse.Start(w, sse.Options{Heartbeat: s.cfg.SSEHeartbeat})
	if err != nil {
		s.log.Debug("push channel lost at once", "chat", auth.GetSessionId(), "err", err)
		return
	}
	defer out.Stop()
	s.metrics.sseClients.Inc()
	defer s.metrics.sseClients.Dec()
	gone, _ := s.rotation.state()
	pc := &pushChannel{s: s, out: out, auth: auth, next: from, reset: gone.Done()}
	s.log.Info("push channel opened", "chat", auth.GetSessionId(), "user", auth.GetParticipantId(), "from", from)
	err = pc.run(r.Context(), first)
	if errors.Is(err, errStreamDone) || r.Context().Err() != nil {
		err = nil
	}
	s.log.Info("push channel closed", "chat", auth.GetSessionId(), "user", auth.GetParticipantId(),
		"events", pc.events, "next", pc.next, "err", err)
}

// run writes the first batch, then follows the core until the chat ends, the
// browser goes away or the server stops.
func (pc *pushChannel) run(ctx context.Context, first *chatpb.EventsResponse) error {
	if err := pc.batch(first); err != nil {
		return err
	}
	reconnecting := false
	backoff := 20 * time.Millisecond
	for {
		err := pc.follow(ctx, &reconnecting)
		if errors.Is(err, errResubscribe) {
			continue
		}
		if errors.Is(err, errStreamDone) || ctx.Err() != nil {
			return err
		}
		if fatal, done := pc.fatal(err); done {
			return fatal
		}
		if !reconnecting {
			reconnecting = true
			pc.s.metrics.sseReconnects.WithLabelValues("reconnecting").Inc()
			pc.s.log.Warn("core subscription broke, resuming", "chat", pc.auth.GetSessionId(), "next", pc.next, "err", err)
			if err := pc.event(sseReconnecting, 0, notice{
				Text: "connection to the chat server lost; reconnecting", NextPosition: pc.next, UTCTime: time.Now().UnixMilli(),
			}); err != nil {
				return err
			}
		}
		// Catch up with a unary read: it proves the core is back (a stream
		// open does not) and fetches what was committed meanwhile.
		if err := pc.wait(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, time.Second)
		cctx, cancel := context.WithTimeout(ctx, pc.s.cfg.CoreTimeout)
		er, err := pc.s.core.Events(cctx, &chatpb.EventsRequest{Auth: pc.auth, FromIndex: pc.next})
		cancel()
		if err != nil {
			if fatal, done := pc.fatal(err); done {
				return fatal
			}
			continue
		}
		backoff = 20 * time.Millisecond
		if err := pc.resumed(&reconnecting); err != nil {
			return err
		}
		if err := pc.batch(er); err != nil {
			return err
		}
	}
}

// resumeSettle is how long a stream resumed by the chat client must stay up,
// without delivering anything, before webapi reads from the core to prove a
// primary serves the chat (and then tells the browser "reconnected").
const resumeSettle = 150 * time.Millisecond

// errResubscribe ends a follow whose stream was proved back by a read: run
// follows again at once, from the read's end.
var errResubscribe = errors.New("webapi: follow again on a new stream")

// proof is the answer of that read.
type proof struct {
	er  *chatpb.EventsResponse
	err error
}

// observed reports a stream loss or resume that the chat client handled
// inside the stream.
func (pc *pushChannel) observed(connected bool, reconnecting *bool) error {
	if connected {
		return pc.resumed(reconnecting)
	}
	if *reconnecting {
		return nil
	}
	*reconnecting = true
	pc.s.metrics.sseReconnects.WithLabelValues("reconnecting").Inc()
	pc.s.log.Warn("core subscription lost, the chat client is resuming it", "chat", pc.auth.GetSessionId(), "next", pc.next)
	return pc.event(sseReconnecting, 0, notice{
		Text: "connection to the chat server lost; reconnecting", NextPosition: pc.next, UTCTime: time.Now().UnixMilli(),
	})
}

// resumed writes "reconnected" once a broken subscription is back.
func (pc *pushChannel) resumed(reconnecting *bool) error {
	if !*reconnecting {
		return nil
	}
	*reconnecting = false
	pc.s.metrics.sseReconnects.WithLabelValues("reconnected").Inc()
	pc.s.log.Info("core subscription resumed", "chat", pc.auth.GetSessionId(), "next", pc.next)
	return pc.event(sseReconnected, 0, notice{
		Text: "reconnected to the chat server", NextPosition: pc.next, UTCTime: time.Now().UnixMilli(),
	})
}

// fatal decides whether a core error ends the push channel: an unknown
// chat, a wrong key or a bad request end it with a chat-error event, an
// ended chat with an ended event. Anything else is worth a reconnect.
func (pc *pushChannel) fatal(err error) (error, bool) {
	switch status.Code(err) {
	case codes.NotFound, codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument:
		f := classify(err)
		if werr := pc.event(sseChatError, 0, notice{UTCTime: time.Now().UnixMilli(), Errors: []apiError{{Code: f.Code, Advice: f.Advice}}}); werr != nil {
			return werr, true
		}
		return fmt.Errorf("core refused the subscription: %w", err), true
	case codes.FailedPrecondition:
		return pc.end(), true
	}
	return nil, false
}

// end writes the "ended" event and finishes the channel.
func (pc *pushChannel) end() error {
	if err := pc.event(sseEnded, 0, notice{Text: "the chat has ended", NextPosition: pc.next, UTCTime: time.Now().UnixMilli()}); err != nil {
		return err
	}
	return errStreamDone
}

// wait sleeps for d while keeping the heartbeat going.
func (pc *pushChannel) wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pc.s.stopping:
			return errStreamDone
		case <-pc.reset:
			return errStreamDone
		case <-pc.out.Due():
			if !pc.out.Idle() {
				continue
			}
			if err := pc.heartbeat(); err != nil {
				return err
			}
		case <-t.C:
			return nil
		}
	}
}

// heartbeat writes the channel's heartbeat when the stream has been idle
// for sse-heartbeat (the sse package's rule: Due fired and Idle said so):
// the documented "heartbeat"
// event, in place of the sse package's comment.
func (pc *pushChannel) heartbeat() error {
	return pc.event(sseHeartbeat, 0, notice{NextPosition: pc.next, UTCTime: time.Now().UnixMilli()})
}

// batch writes a unary read's events, in one write; ended finishes the
// channel.
func (pc *pushChannel) batch(er *chatpb.EventsResponse) error {
	for _, ev := range er.GetEvents() {
		if err := pc.write(ev); err != nil {
			return err
		}
	}
	if n := er.GetNextIndex(); n > pc.next {
		pc.next = n
	}
	if er.GetEnded() {
		return pc.end()
	}
	return pc.out.Flush()
}

// write queues one event unless it was written already, and advances next;
// the caller flushes (the channel's own events flush what is queued too).
func (pc *pushChannel) write(ev *chatpb.Event) error {
	if ev.GetIndex() < pc.next {
		return nil // already written: a resumed stream may repeat
	}
	pc.next = ev.GetIndex() + 1
	if m, ok := messageOf(ev); ok {
		b := m.appendJSON(pc.data[:0]) // as json.Marshal(m) writes it
		pc.data = jsonenc.Reuse(b)     // Queue copies b before the next use
		var id string
		if ev.GetIndex() > 0 {
			id = strconv.FormatUint(ev.GetIndex(), 10)
		}
		if err := pc.out.Queue(id, "", b); err != nil {
			return err
		}
		pc.events++
		pc.s.metrics.sseEvents.Inc()
	}
	// The chat is over for this participant when it ends, or when the
	// participant itself has left (the core closes its stream there).
	if ev.GetKind() == chatpb.EventKind_EVENT_KIND_SESSION_ENDED ||
		ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.GetFrom().GetId() == pc.auth.GetParticipantId() {
		return pc.end()
	}
	return nil
}

// follow subscribes from next and writes events until the stream breaks
// (returned as the error), the chat ends or ctx is done.
//
// The stream's reader writes each event itself, in its own goroutine, as
// soon as Recv returns it: no hand-off to this one, whose loop takes care of
// the rest (heartbeats, the chat client's reconnect notices and the read
// that proves a resumed stream, the ends of the channel). pc.mu makes the
// two take turns at the channel's writer and state.
func (pc *pushChannel) follow(ctx context.Context, reconnecting *bool) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A resuming client (package chatclient) rides out core failovers inside
	// the stream; its observer tells us, so the browser still hears of them.
	resumes := make(chan bool)
	sctx = chatclient.WithStreamObserver(sctx, func(connected bool, err error) {
		select {
		case resumes <- connected:
		case <-sctx.Done():
		}
	})
	stream, err := pc.s.core.Subscribe(sctx, &chatpb.SubscribeRequest{Auth: pc.auth, FromIndex: pc.next})
	if err != nil {
		return err
	}
	// ended carries why the reader stopped: the stream broke, the chat
	// ended or a write failed.
	ended := make(chan error, 1)
	done := make(chan struct{})
	go func() { // owned by follow: ends when sctx is cancelled
		defer close(done)
		ended <- pc.deliver(stream, reconnecting)
	}()
	// proofs are the unary reads in flight (below); they end with sctx.
	var proofs sync.WaitGroup
	defer proofs.Wait()
	defer func() { cancel(); <-done }()
	// A resumed stream is only believed once it delivers an event, or once
	// it stayed up for resumeSettle and a unary read from next succeeds:
	// during a promotion the client may reach a core that accepts the
	// stream and then refuses it (not primary), many times a second, and
	// under load the refusal can take longer than any settle time. Only a
	// primary answers the read, so the browser sees one reconnect, not a
	// flurry, however slow the machine.
	var settle *time.Timer
	var settled <-chan time.Time
	var proving chan proof // the read in flight, nil when none
	defer func() {
		if settle != nil {
			settle.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pc.s.stopping:
			return errStreamDone
		case <-pc.reset:
			return errStreamDone
		case err := <-ended:
			return err
		case <-pc.out.Due():
			if err := pc.heartbeatIfIdle(); err != nil {
				return err
			}
		case connected := <-resumes:
			if settle != nil {
				settle.Stop()
				settle, settled = nil, nil
			}
			proving = nil // a read started before this change proves nothing now
			if connected {
				settle = time.NewTimer(resumeSettle)
				settled = settle.C
				continue
			}
			pc.mu.Lock()
			err := pc.observed(false, reconnecting)
			pc.mu.Unlock()
			if err != nil {
				return err
			}
		case <-settled:
			settle, settled = nil, nil
			pc.mu.Lock()
			quiet := !*reconnecting
			from := pc.next
			pc.mu.Unlock()
			if quiet || proving != nil {
				continue
			}
			proving = make(chan proof, 1)
			proofs.Add(1)
			go func(out chan<- proof, from uint64) { // owned by follow: bounded by core-timeout and sctx
				defer proofs.Done()
				cctx, cancel := context.WithTimeout(sctx, pc.s.cfg.CoreTimeout)
				defer cancel()
				er, err := pc.s.core.Events(cctx, &chatpb.EventsRequest{Auth: pc.auth, FromIndex: from})
				out <- proof{er, err}
			}(proving, from)
		case p := <-proving:
			proving = nil
			if p.err != nil {
				pc.mu.Lock()
				fatal, done := pc.fatal(p.err)
				pc.mu.Unlock()
				if done {
					return fatal
				}
				// Still no primary: try again after another settle while
				// the stream stays up.
				settle = time.NewTimer(resumeSettle)
				settled = settle.C
				continue
			}
			pc.mu.Lock()
			err := pc.resumed(reconnecting)
			if err == nil {
				err = pc.batch(p.er)
			}
			pc.mu.Unlock()
			if err != nil {
				return err
			}
			// The stream may still be the one opened on a core that was not
			// primary yet, its refusal on the way: follow again from next
			// on a stream opened now, so that refusal is never heard.
			return errResubscribe
		}
	}
}

// heartbeatIfIdle writes the heartbeat when Due fired and the stream has
// been idle since (sse.Writer.Idle).
func (pc *pushChannel) heartbeatIfIdle() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.out.Idle() {
		return nil
	}
	return pc.heartbeat()
}

// deliver is follow's reader: it writes each event the stream returns, in
// order, and returns why it stopped (the stream's error, errStreamDone once
// the chat ended for this participant, or a failed write).
func (pc *pushChannel) deliver(stream grpc.ServerStreamingClient[chatpb.Event], reconnecting *bool) error {
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("core closed the subscription: %w", status.Error(codes.Unavailable, "stream ended"))
			}
			return err
		}
		if err := pc.deliverOne(ev, reconnecting); err != nil {
			return err
		}
	}
}

// deliverOne writes one event received on the stream and flushes it.
func (pc *pushChannel) deliverOne(ev *chatpb.Event, reconnecting *bool) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if err := pc.resumed(reconnecting); err != nil {
		return err
	}
	if err := pc.write(ev); err != nil {
		return err
	}
	return pc.out.Flush()
}
