package e2e

import (
	"context"
	"errors"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// Interaction Server without a single process (issue 8, point 3): with the
// coordination cluster the demo runs two interaction instances; the leader
// routes and keeps its state (logins, offers, the queue, participations)
// in etcd, the other forwards the agent API to it and takes over when it
// dies.

// leadingInteraction waits until exactly one interaction instance leads
// and returns it and the other one.
func leadingInteraction(t *testing.T, c *harness.Cluster) (leader, follower string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		a, b := c.Metric("interaction", "hachat_interaction_leader"), c.Metric("interaction-2", "hachat_interaction_leader")
		switch {
		case a == 1 && b == 0:
			return "interaction", "interaction-2"
		case a == 0 && b == 1:
			return "interaction-2", "interaction"
		case a == 1 && b == 1:
			t.Fatal("both interaction instances lead")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no interaction instance leads within 20 s")
	return "", ""
}

// waitUntil polls cond every 50 ms until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// retrying calls f until it succeeds or answers something not retryable.
func retrying(ctx context.Context, f func() error) error {
	for {
		err := f()
		var ae *harness.AgentError
		if err == nil || errors.As(err, &ae) && !ae.Retryable() {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestInteractionKill9Leader: agents logged in (through the follower, which
// forwards), two chats going on under the workload, a supervisor monitoring
// one, and a chat offered but not yet accepted; then kill -9 of the leading
// interaction instance. The other takes over: every token still works, the
// pending offer is accepted through it by the agent it was offered to and
// by nobody else, the push channels resume (one reconnect each), and the
// workload checker finds every acknowledged message once, in order, in
// every view and in UCS.
func TestInteractionKill9Leader(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stage demo.Stage
		edge  bool // agents and customers through the edge, else agents through the follower
		tls   bool // mTLS on every internal hop (the instances reach etcd with their certificates)
	}{
		{"pair, through the follower", demo.StagePair, false, false},
		{"mesh, through the edge", demo.StageMesh, true, false},
		{"mesh with mTLS, through the edge", demo.StageMesh, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) { interactionKill9Leader(t, tc.stage, tc.edge, tc.tls) })
	}
}

func interactionKill9Leader(t *testing.T, stage demo.Stage, edge, tls bool) {
	c := harness.StartCluster(t, harness.Options{Stage: stage, CoordMembers: 3, TLS: tls})
	c.WaitRole("core-a", "primary", 15*time.Second)
	leader, follower := leadingInteraction(t, c)
	api, gms := c.Agents(), c.Customer()
	api.Base = c.URL(follower)
	if edge {
		api, gms = c.EdgeAgents(), c.EdgeCustomer()
	}
	sessions := harness.StartSessions(t, gms, api, []string{"agent-0", "agent-1"}, 2)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a1, a2 := api.MustLogin(t, "a1", "agent"), api.MustLogin(t, "a2", "agent")
	sup := api.MustLogin(t, "sup-monitor", "supervisor")
	if err := sup.Chat(ctx, sessions[0].ChatID, "monitor", nil); err != nil {
		t.Fatalf("monitor: %v", err)
	}
	for _, s := range sessions { // busy with their chats: no more offers
		if err := s.Agent.NotReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, ag := range []*harness.Agent{a1, a2} {
		if err := ag.Ready(ctx); err != nil {
			t.Fatal(err)
		}
	}
	chat, _, err := gms.Start(ctx, url.Values{"nickname": {"pending"}, "subject": {"offer across a takeover"}})
	if err != nil {
		t.Fatal(err)
	}
	var taker, other *harness.Agent
	waitUntil(t, 15*time.Second, "the new chat offered to a1 or a2", func() bool {
		for _, ag := range []*harness.Agent{a1, a2} {
			st, err := ag.State(ctx)
			if err != nil {
				continue
			}
			for _, o := range st.Offers {
				if o.ChatID == chat.ChatID {
					taker, other = ag, map[*harness.Agent]*harness.Agent{a1: a2, a2: a1}[ag]
					return true
				}
			}
		}
		return false
	})

	everyone := []*harness.Agent{a1, a2, sup}
	for _, s := range sessions {
		everyone = append(everyone, s.Agent)
	}
	var took time.Duration
	rec := aroundFault(t, sessions, func() {
		killed := time.Now()
		c.Kill(leader, syscall.SIGKILL)
		waitUntil(t, 15*time.Second, follower+" leads", func() bool {
			return c.Metric(follower, "hachat_interaction_leader") == 1
		})
		took = time.Since(killed)
		t.Logf("%s leads %s after the kill -9 of %s", follower, took.Round(time.Millisecond), leader)
		// The desktops' push channels ended with the leader: they reconnect
		// (to the same address: the follower, now the leader, or the edge,
		// which sends them to the instance left).
		for _, ag := range everyone {
			if err := retrying(ctx, func() error { return ag.Connect(ctx) }); err != nil {
				t.Errorf("push channel of %s after the takeover: %v", ag.ID, err)
			}
		}
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})

	// Every token works on the new leader.
	for _, ag := range everyone {
		if _, err := ag.State(ctx); err != nil {
			t.Errorf("%s's token after the takeover: %v", ag.ID, err)
		}
	}
	// The pending offer is accepted, by the agent it was offered to only.
	if err := retrying(ctx, func() error { return other.Accept(ctx, chat.ChatID) }); err == nil {
		t.Errorf("%s accepted a chat offered to %s", other.ID, taker.ID)
	}
	if err := retrying(ctx, func() error { return taker.Accept(ctx, chat.ChatID) }); err != nil {
		t.Fatalf("%s accepts the offer made before the takeover: %v", taker.ID, err)
	}
	if _, err := taker.WaitEvent(ctx, chat.ChatID, func(ev harness.AgentEvent) bool {
		return ev.Kind == "ParticipantJoined" && ev.From != nil && ev.From.Type == "Agent"
	}); err != nil {
		t.Errorf("%s never saw the accepted chat: %v", taker.ID, err)
	}
	st, err := other.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range st.Chats {
		if ch.ChatID == chat.ChatID {
			t.Errorf("%s holds %s too", other.ID, chat.ChatID)
		}
	}
	// The supervisor still monitors.
	supSt, err := sup.State(ctx)
	monitoring := false
	for _, ch := range supSt.Chats {
		monitoring = monitoring || ch.ChatID == sessions[0].ChatID && ch.Mode == "monitor"
	}
	if err != nil || !monitoring {
		t.Errorf("supervisor's monitoring after the takeover: %+v, %v", supSt.Chats, err)
	}
	if n := c.Metric(follower, "hachat_interaction_takeovers_total"); n != 1 {
		t.Errorf("%s counts %v takeovers, want 1", follower, n)
	}
	if !c.LogContains(follower, "took over interaction leadership") {
		t.Errorf("%s logged no takeover", follower)
	}
}
