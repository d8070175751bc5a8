package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func TestTracing(t *testing.T) {
	for _, tt := range []struct {
		name string
		tel  *Telemetry
		want bool
	}{
		{"nil", nil, false},
		{"discard", Discard(), false},
		{"noop value", &Telemetry{Tracer: noop.NewTracerProvider()}, false},
		{"noop pointer", &Telemetry{Tracer: new(noop.TracerProvider)}, false},
		{"sdk", &Telemetry{Tracer: sdktrace.NewTracerProvider()}, true},
	} {
		if got := tt.tel.Tracing(); got != tt.want {
			t.Errorf("%s: Tracing() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestTraceContext: a request that carries a traceparent has the caller's
// span context in its context; one that carries none is passed on as it
// came (no copy of the request).
func TestTraceContext(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	tel := Discard()
	tel.Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	for _, tt := range []struct {
		name, traceparent, want string
	}{
		{"with traceparent", "00-" + traceID + "-00f067aa0ba902b7-01", traceID},
		{"without", "", ""},
	} {
		var got *http.Request
		h := tel.TraceContext(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r }))
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if tt.traceparent != "" {
			req.Header.Set("traceparent", tt.traceparent)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
		sc := trace.SpanContextFromContext(got.Context())
		switch {
		case tt.want != "" && sc.TraceID().String() != tt.want:
			t.Errorf("%s: trace id %s, want %s", tt.name, sc.TraceID(), tt.want)
		case tt.want == "" && (sc.IsValid() || got != req):
			t.Errorf("%s: span context %v, request copied %v; want the request as it came", tt.name, sc, got != req)
		}
	}
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestTraceTransport: a request whose context carries a span context goes
// out with its traceparent (on a copy: the caller's request is not
// changed); one without goes out as it is.
func TestTraceTransport(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	tel := Discard()
	tel.Propagator = propagation.TraceContext{}
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"with span context", trace.ContextWithSpanContext(context.Background(), sc), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"without", context.Background(), ""},
	} {
		var sent *http.Request
		rt := tel.TraceTransport(roundTripFunc(func(r *http.Request) (*http.Response, error) {
			sent = r
			return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
		}))
		req := httptest.NewRequest(http.MethodGet, "http://ucs.test/", nil).WithContext(tt.ctx)
		if _, err := rt.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		if got := sent.Header.Get("traceparent"); got != tt.want {
			t.Errorf("%s: traceparent sent %q, want %q", tt.name, got, tt.want)
		}
		if req.Header.Get("traceparent") != "" {
			t.Errorf("%s: the caller's request was changed", tt.name)
		}
	}
}
