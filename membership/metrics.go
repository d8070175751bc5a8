package membership

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/telemetry"
)

// metrics are the membership's Prometheus metrics, registered on the part's
// registry by New and removed by Shutdown.
type metrics struct {
	reg         prometheus.Registerer
	events      *prometheus.CounterVec
	dropped     prometheus.Counter
	joins       *prometheus.CounterVec
	metaUpdates *prometheus.CounterVec
	probeRTT    prometheus.Histogram
	members     *membersCollector
	collectors  []prometheus.Collector
}

func newMetrics(tel *telemetry.Telemetry, m *Membership) (*metrics, error) {
	mt := &metrics{
		reg: tel.Registry,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_membership_events_total",
			Help: "Membership events seen by this node, by type (joined, updated, suspected, failed, left).",
		}, []string{"type"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hachat_membership_events_dropped_total",
			Help: "Events dropped because a subscriber's buffer was full.",
		}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_membership_join_attempts_total",
			Help: "Attempts to join seed members, by result (ok, failed).",
		}, []string{"result"}),
		metaUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_membership_meta_updates_total",
			Help: "Local meta updates gossiped, by result (ok, timeout).",
		}, []string{"result"}),
		probeRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hachat_membership_probe_rtt_seconds",
			Help:    "Round trip of successful direct failure-detector probes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
		members: &membersCollector{m: m, desc: prometheus.NewDesc("hachat_membership_members",
			"Members known to this node, by state (alive, suspect, dead, left).", []string{"state"}, nil)},
	}
	health := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hachat_membership_health_score",
		Help: "memberlist's awareness score of this node: 0 is healthy, higher means it is missing its own deadlines.",
	}, func() float64 {
		ml := m.mlReady.Load()
		if ml == nil {
			return 0
		}
		return float64(ml.GetHealthScore())
	})
	mt.collectors = []prometheus.Collector{mt.events, mt.dropped, mt.joins, mt.metaUpdates, mt.probeRTT, mt.members, health}
	for i, c := range mt.collectors {
		if err := tel.Registry.Register(c); err != nil {
			for _, done := range mt.collectors[:i] {
				tel.Registry.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("register membership metrics: one membership per registry: %w", err)
			}
			return nil, fmt.Errorf("register membership metrics: %w", err)
		}
	}
	return mt, nil
}

func (mt *metrics) unregister() {
	for _, c := range mt.collectors {
		mt.reg.Unregister(c)
	}
}

// membersCollector counts members by state at scrape time.
type membersCollector struct {
	m    *Membership
	desc *prometheus.Desc
}

func (c *membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *membersCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[State]int{}
	for _, mb := range c.m.Members() {
		counts[mb.State]++
	}
	for _, s := range []State{StateAlive, StateSuspect, StateDead, StateLeft} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), s.String())
	}
}
