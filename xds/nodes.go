package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/protobuf/proto"
)

// selectResources cuts one type's resources to what node st asks for.
// Named requests get exactly the named resources that exist. Wildcard
// requests get everything, except that SotW wildcard listener requests
// (sidecars, Envoy) do not get API listeners: those are for proxyless
// clients, which always ask by name; and that only edge nodes (node cluster
// EdgeNodeCluster) get the ingress listeners, so that an Envoy sidecar never
// binds the public addresses. Delta nodes get everything: the cache filters
// delta subscriptions itself.
func selectResources(typ string, items []types.Resource, st *nodeState) []types.Resource {
	if st.delta {
		return items
	}
	names := st.names[typ]
	if names == nil {
		if typ != resource.ListenerType {
			return items
		}
		return slices.DeleteFunc(slices.Clone(items), func(r types.Resource) bool {
			l := r.(*listener.Listener)
			return l.GetApiListener() != nil || !st.edge && isIngressListener(l.GetName())
		})
	}
	var out []types.Resource
	for _, it := range items {
		if slices.Contains(names, resourceName(it)) {
			out = append(out, it)
		}
	}
	return out
}

// itemsVersion hashes a resource list in name order; equal lists, equal
// versions.
func itemsVersion(items []types.Resource) (string, error) {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b types.Resource) int {
		if resourceName(a) < resourceName(b) {
			return -1
		}
		if resourceName(a) > resourceName(b) {
			return 1
		}
		return 0
	})
	h := sha256.New()
	for _, it := range sorted {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(it)
		if err != nil {
			return "", fmt.Errorf("marshal %q: %w", resourceName(it), err)
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// normalizeNames turns a request's resource names into the node's
// subscription: nil for wildcard (no names, or "*" among them), otherwise
// a sorted copy without duplicates.
func normalizeNames(names []string) []string {
	if len(names) == 0 || slices.Contains(names, "*") {
		return nil
	}
	out := slices.Clone(names)
	slices.Sort(out)
	return slices.Compact(out)
}

// callbacks hooks the server into the stream lifecycle: per-node
// snapshots on the first request and on every change of subscription,
// NACK accounting, push counting.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamRequestFunc:  s.onStreamRequest,
		StreamResponseFunc: s.onStreamResponse,
		StreamClosedFunc: func(id int64, node *core.Node) {
			s.onStreamClosed(false, id)
		},
		StreamDeltaRequestFunc: s.onDeltaRequest,
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			s.met.pushes.WithLabelValues(shortType(resp.GetTypeUrl())).Inc()
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			s.onStreamClosed(true, id)
		},
	}
}

// attachLocked records that stream sid (in byStream) belongs to node id.
func (s *Server) attachLocked(byStream map[int64]string, sid int64, id string, delta bool) *nodeState {
	st, ok := s.nodes[id]
	if _, known := byStream[sid]; !known {
		byStream[sid] = id
		if !ok {
			st = &nodeState{names: map[string][]string{}, delta: delta, set: map[string]string{}, acked: map[string]string{}}
			s.nodes[id] = st
			s.log.Info("xDS node connected", "node", id, "delta", delta)
		}
		st.streams++
		s.met.streams.Inc()
		s.met.nodes.Set(float64(len(s.nodes)))
	}
	return st
}

// EdgeNodeCluster is the node cluster of an edge (the hachat proxy in
// ingress mode sets it; an Envoy edge's bootstrap must name it too).
const EdgeNodeCluster = "hachat-edge"

func isIngressListener(name string) bool {
	return name == IngressCustomerListener || name == IngressAgentListener
}

// isEnvoy reports whether node is an Envoy (its user agent name is "envoy").
func isEnvoy(node *core.Node) bool { return node.GetUserAgentName() == "envoy" }

// onStreamRequest runs before the cache sees a SotW request.
func (s *Server) onStreamRequest(sid int64, req *discovery.DiscoveryRequest) error {
	id := req.GetNode().GetId()
	typ := req.GetTypeUrl()
	names := normalizeNames(req.GetResourceNames())
	if names == nil && len(req.GetResourceNames()) > 0 {
		// An explicit "*": the cache's ADS rule compares names literally,
		// so make it the legacy wildcard it means.
		req.ResourceNames = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.attachLocked(s.streamNode, sid, id, false)
	if n := req.GetNode(); n != nil {
		st.envoy = isEnvoy(n)
		st.edge = n.GetCluster() == EdgeNodeCluster
	}
	if req.GetErrorDetail() == nil && req.GetResponseNonce() != "" {
		st.acked[typ] = req.GetVersionInfo()
	}
	if d := req.GetErrorDetail(); d != nil {
		rejected := s.lastSent[sid][typ]
		s.lastNACK = &NACK{Node: id, Type: shortType(typ), Version: rejected, Kept: req.GetVersionInfo(), Error: d.GetMessage(), At: time.Now()}
		s.met.nacks.WithLabelValues(shortType(typ)).Inc()
		s.log.Warn("NACK: client rejected a response", "node", id, "type", shortType(typ),
			"rejected_version", rejected, "kept_version", req.GetVersionInfo(), "nonce", req.GetResponseNonce(),
			"code", d.GetCode(), "error", d.GetMessage())
		if rejected != "" {
			// The cache answers at once a request whose version differs
			// from the snapshot's: it would resend the rejected resources
			// in a tight loop. Present the rejected version as the
			// client's, so that the next change (a fix) is what gets
			// pushed.
			req.VersionInfo = rejected
		}
	}
	prev, had := st.names[typ]
	changed := !had || !slices.Equal(prev, names)
	if !changed && st.snapshotSet {
		return nil
	}
	st.names[typ] = names
	if changed {
		s.log.Debug("xDS subscription", "node", id, "type", shortType(typ), "names", names)
	}
	s.setSnapshotLocked(context.Background(), id, st)
	return nil
}

// onDeltaRequest runs before the cache sees a delta request.
func (s *Server) onDeltaRequest(sid int64, req *discovery.DeltaDiscoveryRequest) error {
	id := req.GetNode().GetId()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.attachLocked(s.deltaNode, sid, id, true)
	if n := req.GetNode(); n != nil {
		st.envoy = isEnvoy(n)
	}
	if d := req.GetErrorDetail(); d != nil {
		s.lastNACK = &NACK{Node: id, Type: shortType(req.GetTypeUrl()), Error: d.GetMessage(), At: time.Now()}
		s.met.nacks.WithLabelValues(shortType(req.GetTypeUrl())).Inc()
		s.log.Warn("NACK: client rejected a delta response", "node", id, "type", shortType(req.GetTypeUrl()),
			"nonce", req.GetResponseNonce(), "error", d.GetMessage())
	}
	if !st.snapshotSet {
		s.setSnapshotLocked(context.Background(), id, st)
	}
	return nil
}

// onStreamResponse counts pushes and remembers the version each stream got
// per type, to name it in NACKs.
func (s *Server) onStreamResponse(_ context.Context, sid int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.met.pushes.WithLabelValues(shortType(resp.GetTypeUrl())).Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lastSent[sid]
	if m == nil {
		m = map[string]string{}
		s.lastSent[sid] = m
	}
	m[resp.GetTypeUrl()] = resp.GetVersionInfo()
}

// onStreamClosed forgets a stream; a node without streams is forgotten and
// its snapshot cleared.
func (s *Server) onStreamClosed(delta bool, sid int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byStream := s.streamNode
	if delta {
		byStream = s.deltaNode // SotW and delta stream ids are counted apart
	} else {
		delete(s.lastSent, sid)
	}
	id, ok := byStream[sid]
	if !ok {
		return
	}
	delete(byStream, sid)
	s.met.streams.Dec()
	st := s.nodes[id]
	if st == nil {
		return
	}
	st.streams--
	if st.streams <= 0 {
		delete(s.nodes, id)
		s.cache.ClearSnapshot(id)
		s.log.Info("xDS node disconnected", "node", id)
	}
	s.met.nodes.Set(float64(len(s.nodes)))
}

// cacheLogger sends go-control-plane's logs to slog. Its warnings are
// mostly the ADS name-matching notice for a watch that is being replaced,
// which per-node snapshots make harmless: logged at debug.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Infof(format string, args ...any)  { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Errorf(format string, args ...any) { c.l.Error(fmt.Sprintf(format, args...)) }
