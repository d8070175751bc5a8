package membership

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// closedAddr returns a loopback address with nothing listening.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestReachableHandler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := []struct {
		name      string
		method    string
		query     string
		status    int
		reachable bool
		wantErr   bool
	}{
		{"listening port", http.MethodGet, "addr=" + url.QueryEscape(ln.Addr().String()), 200, true, false},
		{"closed port", http.MethodGet, "addr=" + url.QueryEscape(closedAddr(t)), 200, false, true},
		{"missing addr", http.MethodGet, "", 400, false, true},
		{"no port", http.MethodGet, "addr=127.0.0.1", 400, false, true},
		{"port out of range", http.MethodGet, "addr=127.0.0.1:99999", 400, false, true},
		{"empty host", http.MethodGet, "addr=:80", 400, false, true},
		{"post", http.MethodPost, "addr=" + url.QueryEscape(ln.Addr().String()), 405, false, true},
	}
	h := ReachableHandler()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, ReachablePath+"?"+tc.query, nil))
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
			var ans Reachability
			if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if ans.Reachable != tc.reachable || (ans.Error != "") != tc.wantErr {
				t.Fatalf("answer %+v, want reachable=%v error=%v", ans, tc.reachable, tc.wantErr)
			}
		})
	}
}

func TestAskReachable(t *testing.T) {
	witness := httptest.NewServer(ReachableHandler())
	defer witness.Close()
	wAddr := witness.Listener.Addr().String()
	client := &http.Client{Timeout: 2 * time.Second}
	ctx := context.Background()

	ok, err := AskReachable(ctx, client, wAddr, wAddr)
	if err != nil || !ok {
		t.Fatalf("witness reaching itself: %v, %v", ok, err)
	}
	ok, err = AskReachable(ctx, client, wAddr, closedAddr(t))
	if err != nil || ok {
		t.Fatalf("closed port: %v, %v; want false, nil", ok, err)
	}
	if _, err := AskReachable(ctx, client, wAddr, "garbage"); !errors.Is(err, ErrWitness) {
		t.Fatalf("bad target: %v, want ErrWitness (400)", err)
	}
	if _, err := AskReachable(ctx, client, closedAddr(t), wAddr); !errors.Is(err, ErrWitness) {
		t.Fatalf("dead witness: %v, want ErrWitness", err)
	}
	notWitness := httptest.NewServer(http.NotFoundHandler())
	defer notWitness.Close()
	if _, err := AskReachable(ctx, client, notWitness.Listener.Addr().String(), wAddr); !errors.Is(err, ErrWitness) {
		t.Fatalf("not a witness: %v, want ErrWitness", err)
	}
}
