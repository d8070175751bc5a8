package telemetry

import (
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
