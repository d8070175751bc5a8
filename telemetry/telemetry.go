// Package telemetry sets up the three observability signals every hachat part
// emits: structured logs (log/slog), Prometheus metrics and OpenTelemetry
// traces. A part calls Setup once in main and passes the result down; nothing
// here is global.
package telemetry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config selects log format and level and the trace exporter.
type Config struct {
	// LogFormat is "text" (default) or "json".
	LogFormat string `yaml:"log-format"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `yaml:"log-level"`
	// Trace is the span exporter: "none" (default), "stdout" or "otlp".
	Trace string `yaml:"trace"`
	// OTLPEndpoint is the OTLP/gRPC collector address used when Trace is "otlp"
	// (default localhost:4317).
	OTLPEndpoint string `yaml:"otlp-endpoint"`
}

// DefaultConfig returns the defaults: text logs at info, no trace export.
func DefaultConfig() Config {
	return Config{LogFormat: "text", LogLevel: "info", Trace: "none", OTLPEndpoint: "localhost:4317"}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&c.Trace, "trace", c.Trace, "span exporter: none, stdout or otlp")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", c.OTLPEndpoint, "OTLP/gRPC collector address for --trace=otlp")
}

// Telemetry holds the logger, tracer provider and metric registry of one part.
type Telemetry struct {
	// Logger is the part's structured logger, tagged with the part's name.
	Logger *slog.Logger
	// Tracer is the tracer provider; a no-op provider when tracing is off.
	Tracer trace.TracerProvider
	// Propagator carries trace context across HTTP and gRPC hops (W3C).
	Propagator propagation.TextMapPropagator
	// Registry holds the part's Prometheus metrics.
	Registry *prometheus.Registry

	shutdown func(context.Context) error
}

// Setup builds the telemetry of the part named service; logs go to w
// (os.Stderr when nil) and stdout spans to os.Stdout.
func Setup(ctx context.Context, cfg Config, service string, w io.Writer) (*Telemetry, error) {
	if w == nil {
		w = os.Stderr
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("bad log level %q: %w", cfg.LogLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(cfg.LogFormat) {
	case "", "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("bad log format %q: want text or json", cfg.LogFormat)
	}
	t := &Telemetry{
		Logger:     slog.New(h).With("part", service),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		Registry:   prometheus.NewRegistry(),
		shutdown:   func(context.Context) error { return nil },
	}
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var exp sdktrace.SpanExporter
	var err error
	switch cfg.Trace {
	case "", "none":
		t.Tracer = noop.NewTracerProvider()
		return t, nil
	case "stdout":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	case "otlp":
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint), otlptracegrpc.WithInsecure())
	default:
		return nil, fmt.Errorf("bad trace exporter %q: want none, stdout or otlp", cfg.Trace)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s exporter: %w", cfg.Trace, err)
	}
	res := resource.NewSchemaless(semconv.ServiceName("hachat-" + service))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	t.Tracer = tp
	t.shutdown = tp.Shutdown
	return t, nil
}

// Discard returns telemetry that drops everything: for tests and benchmarks.
func Discard() *Telemetry {
	return &Telemetry{
		Logger:     slog.New(slog.DiscardHandler),
		Tracer:     noop.NewTracerProvider(),
		Propagator: propagation.TraceContext{},
		Registry:   prometheus.NewRegistry(),
		shutdown:   func(context.Context) error { return nil },
	}
}

// MetricsHandler serves the registry in the Prometheus text format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{Registry: t.Registry})
}

// Shutdown flushes pending spans.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if err := t.shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("flush spans: %w", err)
	}
	return nil
}
