package pause

import (
	"context"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(live)
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		d       time.Duration
		want    bool
		atLeast time.Duration
	}{
		{"waits d", live, 20 * time.Millisecond, true, 20 * time.Millisecond},
		{"zero", live, 0, true, 0},
		{"negative", live, -time.Second, true, 0},
		{"ended context", done, time.Hour, false, 0},
		{"ended context, zero", done, 0, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			if got := For(tc.ctx, tc.d); got != tc.want {
				t.Fatalf("For = %v, want %v", got, tc.want)
			}
			if took := time.Since(start); took < tc.atLeast {
				t.Errorf("returned after %s, want at least %s", took, tc.atLeast)
			}
		})
	}
}
