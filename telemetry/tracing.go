package telemetry

import (
	"net/http"
	"net/textproto"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Tracing reports whether t's tracer provider records spans: false for the
// no-op provider that Setup installs when no exporter is configured (and
// that Discard uses). Parts skip per-call tracing work (the otelgrpc stats
// handlers, per-message spans) when it is false.
func (t *Telemetry) Tracing() bool {
	if t == nil || t.Tracer == nil {
		return false
	}
	switch t.Tracer.(type) {
	case noop.TracerProvider, *noop.TracerProvider:
		return false
	}
	return true
}

// TraceContext wraps next so that a request that carries trace context
// (the headers of t.Propagator: traceparent, baggage) has it in its
// context, without a span of its own: what otelhttp does with the no-op
// tracer, at the cost of a header lookup for a request that carries none.
// Parts use it in place of otelhttp when Tracing is false, so that their
// log lines still carry the caller's trace_id.
func (t *Telemetry) TraceContext(next http.Handler) http.Handler {
	prop := t.Propagator
	if prop == nil {
		return next
	}
	var keys []string
	for _, f := range prop.Fields() {
		keys = append(keys, textproto.CanonicalMIMEHeaderKey(f))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, k := range keys {
			if len(r.Header[k]) > 0 {
				r = r.WithContext(prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header)))
				break
			}
		}
		next.ServeHTTP(w, r)
	})
}

// TraceTransport wraps base so that a request whose context carries a span
// context sends it (the headers of t.Propagator: traceparent, baggage),
// without a client span of its own: the counterpart of TraceContext for
// clients, which parts use in place of otelhttp's transport when Tracing is
// false. A request without a valid span context is passed on as it is.
func (t *Telemetry) TraceTransport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	if t == nil || t.Propagator == nil {
		return base
	}
	return traceTransport{base: base, prop: t.Propagator}
}

// traceTransport is TraceTransport's round tripper.
type traceTransport struct {
	base http.RoundTripper
	prop propagation.TextMapPropagator
}

// RoundTrip injects the request context's trace context into a copy of
// r's headers (a RoundTripper must not change its request) and sends it.
func (tt traceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanContextFromContext(r.Context()).IsValid() {
		return tt.base.RoundTrip(r)
	}
	r2 := r.Clone(r.Context())
	tt.prop.Inject(r.Context(), propagation.HeaderCarrier(r2.Header))
	return tt.base.RoundTrip(r2)
}
