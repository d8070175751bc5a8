package telemetry

import "go.opentelemetry.io/otel/trace/noop"

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
