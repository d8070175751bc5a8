package webapi

import (
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/hachat/hachat/telemetry"
)

// TestTraceReachesCore checks that one request's trace runs from the HTTP
// handler into the gRPC call: the core sees a traceparent with the trace id
// the browser (or an upstream proxy) started.
func TestTraceReachesCore(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	tel := telemetry.Discard()
	tel.Tracer = tp
	tel.Propagator = propagation.TraceContext{}
	e := newEnvTel(t, tel, nil)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/genesys/2/chat/customer-support", strings.NewReader(`{"nickname":"Ada"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	res, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("start: %d", res.StatusCode)
	}
	e.core.mu.Lock()
	tps := e.core.lastMD.Get("traceparent")
	e.core.mu.Unlock()
	if len(tps) != 1 || !strings.Contains(tps[0], traceID) {
		t.Fatalf("core saw traceparent %v, want trace %s", tps, traceID)
	}
	var server, client bool
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID().String() != traceID {
			continue
		}
		switch s.Name() {
		case "POST /genesys/2/chat/{service}":
			server = true
		case "hachat.chat.v1.Chat/StartSession":
			client = true
		}
	}
	if !server || !client {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name())
		}
		t.Errorf("spans in the trace: server=%v client=%v (all: %v)", server, client, names)
	}
}
