package webapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/telemetry"
)

// TestOneRetryLayer counts the attempts one customer send makes at a core
// that keeps answering UNAVAILABLE, through webapi and the chat client it
// runs with in production: the chat client's policy alone decides them
// (here at most 3), so the core sees exactly 3, not 3 per webapi attempt.
// The customer is told statusCode 1 (resend with the same id) and the log
// is unchanged.
func TestOneRetryLayer(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxAttempts int
		failures    int // UNAVAILABLE answers before the core serves again
		wantCalls   int
		wantHTTP    int
	}{
		{"core back after 2 failures", 3, 2, 3, http.StatusOK},
		{"core never back", 3, 1 << 20, 3, http.StatusServiceUnavailable},
		{"no retries", 1, 1 << 20, 1, http.StatusServiceUnavailable},
		{"first attempt works", 3, 0, 1, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tel := telemetry.Discard()
			f := newFakeCore()
			p := chatclient.DefaultPolicy()
			p.MaxAttempts = tc.maxAttempts
			p.MinBackoff, p.MaxBackoff = time.Millisecond, 2*time.Millisecond
			client := startFakeCoreClient(t, f, tel, p)
			cfg := DefaultConfig()
			cfg.SSEHeartbeat = time.Hour
			cfg.ClientStartRate, cfg.StartRate = 0, 0
			srv, err := New(cfg, client, tel)
			if err != nil {
				t.Fatal(err)
			}
			hs := httptest.NewServer(srv.Handler())
			t.Cleanup(hs.Close)
			e := &env{t: t, core: f, srv: srv, http: hs, tel: tel}
			c := e.start("Ada")
			before := e.core.eventCount(c.id)
			f.mu.Lock()
			f.sendCalls, f.failNext = 0, tc.failures
			f.mu.Unlock()
			code, r := e.op(c, "send", map[string]any{"message": "through the failover", "clientMessageId": "m-1"})
			f.mu.Lock()
			calls := f.sendCalls
			f.failNext = 0
			f.mu.Unlock()
			t.Logf("core saw %d Send attempts for one customer send", calls)
			if calls != tc.wantCalls {
				t.Errorf("core saw %d Send attempts, want %d (one retry layer)", calls, tc.wantCalls)
			}
			if code != tc.wantHTTP {
				t.Fatalf("answer %d %+v, want HTTP %d", code, r, tc.wantHTTP)
			}
			if code == http.StatusOK {
				if e.core.eventCount(c.id) != before+1 {
					t.Errorf("log grew by %d, want 1", e.core.eventCount(c.id)-before)
				}
				return
			}
			if r.StatusCode != statusRetry || len(r.Errors) != 1 || r.Errors[0].Code != codeUnavailable {
				t.Errorf("answer %+v, want statusCode 1 with error %d", r, codeUnavailable)
			}
			if e.core.eventCount(c.id) != before {
				t.Errorf("log changed")
			}
			// The customer resends with the same id once the core is back:
			// applied once.
			code, _ = e.op(c, "send", map[string]any{"message": "through the failover", "clientMessageId": "m-1"})
			code2, _ := e.op(c, "send", map[string]any{"message": "through the failover", "clientMessageId": "m-1"})
			if code != http.StatusOK || code2 != http.StatusOK || e.core.eventCount(c.id) != before+1 {
				t.Errorf("resends answered %d, %d; log grew by %d, want 200, 200, 1", code, code2, e.core.eventCount(c.id)-before)
			}
		})
	}
}
