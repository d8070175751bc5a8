// Package sse writes Server-Sent Events: the push streams of webapi (the
// customer's channel) and of interaction (the agent's), one writer for both.
//
// A Writer frames events (id, event, data; multi-line data as several data
// lines), flushes each one (or, with Queue and Flush, several that are
// ready together in one write), bounds each write with a deadline (a client
// that does not take an event within WriteTimeout, give or take a quarter,
// is too slow: the write fails and the caller ends the stream, which its
// browser then reopens), and
// tells its caller when a heartbeat is due.
//
// The heartbeat rule, the same on every stream: a stream that has written
// nothing for the heartbeat interval (15 s by default, under the 60 s idle
// timeout common in proxies) gets a heartbeat; writing anything resets the
// interval, so a busy stream carries no heartbeats. A heartbeat is the comment
// line ": ping" (Ping), which EventSource ignores, unless the stream's API
// names a heartbeat event: the customer channel sends its documented
// "heartbeat" event instead, and that resets the interval like any event.
package sse

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Defaults of Options.
const (
	// DefaultHeartbeat is the idle interval after which a heartbeat is due.
	DefaultHeartbeat = 15 * time.Second
	// DefaultWriteTimeout bounds the write and flush of one event.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultRetry is the reconnection delay the stream advises its client.
	DefaultRetry = time.Second
)

// Options configure a Writer; zero fields take the defaults above.
type Options struct {
	// Heartbeat is the idle interval after which Due fires.
	Heartbeat time.Duration
	// WriteTimeout bounds the write and flush of one event: a client that
	// takes longer (at most a quarter longer) is too slow, and the write
	// fails.
	WriteTimeout time.Duration
	// Retry is sent first as the "retry:" field: how long the browser waits
	// before reopening the stream when it drops.
	Retry time.Duration
	// CacheControl is the Cache-Control header (default "no-store").
	CacheControl string
}

// ErrBadField reports an event name or id that cannot be framed: it holds a
// line break (or, for an id, a NUL), which would end the field early.
var ErrBadField = errors.New("sse: field holds a line break")

// Writer writes one response's events. It is for one goroutine.
type Writer struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	opts Options
	buf  []byte // framed events not yet written
	// idle fires at the earliest moment a heartbeat may be due; ticking:
	// it is armed and its firing not yet handled by Idle; last: when the
	// stream last wrote.
	idle    *time.Timer
	ticking bool
	last    time.Time
	// armed: a write deadline is set on the connection (cleared by Stop),
	// at deadline.
	armed    bool
	deadline time.Time
}

// maxQueued is the size of queued events past which Queue flushes on its
// own, so that a caller draining a long backlog writes it in pieces.
const maxQueued = 64 << 10

// keptBuffer is the largest buffer a Writer keeps between writes.
const keptBuffer = 4 << 10

// Start answers 200 with the headers of an event stream (Content-Type
// text/event-stream, Cache-Control, X-Accel-Buffering: no so that nginx does
// not buffer it), writes the retry advice and flushes. Stop the Writer when
// the stream ends.
func Start(w http.ResponseWriter, opts Options) (*Writer, error) {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Retry <= 0 {
		opts.Retry = DefaultRetry
	}
	if opts.CacheControl == "" {
		opts.CacheControl = "no-store"
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", opts.CacheControl)
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &Writer{w: w, rc: http.NewResponseController(w), opts: opts, idle: time.NewTimer(opts.Heartbeat), ticking: true}
	sw.buf = append(sw.buf[:0], "retry: "...)
	sw.buf = strconv.AppendInt(sw.buf, opts.Retry.Milliseconds(), 10)
	sw.buf = append(sw.buf, "\n\n"...)
	if err := sw.flush(); err != nil {
		sw.Stop()
		return nil, err
	}
	return sw, nil
}

// Stop releases the heartbeat timer and clears the write deadline, so that
// the connection, kept alive, carries none into its next response. Events
// queued and not flushed are dropped.
func (sw *Writer) Stop() {
	sw.idle.Stop()
	sw.buf = sw.buf[:0]
	if sw.armed {
		_ = sw.rc.SetWriteDeadline(time.Time{})
		sw.armed = false
	}
}

// Due fires when a heartbeat may be due: at the latest one heartbeat
// interval after the stream's last write, and on a busy stream about once
// an interval. The caller then asks Idle and, when it says so, writes a
// heartbeat (Ping, or its own event):
//
//	case <-sw.Due():
//		if sw.Idle() {
//			err = sw.Ping()
//		}
func (sw *Writer) Due() <-chan time.Time { return sw.idle.C }

// Idle is called when Due fired: it reports whether the stream has written
// nothing for the heartbeat interval, so that a heartbeat is due now. When
// the stream wrote since, it re-arms Due for the rest of the interval from
// that write and returns false.
func (sw *Writer) Idle() bool {
	sw.ticking = false
	rest := sw.opts.Heartbeat - time.Since(sw.last)
	if rest <= 0 {
		return true // the caller's heartbeat write re-arms the timer
	}
	sw.idle.Reset(rest)
	sw.ticking = true
	return false
}

// Ping writes the heartbeat comment ": ping" (after any queued events).
func (sw *Writer) Ping() error {
	sw.buf = append(sw.buf, ": ping\n\n"...)
	return sw.flush()
}

// Event writes one event: id (empty: none, the browser keeps its last
// event id), name (empty: the default "message" event) and data, each line
// of which becomes a data line (a CR LF or CR ends a line too). Events
// queued before it go out in the same write.
func (sw *Writer) Event(id, name string, data []byte) error {
	if err := sw.frame(id, name, data); err != nil {
		return err
	}
	return sw.flush()
}

// Queue frames one event like Event but leaves it in the Writer's buffer:
// the next Flush (or Event, or Ping) writes every queued event at once, one
// write and one flush for a burst of events that were ready together. Past
// 64 KiB queued it flushes on its own. The stream's heartbeat interval
// restarts only when the events are written.
func (sw *Writer) Queue(id, name string, data []byte) error {
	if err := sw.frame(id, name, data); err != nil {
		return err
	}
	if len(sw.buf) >= maxQueued {
		return sw.flush()
	}
	return nil
}

// Flush writes the queued events, if any.
func (sw *Writer) Flush() error {
	if len(sw.buf) == 0 {
		return nil
	}
	return sw.flush()
}

// frame appends one event to the buffer.
func (sw *Writer) frame(id, name string, data []byte) error {
	if strings.ContainsAny(id, "\r\n\x00") || strings.ContainsAny(name, "\r\n") {
		return fmt.Errorf("%w: id %q, event %q", ErrBadField, id, name)
	}
	b := sw.buf
	if id != "" {
		b = append(append(append(b, "id: "...), id...), '\n')
	}
	if name != "" {
		b = append(append(append(b, "event: "...), name...), '\n')
	}
	for {
		i := indexLineBreak(data)
		if i < 0 {
			break
		}
		b = append(append(append(b, "data: "...), data[:i]...), '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	b = append(append(append(b, "data: "...), data...), "\n\n"...)
	sw.buf = b
	return nil
}

// indexLineBreak returns the index of the first CR or LF in b, or -1.
func indexLineBreak(b []byte) int {
	for i, c := range b {
		if c == '\n' || c == '\r' {
			return i
		}
	}
	return -1
}

// flush writes the buffer within the write timeout, flushes, empties the
// buffer and restarts the heartbeat interval: it notes the time, and arms
// the timer only when Idle left it unarmed.
//
// The deadline bounds only writes, and is left in place after one: every
// write first makes sure at least WriteTimeout of it remains, so an idle
// stream is never failed for being idle (Stop clears it). A busy stream
// does not pay a deadline call per write: the deadline is set WriteTimeout
// plus a quarter of it ahead and moved only when less than WriteTimeout
// remains, so each write gets between WriteTimeout and 1.25 WriteTimeout,
// and a stream writing many events a second moves its deadline a few times
// a minute.
func (sw *Writer) flush() error {
	now := time.Now()
	if !sw.armed || sw.deadline.Sub(now) < sw.opts.WriteTimeout {
		sw.deadline = now.Add(sw.opts.WriteTimeout + sw.opts.WriteTimeout/4)
		_ = sw.rc.SetWriteDeadline(sw.deadline)
		sw.armed = true
	}
	_, err := sw.w.Write(sw.buf)
	if cap(sw.buf) > keptBuffer {
		sw.buf = nil // a burst's buffer is not kept by an idle stream
	} else {
		sw.buf = sw.buf[:0]
	}
	if err != nil {
		return fmt.Errorf("sse: write: %w", err)
	}
	if err := sw.rc.Flush(); err != nil {
		return fmt.Errorf("sse: flush: %w", err)
	}
	sw.last = now
	if !sw.ticking {
		sw.idle.Reset(sw.opts.Heartbeat)
		sw.ticking = true
	}
	return nil
}

// ErrBadLastEventID reports a Last-Event-ID that is not a transcript index.
var ErrBadLastEventID = errors.New("sse: Last-Event-ID is not an index")

// maxIDLen bounds the Last-Event-ID read: 20 digits hold any uint64.
const maxIDLen = 64

// ParseLastEventID reads a Last-Event-ID header that names an event index:
// a decimal integer, surrounding spaces and leading zeros allowed. It
// returns ok false for an empty (or blank) header, which means "no event
// seen", and ErrBadLastEventID for anything else that is not such a number:
// a sign, a fraction, hex, text, or a value of 2^64-1 or more (whose next
// index would not fit).
func ParseLastEventID(h string) (id uint64, ok bool, err error) {
	if len(h) > maxIDLen {
		return 0, false, fmt.Errorf("%w: longer than %d bytes", ErrBadLastEventID, maxIDLen)
	}
	v := strings.TrimSpace(h)
	if v == "" {
		return 0, false, nil
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false, fmt.Errorf("%w: %q", ErrBadLastEventID, v)
		}
	}
	n, perr := strconv.ParseUint(v, 10, 64)
	if perr != nil || n == math.MaxUint64 {
		return 0, false, fmt.Errorf("%w: %q is out of range", ErrBadLastEventID, v)
	}
	return n, true, nil
}
