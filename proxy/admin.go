package proxy

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"sort"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/hachat/hachat/mtls"
)

// Dump is the JSON document served at GET /proxy/v1/clusters.
type Dump struct {
	// Node is the sidecar's xDS node id.
	Node string `json:"node"`
	// Listen is the data listener address clients connect to.
	Listen string `json:"listen"`
	// Listener is the LDS listener served, and Cluster its tcp_proxy cluster.
	Listener string `json:"listener"`
	Cluster  string `json:"cluster"`
	// Configured is true once a configuration has been accepted.
	Configured bool `json:"configured"`
	// XDS is the control plane state: connection, versions, last NACK.
	XDS XDSStatus `json:"xds"`
	// Clusters lists every CDS cluster with its endpoints.
	Clusters []ClusterDump `json:"clusters"`
}

// ClusterDump is one cluster in a Dump.
type ClusterDump struct {
	Name           string         `json:"name"`
	Type           string         `json:"type"`
	EDSName        string         `json:"edsName,omitempty"`
	ConnectTimeout string         `json:"connectTimeout"`
	HealthCheck    map[string]any `json:"healthCheck"`
	// Served is true for the cluster of the served listener: only its
	// endpoints are health-checked and carry traffic.
	Served     bool           `json:"served"`
	Chosen     string         `json:"chosen,omitempty"`
	Definitive bool           `json:"chosenIsPrimary"`
	Endpoints  []EndpointDump `json:"endpoints"`
}

// EndpointDump is one upstream host in a Dump.
type EndpointDump struct {
	Address   string `json:"address"`
	Priority  uint32 `json:"priority"`
	EDSHealth string `json:"edsHealth"`
	// MetaName, MetaRole and MetaEpoch come from the "hachat" EDS metadata.
	MetaName  string `json:"metaName,omitempty"`
	MetaRole  string `json:"metaRole,omitempty"`
	MetaEpoch uint64 `json:"metaEpoch,omitempty"`
	// Health, Role, Epoch and Name come from the sidecar's own checks.
	Health            string    `json:"health,omitempty"`
	Name              string    `json:"name,omitempty"`
	Role              string    `json:"role,omitempty"`
	Epoch             uint64    `json:"epoch,omitempty"`
	Draining          bool      `json:"draining,omitempty"`
	LastCheck         time.Time `json:"lastCheck,omitzero"`
	LastError         string    `json:"lastError,omitempty"`
	Chosen            bool      `json:"chosen"`
	ActiveConnections int       `json:"activeConnections"`
	Breaker           string    `json:"breaker,omitempty"`
}

// Dump returns the sidecar's clusters and endpoints as the admin endpoint
// shows them.
func (p *Proxy) Dump() Dump {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := Dump{
		Node:       p.cfg.NodeID,
		Listen:     p.ln.Addr().String(),
		Listener:   p.listener.name,
		Cluster:    p.listener.cluster,
		Configured: p.configured,
		XDS:        p.xds,
	}
	d.XDS.Versions = make(map[string]string, len(p.xds.Versions))
	for k, v := range p.xds.Versions {
		d.XDS.Versions[k] = v
	}
	if p.xds.LastNACK != nil {
		n := *p.xds.LastNACK
		d.XDS.LastNACK = &n
	}
	d.XDS.Servers = slices.Clone(p.xds.Servers)
	if p.xds.Cache != nil {
		c := *p.xds.Cache
		c.LoadedVersions = maps.Clone(c.LoadedVersions)
		d.XDS.Cache = &c
	}
	names := make([]string, 0, len(p.cds))
	for n := range p.cds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ci := p.cds[n]
		cd := ClusterDump{Name: n, Type: "STATIC", EDSName: ci.edsName, ConnectTimeout: ci.connectTimeout.String(),
			HealthCheck: map[string]any{"interval": ci.hc.Interval.String(), "timeout": ci.hc.Timeout.String(),
				"unhealthyThreshold": ci.hc.Unhealthy, "healthyThreshold": ci.hc.Healthy, "service": ci.hc.Service,
				"fastInterval": fastInterval(ci.hc.Interval).String()},
			Endpoints: []EndpointDump{}}
		eps := ci.static
		if ci.eds {
			cd.Type = "EDS"
			eps = p.eds[ci.edsName].endpoints
		}
		var served *cluster
		if p.cluster != nil && p.cluster.name == n {
			served = p.cluster
			cd.Served = true
			cd.Definitive = served.definitive
			if served.chosen != nil {
				cd.Chosen = served.chosen.addr
			}
		}
		for _, ep := range eps {
			ed := EndpointDump{Address: ep.addr, Priority: ep.priority, EDSHealth: ep.health.String(),
				MetaName: ep.name, MetaRole: ep.role, MetaEpoch: ep.epoch}
			if served != nil {
				if h, ok := served.hosts[ep.addr]; ok {
					ed.Health = h.state.String()
					ed.Name, ed.Role, ed.Epoch, ed.Draining = h.name, h.role, h.epoch, h.draining
					ed.LastCheck, ed.LastError = h.lastCheck, h.lastErr
					ed.Chosen = served.chosen == h
					ed.ActiveConnections = len(h.conns)
					ed.Breaker = h.breaker.State().String()
				}
			}
			cd.Endpoints = append(cd.Endpoints, ed)
		}
		if served != nil {
			for _, h := range served.orphans {
				// Removed from EDS, still carrying client connections.
				cd.Endpoints = append(cd.Endpoints, EndpointDump{Address: h.addr, Priority: h.ep.priority,
					EDSHealth: "REMOVED", Health: h.state.String(), Name: h.name, Role: h.role, Epoch: h.epoch,
					LastCheck: h.lastCheck, LastError: h.lastErr, ActiveConnections: len(h.conns),
					Breaker: h.breaker.State().String()})
			}
		}
		d.Clusters = append(d.Clusters, cd)
	}
	return d
}

// adminHandler serves /proxy/v1/clusters, /healthz and /metrics; under
// mTLS authorized by AdminPolicy.
func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /proxy/v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(p.Dump())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		configured, hasCluster := p.configured, p.cluster != nil
		p.mu.Unlock()
		switch {
		case !configured:
			http.Error(w, "no configuration from the control plane yet", http.StatusServiceUnavailable)
		case !hasCluster:
			http.Error(w, "configuration has no cluster for the served listener", http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ok\n"))
		}
	})
	mux.Handle("GET /metrics", p.tel.MetricsHandler())
	var h http.Handler = mux
	if p.tls != nil {
		h = mtls.Middleware(AdminPolicy, p.log, mux)
	}
	return otelhttp.NewHandler(h, "proxy.admin",
		otelhttp.WithTracerProvider(p.tel.Tracer), otelhttp.WithPropagators(p.tel.Propagator),
		otelhttp.WithFilter(func(r *http.Request) bool { return r.URL.Path == "/proxy/v1/clusters" }))
}
