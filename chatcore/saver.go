package chatcore

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// saveTrigger reports whether committing ev asks for a transcript save
// under transcript-auto-save mode autoSave.
func saveTrigger(autoSave int, ev *chatpb.Event) bool {
	switch {
	case ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		return true
	case autoSave == AutoSaveAtEnd:
		return false
	}
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED,
		chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		return false
	}
	return true
}

// keeps reports whether transcript-save-notices (the set ns) lets ev into
// the saved transcript.
func (ns NoticeSet) keeps(ev *chatpb.Event) bool {
	var n NoticeSet
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:
		n = NoticeTyping
	case chatpb.EventKind_EVENT_KIND_PUSH_URL:
		n = NoticePushURL
	case chatpb.EventKind_EVENT_KIND_NOTICE:
		n = NoticeCustom
	case chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		n = NoticeSave
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:
		n = NoticeDisconnect
	default:
		return true
	}
	return ns&n != 0
}

// saverCore is what a save may do to the core: append its notices to the
// session's log, end a session (transcript-save-on-error=close), report save
// progress to the backup, and step down when the store knows a newer epoch.
// *Core implements it; nothing else of the core is in the saver's reach.
type saverCore interface {
	append(ctx context.Context, s *session, prepare prepareFunc) (uint64, bool, error)
	endSession(ctx context.Context, s *session, reason string) error
	replicateProgress(s *session, now bool)
	stepDown(reason string, newer uint64)
	// retryDue asks the janitor to look at s at at, when its given-up
	// save's backoff ends (pendingRetry).
	retryDue(s *session, at time.Time)
}

// saver writes transcripts to UCS asynchronously, per session, behind one
// circuit breaker. A session is in the queue at most once; a save covers
// every event since the last acknowledged one, so bursts coalesce. Saves are
// idempotent by index at the store, so resends and a new primary re-saving
// are harmless.
type saver struct {
	// core is the only way back from a save into the core (saverCore).
	core    saverCore
	store   TranscriptStore
	role    *role.State // the epoch a save carries; saves stop when the core is not primary
	cfg     Config
	notices NoticeSet
	m       *metrics
	log     *slog.Logger
	tracer  trace.Tracer
	now     func() time.Time

	cb *gobreaker.CircuitBreaker[SaveResult]

	mu     sync.Mutex
	queue  []*session
	wake   chan struct{}
	timers map[*time.Timer]struct{} // armed resend timers, stopped at shutdown

	batchSize prometheus.Histogram // sessions per batched save call

	trouble ucsTrouble // rate-limits the WARN while saves fail
}

// ucsWarnEvery is the least time between two WARNs about failing saves.
const ucsWarnEvery = 5 * time.Second

// ucsTrouble turns a stream of failed saves into a WARN at the first
// failure and at most one per ucsWarnEvery after it (with the failures in
// between), even while UCS flaps between failing and answering, and an INFO
// at the first success after a WARN: a primary cut off from UCS says so at
// once without flooding the log.
type ucsTrouble struct {
	mu       sync.Mutex
	lastWarn time.Time
	warned   bool // a WARN went out since the last success
	since    int  // failures since the last WARN
	total    int  // failures since the last success
}

func (u *ucsTrouble) failed(ctx context.Context, log *slog.Logger, session string, err error) {
	u.mu.Lock()
	u.since++
	u.total++
	warn := u.lastWarn.IsZero() || time.Since(u.lastWarn) >= ucsWarnEvery
	since := u.since
	if warn {
		u.lastWarn, u.since, u.warned = time.Now(), 0, true
	}
	u.mu.Unlock()
	if warn {
		log.WarnContext(ctx, "transcript saves failing: UCS unreachable or erroring; chats go on and saves are resent until UCS takes them",
			"failures", since, "last_session", session, "err", err)
	}
}

func (u *ucsTrouble) ok(ctx context.Context, log *slog.Logger) {
	u.mu.Lock()
	warned, total := u.warned, u.total
	u.warned, u.total = false, 0
	u.mu.Unlock()
	if warned {
		log.InfoContext(ctx, "transcript saves reach UCS again", "failures", total)
	}
}

// newSaver builds the core's saver.
func newSaver(c *Core) *saver {
	sv := &saver{core: c, store: c.store, role: c.role, cfg: c.cfg, notices: c.notices, m: c.m, log: c.log,
		tracer: c.tracer, now: c.now}
	sv.init(c.tel.Registry)
	return sv
}

// init finishes a saver whose dependencies are set: its queue, its batch
// size metric (registered with reg) and its circuit breaker.
func (sv *saver) init(reg prometheus.Registerer) {
	sv.wake, sv.timers = make(chan struct{}, 1), make(map[*time.Timer]struct{})
	sv.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hachat_core_transcript_save_batch_size",
		Help:    "Sessions per batched transcript save call (with a store that saves in batches).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 9),
	})
	if err := reg.Register(sv.batchSize); err != nil {
		sv.log.Warn("transcript batch size metric not registered", "err", err)
	}
	sv.cb = gobreaker.NewCircuitBreaker[SaveResult](gobreaker.Settings{
		Name:        "ucs",
		MaxRequests: 1,
		Timeout:     sv.cfg.TranscriptBreakerTimeout,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return n.ConsecutiveFailures >= uint32(sv.cfg.TranscriptBreakerFailures)
		},
		// UCS answering "no" (non-recoverable, stale epoch) is UCS working.
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, ErrNonRecoverable) || errors.Is(err, ErrStaleEpoch) ||
				errors.Is(err, ErrConflict) || errors.Is(err, ErrInvalid)
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			sv.m.breakerState.Set(float64(to))
			// Opening from closed is news; the probe cycle of an outage
			// (open, half-open, open again) is not, every breaker timeout.
			switch {
			case from == gobreaker.StateClosed && to == gobreaker.StateOpen:
				sv.log.Warn("transcript breaker open: UCS keeps failing; saves wait and are resent", "from", from.String(), "to", to.String())
			case to == gobreaker.StateClosed:
				sv.log.Info("transcript breaker closed: UCS answers again", "from", from.String(), "to", to.String())
			default:
				sv.log.Debug("transcript breaker changed state", "from", from.String(), "to", to.String())
			}
		},
	})
}

// enqueue asks for a save of s. Call without s.mu held.
func (sv *saver) enqueue(s *session) {
	s.mu.Lock()
	if s.saveQueued || s.saving || s.retryPending {
		s.saveDirty = true
		s.mu.Unlock()
		return
	}
	s.saveQueued = true
	s.mu.Unlock()
	sv.push(s)
}

func (sv *saver) push(s *session) {
	sv.mu.Lock()
	sv.queue = append(sv.queue, s)
	sv.mu.Unlock()
	select {
	case sv.wake <- struct{}{}:
	default:
	}
}

func (sv *saver) pop() *session {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if len(sv.queue) == 0 {
		return nil
	}
	s := sv.queue[0]
	sv.queue[0] = nil
	sv.queue = sv.queue[1:]
	if len(sv.queue) > 0 {
		select {
		case sv.wake <- struct{}{}:
		default:
		}
	}
	return s
}

// run starts TranscriptSaveWorkers workers and returns when ctx is done and
// they have stopped. With a BatchTranscriptStore each worker takes every
// session queued at that moment (up to saveBatchMax) into one SaveBatch
// call; otherwise one session per Save call.
func (sv *saver) run(ctx context.Context) {
	var wg sync.WaitGroup
	bs, batched := sv.store.(BatchTranscriptStore)
	workers := sv.cfg.TranscriptSaveWorkers
	if batched {
		workers = min(workers, saveBatchWorkers)
	}
	for range workers {
		wg.Go(func() {
			for {
				if batched {
					if ss := sv.popBatch(saveBatchMax); ss != nil {
						sv.saveBatch(ctx, bs, ss)
						continue
					}
				} else if s := sv.pop(); s != nil {
					sv.save(ctx, s)
					continue
				}
				select {
				case <-ctx.Done():
					return
				case <-sv.wake:
				}
			}
		})
	}
	wg.Wait()
	sv.mu.Lock()
	for t := range sv.timers {
		t.Stop()
	}
	sv.mu.Unlock()
}

// saveJob is one session's save attempt, prepared under s.mu.
type saveJob struct {
	s     *session
	to    uint64
	ended bool
	cause trace.SpanContext
	req   SaveRequest
	send  bool // false: nothing to store (every event left out, not ended)
	from  uint64
}

// prepare starts a save attempt of s: it reports false if there is nothing
// to save, otherwise it marks s saving and returns the job.
func (sv *saver) prepare(s *session) (saveJob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saveQueued = false
	s.saveDirty = false
	from, to := s.savedThrough+1, s.lastIndex()
	if !sv.role.IsPrimary() { // a backup never saves; the promotion re-queues pending saves
		return saveJob{}, false
	}
	if s.noFinalSave || s.removed || from > to || (sv.cfg.TranscriptAutoSave == AutoSaveAtEnd && !s.log.State.Ended) {
		return saveJob{}, false
	}
	s.saving = true
	ended := s.log.State.Ended
	cause := s.saveCause
	s.saveCause = trace.SpanContext{}
	events := make([]*chatpb.Event, 0, to-from+1)
	for _, e := range s.log.Entries()[from-1 : to] {
		if sv.notices.keeps(e.Ev) {
			events = append(events, sessionlog.Saved(e.Ev))
		}
	}
	j := saveJob{s: s, from: from, to: to, ended: ended, cause: cause, send: len(events) > 0 || ended}
	if j.send {
		j.req = SaveRequest{Service: sv.cfg.Cluster, Epoch: sv.role.Epoch(), Writer: sv.cfg.Name, ChatID: s.id, Events: events, Ended: ended}
		if a := s.adopted.Load(); a != nil { // a chat of an adopted pair: that pair's service and epoch (adopt.go)
			j.req.Service, j.req.Epoch = a.service, a.epoch
		}
	}
	return j, true
}

// save performs one save attempt for s (Save, one request) and decides
// what follows.
func (sv *saver) save(ctx context.Context, s *session) {
	j, ok := sv.prepare(s)
	if !ok {
		return
	}
	var err error
	sctx := ctx // settle's: the save span's, so that its log lines carry the save's trace
	if j.send {
		// The save belongs to the trace of the message that caused it.
		tctx := ctx
		if j.cause.IsValid() {
			tctx = trace.ContextWithRemoteSpanContext(ctx, j.cause)
		}
		tctx, span := sv.tracer.Start(tctx, "chatcore.saveTranscript", trace.WithAttributes(
			attribute.String("chat.id", s.id), attribute.Int64("transcript.from", int64(j.from)),
			attribute.Int64("transcript.to", int64(j.to)), attribute.Bool("transcript.ended", j.ended)))
		_, err = sv.cb.Execute(func() (SaveResult, error) {
			sctx, cancel := context.WithTimeout(tctx, sv.cfg.TranscriptSaveTimeout)
			defer cancel()
			return sv.store.Save(sctx, j.req)
		})
		if err != nil {
			span.RecordError(err)
			span.SetStatus(otelcodes.Error, "save failed")
		}
		span.End()
		sctx = trace.ContextWithSpanContext(ctx, span.SpanContext())
	}
	if sv.settle(sctx, j, err) {
		sv.core.stepDown("UCS rejected a transcript save with a stale epoch", 0)
	}
}

// settle handles the outcome err of job j's save attempt: progress, save
// notices, resends, transcript-save-on-error. It reports whether UCS
// fenced the save (stale epoch) at this core's own pair: the caller steps
// down (a chat of an adopted pair fenced there loses only the adoption).
func (sv *saver) settle(ctx context.Context, j saveJob, err error) (stale bool) {
	if !trace.SpanContextFromContext(ctx).IsValid() && j.cause.IsValid() {
		// A batched save: its lines belong to the trace of the message that caused it.
		ctx = trace.ContextWithRemoteSpanContext(ctx, j.cause)
	}
	s, to, ended := j.s, j.to, j.ended
	switch {
	case err == nil:
		sv.m.saves.WithLabelValues("ok").Inc()
		var recovered bool
		sv.done(ctx, s, func() {
			s.savedThrough = max(s.savedThrough, to)
			s.saveRetries = 0
			s.retryAt = time.Time{}
			recovered, s.saveBehind = s.saveBehind, false
			if ended {
				s.finalSaved = true
			}
		})
		if recovered {
			sv.m.savesRecovered.Inc()
		}
		sv.trouble.ok(ctx, sv.log)
		sv.core.replicateProgress(s, false)
		if sv.cfg.TranscriptAutoSave == AutoSaveWithNotices && !ended {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, "save", to, "")
		}
	case errors.Is(err, ErrStaleEpoch):
		sv.m.saves.WithLabelValues("stale_epoch").Inc()
		sv.done(ctx, s, nil)
		if a := s.adopted.Load(); a != nil {
			// Fenced at another pair's service: that pair's epoch moved on,
			// not ours, so no step down. The adoption's renewal finds it
			// lost and refuses the pair's chats (adopt.go).
			sv.log.WarnContext(ctx, "a save of an adopted pair's chat was fenced: the adoption is lost; this core stays its own pair's primary",
				"session", s.id, "service", a.service, "epoch", a.epoch)
			return false
		}
		return true
	case errors.Is(err, ErrNonRecoverable), errors.Is(err, ErrConflict), errors.Is(err, ErrInvalid):
		sv.m.saves.WithLabelValues("nonrecoverable").Inc()
		if sv.cfg.TranscriptAutoSave == AutoSaveWithNotices {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED, "ucs-save-fail", to, err.Error())
		}
		if sv.cfg.TranscriptSaveOnError == SaveOnErrorClose {
			sv.m.saveGiveUps.Inc()
			sv.log.WarnContext(ctx, "transcript save failed for good: UCS refused it (non-recoverable); closing the session, which is never saved again",
				"session", s.id, "through", to, "err", err, "transcript-save-on-error", sv.cfg.TranscriptSaveOnError)
			sv.done(ctx, s, func() { s.noFinalSave = true })
			sv.core.replicateProgress(s, true)
			if err := sv.core.endSession(ctx, s, "transcript-save-error"); err != nil {
				sv.log.WarnContext(ctx, "could not close session after non-recoverable save error", "session", s.id, "err", err)
			}
			return false
		}
		sv.log.WarnContext(ctx, "transcript save refused by UCS (non-recoverable): the session stays open and later saves retry",
			"session", s.id, "through", to, "err", err, "transcript-save-on-error", sv.cfg.TranscriptSaveOnError)
		at := sv.now().Add(sv.giveUpBackoff())
		sv.done(ctx, s, func() { s.saveBehind = true; s.retryAt = at })
		sv.core.retryDue(s, at)
	default:
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			sv.m.saves.WithLabelValues("breaker_open").Inc()
		} else {
			sv.m.saves.WithLabelValues("recoverable").Inc()
		}
		sv.trouble.failed(ctx, sv.log, s.id, err)
		var retry bool
		var giveUpAt time.Time
		sv.done(ctx, s, func() {
			s.saveRetries++
			retry = s.saveRetries <= sv.cfg.TranscriptResendAttempts
			if retry {
				s.retryPending = true
				return
			}
			s.saveRetries = 0
			s.saveBehind = true
			s.retryAt = sv.now().Add(sv.giveUpBackoff())
			giveUpAt = s.retryAt
		})
		if !giveUpAt.IsZero() {
			sv.core.retryDue(s, giveUpAt)
		}
		if retry {
			sv.m.saveResends.Inc()
			sv.after(sv.cfg.TranscriptResendDelay, s)
			return false
		}
		// Not a give-up: the janitor and the next trigger retry until UCS
		// takes it. The rate-limited WARN of sv.trouble tells the operator.
		sv.m.resendsExhausted.Inc()
		sv.log.DebugContext(ctx, "transcript save still failing after its resends: retrying in the background", "session", s.id,
			"through", to, "attempts", sv.cfg.TranscriptResendAttempts+1, "retry_in", sv.giveUpBackoff(), "err", err)
		if sv.cfg.TranscriptAutoSave == AutoSaveWithNotices {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED, "ucs-save-fail", to, err.Error())
		}
	}
	return false
}

// done ends a save attempt: it runs update under s.mu, clears saving and
// re-queues s if a trigger arrived meanwhile.
func (sv *saver) done(ctx context.Context, s *session, update func()) {
	s.mu.Lock()
	s.saving = false
	if update != nil {
		update()
	}
	again := s.saveDirty && !s.retryPending && !s.noFinalSave && s.retryAt.IsZero()
	if again {
		s.saveDirty = false
		s.saveQueued = true
	}
	s.mu.Unlock()
	if again {
		sv.push(s)
	}
}

// after re-queues s once delay has passed (a resend).
func (sv *saver) after(delay time.Duration, s *session) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		sv.mu.Lock()
		delete(sv.timers, t)
		sv.mu.Unlock()
		s.mu.Lock()
		s.retryPending = false
		s.saveQueued = true
		s.mu.Unlock()
		sv.push(s)
	})
	sv.timers[t] = struct{}{}
}

// giveUpBackoff is how long a given-up save waits before the janitor
// retries it (new events retry sooner).
func (sv *saver) giveUpBackoff() time.Duration {
	return max(10*sv.cfg.TranscriptResendDelay, time.Second)
}

// notice appends a transcript-auto-save=2 notice (TRANSCRIPT_SAVED or _FAILED).
func (sv *saver) notice(ctx context.Context, s *session, kind chatpb.EventKind, noticeType string, through uint64, detail string) {
	attrs := map[string]string{"noticeType": noticeType, "through": strconv.FormatUint(through, 10)}
	if detail != "" {
		attrs["error"] = detail
	}
	_, _, err := sv.core.append(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		if st.Ended {
			return nil, 0, errEnded
		}
		return &chatpb.Event{Kind: kind, From: systemParticipant, Attrs: attrs}, 0, nil
	})
	if err != nil && !errors.Is(err, errEnded) {
		sv.log.DebugContext(ctx, "transcript notice not appended", "session", s.id, "err", err)
	}
}

// pendingRetry re-queues s if a given-up save's backoff has passed. The
// janitor calls it. Call without s.mu held.
func (sv *saver) pendingRetry(s *session, now time.Time) {
	s.mu.Lock()
	due := !s.retryAt.IsZero() && !now.Before(s.retryAt) && !s.saveQueued && !s.saving && !s.retryPending && !s.noFinalSave
	if due {
		s.retryAt = time.Time{}
		s.saveQueued = true
	}
	s.mu.Unlock()
	if due {
		sv.push(s)
	}
}
