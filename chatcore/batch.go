package chatcore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// saveBatchMax is the most sessions one batched save carries.
const saveBatchMax = 256

// saveBatchWorkers bounds the batched saves in flight (at most
// TranscriptSaveWorkers): each takes every session queued meanwhile, so
// under load the batches grow instead of the calls multiplying.
const saveBatchWorkers = 1

// recoverableSaveErr reports whether err is a save failure that says UCS is
// not working (what the breaker counts): not a refusal UCS answered.
func recoverableSaveErr(err error) bool {
	return err != nil && !errors.Is(err, ErrNonRecoverable) && !errors.Is(err, ErrStaleEpoch) &&
		!errors.Is(err, ErrConflict) && !errors.Is(err, ErrInvalid)
}

// popBatch takes up to max queued sessions, all that are queued now: it
// never waits for more.
func (sv *saver) popBatch(max int) []*session {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	n := min(len(sv.queue), max)
	if n == 0 {
		return nil
	}
	out := make([]*session, n)
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
func (sv *saver) saveBatch(ctx context.Context, bs BatchTranscriptStore, sessions []*session) {
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
		sv.core.stepDown("UCS rejected a transcript save with a stale epoch", 0)
	}
}

// settleAll settles each job with its error. With mode-2 notices, each
// settle appends a notice (a replicated append), so they run on up to
// TranscriptSaveWorkers goroutines, as the unbatched workers did.
func (sv *saver) settleAll(ctx context.Context, jobs []saveJob, errs []error) (stale bool) {
	if sv.cfg.TranscriptAutoSave != AutoSaveWithNotices || len(jobs) == 1 {
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
	for range min(sv.cfg.TranscriptSaveWorkers, len(jobs)) {
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
func (sv *saver) sendBatch(ctx context.Context, bs BatchTranscriptStore, jobs []saveJob) []error {
	reqs := make([]SaveRequest, len(jobs))
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
		attrs = append(attrs, attribute.String("chat.id", jobs[0].s.id), attribute.Int64("transcript.from", int64(jobs[0].from)),
			attribute.Int64("transcript.to", int64(jobs[0].to)), attribute.Bool("transcript.ended", jobs[0].ended))
	}
	tctx, span := sv.tracer.Start(tctx, "chatcore.saveTranscripts", trace.WithLinks(links...), trace.WithAttributes(attrs...))
	defer span.End()

	var results []SaveBatchResult
	_, err := sv.cb.Execute(func() (SaveResult, error) {
		sctx, cancel := context.WithTimeout(tctx, sv.cfg.TranscriptSaveTimeout)
		defer cancel()
		r, err := bs.SaveBatch(sctx, reqs)
		if err != nil {
			return SaveResult{}, err
		}
		if len(r) != len(reqs) {
			return SaveResult{}, errors.Join(ErrUnavailable, errors.New("save batch: result count differs from request count"))
		}
		results = r
		for _, x := range r {
			if !recoverableSaveErr(x.Err) {
				return SaveResult{}, nil // UCS answered
			}
		}
		return SaveResult{}, r[0].Err // every save failed recoverably: one failure
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
