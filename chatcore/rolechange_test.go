package chatcore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
)

// TestGateHoldsCallsDuringRoleChange: a Chat call that reaches a backup
// while its promotion is under way, or a primary draining for a handover,
// waits for the change's outcome instead of being refused at once (the
// client would retry only after a backoff): it is served when the claim
// made this core primary or the handover aborted, refused when the
// promotion failed, the handover stepped the core down, or the caller gave
// up. Event order only: the change ends after the call is seen held.
func TestGateHoldsCallsDuringRoleChange(t *testing.T) {
	promoted := func(t *testing.T, c *Core) {
		if _, err := c.claimPrimary(context.Background(), claim{reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	nothing := func(*testing.T, *Core) {}
	for _, tc := range []struct {
		name    string
		method  string
		primary bool                    // the core is primary, draining for a handover
		change  bool                    // a role change is under way when the call arrives
		outcome func(*testing.T, *Core) // what the change did before it ends
		cancel  bool                    // the caller gives up while held
		want    error
	}{
		{name: "served once promoted", method: sendMethod, change: true, outcome: promoted, want: nil},
		{name: "stream served once promoted", method: subscribeMethod, change: true, outcome: promoted, want: nil},
		{name: "refused when the promotion fails", method: sendMethod, change: true, outcome: nothing, want: errNotPrimary},
		{name: "refused when the caller gives up", method: sendMethod, change: true, outcome: nothing, cancel: true, want: errNotPrimary},
		{name: "refused at once without a promotion", method: sendMethod, want: errNotPrimary},
		{name: "served when the handover aborts", method: sendMethod, primary: true, change: true,
			outcome: func(_ *testing.T, c *Core) { c.role.SetDraining(false) }, want: nil},
		{name: "refused as not primary after the handover", method: sendMethod, primary: true, change: true,
			outcome: func(_ *testing.T, c *Core) { c.stepDown("test handover", 0) }, want: errNotPrimary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(testConfig(), newMemStore(), telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.primary {
				promoted(t, c)
				c.role.SetDraining(true)
			}
			end := func() {}
			if tc.change {
				end = c.changing.begin()
			}
			got := make(chan error, 1)
			go func() { got <- c.gate(ctx, tc.method) }()
			if tc.change {
				deadline := time.Now().Add(10 * time.Second)
				for c.changing.waiting() == 0 {
					select {
					case err := <-got:
						t.Fatalf("gate answered %v during the role change: want the call held until it ends", err)
					default:
					}
					if time.Now().After(deadline) {
						t.Fatal("the call was not held within 10s")
					}
					time.Sleep(time.Millisecond)
				}
				tc.outcome(t, c)
				if tc.cancel {
					cancel()
				}
				end()
			}
			if err := <-got; !errors.Is(err, tc.want) {
				t.Fatalf("gate: %v, want %v", err, tc.want)
			}
			if n := c.changing.waiting(); n != 0 {
				t.Fatalf("%d calls still held", n)
			}
		})
	}
}

// TestRoleChangeEndWakesOnlyLastEnd: overlapping role changes keep calls held
// until the last one ends; end is idempotent.
func TestRoleChangeEndWakesOnlyLastEnd(t *testing.T) {
	var p roleChange
	end1, end2 := p.begin(), p.begin()
	end1()
	end1()
	p.mu.Lock()
	open := p.done != nil
	p.mu.Unlock()
	if !open {
		t.Fatal("a role change still under way, but its calls would no longer be held")
	}
	end2()
	p.wait(context.Background(), time.Hour) // returns at once: none under way
}

// TestRedialNow: after a stream that was in sync broke while the checks
// found the primary alive (a SIGKILLed primary whose listener still
// accepted the probe: Decide's Alive, or a promotion the re-check dropped),
// the follower redials at once, once, and then paces its redials as before.
func TestRedialNow(t *testing.T) {
	for _, tc := range []struct {
		name                              string
		synced, foundAlive, lastImmediate bool
		want                              bool
	}{
		{"in sync, primary found alive: redial now", true, true, false, true},
		{"the last redial was immediate: pause", true, true, true, false},
		{"never in sync: pause", false, true, false, false},
		{"primary not found alive (nothing decided, promotion failed): pause", true, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redialNow(tc.synced, tc.foundAlive, tc.lastImmediate); got != tc.want {
				t.Fatalf("redialNow = %v, want %v", got, tc.want)
			}
		})
	}
}
