package chatcore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/detect"
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

// claimGate is a store whose epoch claims wait until released, after
// telling that one began: a role change caught in the middle of its claim.
type claimGate struct {
	*memStore
	entered chan struct{} // closed when the first claim begins
	release chan struct{} // closed by the test: claims go on
	once    sync.Once
}

func (g *claimGate) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.release:
	case <-ctx.Done():
		return Epoch{}, ctx.Err()
	}
	return g.memStore.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, silent)
}

func (g *claimGate) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	return g.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, 0)
}

// TestRoleChangesHoldCalls: a failover's promote and a switchover's
// takeOver mark their role change from its start to the end of the claim,
// so a Chat call reaching the backup meanwhile is held and then served by
// the new primary. (TestGateHoldsCallsDuringRoleChange holds the gate's
// rule; this holds that the role changes start and end it.)
func TestRoleChangesHoldCalls(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(context.Context, *Core) error
	}{
		{"promote", func(ctx context.Context, c *Core) error {
			return c.promote(ctx, detect.Decision{Outcome: detect.Promote, Why: "test: refused", Certain: true}, nil)
		}},
		{"takeOver", func(ctx context.Context, c *Core) error {
			_, err := c.takeOver(ctx, "old-primary", 0)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &claimGate{memStore: newMemStore(), entered: make(chan struct{}), release: make(chan struct{})}
			c, err := New(testConfig(), st, telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			changed := make(chan error, 1)
			go func() { changed <- tc.change(ctx, c) }()
			select {
			case <-st.entered:
			case <-ctx.Done():
				t.Fatal("the role change never claimed")
			}
			got := make(chan error, 1)
			go func() { got <- c.gate(ctx, sendMethod) }()
			for c.changing.waiting() == 0 {
				select {
				case err := <-got:
					t.Fatalf("gate answered %v while the claim was under way: want the call held", err)
				case <-ctx.Done():
					t.Fatal("the call was not held within 10s")
				case <-time.After(time.Millisecond):
				}
			}
			close(st.release)
			if err := <-changed; err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if err := <-got; err != nil {
				t.Fatalf("the held call: %v, want it served by the new primary", err)
			}
		})
	}
}

// armedClaimGate is a claimGate that lets claims through until armed: a
// pair starts (the primary's own claim passes), then the backup's claim of a
// switchover is caught in the middle.
type armedClaimGate struct {
	*claimGate
	armed atomic.Bool
}

func (g *armedClaimGate) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	if !g.armed.Load() {
		return g.memStore.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, silent)
	}
	return g.claimGate.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, silent)
}

func (g *armedClaimGate) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	return g.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, 0)
}

// TestHandoverHoldsCalls: a primary draining for a handover marks its role
// change from the drain to the step-down, so a Send reaching it while the
// backup's claim is under way is held, not refused at once as draining;
// once the handover stepped it down, the held call is refused as not
// primary (UNAVAILABLE, retryable), and the client's retry is served by the
// new primary. (TestGateHoldsCallsDuringRoleChange holds the gate's rule;
// this holds that handover starts and ends it, as TestRoleChangesHoldCalls
// does for promote and takeOver.)
func TestHandoverHoldsCalls(t *testing.T) {
	st := &armedClaimGate{claimGate: &claimGate{memStore: newMemStore(), entered: make(chan struct{}), release: make(chan struct{})}}
	a, b := pair(t, st, nil)
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	if _, err := a.cl.Send(ctx, msg(cust, "before", "c1")); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, a, "core-b")
	st.armed.Store(true)
	switched := make(chan error, 1)
	go func() {
		_, err := a.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "adm-token"})
		switched <- err
	}()
	select {
	case <-st.entered: // a drains: it sent the handover, b is claiming
	case err := <-switched:
		t.Fatalf("switchover ended before the backup claimed: %v", err)
	case <-ctx.Done():
		t.Fatal("the backup never claimed")
	}
	if !a.c.role.IsPrimary() || !a.c.role.Draining() {
		t.Fatalf("a during the handover: primary %v, draining %v; want a draining primary", a.c.role.IsPrimary(), a.c.role.Draining())
	}
	sent := make(chan error, 1)
	go func() {
		_, err := a.cl.Send(ctx, msg(cust, "during", "c2"))
		sent <- err
	}()
	for a.c.changing.waiting() == 0 {
		select {
		case err := <-sent:
			t.Fatalf("the draining primary answered %v during the handover: want the call held until it ends", err)
		case <-ctx.Done():
			t.Fatal("the call was not held within 10s")
		case <-time.After(time.Millisecond):
		}
	}
	close(st.release)
	if err := <-switched; err != nil {
		t.Fatalf("switchover: %v", err)
	}
	// The held call, and one that reaches the old primary after its
	// step-down (a connection its client's sidecar has not moved yet), are
	// refused as by a core that handed over: the client retries at once on
	// a new connection, not after a backoff.
	err := <-sent
	if s, ok := status.FromError(err); !ok || s.Code() != codes.Unavailable || s.Message() != chatpb.HandedOverMessage {
		t.Fatalf("the held call: %v, want %v (the client retries at the new primary)", err, errHandedOver)
	}
	if _, err := a.cl.Send(ctx, msg(cust, "after", "c3")); status.Convert(err).Message() != chatpb.HandedOverMessage {
		t.Fatalf("a call after the handover: %v, want %v", err, errHandedOver)
	}
	if !b.c.role.IsPrimary() || a.c.role.IsPrimary() {
		t.Fatalf("after the handover: a primary %v, b primary %v", a.c.role.IsPrimary(), b.c.role.IsPrimary())
	}
	if _, err := b.cl.Send(ctx, msg(cust, "during", "c2")); err != nil {
		t.Fatalf("the retry at the new primary: %v", err)
	}
	if n := a.c.changing.waiting(); n != 0 {
		t.Fatalf("%d calls still held on the old primary", n)
	}
}

// TestHandedOverRefusalEnds: a core that handed over refuses Chat calls as
// handed over (the client retries at once) for handedOverRefusal after its
// step-down, by its clock, and then as an ordinary backup ("not primary",
// the client backs off): a stale connection a long while later is not sent
// to retry at once forever.
func TestHandedOverRefusalEnds(t *testing.T) {
	clock := newFakeClock(time.Now())
	store := newMemStore()
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil, WithClock(clock.Now))
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b := startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, nil)
	waitInSync(t, a, "core-b")
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	if _, err := a.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "adm-token"}); err != nil {
		t.Fatalf("switchover: %v", err)
	}
	if !b.c.role.IsPrimary() || a.c.role.IsPrimary() {
		t.Fatalf("after the handover: a primary %v, b primary %v", a.c.role.IsPrimary(), b.c.role.IsPrimary())
	}
	stepDown := a.c.handedOver.Load()
	if stepDown != clock.ns.Load() {
		t.Fatalf("handover stamped %d, want the core's clock %d", stepDown, clock.ns.Load())
	}
	notPrimary := status.Convert(errNotPrimary).Message()
	for i, tt := range []struct {
		name  string
		after time.Duration // since the step-down, by a's clock
		want  string
	}{
		{"at the step-down", 0, chatpb.HandedOverMessage},
		{"just before the window ends", handedOverRefusal - time.Nanosecond, chatpb.HandedOverMessage},
		{"as the window ends", handedOverRefusal, notPrimary},
		{"long after", time.Hour, notPrimary},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock.ns.Store(stepDown + int64(tt.after))
			_, err := a.cl.Send(ctx, msg(cust, tt.name, fmt.Sprintf("c%d", i)))
			if s, ok := status.FromError(err); !ok || s.Code() != codes.Unavailable || s.Message() != tt.want {
				t.Fatalf("a Send %v after the handover: %v, want UNAVAILABLE %q", tt.after, err, tt.want)
			}
		})
	}
}
