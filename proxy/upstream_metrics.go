package proxy

import "github.com/prometheus/client_golang/prometheus"

// upstreamMetrics count, per upstream host, what the edge's operators ask
// about: how many client connections each instance carries, and how the set
// of instances changes.
type upstreamMetrics struct {
	conns   *prometheus.GaugeVec
	changes *prometheus.CounterVec
}

func newUpstreamMetrics(reg prometheus.Registerer) (*upstreamMetrics, error) {
	m := &upstreamMetrics{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_proxy_upstream_connections",
			Help: "Client connections proxied to each upstream host now."}, []string{"cluster", "host"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_proxy_upstream_changes_total",
			Help: "Changes of the upstream hosts, by kind: added, removed (from EDS), up, down (own checks or a refused connection)."},
			[]string{"cluster", "change"}),
	}
	for _, c := range []prometheus.Collector{m.conns, m.changes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// countConns publishes h's connection count. p.mu is held.
func (p *Proxy) countConns(h *host) {
	if h.removed && len(h.conns) == 0 {
		p.um.conns.DeleteLabelValues(h.cluster.name, h.addr)
		return
	}
	p.um.conns.WithLabelValues(h.cluster.name, h.addr).Set(float64(len(h.conns)))
}

// upstreamChange counts one change of h (added, removed, up, down); the
// log line of each change is written where it happens.
func (p *Proxy) upstreamChange(h *host, change string) {
	if change == "added" {
		// Every kind of change reads 0 before it first happens, so that a
		// check of "no change" tells an absent metric from a zero.
		for _, k := range []string{"added", "removed", "up", "down"} {
			p.um.changes.WithLabelValues(h.cluster.name, k)
		}
		p.um.conns.WithLabelValues(h.cluster.name, h.addr).Set(0)
	}
	p.um.changes.WithLabelValues(h.cluster.name, change).Inc()
	if change == "removed" && len(h.conns) == 0 {
		p.um.conns.DeleteLabelValues(h.cluster.name, h.addr)
	}
}
