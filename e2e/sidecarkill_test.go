package e2e

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// TestEdgeKillSidecarWebAPI (issue 8, no single point of failure): every
// instance behind the edge has a sidecar of its own. kill -9 of webapi's
// sidecar under load leaves webapi running but cut off from the cores: its
// chat client sees its connection to the sidecar down
// (chatclient.Client.PathUp: gRPC's own redials refused), webapi withdraws
// from the gossip cluster, the control planes unpublish it and the edge
// takes it out of rotation; webapi ends its push channels, answers "send
// again" to the calls in flight and closes its keep-alive connections, so
// its customers carry on through webapi-2 with nothing lost (edgeWorkload:
// every message acknowledged, each once and in order in every view and in
// UCS; every cut push channel resumes with Last-Event-ID). When the sidecar
// is back webapi registers again. With --withdraw-without-core=false the
// customers whose connections the edge keeps on webapi get no
// acknowledgement and the test fails.
func TestEdgeKillSidecarWebAPI(t *testing.T) {
	c, sessions := startEdgeCluster(t)
	cut := c.Part("webapi").HTTP
	var killed time.Time
	rec := edgeWorkload(t, c, sessions, 1, func() {
		c.Kill("sidecar-webapi", syscall.SIGKILL)
		killed = time.Now()
		err := pollUp(c, "webapi", func(up []string) error {
			if slices.Contains(up, cut) || len(up) != 1 {
				return fmt.Errorf("up %v: webapi (%s) still in rotation", up, cut)
			}
			return nil
		}, 10*time.Second)
		t.Logf("webapi out of the edge's rotation %v after its sidecar's kill -9", time.Since(killed).Round(time.Millisecond))
		if err != nil {
			t.Error(err)
		}
	})
	// The pause customers saw: the slowest acknowledgement of a message
	// first sent around the kill.
	var worst time.Duration
	for _, m := range rec.Sent {
		if m.Side == "customer" && m.Acked && m.AckedAt.After(killed) {
			worst = max(worst, m.Latency())
		}
	}
	t.Logf("slowest customer send acknowledged after the kill: %v", worst.Round(time.Millisecond))
	if worst > 10*time.Second {
		t.Errorf("a customer's send took %v to be acknowledged across the sidecar's death, want a short pause (< 10 s)", worst)
	}
	if n := c.Metric("webapi", "hachat_webapi_push_channels_reset_total"); n < 1 {
		t.Errorf("webapi ended its push channels %v times, want at least once", n)
	}
	for _, m := range []string{"hachat_instance_registered", "hachat_webapi_in_rotation"} {
		if n := c.Metric("webapi", m); n != 0 {
			t.Errorf("%s of webapi %v while its sidecar is dead, want 0", m, n)
		}
	}
	if !c.LogContains("webapi", "withdrawing from the gossip cluster") {
		t.Error("webapi's log does not tell that it withdrew")
	}
	c.Restart("sidecar-webapi")
	if err := pollUp(c, "webapi", func(up []string) error {
		if !slices.Contains(up, cut) || len(up) != 2 {
			return fmt.Errorf("up %v: webapi (%s) not back in rotation", up, cut)
		}
		return nil
	}, 20*time.Second); err != nil {
		t.Error(err)
	}
	for _, m := range []string{"hachat_instance_registered", "hachat_webapi_in_rotation"} {
		if n := c.Metric("webapi", m); n != 1 {
			t.Errorf("%s of webapi %v after its sidecar's restart, want 1", m, n)
		}
	}
}

// pollUp waits until cond accepts the hosts the edge has up in cluster.
func pollUp(c *harness.Cluster, cluster string, cond func(up []string) error, timeout time.Duration) error {
	return harness.Poll(timeout, func() error {
		up, err := c.UpstreamsUp("edge", cluster)
		if err != nil {
			return err
		}
		return cond(up)
	})
}

// TestEdgeKillSidecarInteractionLeader: kill -9 of the sidecar of the
// leading interaction instance under load, agents and customers through
// the edge. The instance stays up but cannot reach the cores: it withdraws
// from gossip (the edge sends the agents to the other instance) and
// resigns the leadership (interaction.Server.SetEligible), which the other
// takes over from etcd; the cut-off one forwards its agents' calls to the
// new leader; every acknowledged message arrives once, in order, in every
// view and in UCS.
func TestEdgeKillSidecarInteractionLeader(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, CoordMembers: 3, TLS: true})
	c.WaitRole("core-a", "primary", 15*time.Second)
	leader, follower := leadingInteraction(t, c)
	sessions := harness.StartSessions(t, c.EdgeCustomer(), c.EdgeAgents(), []string{"agent-0", "agent-1"}, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	rec := aroundFault(t, sessions, func() {
		killed := time.Now()
		c.Kill("sidecar-"+leader, syscall.SIGKILL)
		waitUntil(t, 15*time.Second, follower+" leads", func() bool {
			return c.Metric(follower, "hachat_interaction_leader") == 1
		})
		t.Logf("%s leads %v after the kill -9 of %s's sidecar", follower, time.Since(killed).Round(time.Millisecond), leader)
		// The edge's admin shows its customer side only: the instance's
		// own gauge tells that it withdrew from gossip.
		waitUntil(t, 10*time.Second, leader+" withdrawn from gossip", func() bool {
			return c.Metric(leader, "hachat_instance_registered") == 0
		})
		if c.Metric(leader, "hachat_interaction_leader") != 0 {
			t.Errorf("%s, cut off from the cores, still leads", leader)
		}
		for _, s := range sessions {
			if err := retrying(ctx, func() error { return s.Agent.Connect(ctx) }); err != nil {
				t.Errorf("push channel of %s after the takeover: %v", s.Agent.ID, err)
			}
		}
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
}
