package interaction

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Interaction Server's Prometheus metrics. Gauges of the
// routing state (agents by state, queue length, offers, chats) are read from
// the router at scrape time; counters count events.
type metrics struct {
	offers         prometheus.Counter
	offersAccepted prometheus.Counter
	offersRejected prometheus.Counter
	offerTimeouts  prometheus.Counter
	transfers      prometheus.Counter
	chatsQueued    prometheus.Counter
	reconnects     *prometheus.CounterVec
	coreUp         prometheus.Gauge
	refusals       *prometheus.CounterVec
	leader         prometheus.Gauge
	takeovers      prometheus.Counter
	takeoverSecs   prometheus.Histogram
	stateSaves     *prometheus.CounterVec
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		offers: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_offers_total",
			Help: "Chats offered to agents."}),
		offersAccepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_offers_accepted_total",
			Help: "Offers accepted and joined."}),
		offersRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_offers_rejected_total",
			Help: "Offers rejected by the agent."}),
		offerTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_offer_timeouts_total",
			Help: "Offers not accepted within offer-timeout."}),
		transfers: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_transfers_total",
			Help: "Chats transferred between agents."}),
		chatsQueued: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_chats_total",
			Help: "New chats queued (each live session once)."}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_interaction_core_reconnects_total",
			Help: "Streams to the chat core lost and resumed, by stream (watch, chat)."}, []string{"stream"}),
		coreUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_interaction_core_connected",
			Help: "1 while the session watch on the chat core is connected."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_interaction_refusals_total",
			Help: "Requests refused for identity (401, 403, throttled logins), by status text."}, []string{"status"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_interaction_leader",
			Help: "1 while this instance leads (routes); 0 while it forwards the agent API to the leader."}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_interaction_takeovers_total",
			Help: "Times this instance became the leader and restored the saved routing state."}),
		takeoverSecs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hachat_interaction_takeover_seconds",
			Help:    "Time from winning the election to routing again (state loaded and restored).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}),
		stateSaves: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_interaction_state_saves_total",
			Help: "Routing state saves to the state store, by result (ok, unchanged: not written, error, not_leader)."}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.leader, m.takeovers, m.takeoverSecs, m.stateSaves, m.offers, m.offersAccepted, m.offersRejected, m.offerTimeouts,
		m.transfers, m.chatsQueued, m.reconnects, m.coreUp, m.refusals, stateCollector{s}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

var (
	agentsDesc = prometheus.NewDesc("hachat_interaction_agents", "Logged-in agents by state (ready, not_ready, supervisor).", []string{"state"}, nil)
	queueDesc  = prometheus.NewDesc("hachat_interaction_queue_length", "Chats waiting for an offer.", nil, nil)
	chatsDesc  = prometheus.NewDesc("hachat_interaction_live_chats", "Live chats by routing state (queued, offered, assigned).", []string{"state"}, nil)
	pushDesc   = prometheus.NewDesc("hachat_interaction_push_connections", "Open agent push (SSE) connections.", nil, nil)
)

// stateCollector reads the routing state at scrape time.
type stateCollector struct{ s *Server }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- agentsDesc
	ch <- queueDesc
	ch <- chatsDesc
	ch <- pushDesc
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	agents := map[string]int{"ready": 0, "not_ready": 0, "supervisor": 0}
	for _, a := range c.s.router.Agents() {
		switch {
		case a.Role == RoleSupervisor:
			agents["supervisor"]++
		case a.Ready:
			agents["ready"]++
		default:
			agents["not_ready"]++
		}
	}
	chats := map[ChatState]int{ChatQueued: 0, ChatOffered: 0, ChatAssigned: 0}
	for _, cv := range c.s.router.Chats() {
		chats[cv.State]++
	}
	queue := c.s.router.QueueLen()
	c.s.mu.Unlock()
	for st, n := range agents {
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(n), st)
	}
	for st, n := range chats {
		ch <- prometheus.MustNewConstMetric(chatsDesc, prometheus.GaugeValue, float64(n), string(st))
	}
	ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(queue))
	ch <- prometheus.MustNewConstMetric(pushDesc, prometheus.GaugeValue, float64(c.s.hub.connections()))
}
