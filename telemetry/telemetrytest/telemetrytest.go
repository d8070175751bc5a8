// Package telemetrytest gives tests a Telemetry whose spans they can read.
package telemetrytest

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/hachat/hachat/telemetry"
)

// Recording returns a Telemetry that discards logs and metrics and
// propagates W3C trace context. With tracing, its spans are exported to the
// returned recorder (a part started with a span exporter); without, its
// tracer is the no-op one (a part started without), and the recorder stays
// empty. The tracer provider shuts down with the test.
func Recording(t testing.TB, tracing bool) (*telemetry.Telemetry, *tracetest.SpanRecorder) {
	t.Helper()
	tel := telemetry.Discard()
	rec := tracetest.NewSpanRecorder()
	if tracing {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		tel.Tracer = tp
	}
	return tel, rec
}
