package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/pairs"
)

// TestWebPairs: with two pairs behind sidecars and mTLS (`hachat demo
// --pairs 2` at StageMesh), web customers' chats, started through the edge
// and webapi, are placed over both pairs by the control plane's weights
// (webapi reads them from /xds/v1/pairs and sends each chat's calls to its
// pair's sidecar listener); interaction watches both pairs, so agents are
// offered and accept the chats of both; the customers and agents chat and
// nothing acknowledged is lost. Before webapi and interaction had a client
// per pair, every chat went to pair 1.
func TestWebPairs(t *testing.T) {
	start := time.Now()
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true, CoordMembers: 1, Pairs: 2})
	for _, name := range []string{"core-a", "core-2a"} {
		c.WaitRole(name, "primary", 30*time.Second)
	}
	// Eight agents (the harness's pool) hold three chats each.
	const n = 24
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprintf("agent-%d", i)
	}
	sessions := harness.StartSessions(t, c.Customer(), c.Agents(), ids, n)
	per := map[string]int{}
	for _, s := range sessions {
		per[pairs.Of(s.ChatID)]++
	}
	t.Logf("%d chats over the pairs: %v (cluster and chats up in %v)", n, per, time.Since(start).Round(time.Millisecond))
	// The weights keep the pairs level: 12 each expected; fewer than 4 on
	// a pair is far outside chance, and 0 is the one-pair client.
	for _, p := range []string{"1", "2"} {
		if per[p] < 4 {
			t.Errorf("pair %s got %d of %d chats (%v): placement does not spread over the pairs", p, per[p], n, per)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	rec := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: 5}).Wait()
	if want := n * 2 * 5; rec.Acked() != want {
		t.Errorf("acknowledged %d of %d messages on a healthy cluster", rec.Acked(), want)
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCS()})
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}
