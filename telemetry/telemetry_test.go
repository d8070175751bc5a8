package telemetry

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"json logs", func(c *Config) { c.LogFormat = "json" }, ""},
		{"stdout spans", func(c *Config) { c.Trace = "stdout" }, ""},
		{"bad format", func(c *Config) { c.LogFormat = "xml" }, "log format"},
		{"bad level", func(c *Config) { c.LogLevel = "loud" }, "log level"},
		{"bad exporter", func(c *Config) { c.Trace = "zipkin" }, "trace exporter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			var logs bytes.Buffer
			tel, err := Setup(context.Background(), cfg, "test", &logs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			tel.Logger.Info("hello")
			if !strings.Contains(logs.String(), "part=test") && !strings.Contains(logs.String(), `"part":"test"`) {
				t.Fatalf("log lacks the part: %q", logs.String())
			}
			rec := httptest.NewRecorder()
			tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if !strings.Contains(rec.Body.String(), "go_goroutines") {
				t.Fatalf("metrics lack the Go collector")
			}
		})
	}
}
