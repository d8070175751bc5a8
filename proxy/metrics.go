package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the sidecar's Prometheus metrics, registered on tel.Registry.
type metrics struct {
	adsConnected  prometheus.Gauge
	adsUpdates    *prometheus.CounterVec
	adsNACKs      *prometheus.CounterVec
	adsServer     *prometheus.GaugeVec
	adsMoves      prometheus.Counter
	cacheLoads    *prometheus.CounterVec
	cacheWrites   *prometheus.CounterVec
	connsActive   prometheus.Gauge
	connsTotal    prometheus.Counter
	bytes         *prometheus.CounterVec
	bytesUp       prometheus.Counter
	bytesDown     prometheus.Counter
	connectErrors *prometheus.CounterVec
	failovers     prometheus.Counter
	closedConns   prometheus.Counter
	hostHealthy   *prometheus.GaugeVec
	checks        *prometheus.CounterVec
	breakerState  *prometheus.GaugeVec
	tlsRefused    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		adsConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_proxy_ads_connected",
			Help: "1 while the ADS stream to the control plane is open."}),
		adsUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_ads_updates_total",
			Help: "xDS responses accepted (ACKed), by type."}, []string{"type"}),
		adsNACKs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_ads_nacks_total",
			Help: "xDS responses rejected (NACKed), by type."}, []string{"type"}),
		adsServer: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_proxy_ads_control_plane",
			Help: "1 for the control plane (ADS address) the sidecar's stream is open to, 0 for the others."}, []string{"address"}),
		adsMoves: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_proxy_ads_moves_total",
			Help: "Times the ADS stream was established to another control plane than the previous one."}),
		cacheLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_xds_cache_loads_total",
			Help: "Loads of the xDS cache file at start, by result: ok, refused (corrupt, altered, another node), absent."}, []string{"result"}),
		cacheWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_xds_cache_writes_total",
			Help: "Writes of the xDS cache file, by result: ok, error."}, []string{"result"}),
		connsActive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_proxy_connections_active",
			Help: "Client connections being proxied now."}),
		connsTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_proxy_connections_total",
			Help: "Client connections accepted."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_bytes_total",
			Help: "Bytes proxied, by direction (upstream: client to host, downstream: host to client)."}, []string{"direction"}),
		connectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_upstream_connect_errors_total",
			Help: "Failed connects to an upstream host (including breaker rejections)."}, []string{"host"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_proxy_failovers_total",
			Help: "Times the chosen upstream changed from one host to another."}),
		closedConns: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_proxy_connections_closed_on_failover_total",
			Help: "Client connections closed because their host turned unhealthy or was superseded."}),
		hostHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_proxy_host_healthy",
			Help: "Own active health check state per host: 1 up, 0 down or unknown."}, []string{"cluster", "host"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_health_checks_total",
			Help: "Active health checks, by result (ok, failed; busy: a timeout excused because the host was serving proxied traffic)."}, []string{"result"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_proxy_breaker_state",
			Help: "Circuit breaker state per host: 0 closed, 1 half-open, 2 open."}, []string{"host"}),
		tlsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_proxy_tls_refused_total",
			Help: "Client connections refused at the mTLS handshake (no, untrusted or wrong-kind certificate)."}),
	}
	m.bytesUp = m.bytes.WithLabelValues("upstream")
	m.bytesDown = m.bytes.WithLabelValues("downstream")
	// The xDS types exist from the start at 0: a reader that finds no
	// series knows the metric was renamed, not merely still zero.
	for _, t := range []string{"lds", "cds", "eds"} {
		m.adsUpdates.WithLabelValues(t)
		m.adsNACKs.WithLabelValues(t)
	}
	for _, r := range []string{"ok", "refused", "absent"} {
		m.cacheLoads.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.cacheWrites.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.adsConnected, m.adsUpdates, m.adsNACKs, m.adsServer, m.adsMoves,
		m.cacheLoads, m.cacheWrites, m.connsActive, m.connsTotal,
		m.bytes, m.connectErrors, m.failovers, m.closedConns, m.hostHealthy, m.checks, m.breakerState, m.tlsRefused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
