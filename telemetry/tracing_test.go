package telemetry

import (
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
