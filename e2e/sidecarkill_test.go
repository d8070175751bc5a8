package e2e

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// Issue 8, no single point of failure: every instance behind the edge has
// a sidecar of its own. kill -9 of webapi's sidecar leaves webapi running
// but cut off from the cores: it withdraws from the gossip cluster, the
// control planes unpublish it, the edge takes it out of rotation, and its
// customers carry on through webapi-2 with nothing lost. When a sidecar is
// back the instance registers again.
func TestEdgeKillSidecarWebAPI(t *testing.T) {
	c, sessions := startEdgeCluster(t)
	cut := c.Part("webapi").HTTP
	edgeWorkload(t, c, sessions, 1, func() {
		c.Kill("sidecar-webapi", syscall.SIGKILL)
		start := time.Now()
		err := pollUp(c, "webapi", func(up []string) error {
			if slices.Contains(up, cut) || len(up) != 1 {
				return fmt.Errorf("up %v: webapi (%s) still in rotation", up, cut)
			}
			return nil
		}, 10*time.Second)
		took := time.Since(start)
		t.Logf("webapi out of the edge's rotation %v after its sidecar's kill -9", took.Round(time.Millisecond))
		if err != nil {
			t.Error(err)
		}
	})
	c.Restart("sidecar-webapi")
	if err := pollUp(c, "webapi", func(up []string) error {
		if !slices.Contains(up, cut) || len(up) != 2 {
			return fmt.Errorf("up %v: webapi (%s) not back in rotation", up, cut)
		}
		return nil
	}, 20*time.Second); err != nil {
		t.Error(err)
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
