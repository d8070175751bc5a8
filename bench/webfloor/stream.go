package webfloor

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/hachat/hachat/sse"
)

// event is one event of a push channel: its id ("" for none), its name (""
// for the default "message" event) and its data.
type event struct {
	id, name string
	data     []byte
}

// Buffers and bursts of the push channels, as webapi and interaction have
// them: a customer's channel holds 16 events between the send and its
// writer and writes at most 64 at once; an agent's 1,024 and 256.
const (
	customerBuffer = 16
	customerBurst  = 64
	agentBuffer    = 1024
	agentBurst     = 256
)

// errGone reports a push channel that has ended.
var errGone = errors.New("floor: push channel gone")

// stream is one open push channel. Senders hand it events with push; its
// writer, the goroutine of the request that opened it, writes them.
type stream struct {
	ch    chan event
	burst int           // the most events written at once
	done  chan struct{} // closed when the writer returns
}

func newStream(buffer, burst int) *stream {
	return &stream{ch: make(chan event, buffer), burst: burst, done: make(chan struct{})}
}

// push hands ev to the writer, waiting while it is behind, until ctx ends
// or the stream does (errGone).
func (st *stream) push(ctx context.Context, ev event) error {
	select {
	case st.ch <- ev:
		return nil
	case <-st.done:
		return errGone
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveIn is serve with the stream in *slot (guarded by mu) while it
// serves, replacing the one there before: the chat's or the agent's push
// channel.
func (st *stream) serveIn(ctx context.Context, w http.ResponseWriter, mu *sync.Mutex, slot **stream, heartbeat func(*sse.Writer) error) {
	mu.Lock()
	*slot = st
	mu.Unlock()
	defer func() {
		mu.Lock()
		if *slot == st {
			*slot = nil
		}
		mu.Unlock()
	}()
	st.serve(ctx, w, heartbeat)
}

// serve answers the push channel's request and writes its events until
// ctx ends or a write fails (the client went away or is too slow);
// heartbeat writes the stream's heartbeat when it has been idle (the sse
// package's rule).
func (st *stream) serve(ctx context.Context, w http.ResponseWriter, heartbeat func(*sse.Writer) error) {
	defer close(st.done)
	out, err := sse.Start(w, sse.Options{})
	if err != nil {
		return
	}
	defer out.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-out.Due():
			if out.Idle() && heartbeat(out) != nil {
				return
			}
		case ev := <-st.ch:
			if st.writeReady(out, ev) != nil {
				return
			}
		}
	}
}

// writeReady writes ev and the events already waiting behind it (up to
// the stream's burst in all) in one write and flush.
func (st *stream) writeReady(out *sse.Writer, ev event) error {
	if err := out.Queue(ev.id, ev.name, ev.data); err != nil {
		return err
	}
	for range st.burst - 1 {
		select {
		case ev = <-st.ch:
			if err := out.Queue(ev.id, ev.name, ev.data); err != nil {
				return err
			}
			continue
		default:
		}
		break
	}
	return out.Flush()
}
