package chatcore

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// metrics are the core's Prometheus metrics, all prefixed hachat_core_.
type metrics struct {
	sessionsLive     prometheus.Gauge
	sessionsStarted  prometheus.Counter
	requestRetries   prometheus.Counter
	sessionsEnded    *prometheus.CounterVec // reason
	events           *prometheus.CounterVec // kind
	rpcs             *prometheus.CounterVec // method, code
	appendSeconds    prometheus.Histogram
	subscribers      prometheus.Gauge
	subscriberDrops  prometheus.Counter
	saves            *prometheus.CounterVec // result
	saveResends      prometheus.Counter
	saveGiveUps      prometheus.Counter
	resendsExhausted prometheus.Counter
	savesRecovered   prometheus.Counter
	breakerState     prometheus.Gauge
	// role and epoch are read together from one snapshot (roleCollector),
	// so no scrape ever pairs one role with another state's epoch.
	role              *roleCollector
	failovers         prometheus.Counter
	stepDowns         prometheus.Counter
	promotionsDropped prometheus.Counter
	restored          *prometheus.CounterVec // source
	replicationLag    prometheus.Gauge
	backupInSync      prometheus.Gauge
	replicated        prometheus.Counter
	secondCopyToUCS   prometheus.Counter
	switchoverPauseS  prometheus.Histogram
	replicationBatch  prometheus.Histogram
	sendStreamBatch   prometheus.Histogram
	fencingFailures   *prometheus.CounterVec // op
	solo              prometheus.Gauge
	inDoubt           prometheus.Gauge
	doubtResolved     *prometheus.CounterVec // outcome
	tombstones        prometheus.Gauge
	// eventsByKind holds events' counter per known kind, resolved once:
	// the append path counts every event without hashing label values.
	eventsByKind map[chatpb.EventKind]prometheus.Counter
}

// eventCounter returns the events_total counter of kind k.
func (m *metrics) eventCounter(k chatpb.EventKind) prometheus.Counter {
	if c, ok := m.eventsByKind[k]; ok {
		return c
	}
	return m.events.WithLabelValues(kindName(k))
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessionsLive:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_sessions_live", Help: "Live (not ended) sessions."}),
		sessionsStarted: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_sessions_started_total", Help: "Sessions started."}),
		requestRetries:  prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_request_retries_total", Help: "StartSession and Join retries answered from their first attempt (client_request_id)."}),
		sessionsEnded:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_sessions_ended_total", Help: "Sessions ended, by reason."}, []string{"reason"}),
		events:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_events_total", Help: "Events committed, by kind."}, []string{"kind"}),
		rpcs:            prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_rpcs_total", Help: "Chat RPCs handled, by method and gRPC code."}, []string{"method", "code"}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hachat_core_append_seconds", Help: "Time from append to commit (includes the second copy).",
			Buckets: []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1}}),
		subscribers:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_subscribers", Help: "Open Subscribe streams."}),
		subscriberDrops: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_subscriber_drops_total", Help: "Subscribers dropped from fan-out for lagging (they catch up from the log)."}),
		saves:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_transcript_saves_total", Help: "Transcript save attempts, by result (ok, recoverable, nonrecoverable, stale_epoch, breaker_open)."}, []string{"result"}),
		saveResends:     prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_transcript_resend_attempts_total", Help: "Transcript resend attempts (transcript-resend-attempts)."}),
		saveGiveUps: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_transcript_save_failures_total",
			Help: "Transcripts given up for good: a non-recoverable UCS error under transcript-save-on-error=close ended the session, which is never saved again. A save that later succeeds is not counted."}),
		resendsExhausted: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_transcript_resends_exhausted_total",
			Help: "Saves still failing after every resend attempt (transcript-resend-attempts): the save-failed notice goes out and the save is retried in the background until UCS takes it."}),
		savesRecovered: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_transcript_saves_recovered_total",
			Help: "Saves that succeeded after an earlier save of the same session had exhausted its resend attempts or met a non-recoverable error."}),
		breakerState:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_transcript_breaker_state", Help: "UCS circuit breaker: 0 closed, 1 half-open, 2 open."}),
		role:              newRoleCollector(),
		failovers:         prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_failovers_total", Help: "Promotions of this core to primary."}),
		stepDowns:         prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_step_downs_total", Help: "Times this core stepped down from primary."}),
		promotionsDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_promotions_dropped_total", Help: "Decisions to promote dropped because the re-check before the epoch claim found the primary alive or this core cut off."}),
		restored:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_restored_sessions_total", Help: "Sessions restored at promotion, by source (replica, ucs, ended)."}, []string{"source"}),
		replicationLag:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_replication_lag", Help: "Events sent to the backup and not yet acknowledged (0 too when no backup is connected: see backup_in_sync)."}),
		backupInSync:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_backup_in_sync", Help: "1 while a backup is connected and has acknowledged its snapshot (replication synchronous), else 0."}),
		replicated:        prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_replicated_events_total", Help: "Events acknowledged by the backup (primary) or applied (backup)."}),
		secondCopyToUCS:   prometheus.NewCounter(prometheus.CounterOpts{Name: "hachat_core_second_copy_ucs_total", Help: "Events whose second copy went to UCS because the backup was away."}),
		switchoverPauseS: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hachat_core_switchover_pause_seconds", Help: "Pause of planned switchovers.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12)}),
		replicationBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hachat_core_replication_batch_size", Help: "Messages per ReplicaBatch sent to the backup (group commit).",
			Buckets: prometheus.ExponentialBuckets(2, 2, 9)}),
		sendStreamBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hachat_core_send_stream_batch_size", Help: "Sends per SendStream message received (1 from a client without batches; more from one that gathered the sends waiting together).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 7)}),
		fencingFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_fencing_failures_total",
			Help: "Calls to the fencing authority (etcd, or UCS without one) that did not answer, by operation (claim, renew)."}, []string{"op"}),
		solo: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_solo",
			Help: "1 while this primary's solo mark is recorded at the coordination cluster (before its first acknowledgement with a second copy in UCS since its backup went away, or with its claim after a failover)."}),
		inDoubt: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_in_doubt",
			Help: "Sessions holding an event in doubt: its second copy failed with an uncertain outcome (it may exist at the backup or in UCS), so its index is reserved for it and the session's appends answer Unavailable until a definite copy commits it."}),
		doubtResolved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_in_doubt_resolutions_total",
			Help: "Events in doubt resolved, by outcome: committed (a definite second copy of the same event, then committed at its index) or superseded (the core stepped down or a newer epoch decided the index)."}, []string{"outcome"}),
		tombstones: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_core_tombstones",
			Help: "Ended sessions forgotten without a complete final save in UCS (transcript-save-on-error=close fired): they are never restored from UCS's older copy."}),
	}
	m.eventsByKind = make(map[chatpb.EventKind]prometheus.Counter, len(chatpb.EventKind_name))
	for k := range chatpb.EventKind_name {
		m.eventsByKind[chatpb.EventKind(k)] = m.events.WithLabelValues(kindName(chatpb.EventKind(k)))
	}
	reg.MustRegister(m.sessionsLive, m.sessionsStarted, m.requestRetries, m.sessionsEnded, m.events, m.rpcs, m.appendSeconds,
		m.subscribers, m.subscriberDrops, m.saves, m.saveResends, m.saveGiveUps, m.resendsExhausted, m.savesRecovered, m.breakerState,
		m.role, m.failovers, m.stepDowns, m.promotionsDropped, m.restored, m.replicationLag, m.backupInSync, m.replicated,
		m.secondCopyToUCS, m.switchoverPauseS, m.replicationBatch, m.sendStreamBatch, m.fencingFailures, m.solo, m.inDoubt, m.doubtResolved, m.tombstones)
	// Every known label value exists from the start at 0, so a reader that
	// finds no series knows the metric was renamed, not merely still zero.
	for _, r := range []string{"ok", "recoverable", "nonrecoverable", "stale_epoch", "breaker_open"} {
		m.saves.WithLabelValues(r)
	}
	for _, op := range []string{"claim", "renew"} {
		m.fencingFailures.WithLabelValues(op)
	}
	for _, o := range []string{"committed", "superseded"} {
		m.doubtResolved.WithLabelValues(o)
	}
	for _, s := range []string{"replica", "ucs", "ended"} {
		m.restored.WithLabelValues(s)
	}
	return m
}

// roleCollector exposes hachat_core_role{role} and hachat_core_epoch from one
// snapshot of the core's role state, taken under the core's role lock: a
// scrape concurrent with a step down sees the primary at its own epoch or the
// backup at the newer one, never the primary at the epoch that fenced it.
type roleCollector struct {
	roleDesc, epochDesc *prometheus.Desc
	// snapshot returns the role and the epoch to report with it; set once
	// by New before the core is reachable.
	snapshot func() (role string, epoch uint64)
}

func newRoleCollector() *roleCollector {
	return &roleCollector{
		roleDesc:  prometheus.NewDesc("hachat_core_role", "1 for the role this core holds.", []string{"role"}, nil),
		epochDesc: prometheus.NewDesc("hachat_core_epoch", "Epoch of this core's term while primary; as backup, the newest epoch it knows.", nil, nil),
		snapshot:  func() (string, uint64) { return RoleBackup, 0 },
	}
}

// Describe implements prometheus.Collector.
func (r *roleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- r.roleDesc
	ch <- r.epochDesc
}

// Collect implements prometheus.Collector.
func (r *roleCollector) Collect(ch chan<- prometheus.Metric) {
	role, epoch := r.snapshot()
	for _, name := range []string{RolePrimary, RoleBackup} {
		v := 0.0
		if name == role {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(r.roleDesc, prometheus.GaugeValue, v, name)
	}
	ch <- prometheus.MustNewConstMetric(r.epochDesc, prometheus.GaugeValue, float64(epoch))
}
