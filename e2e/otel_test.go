package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// otelEnv is the test's environment without any OTEL_* variable, plus the
// three of issue 11's contract: nothing else tells the parts where spans go.
func otelEnv(protocol, endpoint string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "HACHAT_") {
			env = append(env, kv)
		}
	}
	return append(env, "OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL="+protocol,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+endpoint)
}

// services returns the sorted service names of spans.
func services(spans []harness.Span) []string {
	var out []string
	for _, s := range spans {
		if !slices.Contains(out, s.Service) {
			out = append(out, s.Service)
		}
	}
	slices.Sort(out)
	return out
}

// sendTrace returns the trace of webapi's span of a customer send that
// also holds a span of service in it, or an error saying what is missing.
func sendTrace(spans []harness.Span, service string) (string, error) {
	var sends int
	for _, w := range spans {
		if w.Service != "hachat-webapi" || !strings.Contains(w.Name, "send") {
			continue
		}
		sends++
		for _, s := range spans {
			if s.Service == service && s.TraceID == w.TraceID {
				return w.TraceID, nil
			}
		}
	}
	return "", fmt.Errorf("%d send spans of hachat-webapi, none in a trace with a span of %s (services: %v)", sends, service, services(spans))
}

// TestOTELDemoFailoverSpans checks issue 11's OpenTelemetry contract on
// `hachat demo` itself, run with only OTEL_TRACES_EXPORTER=otlp,
// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and OTEL_EXPORTER_OTLP_ENDPOINT
// in its environment, against a real OpenTelemetry Collector: the parts'
// spans arrive under distinct service names, a send is one trace from
// webapi through the chat core to UCS, kill -9 of the primary shows as the
// backup's promotion span, and the backup's log line of the promotion
// carries the promotion's trace_id.
func TestOTELDemoFailoverSpans(t *testing.T) {
	col := harness.StartCollector(t)
	_, state, _, _, _ := startFreeDemo(t, otelEnv("http/protobuf", "http://"+col.HTTP))
	st, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	webapi, _ := st.Part("webapi")
	coreA, _ := st.Part("core-a")
	coreB, _ := st.Part("core-b")
	gms := &harness.GMS{Base: "http://" + webapi.HTTP, Service: "customer-support", HTTP: http.DefaultClient}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	chat := gms.MustStart(t, "Otto")
	if r, err := chat.Send(ctx, "before the kill", "otel-1"); err != nil || !r.OK() {
		t.Fatalf("send: %v %+v", err, r)
	}

	// One send, one trace: webapi, the primary core, UCS (the transcript save).
	harness.Eventually(t, "the send's trace in webapi, core-a and ucs", 30*time.Second, func() error {
		spans, err := col.Spans()
		if err != nil {
			return err
		}
		id, err := sendTrace(spans, "hachat-core")
		if err != nil {
			return err
		}
		for _, s := range spans {
			if s.TraceID == id && s.Service == "hachat-ucs" {
				return nil
			}
		}
		return fmt.Errorf("trace %s has no span of hachat-ucs", id)
	})

	// kill -9 the primary; the chat goes on.
	if err := syscall.Kill(coreA.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r, err := chat.Send(ctx, "after the kill", "otel-2")
	for err == nil && r.Retryable() {
		r, err = chat.Send(ctx, "after the kill", "otel-2")
	}
	if err != nil || !r.OK() {
		t.Fatalf("send after kill -9 of the primary: %v %+v", err, r)
	}

	var promote harness.Span
	harness.Eventually(t, "core-b's promotion span and every part's spans", 30*time.Second, func() error {
		spans, err := col.Spans()
		if err != nil {
			return err
		}
		got := services(spans)
		for _, want := range []string{"hachat-webapi", "hachat-proxy", "hachat-core", "hachat-ucs"} {
			if !slices.Contains(got, want) {
				return fmt.Errorf("no span of %s yet (services: %v)", want, got)
			}
		}
		promote = harness.Span{}
		for _, s := range spans {
			if s.Name == "chatcore.promote" && s.Service == "hachat-core" && s.Instance == "core-b" {
				promote = s
			}
		}
		if promote.TraceID == "" {
			return errors.New("no chatcore.promote span of core-b yet")
		}
		for _, s := range spans {
			if s.Service == "hachat-core" && s.Instance == "core-a" {
				return nil // the two cores share a service name, and their instance ids tell them apart
			}
		}
		return errors.New("no span with service.instance.id=core-a")
	})
	if promote.Resource["hachat.part"] != "core" {
		t.Errorf("promotion span's resource: %v, want hachat.part=core", promote.Resource)
	}

	// The backup's log line of the promotion carries its trace and span.
	harness.Eventually(t, "core-b's promotion log line with the promotion's trace_id", 10*time.Second, func() error {
		line, err := logLine(coreB.Log, "promotion complete")
		if err != nil {
			return err
		}
		if !strings.Contains(line, "trace_id="+promote.TraceID) || !strings.Contains(line, "span_id="+promote.SpanID) {
			return fmt.Errorf("line %q lacks trace_id=%s span_id=%s", line, promote.TraceID, promote.SpanID)
		}
		return nil
	})
}

// logLine returns the first line of the log at path that holds text.
func logLine(path, text string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if strings.Contains(sc.Text(), text) {
			return sc.Text(), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no line with %q in %s", text, path)
}

// TestOTELGRPCProtocol checks the other OTLP protocol: with
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc the parts send their spans to the
// Collector's gRPC receiver, one send being one trace across webapi and
// the chat core.
func TestOTELGRPCProtocol(t *testing.T) {
	col := harness.StartCollector(t)
	c := harness.StartCluster(t, harness.Options{Env: otelEnv("grpc", "http://"+col.GRPC)})
	chat := c.Customer().MustStart(t, "Greta")
	mustSend(t, chat, "over grpc")
	harness.Eventually(t, "the send's trace in webapi and the core, over OTLP/gRPC", 30*time.Second, func() error {
		spans, err := col.Spans()
		if err != nil {
			return err
		}
		_, err = sendTrace(spans, "hachat-core")
		return err
	})
}
