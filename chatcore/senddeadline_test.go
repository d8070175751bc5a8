package chatcore

import (
	"context"
	"testing"
	"time"
)

// TestSendDeadlines: a stream's sends get deadlines no earlier than asked
// and at most a grain later; sends asking for the same rounded deadline
// share one context, a later one gets its own; a shared context ends at
// its deadline, and every one ends with the stream.
func TestSendDeadlines(t *testing.T) {
	for _, tc := range []struct {
		name      string
		timeouts  []int64 // ms, asked one after the other
		distinct  int     // contexts handed out (besides the parent)
		unbounded bool    // the parent itself is returned
	}{
		{name: "no timeout is the stream's context", timeouts: []int64{0, -1}, unbounded: true},
		{name: "one send", timeouts: []int64{60000}, distinct: 1},
		{name: "a burst shares one deadline", timeouts: []int64{60000, 60000, 60000, 60000}, distinct: 1},
		{name: "a deadline a minute later is its own", timeouts: []int64{60000, 120000, 120000}, distinct: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancel := context.WithCancel(context.Background())
			var d sendDeadlines
			seen := map[context.Context]bool{}
			for _, ms := range tc.timeouts {
				before := time.Now()
				ctx := d.bound(parent, ms)
				if tc.unbounded {
					if ctx != parent {
						t.Fatalf("timeout %d ms: a bounded context", ms)
					}
					continue
				}
				dl, ok := ctx.Deadline()
				asked := before.Add(time.Duration(ms) * time.Millisecond)
				if !ok || dl.Before(asked) || dl.After(time.Now().Add(time.Duration(ms)*time.Millisecond+sendDeadlineGrain)) {
					t.Fatalf("timeout %d ms: deadline %v (ok %v), asked %v, grain %v", ms, dl, ok, asked, sendDeadlineGrain)
				}
				seen[ctx] = true
			}
			// A burst may straddle a grain boundary: at most one more.
			if !tc.unbounded && (len(seen) < tc.distinct || len(seen) > tc.distinct+1) {
				t.Fatalf("%d contexts, want %d", len(seen), tc.distinct)
			}
			cancel()
			for ctx := range seen {
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("a send's context outlived its stream")
				}
			}
		})
	}

	t.Run("ends at its deadline", func(t *testing.T) {
		var d sendDeadlines
		defer d.stop()
		start := time.Now()
		ctx := d.bound(context.Background(), 30)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the shared context did not end at its deadline")
		}
		if el := time.Since(start); el < 30*time.Millisecond {
			t.Fatalf("ended after %v, before the 30 ms asked", el)
		}
		if ctx.Err() != context.DeadlineExceeded {
			t.Fatalf("err %v, want DeadlineExceeded", ctx.Err())
		}
	})
}
