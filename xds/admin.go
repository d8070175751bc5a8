package xds

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// Admin routes.
const (
	StatusPath      = "/xds/v1/status"
	SwitchoverPath  = "/xds/v1/switchover"
	BadResourcePath = "/xds/v1/admin/bad-resource"
)

// switchoverTimeout bounds the core's Switchover RPC: draining and handing
// over takes milliseconds; the bound covers a core that hangs.
const switchoverTimeout = 10 * time.Second

// MemberStatus is one member in the status answer.
type MemberStatus struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Role     string `json:"role,omitempty"`
	Epoch    uint64 `json:"epoch"`
	State    string `json:"state"`
	GRPCAddr string `json:"grpcAddr,omitempty"`
	HTTPAddr string `json:"httpAddr,omitempty"`
}

// NodeStatus is one connected xDS client in the status answer.
type NodeStatus struct {
	ID      string `json:"id"`
	Streams int    `json:"streams"`
	Delta   bool   `json:"delta,omitempty"`
	// Subscriptions maps resource type to requested names; ["*"] is
	// wildcard.
	Subscriptions map[string][]string `json:"subscriptions"`
	// InSync is true when the node (SotW) has acknowledged the current
	// version of every type it subscribed to: it applies what is served.
	InSync bool `json:"inSync"`
}

// Status is the answer of GET /xds/v1/status.
type Status struct {
	Version     string         `json:"version"`
	PublishedAt time.Time      `json:"publishedAt"`
	Primary     string         `json:"primary"`
	Fault       bool           `json:"fault"`
	Members     []MemberStatus `json:"members"`
	Endpoints   []Placement    `json:"endpoints"`
	Skipped     []string       `json:"skipped,omitempty"`
	Nodes       []NodeStatus   `json:"nodes"`
	LastNACK    *NACK          `json:"lastNack"`
}

// SwitchoverResult is the answer of POST /xds/v1/switchover.
type SwitchoverResult struct {
	PreviousPrimary string `json:"previousPrimary"`
	NewPrimary      string `json:"newPrimary"`
	NewEpoch        uint64 `json:"newEpoch"`
	PauseMicros     int64  `json:"pauseMicros"`
}

// apiError is the JSON body of every error answer.
type apiError struct {
	Error string `json:"error"`
}

// Status reports the control plane's state.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Fault: s.fault, PublishedAt: s.publishedAt, Members: []MemberStatus{}, Nodes: []NodeStatus{}, Endpoints: []Placement{}}
	if s.lastNACK != nil {
		n := *s.lastNACK
		st.LastNACK = &n
	}
	if s.served != nil {
		st.Version, st.Primary = s.served.Version, s.served.Primary
		st.Endpoints = append(st.Endpoints, s.served.Placements...)
		st.Skipped = s.served.Skipped
	}
	for _, m := range s.members {
		st.Members = append(st.Members, MemberStatus{Name: m.Name, Kind: m.Kind, Role: m.Role, Epoch: m.Epoch,
			State: m.State.String(), GRPCAddr: m.GRPCAddr, HTTPAddr: m.HTTPAddr})
	}
	slices.SortFunc(st.Members, func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) })
	for id, n := range s.nodes {
		ns := NodeStatus{ID: id, Streams: n.streams, Delta: n.delta, Subscriptions: map[string][]string{}}
		for typ, names := range n.names {
			if names == nil {
				names = []string{"*"}
			}
			ns.Subscriptions[shortType(typ)] = names
		}
		ns.InSync = !n.delta && len(n.names) > 0
		for typ := range n.names {
			if v := n.set[typ]; v == "" || n.acked[typ] != v {
				ns.InSync = false
			}
		}
		st.Nodes = append(st.Nodes, ns)
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return st
}

// Switchover asks the current primary to hand over to the backup.
func (s *Server) Switchover(ctx context.Context) (SwitchoverResult, error) {
	ctx, span := s.tracer.Start(ctx, "xds.switchover")
	defer span.End()
	s.mu.Lock()
	var primary Placement
	found := false
	if s.good != nil && s.good.Primary != "" {
		primary, found = s.good.Placements[0], true
	}
	s.mu.Unlock()
	if !found {
		span.SetStatus(otelcodes.Error, ErrNoPrimary.Error())
		return SwitchoverResult{}, ErrNoPrimary
	}
	span.SetAttributes(attribute.String("primary", primary.Name), attribute.Int64("epoch", int64(primary.Epoch)))
	s.log.Info("switchover requested", "primary", primary.Name, "addr", primary.Addr, "epoch", primary.Epoch)
	ctx, cancel := context.WithTimeout(ctx, switchoverTimeout)
	defer cancel()
	resp, err := s.opts.Switchover(ctx, primary.Addr, s.cfg.AdminToken)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
		s.log.Error("switchover failed", "primary", primary.Name, "err", err)
		return SwitchoverResult{PreviousPrimary: primary.Name}, fmt.Errorf("switchover at %s: %w", primary.Name, err)
	}
	res := SwitchoverResult{PreviousPrimary: primary.Name, NewPrimary: resp.GetNewPrimary(), NewEpoch: resp.GetNewEpoch(), PauseMicros: resp.GetPauseMicros()}
	s.log.Info("switchover done", "previous_primary", res.PreviousPrimary, "new_primary", res.NewPrimary,
		"new_epoch", res.NewEpoch, "pause", time.Duration(res.PauseMicros)*time.Microsecond)
	return res, nil
}

// DiscoveryPolicy says who may call the control plane's gRPC services
// (ADS and the per-type discovery services) under mTLS: the xDS clients,
// that is sidecars (proxy), proxyless gRPC clients (webapi, interaction,
// core), Envoy, and operators (debugging with grpcurl and the like).
func DiscoveryPolicy() mtls.MethodPolicy {
	clients := mtls.Allow(mtls.KindProxy, mtls.KindWebAPI, mtls.KindInteraction, mtls.KindEnvoy, mtls.KindOperator, mtls.KindCore)
	return mtls.ServicePolicy(map[string]mtls.Policy{
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/": clients,
		"/envoy.service.endpoint.v3.EndpointDiscoveryService/":    clients,
		"/envoy.service.cluster.v3.ClusterDiscoveryService/":      clients,
		"/envoy.service.route.v3.RouteDiscoveryService/":          clients,
		"/envoy.service.listener.v3.ListenerDiscoveryService/":    clients,
	})
}

// AdminPolicy says who may make a request of the admin HTTP API under
// mTLS: the witness routes (membership's reachable and members handlers)
// are for cores; /healthz and /metrics are readable by any verified
// identity of the trust domain (probes and scrapers come in many kinds, and
// neither route changes or reveals chat data); every other route (status,
// switchover, the test fault) is for operators only, but GET PairsPath
// (the pairs and their placement weights) is also for webapi and
// interaction, which place new chats by those weights behind sidecars
// (chatclient.PairWeights). The admin token of
// the mutating routes is checked on top.
func AdminPolicy(r *http.Request) mtls.Policy {
	switch p := r.URL.Path; {
	case p == membership.ReachablePath:
		return mtls.Allow(mtls.KindCore)
	case p == membership.MembersPath:
		return mtls.Allow(mtls.KindCore, mtls.KindOperator)
	case p == "/healthz", p == "/metrics":
		return mtls.AnyKind
	case p == PairsPath && r.Method == http.MethodGet:
		return mtls.Allow(mtls.KindOperator, mtls.KindWebAPI, mtls.KindInteraction)
	}
	return mtls.Allow(mtls.KindOperator)
}

// Handler is the admin HTTP API: status, switchover, the test fault,
// /healthz, /metrics and the extra handlers of Options, traced with
// otelhttp; under mTLS authorized by AdminPolicy.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Status())
	})
	mux.HandleFunc("POST "+SwitchoverPath, s.admin(func(w http.ResponseWriter, r *http.Request) {
		res, err := s.Switchover(r.Context())
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, res)
		case errors.Is(err, ErrNoPrimary):
			writeJSON(w, http.StatusConflict, apiError{"no alive primary to switch over"})
		case status.Code(err) == codes.FailedPrecondition, status.Code(err) == codes.Unavailable:
			writeJSON(w, http.StatusConflict, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusBadGateway, apiError{err.Error()})
		}
	}))
	mux.HandleFunc("POST "+BadResourcePath, s.admin(func(w http.ResponseWriter, r *http.Request) {
		s.SetFault(r.Context(), true)
		writeJSON(w, http.StatusOK, s.Status())
	}))
	mux.HandleFunc("DELETE "+BadResourcePath, s.admin(func(w http.ResponseWriter, r *http.Request) {
		s.SetFault(r.Context(), false)
		writeJSON(w, http.StatusOK, s.Status())
	}))
	s.pairHandlers(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.Resources() == nil {
			http.Error(w, "no snapshot yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	for pattern, h := range s.opts.Handlers {
		mux.Handle(pattern, h)
	}
	var h http.Handler = mux
	if s.tls != nil {
		h = mtls.Middleware(AdminPolicy, s.log, mux)
	}
	return otelhttp.NewHandler(h, "xds.admin",
		otelhttp.WithTracerProvider(s.tel.Tracer), otelhttp.WithPropagators(s.tel.Propagator))
}

// admin guards a mutating route with the admin bearer token: 403 without
// the right token, and always 403 when no token is configured.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" {
			writeJSON(w, http.StatusForbidden, apiError{"admin routes are disabled: no admin-token configured"})
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
			s.log.Warn("admin request refused: bad or missing token", "path", r.URL.Path, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, apiError{"missing or wrong admin token (Authorization: Bearer <token>)"})
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// dialSwitchover returns a SwitchoverFunc that dials the core over gRPC
// (traced; mTLS with src requiring a core's identity, plaintext when src
// is nil) for one call.
func dialSwitchover(tel *telemetry.Telemetry, src *mtls.Source) SwitchoverFunc {
	return func(ctx context.Context, addr, token string) (*chatpb.SwitchoverResponse, error) {
		creds := insecure.NewCredentials()
		if src != nil {
			creds = credentials.NewTLS(src.ClientConfig(mtls.Allow(mtls.KindCore)))
		}
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(creds),
			grpc.WithStatsHandler(otelgrpc.NewClientHandler(
				otelgrpc.WithTracerProvider(tel.Tracer), otelgrpc.WithPropagators(tel.Propagator))),
		)
		if err != nil {
			return nil, fmt.Errorf("dial core %s: %w", addr, err)
		}
		defer conn.Close()
		return chatpb.NewChatClient(conn).Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: token})
	}
}
