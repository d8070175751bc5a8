package xds

import (
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
)

// badLbPolicy is a load balancing policy number no Envoy API defines.
const badLbPolicy cluster.Cluster_LbPolicy = 42

// badCluster returns a copy of c that decodes fine but is invalid: its
// lb_policy is an undefined enum value. Validate rejects it, Envoy rejects
// it ("value must be one of the defined enum values"), grpc-go rejects it
// ("unexpected lbPolicy"); a client must NACK it and keep its last good
// cluster. This is a TEST FAULT: it is published only through the admin
// route /xds/v1/admin/bad-resource, which bypasses validation on purpose.
func badCluster(c *cluster.Cluster) *cluster.Cluster {
	bad := proto.Clone(c).(*cluster.Cluster)
	bad.LbPolicy = badLbPolicy
	return bad
}

// cloneAll deep-copies a resource list.
func cloneAll(items []types.Resource) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = proto.Clone(it)
	}
	return out
}

// withFault returns a copy of r whose clusters are replaced by badCluster
// copies, unvalidated, under a version of its own.
func withFault(r *Resources) *Resources {
	f := *r
	f.Clusters = make([]types.Resource, len(r.Clusters))
	for i, c := range r.Clusters {
		f.Clusters[i] = badCluster(c.(*cluster.Cluster))
	}
	if r.EnvoyClusters != nil {
		f.EnvoyClusters = make([]types.Resource, len(r.EnvoyClusters))
		for i, c := range r.EnvoyClusters {
			f.EnvoyClusters[i] = badCluster(c.(*cluster.Cluster))
		}
	}
	f.Version = r.Version + "-fault"
	return &f
}
