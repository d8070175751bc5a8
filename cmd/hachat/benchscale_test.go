package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// TestBenchScaleAndPairsRejectBadInput: bad figures are refused before
// anything starts.
func TestBenchScaleAndPairsRejectBadInput(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"no pairs", []string{"scale", "--pairs", "0"}},
		{"too many pairs", []string{"scale", "--pairs", "5000"}},
		{"no sessions", []string{"scale", "--sessions", "0"}},
		{"bad churn", []string{"scale", "--churn", "-2"}},
		{"no arrivals per poll", []string{"scale", "--per-poll", "0"}},
		{"no capacity", []string{"scale", "--capacity", "0"}},
		{"no sidecars", []string{"scale", "--sidecars", "0"}},
		{"negative restore rate", []string{"scale", "--restore-rate", "-1"}},
		{"no restore sessions", []string{"scale", "--restore-sessions", "0"}},
		{"chat: negative pairs", []string{"chat", "--pairs", "-1"}},
		{"chat: too many pairs", []string{"chat", "--pairs", "10"}},
		{"chat: pairs with a running cluster", []string{"chat", "--pairs", "2", "--core", "127.0.0.1:1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			err := runBench(context.Background(), tt.args, &out, &errw)
			if !errors.Is(err, errUsage) {
				t.Errorf("runBench %v = %v, want a usage error", tt.args, err)
			}
			if !strings.Contains(errw.String(), "want") && !strings.Contains(errw.String(), "cannot") {
				t.Errorf("runBench %v told the user %q, want what is wrong", tt.args, errw.String())
			}
		})
	}
}
