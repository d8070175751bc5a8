package e2e

import (
	"fmt"
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
			// Either may win the first claim: both start as primary.
			var first, second string
			harness.Eventually(t, "one core primary, the other backup", 15*time.Second, func() error {
				a, b := c.Role("core-a"), c.Role("core-b")
				switch {
				case a == "primary" && b == "backup":
					first, second = "core-a", "core-b"
				case b == "primary" && a == "backup":
					first, second = "core-b", "core-a"
				default:
					return fmt.Errorf("core-a %q, core-b %q", a, b)
				}
				return nil
			})
			c.WaitBackupInSync(first, 15*time.Second)

			c.Kill(first, syscall.SIGKILL)
			c.WaitRole(second, "primary", 15*time.Second)

			c.Restart(first)
			c.WaitRole(first, "backup", 15*time.Second)
			c.WaitBackupInSync(second, 15*time.Second)
			if r := c.Role(second); r != "primary" {
				t.Fatalf("%s is %q after %s's restart, want primary", second, r, first)
			}
		})
	}
}
