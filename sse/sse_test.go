package sse

import (
	"bufio"
	"errors"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, opts Options) (*Writer, *httptest.ResponseRecorder) {
	t.Helper()
	rec := httptest.NewRecorder()
	w, err := Start(rec, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w, rec
}

func TestStartHeaders(t *testing.T) {
	_, rec := start(t, Options{})
	h := rec.Result().Header
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if rec.Code != 200 || rec.Body.String() != "retry: 1000\n\n" || !rec.Flushed {
		t.Errorf("start wrote %d %q (flushed %v)", rec.Code, rec.Body.String(), rec.Flushed)
	}
}

func TestEventFraming(t *testing.T) {
	for _, tc := range []struct {
		name, id, event, data string
		want                  string
		err                   error
	}{
		{"message with id", "7", "", `{"a":1}`, "id: 7\ndata: {\"a\":1}\n\n", nil},
		{"named, no id", "", "reconnecting", `{}`, "event: reconnecting\ndata: {}\n\n", nil},
		{"id and name", "3", "chat", "x", "id: 3\nevent: chat\ndata: x\n\n", nil},
		{"empty data", "", "", "", "data: \n\n", nil},
		{"multi-line data", "", "", "a\nb\r\nc\rd", "data: a\ndata: b\ndata: c\ndata: d\n\n", nil},
		{"trailing newline", "", "", "a\n", "data: a\ndata: \n\n", nil},
		{"name with a line break", "", "a\nb", "x", "", ErrBadField},
		{"id with a line break", "1\n2", "", "x", "", ErrBadField},
		{"id with NUL", "1\x00", "", "x", "", ErrBadField},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, rec := start(t, Options{})
			rec.Body.Reset()
			err := w.Event(tc.id, tc.event, []byte(tc.data))
			if !errors.Is(err, tc.err) {
				t.Fatalf("Event: %v, want %v", err, tc.err)
			}
			if got := rec.Body.String(); got != tc.want {
				t.Errorf("wrote %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPing(t *testing.T) {
	w, rec := start(t, Options{})
	rec.Body.Reset()
	if err := w.Ping(); err != nil {
		t.Fatal(err)
	}
	if got := rec.Body.String(); got != ": ping\n\n" {
		t.Errorf("ping wrote %q", got)
	}
}

// TestHeartbeatRule: a heartbeat is due (Due fired and Idle says so) after
// the interval with nothing written, never on a stream that wrote within
// it; after a heartbeat the next is one interval later.
func TestHeartbeatRule(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every time.Duration // an event this often; 0: idle
	}{
		{"idle", 0},
		{"busy", 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const beat = 80 * time.Millisecond
			last := time.Now() // just before the stream's last write
			w, _ := start(t, Options{Heartbeat: beat})
			if tc.every > 0 {
				// Busy for 4 intervals: Due may fire (once an interval), but
				// Idle must say no while the last event is fresh. (On a
				// loaded machine the ticker itself can stall for longer than
				// beat: then the stream really was idle, and a heartbeat is
				// right; the rule is about the time since the last write,
				// taken here just before it.)
				busy := time.NewTicker(tc.every)
				defer busy.Stop()
				end := time.After(4 * beat)
			busyLoop:
				for {
					select {
					case <-w.Due():
						if w.Idle() {
							if idle := time.Since(last); idle < beat {
								t.Fatalf("heartbeat due on a busy stream (last event %s ago, interval %s)", idle, beat)
							}
						}
					case <-busy.C:
						last = time.Now()
						if err := w.Event("", "", []byte("x")); err != nil {
							t.Fatal(err)
						}
					case <-end:
						break busyLoop
					}
				}
			}
			// Idle from here: due within the interval (plus slack), not
			// before it; twice, the second one interval after the first.
			for n := range 2 {
				deadline := time.After(5 * time.Second)
			wait:
				for {
					select {
					case <-w.Due():
						if w.Idle() {
							break wait
						}
					case <-deadline:
						t.Fatalf("no heartbeat %d due on an idle stream in 5s (interval %s)", n+1, beat)
					}
				}
				if d := time.Since(last); d < beat {
					t.Errorf("heartbeat %d due after %s of idleness, interval %s", n+1, d, beat)
				}
				last = time.Now()
				if err := w.Ping(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestDueOncePerInterval: a busy stream's timer fires about once an
// interval, not once per write, and a heartbeat is never due on it.
func TestDueOncePerInterval(t *testing.T) {
	const beat = 50 * time.Millisecond
	w, _ := start(t, Options{Heartbeat: beat})
	start := time.Now()
	var fired int
	for time.Since(start) < 6*beat {
		last := time.Now()
		if err := w.Event("", "", []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.Due():
			fired++
			// A stall of the machine longer than beat between the write
			// and here makes the stream idle for real.
			if w.Idle() && time.Since(last) < beat {
				t.Fatal("heartbeat due on a stream that writes without pause")
			}
		default:
		}
	}
	// Writes without pause: at most one firing per interval (6 here, 2
	// more for timer slack); a writer that reset the timer would fire none,
	// and that is allowed too.
	if fired > 8 {
		t.Errorf("Due fired %d times in 6 intervals", fired)
	}
}

// TestSlowClient: a client that stops reading makes a write fail within the
// write timeout instead of blocking the stream's goroutine for ever.
func TestSlowClient(t *testing.T) {
	errc := make(chan error, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w, err := Start(rw, Options{WriteTimeout: 200 * time.Millisecond})
		if err != nil {
			errc <- err
			return
		}
		defer w.Stop()
		big := []byte(strings.Repeat("x", 64<<10))
		for {
			if err := w.Event("", "", big); err != nil {
				errc <- err
				return
			}
		}
	}))
	srv.Start()
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// Read the headers, then stop reading.
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("status line %q: %v", line, err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("write to a stalled client succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write to a client that stopped reading still blocks after 10s")
	}
}

func TestParseLastEventID(t *testing.T) {
	for _, tc := range []struct {
		in     string
		id     uint64
		ok     bool
		badErr bool
	}{
		{"", 0, false, false},
		{"   ", 0, false, false},
		{"0", 0, true, false},
		{"7", 7, true, false},
		{" 42 ", 42, true, false},
		{"007", 7, true, false},
		{"18446744073709551614", math.MaxUint64 - 1, true, false},
		{"18446744073709551615", 0, false, true}, // its next index would wrap
		{"18446744073709551616", 0, false, true},
		{"-1", 0, false, true},
		{"+1", 0, false, true},
		{"1.5", 0, false, true},
		{"0x10", 0, false, true},
		{"1_000", 0, false, true},
		{"1e3", 0, false, true},
		{"abc", 0, false, true},
		{"1 2", 0, false, true},
		{strings.Repeat("0", 100) + "1", 0, false, true},
	} {
		id, ok, err := ParseLastEventID(tc.in)
		if id != tc.id || ok != tc.ok || (err != nil) != tc.badErr {
			t.Errorf("ParseLastEventID(%q) = %d, %v, %v; want %d, %v, error %v", tc.in, id, ok, err, tc.id, tc.ok, tc.badErr)
		}
		if err != nil && !errors.Is(err, ErrBadLastEventID) {
			t.Errorf("ParseLastEventID(%q): error %v is not ErrBadLastEventID", tc.in, err)
		}
	}
}

// FuzzParseLastEventID: any header either parses to an index whose next
// index fits and whose decimal form is the header's (spaces and leading
// zeros aside), or is refused with ErrBadLastEventID; blank means none.
func FuzzParseLastEventID(f *testing.F) {
	for _, s := range []string{"", "0", "1", " 12 ", "0007", "-1", "+1", "1e9", "0x1f", "18446744073709551615", "18446744073709551614", "\t3\n", "٣", "1\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		id, ok, err := ParseLastEventID(h)
		switch {
		case err != nil:
			if ok || id != 0 || !errors.Is(err, ErrBadLastEventID) {
				t.Fatalf("ParseLastEventID(%q) = %d, %v, %v", h, id, ok, err)
			}
		case !ok:
			if strings.TrimSpace(h) != "" || id != 0 {
				t.Fatalf("ParseLastEventID(%q) = none for a non-blank header", h)
			}
		default:
			if id == math.MaxUint64 {
				t.Fatalf("ParseLastEventID(%q) = %d: the next index wraps", h, id)
			}
			v := strings.TrimLeft(strings.TrimSpace(h), "0")
			if v == "" {
				v = "0"
			}
			if strconv.FormatUint(id, 10) != v {
				t.Fatalf("ParseLastEventID(%q) = %d", h, id)
			}
		}
	})
}

// FuzzEvent: whatever the data, an event frames as data lines a reader
// joins back into the data (line breaks normalised to LF), and never writes
// a bare line break that would end the event early.
func FuzzEvent(f *testing.F) {
	f.Add("1", "chat", []byte("a\nb"))
	f.Add("", "", []byte("\r\n\r"))
	f.Fuzz(func(t *testing.T, id, name string, data []byte) {
		rec := httptest.NewRecorder()
		w, err := Start(rec, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		rec.Body.Reset()
		if err := w.Event(id, name, data); err != nil {
			if !errors.Is(err, ErrBadField) {
				t.Fatalf("Event: %v", err)
			}
			if rec.Body.Len() != 0 {
				t.Fatalf("a refused event wrote %q", rec.Body.String())
			}
			return
		}
		out := rec.Body.String()
		if !strings.HasSuffix(out, "\n\n") || strings.Count(out, "\n\n") != 1 {
			t.Fatalf("event %q is not one block", out)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n\n"), "\n") {
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				got = append(got, d)
			}
		}
		want := strings.ReplaceAll(strings.ReplaceAll(string(data), "\r\n", "\n"), "\r", "\n")
		if strings.Join(got, "\n") != want {
			t.Fatalf("data %q framed as %q", data, out)
		}
	})
}

// countingWriter counts the writes and flushes that reach the response.
type countingWriter struct {
	*httptest.ResponseRecorder
	writes, flushes int
}

func (c *countingWriter) Write(b []byte) (int, error) { c.writes++; return c.ResponseRecorder.Write(b) }
func (c *countingWriter) Flush()                      { c.flushes++; c.ResponseRecorder.Flush() }

// TestQueueFlush: queued events stay in the Writer until Flush (or the next
// Event or Ping), then go out framed as Event frames them, in one write and
// one flush; a Flush with nothing queued writes nothing.
func TestQueueFlush(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish func(w *Writer) error
		tail   string
	}{
		{"flush", (*Writer).Flush, ""},
		{"event", func(w *Writer) error { return w.Event("9", "", []byte("c")) }, "id: 9\ndata: c\n\n"},
		{"ping", (*Writer).Ping, ": ping\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cw := &countingWriter{ResponseRecorder: httptest.NewRecorder()}
			w, err := Start(cw, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			cw.Body.Reset()
			cw.writes, cw.flushes = 0, 0
			if err := w.Queue("1", "", []byte("a")); err != nil {
				t.Fatal(err)
			}
			if err := w.Queue("", "chat", []byte("b\nb")); err != nil {
				t.Fatal(err)
			}
			if cw.writes != 0 || cw.Body.Len() != 0 {
				t.Fatalf("queued events written early: %d writes, %q", cw.writes, cw.Body.String())
			}
			if err := tc.finish(w); err != nil {
				t.Fatal(err)
			}
			want := "id: 1\ndata: a\n\nevent: chat\ndata: b\ndata: b\n\n" + tc.tail
			if got := cw.Body.String(); got != want {
				t.Errorf("wrote %q, want %q", got, want)
			}
			if cw.writes != 1 || cw.flushes != 1 {
				t.Errorf("%d writes and %d flushes for one burst, want 1 and 1", cw.writes, cw.flushes)
			}
			if err := w.Flush(); err != nil || cw.writes != 1 {
				t.Errorf("empty Flush: %v, %d writes", err, cw.writes)
			}
		})
	}
}

// TestQueueBounded: a long backlog queued without Flush goes out in pieces
// of about 64 KiB, not as one unbounded buffer.
func TestQueueBounded(t *testing.T) {
	cw := &countingWriter{ResponseRecorder: httptest.NewRecorder()}
	w, err := Start(cw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	cw.writes = 0
	data := []byte(strings.Repeat("x", 1000))
	for range 200 {
		if err := w.Queue("", "", data); err != nil {
			t.Fatal(err)
		}
	}
	if cw.writes < 2 || len(w.buf) >= maxQueued {
		t.Errorf("200 KB queued: %d writes, %d bytes still queued", cw.writes, len(w.buf))
	}
}

// TestIdleAfterWrite: the write deadline bounds writes only; a stream that
// is idle for longer than the write timeout after an event still writes
// the next one.
func TestIdleAfterWrite(t *testing.T) {
	const timeout = 100 * time.Millisecond
	errc := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w, err := Start(rw, Options{WriteTimeout: timeout})
		if err != nil {
			errc <- err
			return
		}
		defer w.Stop()
		if err := w.Event("1", "", []byte("a")); err != nil {
			errc <- err
			return
		}
		time.Sleep(3 * timeout) // idle, past the deadline of the last write
		errc <- w.Event("2", "", []byte("b"))
	}))
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if err := <-errc; err != nil {
		t.Fatalf("event after an idle spell: %v", err)
	}
}

// TestStopClearsDeadline: a stream that ends after an idle spell longer
// than the write timeout still ends cleanly (net/http's closing chunk goes
// out: the stream's write deadline does not outlive Stop), and the kept-alive
// connection serves its next request.
func TestStopClearsDeadline(t *testing.T) {
	const timeout = 100 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain" {
			_, _ = rw.Write([]byte("ok"))
			return
		}
		w, err := Start(rw, Options{WriteTimeout: timeout})
		if err != nil {
			return
		}
		defer w.Stop()
		_ = w.Event("1", "", []byte("a"))
		time.Sleep(3 * timeout) // idle past the deadline the last write set
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	readResponse := func(path string) string {
		t.Helper()
		if _, err := conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer res.Body.Close()
		var sb strings.Builder
		if _, err := bufio.NewReader(res.Body).WriteTo(&sb); err != nil {
			t.Fatalf("%s body: %v", path, err)
		}
		return sb.String()
	}
	if got := readResponse("/stream"); !strings.Contains(got, "id: 1\n") {
		t.Fatalf("stream wrote %q", got)
	}
	if got := readResponse("/plain"); got != "ok" {
		t.Fatalf("next request on the connection: %q", got)
	}
}

// deadlineWriter records the write deadlines set on it and the least time
// a write had left before its deadline.
type deadlineWriter struct {
	hdr      http.Header
	deadline time.Time
	sets     int
	least    time.Duration
}

func (w *deadlineWriter) Header() http.Header { return w.hdr }
func (w *deadlineWriter) WriteHeader(int)     {}
func (w *deadlineWriter) Flush()              {}
func (w *deadlineWriter) Write(b []byte) (int, error) {
	if left := time.Until(w.deadline); w.least == 0 || left < w.least {
		w.least = left
	}
	return len(b), nil
}
func (w *deadlineWriter) SetWriteDeadline(t time.Time) error {
	w.sets++
	w.deadline = t
	return nil
}

// TestDeadlineMovedLazily: a busy stream does not set a write deadline per
// write, yet every write has at least WriteTimeout before its deadline,
// which moves on once less than that remains.
func TestDeadlineMovedLazily(t *testing.T) {
	const timeout = 300 * time.Millisecond
	rw := &deadlineWriter{hdr: http.Header{}}
	w, err := Start(rw, Options{WriteTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for i := range 1000 {
		if err := w.Event(strconv.Itoa(i), "", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if rw.sets > 2 {
		t.Errorf("1000 events set the write deadline %d times, want it set once (twice on a slow machine)", rw.sets)
	}
	// Keep writing until the deadline has moved on.
	first, sets := rw.deadline, rw.sets
	for end := time.Now().Add(5 * time.Second); rw.sets == sets; {
		if time.Now().After(end) {
			t.Fatal("the write deadline never moved on a stream writing for 5s")
		}
		if err := w.Event("", "", []byte("y")); err != nil {
			t.Fatal(err)
		}
	}
	if !rw.deadline.After(first) {
		t.Errorf("deadline moved from %v to %v", first, rw.deadline)
	}
	// A write is checked and made within microseconds; allow a loaded
	// machine 50ms between the two.
	if rw.least < timeout-50*time.Millisecond {
		t.Errorf("a write had %v before its deadline, want at least the write timeout %v", rw.least, timeout)
	}
}
