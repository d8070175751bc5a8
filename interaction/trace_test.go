package interaction

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestTraceRunsFromAgentAPIToCore checks that an agent's send is one trace:
// the otelhttp server span of the agent API and, inside it, the otelgrpc
// client span of the call to the chat core, both from the telemetry passed
// in (never the otel globals).
func TestTraceRunsFromAgentAPIToCore(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	tel := telemetry.Discard()
	tel.Tracer = tp
	tel.Propagator = propagation.TraceContext{}
	e := newEnvClient(t, true, tel, nil)

	ta := e.login("a", "agent")
	pa := e.openPush(ta)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	chat := e.customer("Tom").SessionId
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "traced", "clientMessageId": "t-1"})

	var server, client sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		switch {
		case sp.SpanKind() == trace.SpanKindServer && sp.Name() == "POST /agent/v1/chats/"+chat+"/send":
			server = sp
		case sp.SpanKind() == trace.SpanKindClient && sp.Name() == "hachat.chat.v1.Chat/Send":
			client = sp
		}
	}
	if server == nil || client == nil {
		var names []string
		for _, sp := range rec.Ended() {
			names = append(names, sp.SpanKind().String()+" "+sp.Name())
		}
		t.Fatalf("missing spans (server %v, client %v); have %v", server != nil, client != nil, names)
	}
	if client.SpanContext().TraceID() != server.SpanContext().TraceID() {
		t.Errorf("core call in trace %s, request in %s", client.SpanContext().TraceID(), server.SpanContext().TraceID())
	}
}

// TestTracedOnlyWhenTracing: with spans exported, every request runs in an
// otelhttp server span, behind its response writer wrapper; without, the
// handlers (the push channel's writes and flushes first) get the
// connection's writer as it is, and an incoming trace context still
// reaches the request's context.
func TestTracedOnlyWhenTracing(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tracing := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[tracing], func(t *testing.T) {
			tel, rec := telemetrytest.Recording(t, tracing)
			s := &Server{tel: tel}
			var inner http.ResponseWriter
			var sc trace.SpanContext
			h := s.traced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inner, sc = w, trace.SpanContextFromContext(r.Context())
			}))
			out := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/agent/v1/events", nil)
			req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
			h.ServeHTTP(out, req)

			if got := sc.TraceID().String(); got != traceID {
				t.Errorf("trace id in the request's context %s, want the caller's %s", got, traceID)
			}
			wrapped := inner != http.ResponseWriter(out)
			if spans := rec.Ended(); tracing && (!wrapped || len(spans) != 1 || spans[0].Name() != "GET /agent/v1/events") {
				t.Errorf("tracing on: writer wrapped %v, %d spans (want otelhttp's wrapper and one span)", wrapped, len(spans))
			}
			if !tracing && wrapped {
				t.Errorf("tracing off: the handler's writer is %T, want the connection's (no otelhttp)", inner)
			}
		})
	}
}
