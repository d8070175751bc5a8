package chatclient

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

func TestPolicyRetry(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "this chat core is not primary")
	draining := status.Error(codes.Unavailable, "this chat core is draining for a switchover")
	capped := Policy{MaxAttempts: 3}
	for _, tc := range []struct {
		name       string
		p          Policy
		err        error
		attempts   int
		idempotent bool
		want       bool
	}{
		{"not primary", Policy{}, unavailable, 1, true, true},
		{"draining", Policy{}, draining, 1, true, true},
		{"promotion aborted", Policy{}, status.Error(codes.Aborted, "promotion aborted"), 1, true, true},
		{"silent core: attempt timed out", Policy{}, status.Error(codes.DeadlineExceeded, "attempt"), 1, true, true},
		{"no cap: many attempts", Policy{}, unavailable, 1000, true, true},
		{"under the cap", capped, unavailable, 2, true, true},
		{"cap reached", capped, unavailable, 3, true, false},
		{"one attempt only", Policy{MaxAttempts: 1}, unavailable, 1, true, false},
		{"not idempotent (switchover)", Policy{}, unavailable, 1, false, false},
		{"success", Policy{}, nil, 1, true, false},
		{"bad argument", Policy{}, status.Error(codes.InvalidArgument, "too long"), 1, true, false},
		{"unknown chat", Policy{}, status.Error(codes.NotFound, "no session"), 1, true, false},
		{"wrong key", Policy{}, status.Error(codes.PermissionDenied, "key"), 1, true, false},
		{"chat ended", Policy{}, status.Error(codes.FailedPrecondition, "ended"), 1, true, false},
		{"rate limited", Policy{}, status.Error(codes.ResourceExhausted, "too many"), 1, true, false},
		{"caller cancelled", Policy{}, status.Error(codes.Canceled, "context canceled"), 1, true, false},
		{"internal", Policy{}, status.Error(codes.Internal, "bug"), 1, true, false},
		{"plain context error", Policy{}, context.DeadlineExceeded, 1, true, false},
		{"wrapped unavailable", Policy{}, fmt.Errorf("send: %w", unavailable), 1, true, true},
		{"not a status", Policy{}, errors.New("boom"), 1, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Retry(tc.err, tc.attempts, tc.idempotent); got != tc.want {
				t.Errorf("Retry(%v, %d, %v) = %v, want %v", tc.err, tc.attempts, tc.idempotent, got, tc.want)
			}
		})
	}
}

func TestPolicyBackoff(t *testing.T) {
	p := Policy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	for _, tc := range []struct {
		name    string
		p       Policy
		attempt int
		limit   time.Duration
		lo, hi  time.Duration
	}{
		{"first pause", p, 1, 0, 5 * time.Millisecond, 10 * time.Millisecond},
		{"doubles", p, 2, 0, 10 * time.Millisecond, 20 * time.Millisecond},
		{"doubles again", p, 3, 0, 20 * time.Millisecond, 40 * time.Millisecond},
		{"capped at max", p, 5, 0, 50 * time.Millisecond, 100 * time.Millisecond},
		{"no overflow", p, 200, 0, 50 * time.Millisecond, 100 * time.Millisecond},
		{"caller's lower cap", p, 9, 20 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond},
		{"a higher cap does not raise max", p, 9, time.Second, 50 * time.Millisecond, 100 * time.Millisecond},
		{"no backoff", Policy{}, 3, 0, 0, 0},
		{"zero attempt counts as first", p, 0, 0, 5 * time.Millisecond, 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 200 {
				if d := tc.p.Backoff(tc.attempt, tc.limit); d < tc.lo || d > tc.hi {
					t.Fatalf("Backoff(%d, %s) = %s, want within [%s, %s]", tc.attempt, tc.limit, d, tc.lo, tc.hi)
				}
			}
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		ok   bool
	}{
		{"defaults", DefaultPolicy(), true},
		{"zero", Policy{}, true},
		{"negative retry-for", Policy{RetryFor: -1}, false},
		{"negative attempt timeout", Policy{AttemptTimeout: -1}, false},
		{"negative backoff", Policy{MinBackoff: -1}, false},
		{"min above max", Policy{MinBackoff: time.Second, MaxBackoff: time.Millisecond}, false},
		{"negative attempts", Policy{MaxAttempts: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadPolicy) {
				t.Errorf("error %v is not ErrBadPolicy", err)
			}
		})
	}
}

// TestMaxAttemptsCountsAtTheCore: a core that keeps failing sees exactly
// MaxAttempts attempts of one call, all with one client message id, and the
// caller gets the core's Unavailable.
func TestMaxAttemptsCountsAtTheCore(t *testing.T) {
	f := &fakeCore{failSends: 100}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	c.cfg.MaxAttempts = 3
	c.cfg.MinBackoff, c.cfg.MaxBackoff = time.Millisecond, time.Millisecond
	_, err := c.Send(context.Background(), &chatpb.SendRequest{Text: "hi"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Send: %v, want Unavailable", err)
	}
	f.mu.Lock()
	ids := append([]string(nil), f.sendIDs...)
	f.mu.Unlock()
	if len(ids) != 3 || c.Attempts() != 3 || c.Retries() != 2 {
		t.Fatalf("core saw %d attempts, client counted %d attempts and %d retries; want 3, 3, 2", len(ids), c.Attempts(), c.Retries())
	}
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("attempts carried ids %q, want one", ids)
		}
	}
}

// TestRetryObserverSeesEachRetry: the observer hears of every retry, with
// the method and the failed attempt's number.
func TestRetryObserverSeesEachRetry(t *testing.T) {
	f := &fakeCore{failSends: 2}
	addr, _ := serve(t, f)
	c := newClient(t, addr)
	var seen []string
	ctx := WithRetryObserver(context.Background(), func(method string, attempt int, err error) {
		seen = append(seen, fmt.Sprintf("%s#%d:%s", method, attempt, status.Code(err)))
	})
	if _, err := c.Send(ctx, &chatpb.SendRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	if want := "[Send#1:Unavailable Send#2:Unavailable]"; fmt.Sprint(seen) != want {
		t.Fatalf("observed %v, want %s", seen, want)
	}
}
