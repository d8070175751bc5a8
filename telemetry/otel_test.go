package telemetry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpSink is an OTLP/HTTP trace receiver: it keeps every request to
// /v1/traces.
type otlpSink struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []*coltracepb.ExportTraceServiceRequest
}

func newSink(t *testing.T) *otlpSink {
	t.Helper()
	s := &otlpSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		b, err := io.ReadAll(r.Body)
		req := &coltracepb.ExportTraceServiceRequest{}
		if err == nil {
			err = proto.Unmarshal(b, req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.got = append(s.got, req)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(nil)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// spans returns "service.name/span name" of every span received, with the
// resource's hachat.part and service.instance.id when set.
func (s *otlpSink) spans() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, req := range s.got {
		for _, rs := range req.GetResourceSpans() {
			attrs := map[string]string{}
			for _, kv := range rs.GetResource().GetAttributes() {
				attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					line := attrs["service.name"] + "/" + sp.GetName() + " part=" + attrs["hachat.part"]
					if id := attrs["service.instance.id"]; id != "" {
						line += " instance=" + id
					}
					out = append(out, line)
				}
			}
		}
	}
	return out
}

// clearOTELEnv empties every OTEL_* variable the tests set, so that the
// machine's own environment does not leak into a case.
func clearOTELEnv(t *testing.T) {
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
		t.Setenv(k, "")
	}
}

// TestOTELEnvironment checks that the OTEL_* variables alone configure the
// span export, and that a trace field of Config, when set, overrides its
// variable while one left empty does not.
func TestOTELEnvironment(t *testing.T) {
	type sinks struct{ env, flag *otlpSink }
	for _, tc := range []struct {
		name string
		env  func(s sinks) map[string]string
		cfg  func(s sinks, c *Config)
		// wantEnv and wantFlag are the spans each sink must have received.
		wantEnv, wantFlag []string
	}{
		{
			name:    "no variables: no export",
			env:     func(sinks) map[string]string { return nil },
			wantEnv: nil,
		},
		{
			name: "endpoint without exporter: no export (hachat's default is none)",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			wantEnv: nil,
		},
		{
			name: "otlp over http/protobuf from the variables alone",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
					"OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			wantEnv: []string{"hachat-core/work part=core"},
		},
		{
			name: "OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL,
					"OTEL_SERVICE_NAME": "chat", "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=x,service.instance.id=core-b"}
			},
			wantEnv: []string{"chat/work part=core instance=core-b"},
		},
		{
			name: "sampler from OTEL_TRACES_SAMPLER",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL,
					"OTEL_TRACES_SAMPLER": "always_off"}
			},
			wantEnv: nil,
		},
		{
			name: "--trace=none wins over OTEL_TRACES_EXPORTER",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			cfg:     func(_ sinks, c *Config) { c.Trace = "none" },
			wantEnv: nil,
		},
		{
			name: "--trace=otlp takes the endpoint from the variables",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			cfg:     func(_ sinks, c *Config) { c.Trace = "otlp" },
			wantEnv: []string{"hachat-core/work part=core"},
		},
		{
			name: "--otlp-endpoint wins over OTEL_EXPORTER_OTLP_ENDPOINT",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			cfg:      func(s sinks, c *Config) { c.OTLPEndpoint = s.flag.srv.URL },
			wantFlag: []string{"hachat-core/work part=core"},
		},
		{
			name: "--otlp-protocol wins over OTEL_EXPORTER_OTLP_PROTOCOL",
			env: func(s sinks) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
					"OTEL_EXPORTER_OTLP_ENDPOINT": s.env.srv.URL}
			},
			cfg:     func(_ sinks, c *Config) { c.OTLPProtocol = ProtocolHTTP },
			wantEnv: []string{"hachat-core/work part=core"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearOTELEnv(t)
			s := sinks{env: newSink(t), flag: newSink(t)}
			for k, v := range tc.env(s) {
				t.Setenv(k, v)
			}
			cfg := DefaultConfig()
			if tc.cfg != nil {
				tc.cfg(s, &cfg)
			}
			tel, err := Setup(t.Context(), cfg, "core", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			_, span := tel.Tracer.Tracer("test").Start(t.Context(), "work")
			span.End()
			if err := tel.Shutdown(t.Context()); err != nil { // flushes: every span is sent by now
				t.Fatal(err)
			}
			if got := s.env.spans(); strings.Join(got, "\n") != strings.Join(tc.wantEnv, "\n") {
				t.Errorf("spans at OTEL_EXPORTER_OTLP_ENDPOINT: %q, want %q", got, tc.wantEnv)
			}
			if got := s.flag.spans(); strings.Join(got, "\n") != strings.Join(tc.wantFlag, "\n") {
				t.Errorf("spans at --otlp-endpoint: %q, want %q", got, tc.wantFlag)
			}
		})
	}
}

// TestOTELBadValues checks that a value Setup cannot use is a clear error.
func TestOTELBadValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		cfg     Config
		wantErr string
	}{
		{"unknown OTEL_TRACES_EXPORTER", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, Config{}, "OTEL_TRACES_EXPORTER"},
		{"unknown protocol variable", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			Config{Trace: "otlp"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"unknown --otlp-protocol", nil, Config{Trace: "otlp", OTLPProtocol: "udp"}, "--otlp-protocol"},
		{"bad --otlp-endpoint", nil, Config{Trace: "otlp", OTLPEndpoint: "ftp://x"}, "otlp endpoint"},
		{"endpoint without port", nil, Config{Trace: "otlp", OTLPEndpoint: "collector"}, "otlp endpoint"},
		{"bad OTEL_RESOURCE_ATTRIBUTES", map[string]string{"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "novalue"},
			Config{}, "OTEL_RESOURCE_ATTRIBUTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearOTELEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg := tc.cfg
			cfg.LogLevel = "info"
			_, err := Setup(t.Context(), cfg, "core", io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want one naming %q", err, tc.wantErr)
			}
			if tc.name != "bad OTEL_RESOURCE_ATTRIBUTES" && !errors.Is(err, ErrBadConfig) {
				t.Errorf("err %v is not ErrBadConfig", err)
			}
		})
	}
}

func TestOTLPProtocol(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		env  map[string]string
		want string
	}{
		{Config{}, nil, ProtocolHTTP},
		{Config{OTLPEndpoint: "collector:4317"}, nil, ProtocolGRPC},
		{Config{OTLPEndpoint: "http://collector:4318"}, nil, ProtocolHTTP},
		{Config{OTLPEndpoint: "collector:4317"}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ProtocolHTTP},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ProtocolGRPC},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, ProtocolGRPC},
		{Config{OTLPProtocol: "grpc"}, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, ProtocolGRPC},
	} {
		got, err := OTLPProtocol(tc.cfg, func(k string) string { return tc.env[k] })
		if err != nil || got != tc.want {
			t.Errorf("OTLPProtocol(%+v, %v) = %q, %v; want %q", tc.cfg, tc.env, got, err, tc.want)
		}
	}
}

// TestLogLinesCarryTheTrace checks that a line logged with a context that
// holds a span carries its trace_id and span_id, in both formats, and one
// without a span carries neither.
func TestLogLinesCarryTheTrace(t *testing.T) {
	clearOTELEnv(t)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var logs bytes.Buffer
			tel, err := Setup(t.Context(), Config{LogFormat: format, LogLevel: "info", Trace: "stdout"}, "core", &logs)
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			ctx, span := tel.Tracer.Tracer("test").Start(t.Context(), "work")
			tel.Logger.InfoContext(ctx, "inside")
			tel.Logger.With("k", "v").WarnContext(ctx, "inside, derived logger")
			span.End()
			tel.Logger.InfoContext(t.Context(), "outside")
			tel.Logger.Info("no context")
			sc := span.SpanContext()
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if len(lines) != 4 {
				t.Fatalf("%d lines: %q", len(lines), lines)
			}
			for i, line := range lines {
				hasTrace := strings.Contains(line, sc.TraceID().String()) && strings.Contains(line, sc.SpanID().String()) &&
					strings.Contains(line, "trace_id") && strings.Contains(line, "span_id")
				if want := i < 2; hasTrace != want {
					t.Errorf("line %q: carries trace %v, want %v", line, hasTrace, want)
				}
			}
		})
	}
}

// TestTraceHandlerDisabledLevels checks that the wrapper keeps the wrapped
// handler's level.
func TestTraceHandlerDisabledLevels(t *testing.T) {
	var logs bytes.Buffer
	h := NewTraceHandler(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if h.Enabled(context.Background(), slog.LevelInfo) || !h.Enabled(context.Background(), slog.LevelWarn) {
		t.Fatal("level not kept")
	}
}
