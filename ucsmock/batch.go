package ucsmock

import (
	"errors"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// batchBodyFactor bounds a batch body: at most this many times max-body.
// Each save of the batch is still bounded by max-body on its own.
const batchBodyFactor = 8

// batchSave is one save of a batch that passed validation.
type batchSave struct {
	i      int
	req    SaveRequest
	events []*chatpb.Event
}

// handleSaveBatch is POST /ucs/v1/transcripts:batch: many saves, each with
// the rules of a single save, answered one result per save. Faults: an
// outage answers 503 for the whole batch; the latency is waited once per
// batch; the non-recoverable error and the recoverable error rate apply to
// each save on its own.
func (s *Server) handleSaveBatch(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	span := trace.SpanFromContext(ctx)
	if s.faults.outage() {
		s.writeFault(w, "save", faultOutage)
		return
	}
	saves, results, err := s.decodeBatch(w, r)
	if err != nil {
		s.metrics.saves.WithLabelValues("invalid").Inc()
		s.writeErr(w, err)
		return
	}
	span.SetAttributes(attribute.Int("ucs.batch.saves", len(results)), attribute.Int("ucs.batch.valid", len(saves)))

	cur, delayed, err := s.faults.delay(ctx)
	if delayed {
		s.metrics.faults.WithLabelValues("latency").Inc()
		s.stats.faultsInjected.Add(1)
	}
	switch {
	case err != nil: // the client went away during the injected latency
		writeError(w, http.StatusServiceUnavailable, errorBody{Error: err.Error(), Code: codeUnavailable, Recoverable: true})
		return
	case cur.Outage: // began during the decode
		s.writeFault(w, "save", faultOutage)
		return
	}
	kept := saves[:0]
	for _, bs := range saves {
		f := s.faults.item(cur)
		if f == faultNone {
			kept = append(kept, bs)
			continue
		}
		s.stats.faultsInjected.Add(1)
		s.metrics.faults.WithLabelValues(f.String()).Inc()
		s.metrics.saves.WithLabelValues("fault").Inc()
		status, eb := faultAnswer(f)
		results[bs.i] = batchResult{ChatID: bs.req.ChatID, Status: status, Error: &eb}
	}
	saves = kept

	start := time.Now()
	outcomes := make([]SaveResult, len(saves))
	errs := make([]error, len(saves))
	epochs := map[string]Epoch{}
	if len(saves) > 0 {
		cctx, cspan := s.tracer.Start(ctx, "ucs.commit")
		err = s.store.update(cctx, func(tx txn) error {
			now := time.Now().UnixMilli()
			for i, bs := range saves {
				outcomes[i], errs[i] = applySave(tx, bs.req, bs.events, now)
				if isStorageErr(errs[i]) {
					return errs[i]
				}
			}
			for _, bs := range saves {
				if _, ok := epochs[bs.req.Service]; ok {
					continue
				}
				e, err := tx.serviceEpoch(bs.req.Service)
				if err != nil {
					return err
				}
				epochs[bs.req.Service] = e
			}
			return nil
		})
		cspan.End()
		if err != nil { // nothing of the batch was committed
			for i := range saves {
				outcomes[i], errs[i] = SaveResult{}, err
			}
		}
	}
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	var ok, saved int // counted once for the batch: a labelled counter costs a lookup per call
	for i, bs := range saves {
		res, err := outcomes[i], errs[i]
		s.stats.countSave(res, err)
		req := bs.req
		switch {
		case err == nil:
			ok++
			saved += res.Saved
			if debug { // the arguments alone cost allocations per save
				s.log.DebugContext(r.Context(), "transcript saved", "chat", req.ChatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer,
					"saved", res.Saved, "unchanged", res.Unchanged, "highestIndex", res.HighestIndex, "ended", req.Ended, "batch", len(results))
			}
			results[bs.i] = batchResult{ChatID: req.ChatID, Status: http.StatusOK, Saved: res.Saved, Unchanged: res.Unchanged, HighestIndex: res.HighestIndex}
			continue
		case errors.Is(err, ErrStaleEpoch):
			s.metrics.saves.WithLabelValues("stale").Inc()
			s.log.WarnContext(r.Context(), "save fenced: stale epoch", "chat", req.ChatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer, "err", err)
		case errors.Is(err, ErrConflict):
			s.metrics.saves.WithLabelValues("conflict").Inc()
			s.log.WarnContext(r.Context(), "save rejected: conflict", "chat", req.ChatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer, "err", err)
		case errors.Is(err, ErrDeleted):
			s.metrics.saves.WithLabelValues("deleted").Inc()
			s.log.WarnContext(r.Context(), "save refused: chat deleted (GDPR tombstone)", "chat", req.ChatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer)
		default:
			s.metrics.saves.WithLabelValues("error").Inc()
		}
		status, eb := s.errorAnswer(err)
		results[bs.i] = batchResult{ChatID: req.ChatID, Status: status, Error: &eb}
	}
	if ok > 0 {
		s.metrics.saves.WithLabelValues("ok").Add(float64(ok))
		s.metrics.savedEvents.Add(float64(saved))
	}
	if len(saves) > 0 {
		s.metrics.saveSeconds.Observe(time.Since(start).Seconds())
	}
	for svc, e := range epochs {
		s.metrics.epoch.WithLabelValues(svc).Set(float64(e.Epoch))
	}
	body, err := encodeBatchAnswer(batchAnswer{Results: results})
	if err != nil { // unreachable: every field encodes
		writeJSON(w, http.StatusOK, batchAnswer{Results: results})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// decodeBatch reads a batch body, JSON or binary (ContentTypeBatchProto).
// A body that is not a batch (malformed, too large, empty, too many saves)
// is an error for the whole request; otherwise every save is validated on
// its own: the valid ones are returned, the invalid ones already have their
// result. It changes nothing.
func (s *Server) decodeBatch(w http.ResponseWriter, r *http.Request) ([]batchSave, []batchResult, error) {
	if isBatchProto(r) {
		items, err := readBatchProto(w, r, batchBodyFactor*s.cfg.MaxBody)
		if err != nil {
			return nil, nil, err
		}
		return s.parseProtoBatch(items)
	}
	var body batchBody
	if err := decodeJSON(w, r, batchBodyFactor*s.cfg.MaxBody, &body); err != nil {
		return nil, nil, err
	}
	return s.parseBatch(body)
}

// parseProtoBatch is parseBatch for the saves of a binary body.
func (s *Server) parseProtoBatch(items []protoItem) ([]batchSave, []batchResult, error) {
	if len(items) == 0 {
		return nil, nil, invalidf("a batch needs at least one save")
	}
	results := make([]batchResult, len(items))
	saves := make([]batchSave, 0, len(items))
	for i, it := range items {
		req, events, err := s.protoItemSave(it)
		if err != nil {
			s.metrics.saves.WithLabelValues("invalid").Inc()
			status, eb := s.errorAnswer(err)
			results[i] = batchResult{ChatID: it.chatID, Status: status, Error: &eb}
			continue
		}
		saves = append(saves, batchSave{i: i, req: req, events: events})
	}
	return saves, results, nil
}

// protoItemSave is batchItemSave for a save of a binary body.
func (s *Server) protoItemSave(it protoItem) (SaveRequest, []*chatpb.Event, error) {
	meta := SaveRequest{ChatID: it.chatID, Service: it.service, Epoch: it.epoch, Writer: it.writer, Ended: it.ended}
	return itemSave(s, meta, it.events, unmarshalProtoEvents)
}

// parseBatch validates the saves of a decoded batch body; see decodeBatch.
func (s *Server) parseBatch(body batchBody) ([]batchSave, []batchResult, error) {
	switch n := len(body.Saves); {
	case n == 0:
		return nil, nil, invalidf("a batch needs at least one save")
	case n > MaxBatchSaves:
		return nil, nil, invalidf("%d saves in one batch, at most %d", n, MaxBatchSaves)
	}
	results := make([]batchResult, len(body.Saves))
	saves := make([]batchSave, 0, len(body.Saves))
	for i, it := range body.Saves {
		req, events, err := s.batchItemSave(it)
		if err != nil {
			s.metrics.saves.WithLabelValues("invalid").Inc()
			status, eb := s.errorAnswer(err)
			results[i] = batchResult{ChatID: it.ChatID, Status: status, Error: &eb}
			continue
		}
		saves = append(saves, batchSave{i: i, req: req, events: events})
	}
	return saves, results, nil
}

// batchItemSave validates one save of a JSON batch; see itemSave.
func (s *Server) batchItemSave(it batchItem) (SaveRequest, []*chatpb.Event, error) {
	meta := SaveRequest{ChatID: it.ChatID, Service: it.Service, Epoch: it.Epoch, Writer: it.Writer, Ended: it.Ended}
	return itemSave(s, meta, it.Events, unmarshalEvents)
}

// itemSave validates one save of a batch, in either body form, with the
// rules of a single save: max-body bounds its raw events, decode turns them
// into events, and validateSave checks the rest. meta is the save without
// its events.
func itemSave[R ~[]byte](s *Server, meta SaveRequest, raw []R, decode func([]R) ([]*chatpb.Event, error)) (SaveRequest, []*chatpb.Event, error) {
	var size int64
	for _, r := range raw {
		size += int64(len(r)) + 1
	}
	if size > s.cfg.MaxBody {
		return SaveRequest{}, nil, &tooLargeError{limit: s.cfg.MaxBody}
	}
	evs, err := decode(raw)
	if err != nil {
		return SaveRequest{}, nil, err
	}
	meta.Events = evs
	events, err := validateSave(meta)
	if err != nil {
		return SaveRequest{}, nil, err
	}
	return meta, events, nil
}
