package webapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// instantCore answers every Send at once, in process: what is left of a
// send's cost is webapi's own (routing, middleware, parsing, the answer).
type instantCore struct {
	chatpb.ChatClient // the other calls are not made
}

func (instantCore) Send(_ context.Context, in *chatpb.SendRequest, _ ...grpc.CallOption) (*chatpb.SendResponse, error) {
	return &chatpb.SendResponse{Index: 7, Alias: "core-a"}, nil
}

// discardWriter is a ResponseWriter that keeps nothing but its headers.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkSendHandler measures webapi's handler for one customer send
// (POST .../{chatId}/send, a form as the GMS clients send it) against a
// core that answers at once, without the network: the middleware (security
// headers, CORS, the GMS adaptations, the route's instrumentation), the
// form parsing, the call and the JSON answer. Run it with -benchmem: its
// allocations are the send path's, per message.
func BenchmarkSendHandler(b *testing.B) {
	for _, tracing := range []bool{false, true} {
		b.Run("tracing="+strconv.FormatBool(tracing), func(b *testing.B) {
			tel := telemetry.Discard()
			if tracing {
				tel.Tracer = recordingTracer(b)
			}
			s, err := New(DefaultConfig(), instantCore{}, tel)
			if err != nil {
				b.Fatal(err)
			}
			h := s.Handler()
			body := url.Values{"userId": {"p-1"}, "secureKey": {"k-1"}, "message": {strings.Repeat("m", 64)},
				"clientMessageId": {"bench-1"}}.Encode()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/genesys/2/chat/customer-support/c-1/send", strings.NewReader(body))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				w := &discardWriter{h: http.Header{}}
				h.ServeHTTP(w, r)
				if w.code != 0 && w.code != http.StatusOK {
					b.Fatalf("HTTP %d", w.code)
				}
			}
		})
	}
}

// recordingTracer is a tracer provider whose spans are sampled and
// recorded but kept nowhere: the cost of tracing without an exporter's.
func recordingTracer(tb testing.TB) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider()
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}
