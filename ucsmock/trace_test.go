package ucsmock

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/hachat/hachat/telemetry"
)

// TestSaveSpanJoinsCallerTrace checks that a save's server span is a child
// of the client span, which is a child of the caller's span: one trace from
// the chat core into ucsmock.
func TestSaveSpanJoinsCallerTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tel := &telemetry.Telemetry{
		Logger:     slog.New(slog.DiscardHandler),
		Tracer:     tp,
		Propagator: propagation.TraceContext{},
		Registry:   prometheus.NewRegistry(),
	}
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	srv, err := New(cfg, tel)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient(hs.URL, hs.Client(), tel)

	ctx, parent := tp.Tracer("test").Start(context.Background(), "chatcore.save")
	if _, err := c.Save(ctx, SaveRequest{ChatID: "t1", Service: "chat", Epoch: 1, Events: evs("t1", 1, 1)}); err != nil {
		t.Fatal(err)
	}
	parent.End()

	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = s
	}
	name := "ucs POST /ucs/v1/transcripts/{chatId}"
	var client, server sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() != name {
			continue
		}
		if s.SpanKind().String() == "client" {
			client = s
		} else if s.SpanKind().String() == "server" {
			server = s
		}
	}
	if client == nil || server == nil {
		t.Fatalf("client or server span missing: %v", byName)
	}
	commit := byName["ucs.commit"]
	if commit == nil {
		t.Fatalf("commit span missing: %v", byName)
	}
	traceID := parent.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{client, server, commit} {
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("span %s (%s) is in trace %s, want %s", s.Name(), s.SpanKind(), s.SpanContext().TraceID(), traceID)
		}
	}
	if client.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("client span's parent is not the caller's span")
	}
	if server.Parent().SpanID() != client.SpanContext().SpanID() {
		t.Errorf("server span's parent is not the client span")
	}
	if commit.Parent().SpanID() != server.SpanContext().SpanID() {
		t.Errorf("commit span's parent is not the server span")
	}
}
