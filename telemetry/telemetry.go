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
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config selects log format and level and the trace exporter.
//
// The trace fields are overrides of the standard OpenTelemetry environment
// variables: left empty (the default), each one follows its OTEL_*
// variable, so that a part configured only through OTEL_TRACES_EXPORTER,
// OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER exports its spans as any
// other OpenTelemetry service would. A field that is set wins over its
// variable.
type Config struct {
	// LogFormat is "text" (default) or "json".
	LogFormat string `yaml:"log-format"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `yaml:"log-level"`
	// Trace is the span exporter: "none", "stdout" (alias "console") or
	// "otlp". Empty (the default) follows OTEL_TRACES_EXPORTER, and no
	// export at all when that is unset too.
	Trace string `yaml:"trace"`
	// OTLPEndpoint is the collector for the otlp exporter: host:port, or a
	// URL (http:// or https://; with http/protobuf a URL without a path
	// gets /v1/traces). Empty (the default) follows
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT,
	// then the protocol's default (localhost:4318 or localhost:4317).
	OTLPEndpoint string `yaml:"otlp-endpoint"`
	// OTLPProtocol is the otlp exporter's protocol: "grpc" or
	// "http/protobuf". Empty (the default) follows
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then OTEL_EXPORTER_OTLP_PROTOCOL;
	// with neither, "grpc" for an OTLPEndpoint given as host:port (what
	// --otlp-endpoint always meant) and "http/protobuf" otherwise.
	OTLPProtocol string `yaml:"otlp-protocol"`
	// PProf, when set, serves net/http/pprof (/debug/pprof/) on its own
	// listener at this host:port; port 0 picks a free port, logged at start
	// (Telemetry.PProfAddr). An address without a host (":6060") binds the
	// loopback interface only; name a host (0.0.0.0:6060) to expose it.
	// Empty (the default): off.
	PProf string `yaml:"pprof"`
}

// The OpenTelemetry environment variables that Setup reads itself (the
// exporters and the SDK read the others: endpoints, headers, timeouts,
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG]).
const (
	envTracesExporter = "OTEL_TRACES_EXPORTER"
	envProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
)

// The OTLP protocols.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// ErrBadConfig is returned (wrapped) by Setup for a value it cannot use,
// from a flag, the YAML file or an OTEL_* variable.
var ErrBadConfig = errors.New("bad telemetry config")

// DefaultConfig returns the defaults: text logs at info; traces as the
// OTEL_* environment says (none when it says nothing).
func DefaultConfig() Config {
	return Config{LogFormat: "text", LogLevel: "info"}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&c.Trace, "trace", c.Trace, "span exporter: none, stdout or otlp (default: OTEL_TRACES_EXPORTER, else none)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", c.OTLPEndpoint,
		"OTLP collector, host:port or URL (default: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)")
	fs.StringVar(&c.OTLPProtocol, "otlp-protocol", c.OTLPProtocol,
		"OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL,\n"+
			"else grpc for a host:port --otlp-endpoint, else http/protobuf)")
	fs.StringVar(&c.PProf, "pprof", c.PProf,
		"serve net/http/pprof at this host:port (port 0: any free port, logged; no host: loopback only); empty: off")
}

// Telemetry holds the logger, tracer provider and metric registry of one part.
type Telemetry struct {
	// Logger is the part's structured logger, tagged with the part's name.
	// A record logged with a context that holds a valid span (slog.InfoContext
	// and the like) carries that span's trace_id and span_id.
	Logger *slog.Logger
	// Tracer is the tracer provider; a no-op provider when tracing is off.
	Tracer trace.TracerProvider
	// Propagator carries trace context across HTTP and gRPC hops (W3C).
	Propagator propagation.TextMapPropagator
	// Registry holds the part's Prometheus metrics.
	Registry *prometheus.Registry

	shutdown func(context.Context) error
	pprof    *pprofServer // nil unless Config.PProf
}

// Setup builds the telemetry of the part named service ("core", "webapi",
// ...); logs go to w (os.Stderr when nil) and stdout spans to os.Stdout.
//
// Spans carry the resource service.name=hachat-<service> and
// hachat.part=<service>, unless OTEL_SERVICE_NAME names the service (then
// every part shares that name and hachat.part tells them apart);
// OTEL_RESOURCE_ATTRIBUTES adds to them (service.instance.id, which the
// demo sets to the part's name, for one).
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
		Logger:     slog.New(NewTraceHandler(h)).With("part", service),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		Registry:   prometheus.NewRegistry(),
		shutdown:   func(context.Context) error { return nil },
	}
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	exp, err := spanExporter(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.PProf != "" {
		if t.pprof, err = startPProf(cfg.PProf, t.Logger); err != nil {
			if exp != nil {
				_ = exp.Shutdown(ctx)
			}
			return nil, err
		}
	}
	if exp == nil {
		t.Tracer = noop.NewTracerProvider()
		return t, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("hachat-"+service), attribute.String("hachat.part", service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the defaults above
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		_ = t.stopPProf(ctx)
		return nil, fmt.Errorf("%w: resource from OTEL_RESOURCE_ATTRIBUTES/OTEL_SERVICE_NAME: %w", ErrBadConfig, err)
	}
	// The sampler comes from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
	// (the SDK reads them), parentbased_always_on when unset.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	t.Tracer = tp
	t.shutdown = tp.Shutdown
	return t, nil
}

// spanExporter returns the exporter that cfg and the OTEL_* environment
// select, or nil for none. With every trace field of cfg empty, the
// environment alone decides, through autoexport; otherwise the fields that
// are set win and the exporters read the rest of OTEL_* themselves.
func spanExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	if cfg.Trace == "" && cfg.OTLPEndpoint == "" && cfg.OTLPProtocol == "" {
		exp, err := autoexport.NewSpanExporter(ctx, autoexport.WithFallbackSpanExporter(
			func(context.Context) (sdktrace.SpanExporter, error) { return nil, nil })) // unset: no export
		if err != nil {
			return nil, fmt.Errorf("%w: %s=%q: %w", ErrBadConfig, envTracesExporter, os.Getenv(envTracesExporter), err)
		}
		if exp == nil || autoexport.IsNoneSpanExporter(exp) {
			return nil, nil
		}
		return exp, nil
	}
	name := cfg.Trace
	if name == "" {
		name = os.Getenv(envTracesExporter)
	}
	var exp sdktrace.SpanExporter
	var err error
	switch name {
	case "", "none":
		return nil, nil
	case "stdout", "console":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	case "otlp":
		exp, err = otlpExporter(ctx, cfg)
	default:
		return nil, fmt.Errorf("%w: bad trace exporter %q: want none, stdout or otlp", ErrBadConfig, name)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s exporter: %w", name, err)
	}
	return exp, nil
}

// otlpExporter returns the OTLP span exporter of cfg's protocol and
// endpoint (see Config.OTLPProtocol and Config.OTLPEndpoint).
func otlpExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	proto, err := OTLPProtocol(cfg, os.Getenv)
	if err != nil {
		return nil, err
	}
	endpoint := cfg.OTLPEndpoint
	isURL := strings.Contains(endpoint, "://")
	if isURL {
		u, err := url.Parse(endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: bad otlp endpoint %q: want host:port or an http(s) URL", ErrBadConfig, endpoint)
		}
		if proto == ProtocolHTTP && (u.Path == "" || u.Path == "/") {
			u.Path = "/v1/traces" // as the exporter does for OTEL_EXPORTER_OTLP_ENDPOINT
			endpoint = u.String()
		}
	} else if endpoint != "" {
		if _, _, err := net.SplitHostPort(endpoint); err != nil {
			return nil, fmt.Errorf("%w: bad otlp endpoint %q: want host:port or an http(s) URL", ErrBadConfig, endpoint)
		}
	}
	if proto == ProtocolGRPC {
		var opts []otlptracegrpc.Option
		switch {
		case isURL:
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		case endpoint != "":
			opts = append(opts, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
		}
		return otlptracegrpc.New(ctx, opts...)
	}
	var opts []otlptracehttp.Option
	switch {
	case isURL:
		opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
	case endpoint != "":
		opts = append(opts, otlptracehttp.WithEndpoint(endpoint), otlptracehttp.WithInsecure())
	}
	return otlptracehttp.New(ctx, opts...)
}

// OTLPProtocol returns the OTLP protocol that cfg and the environment
// (read through getenv) select: cfg.OTLPProtocol, then
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then OTEL_EXPORTER_OTLP_PROTOCOL, then
// grpc for a host:port cfg.OTLPEndpoint, then http/protobuf.
func OTLPProtocol(cfg Config, getenv func(string) string) (string, error) {
	proto, from := cfg.OTLPProtocol, "--otlp-protocol"
	for _, key := range []string{envTracesProtocol, envProtocol} {
		if proto == "" {
			proto, from = getenv(key), key
		}
	}
	switch proto {
	case ProtocolGRPC, ProtocolHTTP:
		return proto, nil
	case "":
		if cfg.OTLPEndpoint != "" && !strings.Contains(cfg.OTLPEndpoint, "://") {
			return ProtocolGRPC, nil
		}
		return ProtocolHTTP, nil
	}
	return "", fmt.Errorf("%w: %s %q: want grpc or http/protobuf", ErrBadConfig, from, proto)
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

// Shutdown stops the pprof server (--pprof) and flushes pending spans.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	perr := t.stopPProf(ctx)
	if err := t.shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return errors.Join(perr, fmt.Errorf("flush spans: %w", err))
	}
	return perr
}
