package interaction

import (
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/telemetry"
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
