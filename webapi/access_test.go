package webapi

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestInstrumentTracesOnlyWhenTracing: with spans exported, a route runs
// inside otelhttp (a server span named after the route, its own response
// writer wrapper); without, the handler gets the connection's writer behind
// the status recorder alone, and a request's incoming trace context is
// still in its context (its log lines carry the caller's trace_id).
func TestInstrumentTracesOnlyWhenTracing(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tracing := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[tracing], func(t *testing.T) {
			tel, rec := telemetrytest.Recording(t, tracing)
			s, err := New(DefaultConfig(), instantCore{}, tel)
			if err != nil {
				t.Fatal(err)
			}
			var inner http.ResponseWriter
			var sc trace.SpanContext
			h := s.instrument("GET /probe", func(w http.ResponseWriter, r *http.Request) {
				inner = w.(*statusRecorder).ResponseWriter
				sc = trace.SpanContextFromContext(r.Context())
			})
			out := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/probe", nil)
			req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
			h.ServeHTTP(out, req)

			if got := sc.TraceID().String(); got != traceID {
				t.Errorf("trace id in the request's context %s, want the caller's %s", got, traceID)
			}
			wrapped := inner != http.ResponseWriter(out)
			spans := len(rec.Ended())
			if tracing && (!wrapped || spans != 1 || rec.Ended()[0].Parent().TraceID().String() != traceID) {
				t.Errorf("tracing on: writer wrapped %v, %d spans (want otelhttp's wrapper and one server span, child of the caller's)", wrapped, spans)
			}
			if !tracing && wrapped {
				t.Errorf("tracing off: the handler's writer is %T, want the connection's (no otelhttp)", inner)
			}
		})
	}
}

// TestAccessLog: every request has its access log line; a successful send
// (a hot route) at debug, so an instance at info logs no line per message
// but each failed send, and a summary of the hot routes' traffic.
func TestAccessLog(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		t.Run(level.String(), func(t *testing.T) {
			var logs telemetrytest.LogBuffer
			tel := telemetry.Discard()
			tel.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: level}))
			e := newEnvTel(t, tel, nil)
			c := e.start("Ada")
			send := func(userID string) int {
				body := strings.NewReader("userId=" + userID + "&secureKey=" + c.key + "&message=hi")
				req := httptest.NewRequest(http.MethodPost, "/genesys/2/chat/customer-support/"+c.id+"/send", body)
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				rec := httptest.NewRecorder()
				e.srv.Handler().ServeHTTP(rec, req)
				return rec.Code
			}
			for range 3 {
				if code := send(c.user); code != http.StatusOK {
					t.Fatalf("send: HTTP %d", code)
				}
			}
			if code := send("someone-else"); code != http.StatusForbidden {
				t.Fatalf("send as someone else: HTTP %d, want 403", code)
			}
			e.srv.logSummary(t.Context(), time.Minute)

			lines := strings.Split(logs.String(), "\n")
			count := func(parts ...string) int {
				n := 0
			next:
				for _, l := range lines {
					for _, p := range parts {
						if !strings.Contains(l, p) {
							continue next
						}
					}
					n++
				}
				return n
			}
			const route = "route=\"POST /genesys/2/chat/{service}/{chatId}/send\""
			if got := count("level=DEBUG", `msg="http request"`, route, "status=200", "chat="+c.id); level == slog.LevelDebug && got != 3 {
				t.Errorf("%d debug access lines of successful sends, want 3:\n%s", got, logs.String())
			} else if level == slog.LevelInfo && got != 0 {
				t.Errorf("%d access lines of successful sends at info, want none:\n%s", got, logs.String())
			}
			if got := count("level=INFO", `msg="http request"`, route, "status=403"); got != 1 {
				t.Errorf("%d info access lines of the failed send, want 1:\n%s", got, logs.String())
			}
			if got := count("level=INFO", `msg="http requests"`, route, "requests=4", "failed=1", "period=1m0s"); got != 1 {
				t.Errorf("%d summary lines of the send route (4 requests, 1 failed), want 1:\n%s", got, logs.String())
			}
			if got := count("level=INFO", `msg="http request"`, `route="POST /genesys/2/chat/{service}"`, "status=200"); got != 1 {
				t.Errorf("%d info access lines of the chat start, want 1:\n%s", got, logs.String())
			}
			// The counts start again after a summary.
			logs.Reset()
			e.srv.logSummary(t.Context(), time.Minute)
			if s := logs.String(); s != "" {
				t.Errorf("summary with no requests since the last: %q", s)
			}
		})
	}
}

// TestServeWritesLastSummary: an instance that stops writes the access
// log's summary of the requests since the last one, those of its shutdown
// included.
func TestServeWritesLastSummary(t *testing.T) {
	var logs telemetrytest.LogBuffer
	tel := telemetry.Discard()
	tel.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := newEnvTel(t, tel, nil)
	c := e.start("Ada")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ln, err := (&netListenConfig{}).listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	form := url.Values{"userId": {c.user}, "secureKey": {c.key}, "message": {"hi"}}
	res, err := http.PostForm("http://"+ln.Addr().String()+"/genesys/2/chat/customer-support/"+c.id+"/send", form)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("send: %v %v", res, err)
	}
	res.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if !strings.Contains(logs.String(), `route="POST /genesys/2/chat/{service}/{chatId}/send" requests=1 failed=0`) {
		t.Errorf("no last summary of the send:\n%s", logs.String())
	}
}
