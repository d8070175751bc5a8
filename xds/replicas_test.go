package xds

import (
	"slices"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// TestReplicasServeIdenticalSnapshots: two control planes given the same
// membership (listed in another order, each seeing itself and the other
// control plane in a different state) serve byte-identical resources under
// identical versions, to a sidecar-like wildcard client and to a grpc-go-like
// by-name client, before and after a membership change. A sidecar that
// moves from one to the other therefore receives the versions it already
// holds and changes nothing.
func TestReplicasServeIdenticalSnapshots(t *testing.T) {
	cores := []Member{
		core_("core-a", RolePrimary, 3, "127.0.0.1:7101", StateAlive),
		core_("core-b", RoleBackup, 3, "127.0.0.1:7111", StateAlive),
	}
	viewA := NewMemoryView(append(slices.Clone(cores),
		Member{Name: "xds", Kind: KindXDS, State: StateAlive, HTTPAddr: "127.0.0.1:7201"},
		Member{Name: "xds-b", Kind: KindXDS, State: StateSuspect, HTTPAddr: "127.0.0.1:7221"})...)
	viewB := NewMemoryView(
		Member{Name: "xds-b", Kind: KindXDS, State: StateAlive, HTTPAddr: "127.0.0.1:7221"},
		cores[1],
		Member{Name: "xds", Kind: KindXDS, State: StateDead, HTTPAddr: "127.0.0.1:7201"},
		cores[0])
	cfgB := testConfig()
	cfgB.AdminToken = "another-token" // not part of what is published
	sa := startServer(t, testConfig(), viewA, Options{})
	sb := startServer(t, cfgB, viewB, Options{})
	if va, vb := sa.Status().Version, sb.Status().Version; va != vb || va == "" {
		t.Fatalf("snapshot versions differ: %q and %q", va, vb)
	}

	type sub struct {
		typ   string
		names []string
	}
	clients := map[string][]sub{
		"sidecar": {{resource.ListenerType, nil}, {resource.ClusterType, nil}, {resource.EndpointType, []string{ClusterName}}},
		"grpc-go": {{resource.ListenerType, []string{APIListenerName}}, {resource.RouteType, []string{RouteName}},
			{resource.ClusterType, []string{ClusterName}}, {resource.EndpointType, []string{ClusterName}}},
	}
	compare := func(when string) {
		t.Helper()
		for node, subs := range clients {
			ca, cb := dialADS(t, sa.GRPCAddr(), node), dialADS(t, sb.GRPCAddr(), node)
			for _, s := range subs {
				ra, rb := ca.subscribe(s.typ, s.names), cb.subscribe(s.typ, s.names)
				if ra.GetVersionInfo() != rb.GetVersionInfo() {
					t.Errorf("%s: %s %s: versions %q and %q", when, node, shortType(s.typ), ra.GetVersionInfo(), rb.GetVersionInfo())
				}
				if len(ra.GetResources()) == 0 || len(ra.GetResources()) != len(rb.GetResources()) {
					t.Fatalf("%s: %s %s: %d and %d resources", when, node, shortType(s.typ), len(ra.GetResources()), len(rb.GetResources()))
				}
				for i := range ra.GetResources() {
					if !proto.Equal(ra.GetResources()[i], rb.GetResources()[i]) {
						t.Errorf("%s: %s %s: resource %d differs", when, node, shortType(s.typ), i)
					}
				}
			}
		}
	}
	compare("start")

	// The primary dies; both control planes learn it (at their own pace).
	before := sa.Status().Version
	viewA.Update("core-a", func(m *Member) { m.State = StateDead })
	viewB.Update("core-a", func(m *Member) { m.State = StateDead })
	waitFor(t, 2*time.Second, "both control planes rebuilt", func() bool {
		return sa.Status().Version != before && sb.Status().Version != before
	})
	if va, vb := sa.Status().Version, sb.Status().Version; va != vb {
		t.Fatalf("after the change the versions differ: %q and %q", va, vb)
	}
	compare("after the primary died")
}
