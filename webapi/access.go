package webapi

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// accessSummaryEvery is the interval of the access log's summary line.
const accessSummaryEvery = time.Minute

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// routeLog is one route's instrumentation: its request metrics, resolved
// once for the common answer (200), and the access log's counts since the
// last summary.
type routeLog struct {
	s       *Server
	pattern string
	hot     bool // isHot: successes logged at debug, counted in the summary
	stream  bool // isStream: no duration (it is the channel's lifetime)

	okOnce   sync.Once
	ok       prometheus.Counter  // requests{route, "200"}, on first use
	duration prometheus.Observer // duration{route}, on first use

	requests, failed atomic.Int64 // since the last summary (hot routes)
}

// instrument wraps a route handler with request metrics and an access log
// line, and with a server span (otelhttp) only when spans are exported
// (telemetry.Tracing): with the no-op tracer the middleware costs every
// request its wrappers and attributes for nothing. Without it, a request
// that carries trace context (traceparent) still has it in its context, so
// its log lines carry the caller's trace_id as they did.
//
// The access log: a request is logged at info, or at warn for a 5xx; a
// successful request of a hot route (send, refresh, typing: one per message
// or keystroke, thousands a second on a busy instance) at debug, and those
// routes get an info summary every minute instead (logSummary), so an
// operator at info still sees each failure and how much traffic flowed,
// without a line per message; /metrics has the exact counts.
func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	rl := &routeLog{s: s, pattern: route, hot: isHot(route), stream: isStream(route)}
	if rl.hot {
		s.routeLogs = append(s.routeLogs, rl)
	}
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := statusRecorder{ResponseWriter: w}
		h(&rec, r)
		rl.done(r, rec.status, time.Since(start))
	})
	if !s.tel.Tracing() {
		return s.tel.TraceContext(inner)
	}
	return otelhttp.NewHandler(inner, route,
		otelhttp.WithTracerProvider(s.tel.Tracer),
		otelhttp.WithPropagators(s.tel.Propagator),
	)
}

// done counts and logs one finished request.
func (rl *routeLog) done(r *http.Request, status int, d time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	s := rl.s
	if status == http.StatusOK {
		rl.okOnce.Do(func() {
			rl.ok = s.metrics.requests.WithLabelValues(rl.pattern, "200")
			rl.duration = s.metrics.duration.WithLabelValues(rl.pattern)
		})
		rl.ok.Inc()
		if !rl.stream {
			rl.duration.Observe(d.Seconds())
		}
	} else {
		s.metrics.requests.WithLabelValues(rl.pattern, strconv.Itoa(status)).Inc()
		if !rl.stream {
			s.metrics.duration.WithLabelValues(rl.pattern).Observe(d.Seconds())
		}
	}
	level := slog.LevelInfo
	switch {
	case status >= 500:
		level = slog.LevelWarn
	case rl.hot && status < 400:
		level = slog.LevelDebug
	}
	if rl.hot {
		rl.requests.Add(1)
		if status >= 400 {
			rl.failed.Add(1)
		}
	}
	// The check first: the attributes cost even when the level is off.
	if ctx := r.Context(); s.log.Enabled(ctx, level) {
		s.log.LogAttrs(ctx, level, "http request", slog.String("method", r.Method), slog.String("route", rl.pattern),
			slog.String("path", r.URL.Path), slog.Int("status", status), slog.Duration("duration", d),
			slog.String("chat", r.PathValue("chatId")))
	}
}

// logSummary writes the access log's summary line of every hot route that
// served requests since the last one: how many, and how many failed (each
// failure has its own line too). period is the time since the last summary.
func (s *Server) logSummary(ctx context.Context, period time.Duration) {
	for _, rl := range s.routeLogs {
		n := rl.requests.Swap(0)
		if n == 0 {
			continue
		}
		failed := rl.failed.Swap(0)
		s.log.LogAttrs(ctx, slog.LevelInfo, "http requests", slog.String("route", rl.pattern),
			slog.Int64("requests", n), slog.Int64("failed", failed), slog.Duration("period", period.Round(time.Second)))
	}
}

// summarize writes the access log's summary every interval until ctx is
// done, and once more then.
func (s *Server) summarize(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			s.logSummary(context.WithoutCancel(ctx), time.Since(last))
			return
		case now := <-t.C:
			s.logSummary(ctx, now.Sub(last))
			last = now
		}
	}
}
