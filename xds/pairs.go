package xds

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hachat/hachat/pairs"
)

// Pair states as the control plane publishes them.
const (
	// PairServing: an alive core of the pair is primary; the pair takes
	// new chats in proportion to its weight.
	PairServing = "serving"
	// PairDraining: an operator drained the pair (hachat ctl drain): its
	// chats go on, it takes no new one.
	PairDraining = "draining"
	// PairDegraded: no alive core of the pair is primary (both lost, or a
	// failover under way): it takes no new chat.
	PairDegraded = "degraded"
)

// PairInputs is what the control plane knows of the pairs besides
// membership: it decides the placement weights.
type PairInputs struct {
	// Live is each pair's live sessions, as its primary last reported them.
	Live map[string]uint64
	// Draining lists the pairs an operator drained.
	Draining map[string]bool
	// Capacity is the live sessions one pair holds at most (a pair at it
	// gets weight 0). Zero means DefaultPairCapacity.
	Capacity uint64
	// Adopted maps a pair that lost both cores to the pair that adopted
	// it (N+1): the adopted pair's header route and sidecar listener lead
	// to the adopter's cluster, and the pair stays in the resources even
	// when no core of it is left.
	Adopted map[string]string
	// Arrivals is how many new chats arrive per poll interval lately (the
	// growth of the live sessions, smoothed): the weights' floor, so that
	// a burst placed on weights a poll old does not overshoot.
	Arrivals uint64
}

// DefaultPairCapacity is the capacity of a pair when PairInputs names none:
// the cores' default max-sessions.
const DefaultPairCapacity = 20000

// PairInfo is one pair as the control plane publishes it.
type PairInfo struct {
	Name string `json:"name"`
	// State is PairServing, PairDraining or PairDegraded.
	State string `json:"state"`
	// Primary is the core at priority 0 as primary (empty when degraded).
	Primary string `json:"primary,omitempty"`
	// Live is the pair's live sessions as its primary last reported them.
	Live uint64 `json:"live"`
	// Weight is the pair's weight in the placement route (0: no new chat).
	Weight uint32 `json:"weight"`
	// Cluster is the pair's EDS cluster, Listener its sidecar listener.
	Cluster  string      `json:"cluster"`
	Listener string      `json:"listener"`
	Cores    []Placement `json:"cores"`
	// AdoptedBy names the pair that adopted this one (N+1): requests
	// about its chats go to that pair's cluster. Empty: not adopted.
	AdoptedBy string `json:"adoptedBy,omitempty"`
}

// PairCluster is the EDS cluster (and load assignment) of pair p:
// ClusterName for the default pair, "chatcore-<p>" for any other.
func PairCluster(p string) string {
	if pairs.Norm(p) == pairs.Default {
		return ClusterName
	}
	return ClusterName + "-" + p
}

// PairListener is the sidecar listener of pair p: ListenerName for the
// default pair, "chatcore-sidecar-<p>" for any other. A hachat sidecar
// serves one pair's listener (--listener); see docs/design.md.
func PairListener(p string) string {
	if pairs.Norm(p) == pairs.Default {
		return ListenerName
	}
	return ListenerName + "-" + p
}

// pairNames returns the pairs of the cores that did not leave, in pair
// order (see comparePairs).
func pairNames(members []Member) []string {
	var out []string
	for _, m := range members {
		if m.Kind != KindCore || m.State == StateLeft {
			continue
		}
		p := pairs.Norm(m.Pair)
		if pairs.Validate(p) != nil || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, comparePairs)
	return out
}

// comparePairs orders pair names numerically when both are numbers, else
// as strings; numbers first.
func comparePairs(a, b string) int {
	na, ea := strconv.ParseUint(a, 10, 32)
	nb, eb := strconv.ParseUint(b, 10, 32)
	switch {
	case ea == nil && eb == nil:
		return cmp.Compare(na, nb)
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return cmp.Compare(a, b)
}

// pairWeights decides the placement weights: a pair that is not serving,
// or is at capacity, gets 0; a serving pair gets its headroom below the
// busiest serving pair plus a floor, capped at its free capacity. Equal
// pairs get equal shares; a pair behind gets more new chats until it
// caught up, so placement stays balanced as chats end and when a pair
// joins. The floor is the larger of a tenth of the mean and a quarter of
// the chats that arrive per poll interval (A): the weights are a poll old
// when the clients use them, and with three pairs a floor F gives a pair d
// behind 2Ad/3(d+3F) more than its share in one interval, which stays
// below d (no overshoot) for F >= A/4.5, whatever the arrival rate.
func pairWeights(infos []PairInfo, capacity, arrivals uint64) {
	var serving []int
	var busiest, total uint64
	for i := range infos {
		infos[i].Weight = 0
		if infos[i].State != PairServing || infos[i].Live >= capacity {
			continue
		}
		serving = append(serving, i)
		busiest = max(busiest, infos[i].Live)
		total += infos[i].Live
	}
	if len(serving) == 0 {
		return
	}
	floor := max(1, total/uint64(len(serving))/10, arrivals/4)
	for _, i := range serving {
		w := min(busiest-infos[i].Live+floor, capacity-infos[i].Live)
		infos[i].Weight = uint32(min(w, 1<<20)) // grpc-go wants the sum within uint32
	}
}

// buildPairs builds the resources of a cluster of several pairs (or of one
// pair that is not the default one). Per pair: an EDS cluster
// (PairCluster) with the same health checks as the one-pair cluster, its
// load assignment (the pair's primary at priority 0, its backup at 1) and
// a sidecar listener (PairListener; Envoy binds the default pair's on
// ListenerPort and pair i's, in pair order, on ListenerPort+i). The API
// listener's route sends a request whose pairs.Header names a pair to that
// pair's cluster, and any other request (StartSession: a new chat) to
// weighted clusters whose weights are pairWeights; the core that starts
// the chat mints an id that names its pair, so every later request of the
// chat carries the header. Placements and Primary are the default pair's
// (or the first pair's), as the admin switchover expects.
func buildPairs(cfg Config, members []Member, names []string, in PairInputs) (*Resources, error) {
	capacity := in.Capacity
	if capacity == 0 {
		capacity = DefaultPairCapacity
	}
	r := &Resources{}
	for _, m := range members {
		if m.Kind == KindCore && m.State != StateLeft && pairs.Validate(pairs.Norm(m.Pair)) != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%q: bad pair name %q", m.Name, m.Pair))
		}
	}
	api, err := apiListener()
	if err != nil {
		return nil, err
	}
	var down *core.TransportSocket
	if cfg.TrustDomain != "" {
		if down, err = downstreamTLS(cfg.TrustDomain); err != nil {
			return nil, err
		}
	}
	r.Listeners = []types.Resource{api}
	if cfg.TrustDomain != "" {
		r.EnvoyListeners = []types.Resource{api}
	}
	var infos []PairInfo
	for i, p := range names {
		var of []Member
		for _, m := range members {
			if m.Kind == KindCore && pairs.Norm(m.Pair) == p {
				of = append(of, m)
			}
		}
		placements, primary, skipped := place(of)
		for j := range placements {
			placements[j].Pair = p
		}
		r.Skipped = append(r.Skipped, skipped...)
		if i == 0 || p == pairs.Default {
			r.Placements, r.Primary = placements, primary
		}
		info := PairInfo{Name: p, State: PairServing, Primary: primary, Live: in.Live[p],
			Cluster: PairCluster(p), Listener: PairListener(p), Cores: placements}
		if by := in.Adopted[p]; by != "" && by != p && slices.Contains(names, by) {
			info.AdoptedBy = by
		}
		switch {
		case in.Draining[p]:
			info.State = PairDraining
		case primary == "":
			info.State = PairDegraded
		}
		infos = append(infos, info)

		port := uint64(cfg.ListenerPort) + uint64(i)
		if port > 65535 {
			return nil, fmt.Errorf("%w: pair %s: sidecar listener port %d beyond 65535 (listener-port %d)", ErrBadConfig, p, port, cfg.ListenerPort)
		}
		target := info.Cluster // where the pair's chats go: its adopter's cluster once adopted
		if info.AdoptedBy != "" {
			target = PairCluster(info.AdoptedBy)
		}
		sl, err := pairSidecarListener(info.Listener, target, uint32(port), nil)
		if err != nil {
			return nil, err
		}
		hc, err := chatCluster(cfg, providerFlavour, info.Cluster)
		if err != nil {
			return nil, err
		}
		r.Listeners = append(r.Listeners, sl)
		r.Clusters = append(r.Clusters, hc)
		r.Endpoints = append(r.Endpoints, loadAssignment(info.Cluster, placements))
		if cfg.TrustDomain != "" {
			esl, err := pairSidecarListener(info.Listener, target, uint32(port), down)
			if err != nil {
				return nil, err
			}
			ehc, err := chatCluster(cfg, sdsFlavour, info.Cluster)
			if err != nil {
				return nil, err
			}
			r.EnvoyListeners = append(r.EnvoyListeners, esl)
			r.EnvoyClusters = append(r.EnvoyClusters, ehc)
		}
	}
	pairWeights(infos, capacity, in.Arrivals)
	r.Pairs = infos
	r.Routes = []types.Resource{pairRoute(infos)}
	ils, ics, ies, err := ingressResources(cfg, members)
	if err != nil {
		return nil, err
	}
	r.Listeners = append(r.Listeners, ils...)
	r.Clusters = append(r.Clusters, ics...)
	r.Endpoints = append(r.Endpoints, ies...)
	if cfg.TrustDomain != "" {
		r.EnvoyListeners = append(r.EnvoyListeners, ils...)
		r.EnvoyClusters = append(r.EnvoyClusters, ics...)
	}
	return finish(r)
}

// pairRoute is the route of several pairs: one route per pair matching
// pairs.Header exactly, then the placement route for every other request:
// weighted clusters of the pairs with a weight. When no pair has one
// (every pair drained, degraded or full) it names every pair at weight 1:
// the request then fails at a pair that cannot take it (UNAVAILABLE or
// RESOURCE_EXHAUSTED) rather than at a route that matches nothing. The
// route timeout is disabled, as for one pair: Subscribe and WatchSessions
// are endless streams.
func pairRoute(infos []PairInfo) *route.RouteConfiguration {
	action := func(cs *route.RouteAction) *route.Route_Route {
		cs.Timeout = durationpb.New(0)
		return &route.Route_Route{Route: cs}
	}
	var routes []*route.Route
	for _, p := range infos {
		target := p.Cluster
		if p.AdoptedBy != "" {
			target = PairCluster(p.AdoptedBy) // N+1: the adopter restores and serves its chats
		}
		routes = append(routes, &route.Route{
			Name: "pair-" + p.Name,
			Match: &route.RouteMatch{
				PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*route.HeaderMatcher{{
					Name: pairs.Header,
					HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
						MatchPattern: &matcher.StringMatcher_Exact{Exact: p.Name},
					}},
				}},
			},
			Action: action(&route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: target}}),
		})
	}
	var weighted []*route.WeightedCluster_ClusterWeight
	for _, p := range infos {
		if p.Weight > 0 {
			weighted = append(weighted, &route.WeightedCluster_ClusterWeight{Name: p.Cluster, Weight: wrapperspb.UInt32(p.Weight)})
		}
	}
	if len(weighted) == 0 {
		for _, p := range infos {
			weighted = append(weighted, &route.WeightedCluster_ClusterWeight{Name: p.Cluster, Weight: wrapperspb.UInt32(1)})
		}
	}
	routes = append(routes, &route.Route{
		Name:  "placement",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: action(&route.RouteAction{ClusterSpecifier: &route.RouteAction_WeightedClusters{
			WeightedClusters: &route.WeightedCluster{Clusters: weighted},
		}}),
	})
	return &route.RouteConfiguration{
		Name:         RouteName,
		VirtualHosts: []*route.VirtualHost{{Name: ClusterName, Domains: []string{"*"}, Routes: routes}},
	}
}
