package xds

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestSelectionKeyTellsSubscriptionsApart: nodes share a cached selection
// only when selectResources would cut the same for them.
func TestSelectionKeyTellsSubscriptionsApart(t *testing.T) {
	wild := &nodeState{names: map[string][]string{}}
	for _, tt := range []struct {
		name string
		a, b *nodeState
		same bool
	}{
		{"two wildcard sidecars", wild, &nodeState{names: map[string][]string{resource.ListenerType: nil}}, true},
		{"same names", &nodeState{names: map[string][]string{resource.ListenerType: {"a", "b"}}},
			&nodeState{names: map[string][]string{resource.ListenerType: {"a", "b"}}}, true},
		{"other names", &nodeState{names: map[string][]string{resource.ListenerType: {"a"}}},
			&nodeState{names: map[string][]string{resource.ListenerType: {"a", "b"}}}, false},
		{"names joined differently", &nodeState{names: map[string][]string{resource.ListenerType: {"ab"}}},
			&nodeState{names: map[string][]string{resource.ListenerType: {"a", "b"}}}, false},
		{"named vs wildcard", &nodeState{names: map[string][]string{resource.ListenerType: {"*"}}}, wild, false},
		{"envoy", &nodeState{names: map[string][]string{}, envoy: true}, wild, false},
		{"edge", &nodeState{names: map[string][]string{}, edge: true}, wild, false},
		{"delta", &nodeState{names: map[string][]string{}, delta: true}, wild, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := selectionKey(resource.ListenerType, tt.a) == selectionKey(resource.ListenerType, tt.b); got != tt.same {
				t.Errorf("same key = %v, want %v", got, tt.same)
			}
		})
	}
}

// TestSelectedLockedFollowsTheServedResources: a node gets what
// selectResources and itemsVersion give, cached while the served
// resources stay, recomputed when they change.
func TestSelectedLockedFollowsTheServedResources(t *testing.T) {
	one, err := Build(testConfig(), []Member{{Name: "core-a", Kind: KindCore, Role: RolePrimary, Epoch: 1, GRPCAddr: "127.0.0.1:7101"}})
	if err != nil {
		t.Fatal(err)
	}
	two, err := Build(testConfig(), []Member{{Name: "core-a", Kind: KindCore, Role: RolePrimary, Epoch: 2, GRPCAddr: "127.0.0.1:7101"}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	st := &nodeState{names: map[string][]string{}}
	for i, served := range []*Resources{one, one, two} {
		s.served = served
		items := served.ByType()[resource.EndpointType]
		sel, v, err := s.selectedLocked(resource.EndpointType, items, st)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := itemsVersion(selectResources(resource.EndpointType, items, st))
		if v != want || len(sel) != len(items) {
			t.Errorf("served %d: version %s (%d items), want %s (%d)", i, v, len(sel), want, len(items))
		}
	}
	if s.selCache.of != two || len(s.selCache.sel) != 1 {
		t.Errorf("cache of %p with %d selections, want of the last served with 1", s.selCache.of, len(s.selCache.sel))
	}
}
