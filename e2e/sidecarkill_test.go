package e2e

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

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
