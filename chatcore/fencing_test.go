package chatcore

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// countingFencer counts the calls a core makes to its fencing authority:
// each is a round trip (to etcd, or UCS) on the way to a new primary.
type countingFencer struct {
	Fencer
	currents, claims atomic.Int32
}

func (f *countingFencer) Current(ctx context.Context, service string) (Epoch, error) {
	f.currents.Add(1)
	return f.Fencer.Current(ctx, service)
}

func (f *countingFencer) Claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (Epoch, error) {
	f.claims.Add(1)
	return f.Fencer.Claim(ctx, service, expect, holder, ifSilent)
}

// TestClaimOnKnownEpoch: a claimant that knows the epoch it replaces (a
// switchover's handover names it; a backup followed that primary) claims
// in one compare-and-set, without reading the epoch first. A known epoch
// the store has moved past is refused as a conflict, as before, and a
// claimant that knows none reads first. Counts of calls, no timing.
func TestClaimOnKnownEpoch(t *testing.T) {
	for _, tc := range []struct {
		name        string
		known       func(cur uint64) uint64
		want        error
		currents    int32
		claims      int32
		wantPrimary bool
	}{
		{name: "known is current: one claim, no read", known: func(cur uint64) uint64 { return cur }, claims: 1, wantPrimary: true},
		{name: "known is older: conflict after a read", known: func(cur uint64) uint64 { return cur - 1 }, want: ErrEpochConflict, currents: 1, claims: 1},
		{name: "none known: read, then claim", known: func(uint64) uint64 { return 0 }, currents: 1, claims: 1, wantPrimary: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newMemStore()
			ctx := ctxT(t)
			const cur = 7
			if _, err := store.ClaimEpoch(ctx, "hachat", 0, cur, "core-a"); err != nil {
				t.Fatal(err)
			}
			f := &countingFencer{Fencer: StoreFencer{Store: store}}
			cfg := testConfig()
			cfg.Cluster = "hachat"
			tel := telemetry.Discard()
			var logs telemetrytest.LogBuffer
			tel.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			c, err := New(cfg, store, tel, WithFencer(f))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.claimPrimary(ctx, claim{known: tc.known(cur), holder: "core-a", reason: "test"})
			if tc.want != nil && !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Fatalf("claim: %v, want %v", err, tc.want)
			}
			if n, m := f.currents.Load(), f.claims.Load(); n != tc.currents || m != tc.claims {
				t.Fatalf("%d reads and %d claims, want %d and %d", n, m, tc.currents, tc.claims)
			}
			if c.role.IsPrimary() != tc.wantPrimary {
				t.Fatalf("primary = %v, want %v", c.role.IsPrimary(), tc.wantPrimary)
			}
			if tc.wantPrimary && (got != cur+1 || c.claimedFrom.Load() != cur) {
				t.Fatalf("claimed %d from %d, want %d from %d", got, c.claimedFrom.Load(), cur+1, cur)
			}
			// The failover's story names whom the claim replaced, read
			// or not (e2e TestStoryFailoverInLogsAndSpans).
			if want := "epoch=8 previous=7 previous_holder=core-a"; tc.wantPrimary && !strings.Contains(logs.String(), want) {
				t.Fatalf("log lacks %s:\n%s", want, logs.String())
			}
		})
	}
}

// TestEtcdFencerRevokesSpentLeaseAtRenew: a claim by a fencer that held an
// older epoch leaves that epoch's lease (bound to no key any more) for its
// next Renew to revoke, instead of revoking it before the claim returns,
// one round trip the new primary waited for.
func TestEtcdFencerRevokesSpentLeaseAtRenew(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	a := NewEtcdFencer(cli, "/test/", 10*time.Second)
	b := NewEtcdFencer(cli, "/test/", 10*time.Second)
	const svc = "hachat"
	e1, err := a.Claim(ctx, svc, 0, "core-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	first := a.held[svc].id
	a.mu.Unlock()
	e2, err := b.Claim(ctx, svc, e1.Epoch, "core-b", 0)
	if err != nil {
		t.Fatal(err)
	}
	e3, err := a.Claim(ctx, svc, e2.Epoch, "core-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	alive := func(id clientv3.LeaseID) bool {
		resp, err := cli.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return resp.TTL > 0
	}
	if !alive(first) {
		t.Fatal("the first epoch's lease was revoked by the claim itself")
	}
	if _, err := a.Renew(ctx, svc, e3.Epoch, "core-a"); err != nil {
		t.Fatal(err)
	}
	if alive(first) {
		t.Fatal("the first epoch's lease lives after the next renewal")
	}
}
