package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// TestCoresConfiguredAlikeAsInAStatefulSet: the Kubernetes manifests
// (deploy/k8s/base/core-pair-1.yaml) give both cores of a pair the same
// flags: --role=primary, no --peer and no --witness (found in the gossip
// meta). One becomes primary, the other joins as its backup; after kill -9
// of the primary the other promotes, and the killed one, restarted with
// --role=primary as a pod would be, joins as backup instead of taking the
// role back. Both with the epochs at UCS and, as the manifests run them,
// with the epochs and the lease at three coordination members.
func TestCoresConfiguredAlikeAsInAStatefulSet(t *testing.T) {
	for _, tc := range []struct {
		name         string
		coordMembers int
	}{
		{"epochs at UCS", 0},
		{"coordination members", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true, CoordMembers: tc.coordMembers, Tune: func(p demo.Plan) demo.Plan {
				return p.WithKind(demo.KindCore, "--role=primary", "--peer=", "--witness=")
			}})
			c.WaitRole("core-a", "primary", 15*time.Second)
			c.WaitRole("core-b", "backup", 15*time.Second)
			c.WaitBackupInSync("core-a", 15*time.Second)

			c.Kill("core-a", syscall.SIGKILL)
			c.WaitRole("core-b", "primary", 15*time.Second)

			c.Restart("core-a")
			c.WaitRole("core-a", "backup", 15*time.Second)
			c.WaitBackupInSync("core-b", 15*time.Second)
			if r := c.Role("core-b"); r != "primary" {
				t.Fatalf("core-b is %q after core-a's restart, want primary", r)
			}
		})
	}
}
