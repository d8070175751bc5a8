package xds

import (
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// selection is one node's cut of one type's served resources and its
// version.
type selection struct {
	items   []types.Resource
	version string
}

// selectionCache memoizes selectResources and itemsVersion per served
// snapshot: every node with the same subscription (a thousand sidecars all
// ask for every listener and cluster and the same assignments) shares one
// selection and one hash, so a publish hashes each distinct subscription
// once instead of once per node. It is keyed to the served resources and
// starts empty when they change. Guarded by Server.mu.
type selectionCache struct {
	of  *Resources
	sel map[string]selection
}

// selectionKey is everything selectResources reads of a node besides the
// type: the flavour it gets, delta, edge, and its names for typ.
func selectionKey(typ string, st *nodeState) string {
	var b strings.Builder
	b.WriteString(typ)
	for _, f := range []bool{st.envoy, st.delta, st.edge} {
		if f {
			b.WriteString("\x001")
		} else {
			b.WriteString("\x000")
		}
	}
	names, ok := st.names[typ]
	switch {
	case !ok || names == nil:
		b.WriteString("\x00*")
	default:
		b.WriteString("\x00=")
		for _, n := range names {
			b.WriteString("\x00")
			b.WriteString(n)
		}
	}
	return b.String()
}

// selectedLocked returns node st's cut of typ's items from the served
// resources and its version, computing them once per subscription and
// served snapshot. s.mu is held.
func (s *Server) selectedLocked(typ string, items []types.Resource, st *nodeState) ([]types.Resource, string, error) {
	if s.selCache.of != s.served {
		s.selCache = selectionCache{of: s.served, sel: map[string]selection{}}
	}
	key := selectionKey(typ, st)
	if c, ok := s.selCache.sel[key]; ok {
		return c.items, c.version, nil
	}
	sel := selectResources(typ, items, st)
	v, err := itemsVersion(sel)
	if err != nil {
		return nil, "", err
	}
	s.selCache.sel[key] = selection{items: sel, version: v}
	return sel, v, nil
}
