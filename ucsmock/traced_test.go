package ucsmock

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestOtelhttpOnlyWhenTracing: with spans exported, the server runs its
// requests inside otelhttp (a server span each) and the client's transport
// is otelhttp's; without, neither is, and the caller's trace context still
// travels from the client into the server's request context, so log lines
// keep its trace_id.
func TestOtelhttpOnlyWhenTracing(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	tid, _ := trace.TraceIDFromHex(traceID)
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	caller := trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	for _, tracing := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[tracing], func(t *testing.T) {
			tel, rec := telemetrytest.Recording(t, tracing)
			var (
				inner http.ResponseWriter
				got   trace.SpanContext
			)
			h := traced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inner = w
				got = trace.SpanContextFromContext(r.Context())
			}), tel)
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(w, r)
				if wrapped := inner != w; wrapped != tracing {
					t.Errorf("server: the handler's writer wrapped %v, want %v (otelhttp only when tracing)", wrapped, tracing)
				}
			}))
			defer hs.Close()

			c := NewClient(hs.URL, hs.Client(), tel)
			if _, isOtel := c.hc.Transport.(*otelhttp.Transport); isOtel != tracing {
				t.Errorf("client: transport %T, want otelhttp's only when tracing", c.hc.Transport)
			}
			req, err := http.NewRequestWithContext(caller, http.MethodGet, hs.URL+"/ucs/v1/probe", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got.TraceID().String() != traceID {
				t.Errorf("trace id in the server's request context %s, want the caller's %s", got.TraceID(), traceID)
			}
			if spans := len(rec.Ended()); tracing && spans != 2 {
				t.Errorf("tracing on: %d spans ended, want a client and a server span", spans)
			}
		})
	}
}
