package webbench

import (
	"testing"
	"time"
)

func TestTrackerLatencies(t *testing.T) {
	tr := newTracker(4)
	for i, want := range map[string]int{"w0": 0, "w3": 3} {
		if n, ok := tr.messageNumber([]byte(i)); !ok || n != want {
			t.Fatalf("messageNumber(%s) = %d %v", i, n, ok)
		}
	}
	for _, bad := range []string{"w4", "x1", "w", "w-1", "wx"} {
		if _, ok := tr.messageNumber([]byte(bad)); ok {
			t.Fatalf("messageNumber(%s) accepted", bad)
		}
	}
	tr.sent[1].Store(100)
	tr.delivered(1, true, 150)
	tr.delivered(1, true, 900) // a second arrival does not count
	tr.delivered(1, false, 300)
	agent, push := tr.latencies(0, 4)
	if len(agent) != 1 || agent[0] != 50 || len(push) != 1 || push[0] != 200 || tr.agentN.Load() != 1 {
		t.Fatalf("agent %v push %v n %d", agent, push, tr.agentN.Load())
	}
}

func TestLongestPause(t *testing.T) {
	if got := longestPause([]int64{30, 10, 15, 100}); got != time.Duration(70) {
		t.Fatalf("longest pause %v", got)
	}
	if got := longestPause(nil); got != 0 {
		t.Fatalf("empty: %v", got)
	}
}
