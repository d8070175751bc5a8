package e2e

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/xds"
)

// TestWebPairs: with two pairs behind sidecars and mTLS (`hachat demo
// --pairs 2` at StageMesh), web customers' chats, started through the edge
// and webapi, are placed over both pairs by the control plane's weights
// (webapi reads them from /xds/v1/pairs and sends each chat's calls to its
// pair's sidecar listener); interaction watches both pairs, so agents are
// offered and accept the chats of both (24 chats, what the harness's eight
// agents hold; 36 more customers wait in the queue, placed alike); the
// customers and agents chat and nothing acknowledged is lost. Before webapi and interaction had a client
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
	// 36 more customers, whom no agent takes (the agents are full): they
	// wait in interaction's queue, placed like the others.
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	const waiting = 36
	for i := range waiting {
		var chat *harness.Chat
		for chat == nil {
			ch, resp, err := c.Customer().Start(ctx, url.Values{"nickname": {fmt.Sprintf("waiting-%d", i)}, "subject": {"e2e test"}})
			switch {
			case ctx.Err() != nil:
				t.Fatalf("start waiting chat %d: %v", i, ctx.Err())
			case err == nil && ch == nil && !resp.Retryable():
				t.Fatalf("start waiting chat %d refused: %v (%s)", i, resp.Err(), resp.Raw)
			case ch == nil:
				time.Sleep(50 * time.Millisecond)
			}
			chat = ch
		}
		per[pairs.Of(chat.ChatID)]++
	}
	total := n + waiting
	t.Logf("%d chats over the pairs: %v (cluster and chats up in %v)", total, per, time.Since(start).Round(time.Millisecond))
	logPairs := func(when string) {
		var st xds.PairsStatus
		if err := getJSON(c, "xds", xds.PairsPath, &st); err == nil {
			for _, p := range st.Pairs {
				t.Logf("control plane %s: pair %s %s live %d weight %d", when, p.Name, p.State, p.Live, p.Weight)
			}
		}
	}
	logPairs("after the starts")
	defer logPairs("at the end")
	// The weights keep the pairs level (30 each expected), but a burst is
	// placed on weights a poll or two old (about 500 ms here: the control
	// plane's poll, then webapi's): at least 10 each, where the one-pair
	// client gives pair 2 none.
	for _, p := range []string{"1", "2"} {
		if per[p] < 10 {
			t.Errorf("pair %s got %d of %d chats (%v): placement does not spread over the pairs", p, per[p], total, per)
		}
	}
	rec := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: 5}).Wait()
	if want := n * 2 * 5; rec.Acked() != want {
		t.Errorf("acknowledged %d of %d messages on a healthy cluster", rec.Acked(), want)
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCS()})
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}
