package chatcore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/detect"
	"github.com/hachat/hachat/telemetry"
)

// TestGateHoldsCallsDuringPromotion: a Chat call that reaches a backup while
// its promotion is under way waits for the promotion's outcome instead of
// being refused at once (the client would retry only after a backoff): it is
// served when the claim made this core primary, refused when the promotion
// failed or the caller gave up. Event order only: the promotion ends after
// the call is seen held.
func TestGateHoldsCallsDuringPromotion(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		promote bool // a promotion is under way when the call arrives
		claim   bool // the promotion claims the epoch before it ends
		cancel  bool // the caller gives up while held
		want    error
	}{
		{name: "served once promoted", method: sendMethod, promote: true, claim: true, want: nil},
		{name: "stream served once promoted", method: subscribeMethod, promote: true, claim: true, want: nil},
		{name: "refused when the promotion fails", method: sendMethod, promote: true, want: errNotPrimary},
		{name: "refused when the caller gives up", method: sendMethod, promote: true, cancel: true, want: errNotPrimary},
		{name: "refused at once without a promotion", method: sendMethod, want: errNotPrimary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(testConfig(), newMemStore(), telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			end := func() {}
			if tc.promote {
				end = c.promoting.begin()
			}
			got := make(chan error, 1)
			go func() { got <- c.gate(ctx, tc.method) }()
			if tc.promote {
				deadline := time.Now().Add(10 * time.Second)
				for c.promoting.waiting() == 0 {
					select {
					case err := <-got:
						t.Fatalf("gate answered %v during the promotion: want the call held until it ends", err)
					default:
					}
					if time.Now().After(deadline) {
						t.Fatal("the call was not held within 10s")
					}
					time.Sleep(time.Millisecond)
				}
				if tc.claim {
					if _, err := c.claimPrimary(ctx, claim{reason: "test"}); err != nil {
						t.Fatal(err)
					}
				}
				if tc.cancel {
					cancel()
				}
				end()
			}
			if err := <-got; !errors.Is(err, tc.want) {
				t.Fatalf("gate: %v, want %v", err, tc.want)
			}
			if n := c.promoting.waiting(); n != 0 {
				t.Fatalf("%d calls still held", n)
			}
		})
	}
}

// TestPromotionEndWakesOnlyLastEnd: overlapping promotions keep calls held
// until the last one ends; end is idempotent.
func TestPromotionEndWakesOnlyLastEnd(t *testing.T) {
	var p promotion
	end1, end2 := p.begin(), p.begin()
	end1()
	end1()
	p.mu.Lock()
	open := p.done != nil
	p.mu.Unlock()
	if !open {
		t.Fatal("a promotion still under way, but its calls would no longer be held")
	}
	end2()
	p.wait(context.Background(), time.Hour) // returns at once: none under way
}

// TestRedialNow: after a stream that was in sync broke while the checks
// found the primary alive (a SIGKILLed primary whose listener still
// accepted the probe), the follower redials at once, once, and then paces
// its redials as before; no other outcome redials at once.
func TestRedialNow(t *testing.T) {
	for _, tc := range []struct {
		name          string
		synced        bool
		out           detect.Outcome
		lastImmediate bool
		want          bool
	}{
		{"in sync, primary found alive: redial now", true, detect.Alive, false, true},
		{"the last redial was immediate: pause", true, detect.Alive, true, false},
		{"never in sync: pause", false, detect.Alive, false, false},
		{"nothing decided: pause", true, detect.Stay, false, false},
		{"gossip refuted: pause", true, detect.GossipRefuted, false, false},
		{"promotion failed: pause", true, detect.Promote, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redialNow(streamEnd{synced: tc.synced}, tc.out, tc.lastImmediate); got != tc.want {
				t.Fatalf("redialNow = %v, want %v", got, tc.want)
			}
		})
	}
}
