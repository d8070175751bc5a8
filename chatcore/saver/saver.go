// Package saver is the transcript saver of a chat core: it writes each
// session's committed events to UCS (the store) asynchronously, behind one
// circuit breaker, with resends, give-ups the core's janitor retries,
// batched saves when the store takes batches, and the
// transcript-save-on-error and transcript-auto-save=2 notice rules
// (docs/chatcore.md, "Transcript saves").
//
// It reaches the core only through Core (append a notice, end a session,
// report save progress to the backup, step down, schedule a retry) and a
// session only through Session (its lock, its events, its save
// bookkeeping State, which this package owns). The store is the seam
// chatcore owns, declared here as Store and BatchStore over package
// transcript's records and errors, so that the saver and its tests run
// without package chatcore.
//
// Locks: the saver's queue lock (Saver.mu) and its trouble counter are
// leaves; a session's lock is never held while taking them.
package saver

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/sessionlog"
	"github.com/hachat/hachat/chatcore/transcript"
	"github.com/hachat/hachat/pause"
)

// Store is the seam to UCS the saver writes through (chatcore's
// TranscriptStore satisfies it): Save is idempotent per chat and index and
// fenced by epoch; its errors are package transcript's (ErrStaleEpoch,
// ErrUnavailable, ErrNonRecoverable, ErrConflict, ErrInvalid).
type Store interface {
	Save(ctx context.Context, req transcript.SaveRequest) (transcript.SaveResult, error)
}

// BatchStore is a Store that also saves many chats in one call
// (ucsmock.Client is). SaveBatch applies each request with exactly the
// rules of Save and reports one result per request in order; its error is
// non-nil only when the batch as a whole failed.
type BatchStore interface {
	Store
	SaveBatch(ctx context.Context, reqs []transcript.SaveRequest) ([]transcript.SaveBatchResult, error)
}

// Session is a live session as the saver sees it. Methods ending in Locked
// and the fields of SaveState want the session's lock held.
type Session interface {
	Lock()
	Unlock()
	// ID is the session's id (immutable).
	ID() string
	// SaveState is the session's save bookkeeping (a stable pointer; its
	// fields are guarded by the session's lock).
	SaveState() *State
	// LastIndex is the index of the last committed event.
	LastIndex() uint64
	// EventLocked is the committed event at index i (1 <= i <= LastIndex).
	EventLocked(i uint64) *chatpb.Event
	// EndedLocked reports whether the session has ended.
	EndedLocked() bool
	// RemovedLocked reports whether the core dropped the session.
	RemovedLocked() bool
	// Adopted is the save target of a chat of another pair this core
	// adopted (ok false: this core's own service and epoch).
	Adopted() (service string, epoch uint64, ok bool)
}

// Core is what a save may do to the core. Nothing else of the core is in
// the saver's reach.
type Core interface {
	// AppendNotice appends a transcript notice (kind, attrs) to s's log;
	// nil when s has ended.
	AppendNotice(ctx context.Context, s Session, kind chatpb.EventKind, attrs map[string]string) error
	// EndSession ends s (transcript-save-on-error=close).
	EndSession(ctx context.Context, s Session, reason string) error
	// Progress reports s's save progress to the backup: at once when now
	// is set, else batched.
	Progress(s Session, now bool)
	// StepDown makes the core a backup (the store knows a newer epoch).
	StepDown(reason string, newer uint64)
	// RetryDue asks the janitor to look at s at at, when its given-up
	// save's backoff ends (PendingRetry).
	RetryDue(s Session, at time.Time)
}

// State is a session's save bookkeeping. The saver owns it; the session
// holds it and its lock guards it. The core reads SavedThrough,
// FinalSaved, NoFinalSave and RetryAt, sets them when it restores or
// replicates a session (SavedThrough, FinalSaved, NoFinalSave), and sets
// Cause when an event asks for a save.
type State struct {
	SavedThrough uint64    // highest index UCS acknowledged (or that needed no save)
	FinalSaved   bool      // the range with SESSION_ENDED was saved
	NoFinalSave  bool      // transcript-save-on-error=close fired: never save again
	RetryAt      time.Time // give-up backoff: the janitor re-queues after this (PendingRetry)
	// Cause is the trace of the latest event that asked for a save, so
	// that the save's span joins the trace of the message that caused it.
	Cause trace.SpanContext

	queued       bool // in the saver queue
	saving       bool // a saver works on it
	dirty        bool // a trigger arrived while queued, saving or waiting to resend
	retryPending bool // a resend timer is armed
	retries      int  // resends of the current failing save
	behind       bool // a save ran out of resends (or met a non-recoverable error) and has not succeeded since
}

// Settled reports whether no save of the session is queued or running.
func (st *State) Settled() bool { return !st.queued && !st.saving }

// Config is the saver's part of the core's configuration.
type Config struct {
	Service string // the pair's service at UCS (the core's cluster)
	Writer  string // the core's name
	// AtEndOnly: transcript-auto-save=0, save only the ended session.
	AtEndOnly bool
	// Notices: transcript-auto-save=2, append TRANSCRIPT_SAVED/_FAILED.
	Notices bool
	// Keep reports whether transcript-save-notices lets an event into the
	// saved transcript.
	Keep func(*chatpb.Event) bool
	// CloseOnError: transcript-save-on-error=close; OnError is the
	// setting's value, for the logs.
	CloseOnError bool
	OnError      string

	Workers         int           // transcript-save-workers
	Linger          time.Duration // transcript-save-linger (batched saves only)
	SaveTimeout     time.Duration // transcript-save-timeout
	ResendAttempts  int           // transcript-resend-attempts
	ResendDelay     time.Duration // transcript-resend-delay
	BreakerTimeout  time.Duration // transcript-breaker-timeout
	BreakerFailures int           // transcript-breaker-failures
}

// Metrics are the saver's metrics; the core registers them.
type Metrics struct {
	Saves            *prometheus.CounterVec // by result
	Resends          prometheus.Counter
	GiveUps          prometheus.Counter
	ResendsExhausted prometheus.Counter
	Recovered        prometheus.Counter
	BreakerState     prometheus.Gauge
}

// New returns a saver; Run starts its workers. reg registers its batch
// size metric; now is the clock of give-up backoffs.
func New(core Core, store Store, rs *role.State, cfg Config, m Metrics, reg prometheus.Registerer,
	log *slog.Logger, tracer trace.Tracer, now func() time.Time) *Saver {
	sv := &Saver{core: core, store: store, role: rs, cfg: cfg, m: m, log: log, tracer: tracer, now: now}
	sv.init(reg)
	return sv
}

// Breaker is the saver's circuit breaker over UCS, which the second copy
// in UCS shares.
func (sv *Saver) Breaker() *gobreaker.CircuitBreaker[transcript.SaveResult] { return sv.cb }

// Queued returns how many sessions wait in the queue.
func (sv *Saver) Queued() int {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return len(sv.queue)
}

// Saver writes transcripts to UCS asynchronously, per session, behind one
// circuit breaker. A session is in the queue at most once; a save covers
// every event since the last acknowledged one, so bursts coalesce. Saves are
// idempotent by index at the store, so resends and a new primary re-saving
// are harmless.
type Saver struct {
	// core is the only way back from a save into the core (Core).
	core   Core
	store  Store
	role   *role.State // the epoch a save carries; saves stop when the core is not primary
	cfg    Config
	m      Metrics
	log    *slog.Logger
	tracer trace.Tracer
	now    func() time.Time

	cb *gobreaker.CircuitBreaker[transcript.SaveResult]

	mu     sync.Mutex
	queue  []Session
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

// init finishes a saver whose dependencies are set: its queue, its batch
// size metric (registered with reg) and its circuit breaker.
func (sv *Saver) init(reg prometheus.Registerer) {
	sv.wake, sv.timers = make(chan struct{}, 1), make(map[*time.Timer]struct{})
	sv.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hachat_core_transcript_save_batch_size",
		Help:    "Sessions per batched transcript save call (with a store that saves in batches).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 9),
	})
	if err := reg.Register(sv.batchSize); err != nil {
		sv.log.Warn("transcript batch size metric not registered", "err", err)
	}
	sv.cb = gobreaker.NewCircuitBreaker[transcript.SaveResult](gobreaker.Settings{
		Name:        "ucs",
		MaxRequests: 1,
		Timeout:     sv.cfg.BreakerTimeout,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return n.ConsecutiveFailures >= uint32(sv.cfg.BreakerFailures)
		},
		// UCS answering "no" (non-recoverable, stale epoch) is UCS working.
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, transcript.ErrNonRecoverable) || errors.Is(err, transcript.ErrStaleEpoch) ||
				errors.Is(err, transcript.ErrConflict) || errors.Is(err, transcript.ErrInvalid)
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			sv.m.BreakerState.Set(float64(to))
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

// Enqueue asks for a save of s. Call without s's lock held.
func (sv *Saver) Enqueue(s Session) {
	st := s.SaveState()
	s.Lock()
	if st.queued || st.saving || st.retryPending {
		st.dirty = true
		s.Unlock()
		return
	}
	st.queued = true
	s.Unlock()
	sv.push(s)
}

func (sv *Saver) push(s Session) {
	sv.mu.Lock()
	sv.queue = append(sv.queue, s)
	sv.mu.Unlock()
	select {
	case sv.wake <- struct{}{}:
	default:
	}
}

func (sv *Saver) pop() Session {
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

// Run starts Config.Workers workers and returns when ctx is done and
// they have stopped. With a BatchStore each worker takes every
// session queued at that moment (up to saveBatchMax) into one SaveBatch
// call, and starts the next batch no sooner than Config.Linger after it
// (pace); otherwise one session per Save call.
func (sv *Saver) Run(ctx context.Context) {
	var wg sync.WaitGroup
	bs, batched := sv.store.(BatchStore)
	workers := sv.cfg.Workers
	if batched {
		workers = min(workers, saveBatchWorkers)
	}
	for range workers {
		wg.Go(func() {
			for {
				if batched {
					if ss := sv.popBatch(saveBatchMax); ss != nil {
						start := time.Now()
						sv.saveBatch(ctx, bs, ss)
						if !pace(ctx, start, sv.cfg.Linger) {
							return
						}
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

// pace waits until linger has passed since start, so that the sessions
// dirtied meanwhile join the next batch and a session's messages share a
// save: batches of a handful of sessions cost UCS several times more CPU
// per save than batches of a hundred (a commit's fixed cost: its fsyncs,
// meta and branch pages), and under load it bounds UCS's save rate to
// saveBatchMax sessions a linger, each save carrying every message of its
// session since the last. It reports false if ctx ended first.
func pace(ctx context.Context, start time.Time, linger time.Duration) bool {
	return pause.For(ctx, linger-time.Since(start))
}

// saveJob is one session's save attempt, prepared under s.mu.
type saveJob struct {
	s     Session
	to    uint64
	ended bool
	cause trace.SpanContext
	req   transcript.SaveRequest
	send  bool // false: nothing to store (every event left out, not ended)
	from  uint64
}

// prepare starts a save attempt of s: it reports false if there is nothing
// to save, otherwise it marks s saving and returns the job.
func (sv *Saver) prepare(s Session) (saveJob, bool) {
	st := s.SaveState()
	s.Lock()
	defer s.Unlock()
	st.queued = false
	st.dirty = false
	from, to := st.SavedThrough+1, s.LastIndex()
	if !sv.role.IsPrimary() { // a backup never saves; the promotion re-queues pending saves
		return saveJob{}, false
	}
	if st.NoFinalSave || s.RemovedLocked() || from > to || (sv.cfg.AtEndOnly && !s.EndedLocked()) {
		return saveJob{}, false
	}
	st.saving = true
	ended := s.EndedLocked()
	cause := st.Cause
	st.Cause = trace.SpanContext{}
	events := make([]*chatpb.Event, 0, to-from+1)
	for i := from; i <= to; i++ {
		if ev := s.EventLocked(i); sv.cfg.Keep(ev) {
			events = append(events, sessionlog.Saved(ev))
		}
	}
	j := saveJob{s: s, from: from, to: to, ended: ended, cause: cause, send: len(events) > 0 || ended}
	if j.send {
		j.req = transcript.SaveRequest{Service: sv.cfg.Service, Epoch: sv.role.Epoch(), Writer: sv.cfg.Writer, ChatID: s.ID(), Events: events, Ended: ended}
		if service, epoch, ok := s.Adopted(); ok { // a chat of an adopted pair: that pair's service and epoch
			j.req.Service, j.req.Epoch = service, epoch
		}
	}
	return j, true
}

// save performs one save attempt for s (Save, one request) and decides
// what follows.
func (sv *Saver) save(ctx context.Context, s Session) {
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
			attribute.String("chat.id", s.ID()), attribute.Int64("transcript.from", int64(j.from)),
			attribute.Int64("transcript.to", int64(j.to)), attribute.Bool("transcript.ended", j.ended)))
		_, err = sv.cb.Execute(func() (transcript.SaveResult, error) {
			sctx, cancel := context.WithTimeout(tctx, sv.cfg.SaveTimeout)
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
		sv.core.StepDown("UCS rejected a transcript save with a stale epoch", 0)
	}
}

// settle handles the outcome err of job j's save attempt: progress, save
// notices, resends, transcript-save-on-error. It reports whether UCS
// fenced the save (stale epoch) at this core's own pair: the caller steps
// down (a chat of an adopted pair fenced there loses only the adoption).
func (sv *Saver) settle(ctx context.Context, j saveJob, err error) (stale bool) {
	if !trace.SpanContextFromContext(ctx).IsValid() && j.cause.IsValid() {
		// A batched save: its lines belong to the trace of the message that caused it.
		ctx = trace.ContextWithRemoteSpanContext(ctx, j.cause)
	}
	s, to, ended := j.s, j.to, j.ended
	st := s.SaveState()
	switch {
	case err == nil:
		sv.m.Saves.WithLabelValues("ok").Inc()
		var recovered bool
		sv.done(ctx, s, func() {
			st.SavedThrough = max(st.SavedThrough, to)
			st.retries = 0
			st.RetryAt = time.Time{}
			recovered, st.behind = st.behind, false
			if ended {
				st.FinalSaved = true
			}
		})
		if recovered {
			sv.m.Recovered.Inc()
		}
		sv.trouble.ok(ctx, sv.log)
		sv.core.Progress(s, false)
		if sv.cfg.Notices && !ended {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, "save", to, "")
		}
	case errors.Is(err, transcript.ErrStaleEpoch):
		sv.m.Saves.WithLabelValues("stale_epoch").Inc()
		sv.done(ctx, s, nil)
		if service, epoch, ok := s.Adopted(); ok {
			// Fenced at another pair's service: that pair's epoch moved on,
			// not ours, so no step down. The adoption's renewal finds it
			// lost and refuses the pair's chats (adopt.go).
			sv.log.WarnContext(ctx, "a save of an adopted pair's chat was fenced: the adoption is lost; this core stays its own pair's primary",
				"session", s.ID(), "service", service, "epoch", epoch)
			return false
		}
		return true
	case errors.Is(err, transcript.ErrNonRecoverable), errors.Is(err, transcript.ErrConflict), errors.Is(err, transcript.ErrInvalid):
		sv.m.Saves.WithLabelValues("nonrecoverable").Inc()
		if sv.cfg.Notices {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED, "ucs-save-fail", to, err.Error())
		}
		if sv.cfg.CloseOnError {
			sv.m.GiveUps.Inc()
			sv.log.WarnContext(ctx, "transcript save failed for good: UCS refused it (non-recoverable); closing the session, which is never saved again",
				"session", s.ID(), "through", to, "err", err, "transcript-save-on-error", sv.cfg.OnError)
			sv.done(ctx, s, func() { st.NoFinalSave = true })
			sv.core.Progress(s, true)
			if err := sv.core.EndSession(ctx, s, "transcript-save-error"); err != nil {
				sv.log.WarnContext(ctx, "could not close session after non-recoverable save error", "session", s.ID(), "err", err)
			}
			return false
		}
		sv.log.WarnContext(ctx, "transcript save refused by UCS (non-recoverable): the session stays open and later saves retry",
			"session", s.ID(), "through", to, "err", err, "transcript-save-on-error", sv.cfg.OnError)
		at := sv.now().Add(sv.giveUpBackoff())
		sv.done(ctx, s, func() { st.behind = true; st.RetryAt = at })
		sv.core.RetryDue(s, at)
	default:
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			sv.m.Saves.WithLabelValues("breaker_open").Inc()
		} else {
			sv.m.Saves.WithLabelValues("recoverable").Inc()
		}
		sv.trouble.failed(ctx, sv.log, s.ID(), err)
		var retry bool
		var giveUpAt time.Time
		sv.done(ctx, s, func() {
			st.retries++
			retry = st.retries <= sv.cfg.ResendAttempts
			if retry {
				st.retryPending = true
				return
			}
			st.retries = 0
			st.behind = true
			st.RetryAt = sv.now().Add(sv.giveUpBackoff())
			giveUpAt = st.RetryAt
		})
		if !giveUpAt.IsZero() {
			sv.core.RetryDue(s, giveUpAt)
		}
		if retry {
			sv.m.Resends.Inc()
			sv.after(sv.cfg.ResendDelay, s)
			return false
		}
		// Not a give-up: the janitor and the next trigger retry until UCS
		// takes it. The rate-limited WARN of sv.trouble tells the operator.
		sv.m.ResendsExhausted.Inc()
		sv.log.DebugContext(ctx, "transcript save still failing after its resends: retrying in the background", "session", s.ID(),
			"through", to, "attempts", sv.cfg.ResendAttempts+1, "retry_in", sv.giveUpBackoff(), "err", err)
		if sv.cfg.Notices {
			sv.notice(ctx, s, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED, "ucs-save-fail", to, err.Error())
		}
	}
	return false
}

// done ends a save attempt: it runs update under s.mu, clears saving and
// re-queues s if a trigger arrived meanwhile.
func (sv *Saver) done(ctx context.Context, s Session, update func()) {
	st := s.SaveState()
	s.Lock()
	st.saving = false
	if update != nil {
		update()
	}
	again := st.dirty && !st.retryPending && !st.NoFinalSave && st.RetryAt.IsZero()
	if again {
		st.dirty = false
		st.queued = true
	}
	s.Unlock()
	if again {
		sv.push(s)
	}
}

// after re-queues s once delay has passed (a resend).
func (sv *Saver) after(delay time.Duration, s Session) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		sv.mu.Lock()
		delete(sv.timers, t)
		sv.mu.Unlock()
		st := s.SaveState()
		s.Lock()
		st.retryPending = false
		st.queued = true
		s.Unlock()
		sv.push(s)
	})
	sv.timers[t] = struct{}{}
}

// giveUpBackoff is how long a given-up save waits before the janitor
// retries it (new events retry sooner).
func (sv *Saver) giveUpBackoff() time.Duration {
	return max(10*sv.cfg.ResendDelay, time.Second)
}

// notice appends a transcript-auto-save=2 notice (TRANSCRIPT_SAVED or
// _FAILED) through the core, unless the session has ended.
func (sv *Saver) notice(ctx context.Context, s Session, kind chatpb.EventKind, noticeType string, through uint64, detail string) {
	attrs := map[string]string{"noticeType": noticeType, "through": strconv.FormatUint(through, 10)}
	if detail != "" {
		attrs["error"] = detail
	}
	if err := sv.core.AppendNotice(ctx, s, kind, attrs); err != nil {
		sv.log.DebugContext(ctx, "transcript notice not appended", "session", s.ID(), "err", err)
	}
}

// PendingRetry re-queues s if a given-up save's backoff has passed. The
// janitor calls it. Call without s.mu held.
func (sv *Saver) PendingRetry(s Session, now time.Time) {
	st := s.SaveState()
	s.Lock()
	due := !st.RetryAt.IsZero() && !now.Before(st.RetryAt) && !st.queued && !st.saving && !st.retryPending && !st.NoFinalSave
	if due {
		st.RetryAt = time.Time{}
		st.queued = true
	}
	s.Unlock()
	if due {
		sv.push(s)
	}
}

// saveBatchMax is the most sessions one batched save carries.
const saveBatchMax = 256

// saveBatchWorkers bounds the batched saves in flight (at most
// TranscriptSaveWorkers): each takes every session queued meanwhile, so
// under load the batches grow instead of the calls multiplying.
const saveBatchWorkers = 1

// recoverableSaveErr reports whether err is a save failure that says UCS is
// not working (what the breaker counts): not a refusal UCS answered.
func recoverableSaveErr(err error) bool {
	return err != nil && !errors.Is(err, transcript.ErrNonRecoverable) && !errors.Is(err, transcript.ErrStaleEpoch) &&
		!errors.Is(err, transcript.ErrConflict) && !errors.Is(err, transcript.ErrInvalid)
}

// popBatch takes up to max queued sessions, all that are queued now: it
// never waits for more.
func (sv *Saver) popBatch(max int) []Session {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	n := min(len(sv.queue), max)
	if n == 0 {
		return nil
	}
	out := make([]Session, n)
	copy(out, sv.queue[:n])
	clear(sv.queue[:n])
	sv.queue = sv.queue[n:]
	if len(sv.queue) > 0 {
		select {
		case sv.wake <- struct{}{}:
		default:
		}
	}
	return out
}

// saveBatch performs one save attempt for each of sessions in one
// SaveBatch call and settles each session's own result as save does.
//
// The breaker sees the batch as one call: it fails when the batch failed as
// a whole (network error, timeout, outage) or when every save in it failed
// recoverably; a batch in which UCS answered (saved, or refused a chat for
// good: non-recoverable, conflict, invalid, stale epoch) is a success. While
// the breaker is open every session of the batch gets its ErrOpenState.
func (sv *Saver) saveBatch(ctx context.Context, bs BatchStore, sessions []Session) {
	jobs := make([]saveJob, 0, len(sessions))
	var stale bool
	for _, s := range sessions {
		j, ok := sv.prepare(s)
		switch {
		case !ok:
		case !j.send:
			stale = sv.settle(ctx, j, nil) || stale
		default:
			jobs = append(jobs, j)
		}
	}
	if len(jobs) > 0 {
		errs := sv.sendBatch(ctx, bs, jobs)
		stale = sv.settleAll(ctx, jobs, errs) || stale
	}
	if stale {
		sv.core.StepDown("UCS rejected a transcript save with a stale epoch", 0)
	}
}

// settleAll settles each job with its error. With mode-2 notices, each
// settle appends a notice (a replicated append), so they run on up to
// TranscriptSaveWorkers goroutines, as the unbatched workers did.
func (sv *Saver) settleAll(ctx context.Context, jobs []saveJob, errs []error) (stale bool) {
	if !sv.cfg.Notices || len(jobs) == 1 {
		for i, j := range jobs {
			stale = sv.settle(ctx, j, errs[i]) || stale
		}
		return stale
	}
	var (
		wg       sync.WaitGroup
		anyStale atomic.Bool
		next     atomic.Int64
	)
	for range min(sv.cfg.Workers, len(jobs)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(jobs); i = int(next.Add(1) - 1) {
				if sv.settle(ctx, jobs[i], errs[i]) {
					anyStale.Store(true)
				}
			}
		})
	}
	wg.Wait()
	return anyStale.Load()
}

// sendBatch sends the jobs' saves in one SaveBatch call through the
// breaker and returns each job's error.
func (sv *Saver) sendBatch(ctx context.Context, bs BatchStore, jobs []saveJob) []error {
	reqs := make([]transcript.SaveRequest, len(jobs))
	for i, j := range jobs {
		reqs[i] = j.req
	}
	// A lone save belongs to the trace of the message that caused it; a
	// batch has its own trace, linked to every cause.
	tctx := ctx
	var links []trace.Link
	if len(jobs) == 1 && jobs[0].cause.IsValid() {
		tctx = trace.ContextWithRemoteSpanContext(ctx, jobs[0].cause)
	} else {
		for _, j := range jobs {
			if j.cause.IsValid() {
				links = append(links, trace.Link{SpanContext: j.cause})
			}
		}
	}
	attrs := []attribute.KeyValue{attribute.Int("transcript.batch", len(jobs))}
	if len(jobs) == 1 {
		attrs = append(attrs, attribute.String("chat.id", jobs[0].s.ID()), attribute.Int64("transcript.from", int64(jobs[0].from)),
			attribute.Int64("transcript.to", int64(jobs[0].to)), attribute.Bool("transcript.ended", jobs[0].ended))
	}
	tctx, span := sv.tracer.Start(tctx, "chatcore.saveTranscripts", trace.WithLinks(links...), trace.WithAttributes(attrs...))
	defer span.End()

	var results []transcript.SaveBatchResult
	_, err := sv.cb.Execute(func() (transcript.SaveResult, error) {
		sctx, cancel := context.WithTimeout(tctx, sv.cfg.SaveTimeout)
		defer cancel()
		r, err := bs.SaveBatch(sctx, reqs)
		if err != nil {
			return transcript.SaveResult{}, err
		}
		if len(r) != len(reqs) {
			return transcript.SaveResult{}, errors.Join(transcript.ErrUnavailable, errors.New("save batch: result count differs from request count"))
		}
		results = r
		for _, x := range r {
			if !recoverableSaveErr(x.Err) {
				return transcript.SaveResult{}, nil // UCS answered
			}
		}
		return transcript.SaveResult{}, r[0].Err // every save failed recoverably: one failure
	})
	sv.batchSize.Observe(float64(len(jobs)))
	errs := make([]error, len(jobs))
	failed := 0
	for i := range jobs {
		errs[i] = err
		if results != nil {
			errs[i] = results[i].Err
		}
		if errs[i] != nil {
			failed++
		}
	}
	if failed > 0 {
		span.SetAttributes(attribute.Int("transcript.failed", failed))
		if err != nil {
			span.RecordError(err)
		}
		span.SetStatus(otelcodes.Error, "save failed")
	}
	return errs
}
