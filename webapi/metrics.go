package webapi

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Web API Server's Prometheus series.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	sseClients    prometheus.Gauge
	sseEvents     prometheus.Counter
	sseReconnects *prometheus.CounterVec
	sendLatency   *prometheus.HistogramVec
	coreRetries   *prometheus.CounterVec
	refused       *prometheus.CounterVec
	lenient       *prometheus.CounterVec
	sseEnded      prometheus.Counter
	inRotation    prometheus.Gauge
}

// newMetrics registers the series on reg.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_webapi_requests_total",
			Help: "HTTP requests served, by route pattern and HTTP status.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hachat_webapi_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern (push channel excluded).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		sseClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hachat_webapi_sse_clients",
			Help: "Open Server-Sent Events push channels.",
		}),
		sseEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hachat_webapi_sse_events_total",
			Help: "Transcript events written to push channels.",
		}),
		sseReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_webapi_sse_core_reconnects_total",
			Help: "Push channels whose core subscription broke and was resumed (result: reconnecting, reconnected).",
		}, []string{"result"}),
		sendLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hachat_webapi_send_latency_seconds",
			Help:    "Time from receiving a send (message, typing, notice, push URL) to the core's acknowledgement, retries included, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 18),
		}, []string{"kind", "outcome"}),
		coreRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_webapi_core_retries_total",
			Help: "Retries the chat client made of calls to the chat core (UNAVAILABLE, ABORTED, a silent core), by method.",
		}, []string{"method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_webapi_refused_total",
			Help: "Requests refused at the edge, by reason (client-start-limit, global-start-limit, origin, apikey).",
		}, []string{"reason"}),
		lenient: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hachat_webapi_lenient_total",
			Help: "Requests of GMS clients accepted leniently, by kind (trailing-slash: a path ending in /; position-placeholder: transcriptPosition NaN, undefined or null, read as not given; json-as-form: a JSON object labelled as a form).",
		}, []string{"kind"}),
		sseEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hachat_webapi_push_channels_reset_total",
			Help: "Times every open push channel was ended because the instance left the edge's rotation (no path to the chat cores).",
		}),
		inRotation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hachat_webapi_in_rotation",
			Help: "1 while the instance serves the chat API, 0 while it is out of the edge's rotation because it has no path to the chat cores (its sidecar died).",
		}),
	}
	m.inRotation.Set(1)
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.sseClients, m.sseEvents, m.sseReconnects, m.sendLatency, m.coreRetries, m.refused, m.lenient, m.sseEnded, m.inRotation} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register webapi metrics: %w", err)
		}
	}
	return m, nil
}
