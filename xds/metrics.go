package xds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the control plane's Prometheus metrics.
type metrics struct {
	generation   prometheus.Gauge
	info         *prometheus.GaugeVec
	builds       *prometheus.CounterVec
	buildSeconds prometheus.Histogram
	pushes       *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	nodes        prometheus.Gauge
	streams      prometheus.Gauge
	endpoints    *prometheus.GaugeVec
	pairs        *prometheus.GaugeVec
	pairLive     *prometheus.GaugeVec
	pairWeight   *prometheus.GaugeVec
	pairAdopted  *prometheus.GaugeVec
	adoptions    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hachat_xds_snapshot_generation",
			Help: "Number of distinct snapshot contents published since start.",
		}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_snapshot_info",
			Help: "1 for the snapshot version being served (content hash), labelled with the primary.",
		}, []string{"version", "primary"}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_xds_snapshot_builds_total",
			Help: "Snapshot builds by result (ok, unchanged, error).",
		}, []string{"result"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hachat_xds_snapshot_build_seconds",
			Help:    "Time from a membership notification to the snapshot set for every node.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_xds_pushes_total",
			Help: "Discovery responses sent to clients, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_xds_nacks_total",
			Help: "Discovery requests that rejected a response (carried error_detail), by resource type.",
		}, []string{"type"}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hachat_xds_connected_nodes",
			Help: "Distinct node ids with at least one open xDS stream.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hachat_xds_streams",
			Help: "Open xDS streams.",
		}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_endpoints",
			Help: "Published chat core endpoints by priority and health.",
		}, []string{"priority", "health"}),
		pairs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_pair_state",
			Help: "1 for each pair of a cluster of several, labelled with its state (serving, draining, degraded).",
		}, []string{"pair", "state"}),
		pairLive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_pair_live_sessions",
			Help: "Live sessions of each pair as its primary last reported them (the input of placement).",
		}, []string{"pair"}),
		pairWeight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_pair_weight",
			Help: "Weight of each pair in the published placement route (0: it takes no new chat).",
		}, []string{"pair"}),
		pairAdopted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hachat_xds_pair_adopted",
			Help: "1 for each pair adopted by another (N+1: it lost both cores; its chats are routed to the adopter), labelled with the adopter.",
		}, []string{"pair", "by"}),
		adoptions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hachat_xds_pair_adoptions_total",
			Help: "Pairs assigned to an adopting pair (N+1), counted when the assignment is made or moves.",
		}),
	}
	for _, c := range []prometheus.Collector{m.generation, m.info, m.builds, m.buildSeconds, m.pushes, m.nacks, m.nodes, m.streams, m.endpoints, m.pairs, m.pairLive, m.pairWeight, m.pairAdopted, m.adoptions} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register xds metrics: %w", err)
		}
	}
	return m, nil
}

// published records a newly served snapshot.
func (m *metrics) published(r *Resources, version string) {
	m.generation.Inc()
	m.info.Reset()
	m.info.WithLabelValues(version, r.Primary).Set(1)
	m.endpoints.Reset()
	for _, p := range r.Placements {
		h := "unhealthy"
		if p.Healthy {
			h = "healthy"
		}
		m.endpoints.WithLabelValues(fmt.Sprint(p.Priority), h).Inc()
	}
}
