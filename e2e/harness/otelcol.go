package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
)

// CollectorDir is the module of the test OpenTelemetry Collector (the OTLP
// receiver and the file exporter, built from the Collector's Go modules),
// relative to the repository root. It has its own go.mod so that hachat's
// does not carry the Collector's dependencies.
const CollectorDir = "e2e/otelcol"

// CollectorCachePath returns where the Collector built from the sources
// under root is cached: <user cache dir>/hachat/otelcol-<hash>, the hash
// of its go.sum and main.go, so that it is rebuilt only when they change.
// `make deps` builds it there (the Makefile's otelcol target computes the
// same path).
func CollectorCachePath(root string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(root, CollectorDir, name))
		if err != nil {
			return "", fmt.Errorf("hash the collector's sources: %w", err)
		}
		h.Write(b)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("collector cache: %w", err)
	}
	return filepath.Join(cache, "hachat", "otelcol-"+hex.EncodeToString(h.Sum(nil))[:16]), nil
}

var (
	collectorOnce sync.Once
	collectorPath string
	collectorErr  error
)

// CollectorBinary returns the cached test Collector, building it first
// when `make deps` has not (that takes minutes on 2 cores).
func CollectorBinary(t testing.TB) string {
	t.Helper()
	collectorOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			collectorErr = err
			return
		}
		collectorPath, collectorErr = CollectorCachePath(root)
		if collectorErr != nil {
			return
		}
		if _, err := os.Stat(collectorPath); err == nil {
			return
		}
		t.Logf("building the test OpenTelemetry Collector into %s (make deps does this once)", collectorPath)
		if err := os.MkdirAll(filepath.Dir(collectorPath), 0o755); err != nil {
			collectorErr = err
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		tmp := collectorPath + ".tmp"
		cmd := exec.Command(gobin, "build", "-o", tmp, ".")
		cmd.Dir = filepath.Join(root, CollectorDir)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			collectorErr = fmt.Errorf("go build %s: %w\n%s", CollectorDir, err, out.String())
			return
		}
		collectorErr = os.Rename(tmp, collectorPath)
	})
	if collectorErr != nil {
		t.Fatalf("test collector: %v", collectorErr)
	}
	return collectorPath
}

// Collector is a running test OpenTelemetry Collector: OTLP over gRPC and
// over HTTP on free loopback ports, every span received written to a file
// (the file exporter's OTLP JSON, one export request a line).
type Collector struct {
	// GRPC and HTTP are the OTLP receiver's addresses (host:port).
	GRPC, HTTP string
	// Output is the file exporter's file.
	Output string
	// Log is the Collector's own log.
	Log string
}

// StartCollector starts a Collector that the test stops at its end.
func StartCollector(t testing.TB) *Collector {
	t.Helper()
	bin := CollectorBinary(t)
	dir := t.TempDir()
	grpcAddr, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{GRPC: grpcAddr, HTTP: httpAddr, Output: filepath.Join(dir, "spans.jsonl"), Log: filepath.Join(dir, "otelcol.log")}
	conf := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %q
      http:
        endpoint: %q
exporters:
  file:
    path: %q
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
`, grpcAddr, httpAddr, c.Output)
	confPath := filepath.Join(dir, "otelcol.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", "file:"+confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("collector log:\n%s", demo.Tail(c.Log, 30))
		}
	})
	Eventually(t, "the collector's OTLP ports", 30*time.Second, func() error {
		select {
		case <-done:
			return errors.New("collector exited: " + demo.Tail(c.Log, 10))
		default:
		}
		for _, addr := range []string{grpcAddr, httpAddr} {
			conn, err := (&net.Dialer{Timeout: time.Second}).DialContext(context.Background(), "tcp", addr)
			if err != nil {
				return err
			}
			conn.Close()
		}
		return nil
	})
	return c
}

// Span is one span the Collector received, with its resource.
type Span struct {
	// Service is the resource's service.name, Instance its
	// service.instance.id.
	Service, Instance string
	// Resource holds the resource's string attributes.
	Resource map[string]string
	Name     string
	// TraceID, SpanID and ParentSpanID are hex, as in OTLP JSON.
	TraceID, SpanID, ParentSpanID string
	// Attributes holds the span's string, int and bool attributes as text.
	Attributes map[string]string
}

// otlpJSON is the part of an OTLP JSON export request Spans reads.
type otlpJSON struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []otlpKV `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []struct {
				TraceID      string   `json:"traceId"`
				SpanID       string   `json:"spanId"`
				ParentSpanID string   `json:"parentSpanId"`
				Name         string   `json:"name"`
				Attributes   []otlpKV `json:"attributes"`
			} `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

type otlpKV struct {
	Key   string `json:"key"`
	Value struct {
		StringValue *string `json:"stringValue"`
		IntValue    *string `json:"intValue"`
		BoolValue   *bool   `json:"boolValue"`
	} `json:"value"`
}

func attrMap(kvs []otlpKV) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		switch v := kv.Value; {
		case v.StringValue != nil:
			m[kv.Key] = *v.StringValue
		case v.IntValue != nil:
			m[kv.Key] = *v.IntValue
		case v.BoolValue != nil:
			m[kv.Key] = fmt.Sprint(*v.BoolValue)
		}
	}
	return m
}

// Spans reads back every span the Collector has written so far.
func (c *Collector) Spans() ([]Span, error) {
	f, err := os.Open(c.Output)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Span
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var req otlpJSON
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			continue // a line the exporter is still writing
		}
		for _, rs := range req.ResourceSpans {
			res := attrMap(rs.Resource.Attributes)
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					out = append(out, Span{Service: res["service.name"], Instance: res["service.instance.id"], Resource: res,
						Name: s.Name, TraceID: s.TraceID, SpanID: s.SpanID, ParentSpanID: s.ParentSpanID,
						Attributes: attrMap(s.Attributes)})
				}
			}
		}
	}
	return out, sc.Err()
}
