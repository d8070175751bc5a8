package scalebench

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/xds"
)

// TypeSize is the resources of one xDS type in a snapshot.
type TypeSize struct {
	Type      string `json:"type"`
	Resources int    `json:"resources"`
	Bytes     int    `json:"bytes"`
}

// SnapshotReport is the size of the control plane's resources for a
// cluster of Pairs pairs, marshalled as they go on the wire (each resource
// in its protobuf encoding; the DiscoveryResponse's framing adds a few
// bytes per resource).
type SnapshotReport struct {
	Pairs int `json:"pairs"`
	// Types is the flavour every node but Envoy gets (xds.Resources.ByType);
	// Bytes their sum: what a node subscribing to everything receives.
	Types []TypeSize `json:"types"`
	Bytes int        `json:"bytes"`
	// EnvoyBytes is the Envoy flavour's sum (the same without mTLS).
	EnvoyBytes int `json:"envoy_bytes"`
	// Version is the snapshot's content version.
	Version string `json:"version"`
}

// typeOrder lists the xDS types in the order the report shows them.
var typeOrder = []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}

// shortName is the last element of an xDS type URL.
func shortName(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}

// sizeOf marshals every resource of byType and returns the per-type sizes
// in typeOrder and their sum.
func sizeOf(byType map[resource.Type][]types.Resource) ([]TypeSize, int, error) {
	var out []TypeSize
	total := 0
	keys := make([]string, 0, len(byType))
	for k := range byType {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return slices.Index(typeOrder, a) - slices.Index(typeOrder, b) })
	for _, typ := range keys {
		ts := TypeSize{Type: shortName(typ)}
		for _, r := range byType[typ] {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				return nil, 0, fmt.Errorf("marshal %s: %w", ts.Type, err)
			}
			ts.Resources++
			ts.Bytes += len(b)
		}
		total += ts.Bytes
		out = append(out, ts)
	}
	return out, total, nil
}

// MeasureSnapshot builds the resources of a cluster of n whole pairs, each
// holding live sessions (so the placement route carries real weights), with
// the real xds.BuildPairs and marshals every resource.
func MeasureSnapshot(n int, live uint64) (SnapshotReport, error) {
	in := xds.PairInputs{Live: map[string]uint64{}}
	for p := 1; p <= n; p++ {
		in.Live[strconv.Itoa(p)] = live
	}
	res, err := xds.BuildPairs(xds.DefaultConfig(), ModelMembers(n), in)
	if err != nil {
		return SnapshotReport{}, fmt.Errorf("build the resources of %d pairs: %w", n, err)
	}
	rep := SnapshotReport{Pairs: n, Version: res.Version}
	if rep.Types, rep.Bytes, err = sizeOf(res.ByType()); err != nil {
		return rep, err
	}
	if _, rep.EnvoyBytes, err = sizeOf(res.ForEnvoy()); err != nil {
		return rep, err
	}
	return rep, nil
}
