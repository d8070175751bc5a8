package ucsmock

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// Server is a ucsmock server: the durable store, the fault injector and the
// HTTP API over them.
type Server struct {
	cfg     Config
	log     *slog.Logger
	tracer  trace.Tracer
	store   backend
	faults  *injector
	stats   counters
	metrics *metrics
	handler http.Handler
	addr    atomic.Pointer[string]
	// tlsConfig, set by UseTLS, makes Run serve mTLS.
	tlsConfig *tls.Config
}

// metrics are the server's Prometheus metrics.
type metrics struct {
	saves       *prometheus.CounterVec
	savedEvents prometheus.Counter
	saveSeconds prometheus.Histogram
	claims      *prometheus.CounterVec
	faults      *prometheus.CounterVec
	epoch       *prometheus.GaugeVec
	batch       prometheus.Histogram
	store       *prometheus.GaugeVec
	storeErrors *prometheus.CounterVec
	gdpr        *prometheus.CounterVec
	gdprChats   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		saves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_saves_total", Help: "Transcript saves by result (ok, stale, conflict, deleted, invalid, fault, error, unauthorized).",
		}, []string{"result"}),
		savedEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ucs_saved_events_total", Help: "Events written by successful saves (new or replaced).",
		}),
		saveSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ucs_save_duration_seconds", Help: "Time to validate, commit and fsync a save (injected latency excluded).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_epoch_claims_total", Help: "Epoch claims by result (ok, conflict, invalid, fault, error, unauthorized).",
		}, []string{"result"}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_faults_injected_total", Help: "Requests hit by an injected fault, by kind (latency, recoverable, non-recoverable, outage).",
		}, []string{"kind"}),
		epoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ucs_epoch", Help: "Newest epoch seen per service.",
		}, []string{"service"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ucs_commit_batch_size", Help: "Writes committed together in one transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9),
		}),
		store: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ucs_store_info", Help: "The store this ucs instance runs on (bbolt or postgres): 1.",
		}, []string{"store"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_store_errors_total", Help: "Failures of this instance's store (database unreachable, commit failed), by operation.",
		}, []string{"op"}),
		gdpr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_gdpr_requests_total", Help: "GDPR exports and deletes by op (export, delete), scope (chat, customer) and result (ok, not_found, deleted, invalid, unauthorized, error).",
		}, []string{"op", "scope", "result"}),
		gdprChats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ucs_gdpr_chats_total", Help: "Chats exported or deleted (tombstoned) by GDPR requests, by op (export, delete).",
		}, []string{"op"}),
	}
	for _, c := range []prometheus.Collector{m.saves, m.savedEvents, m.saveSeconds, m.claims, m.faults, m.epoch, m.batch, m.store, m.storeErrors, m.gdpr, m.gdprChats} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metric: %w", err)
		}
	}
	return m, nil
}

// New opens (or creates) the database at cfg.DBPath and builds the server.
// Close it, or let Run close it.
func New(cfg Config, tel *telemetry.Telemetry) (*Server, error) {
	if cfg.MaxBody <= 0 {
		return nil, fmt.Errorf("max-body must be positive, got %d", cfg.MaxBody)
	}
	if err := cfg.validateStore(); err != nil {
		return nil, err
	}
	m, err := newMetrics(tel.Registry)
	if err != nil {
		return nil, err
	}
	store, err := openStore(cfg, m)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		log:     tel.Logger,
		tracer:  tel.Tracer.Tracer("github.com/hachat/hachat/ucsmock"),
		store:   store,
		faults:  newInjector(cfg.Seed),
		metrics: m,
	}
	// Export the persisted epochs so that the gauge is right after a restart.
	epochs, err := store.epochs(context.Background())
	if err != nil {
		store.close()
		return nil, fmt.Errorf("read epochs: %w", err)
	}
	for svc, e := range epochs {
		m.epoch.WithLabelValues(svc).Set(float64(e.Epoch))
	}
	m.store.WithLabelValues(store.kind()).Set(1)

	mux := http.NewServeMux()
	mux.HandleFunc("POST /ucs/v1/transcripts/{chatId}", s.writer(s.metrics.saves, s.handleSave))
	mux.HandleFunc("POST /ucs/v1/transcripts:batch", s.writer(s.metrics.saves, s.handleSaveBatch))
	mux.HandleFunc("POST /ucs/v1/transcripts/{$}", s.handleMissingChatID)
	mux.HandleFunc("GET /ucs/v1/transcripts/{chatId}", s.reader(s.handleTranscript))
	mux.HandleFunc("GET /ucs/v1/transcripts/{$}", s.reader(s.handleMissingChatID))
	mux.HandleFunc("POST /ucs/v1/epochs/{service}/claim", s.writer(s.metrics.claims, s.handleClaim))
	mux.HandleFunc("POST /ucs/v1/epochs/{service}/renew", s.writer(s.metrics.claims, s.handleRenew))
	mux.HandleFunc("GET /ucs/v1/epochs/{service}", s.reader(s.handleEpoch))
	mux.HandleFunc("GET /ucs/v1/chats", s.reader(s.handleChats))
	mux.HandleFunc("PUT /ucs/v1/admin/faults", s.admin(s.handleSetFaults))
	mux.HandleFunc("GET /ucs/v1/admin/faults", s.admin(s.handleGetFaults))
	mux.HandleFunc("DELETE /ucs/v1/admin/faults", s.admin(s.handleClearFaults))
	mux.HandleFunc("GET /ucs/v1/admin/stats", s.admin(s.handleStats))
	mux.HandleFunc("GET /ucs/v1/admin/gdpr/chats/{chatId}", s.gdprAdmin("export", scopeChat, s.handleExportChat))
	mux.HandleFunc("DELETE /ucs/v1/admin/gdpr/chats/{chatId}", s.gdprAdmin("delete", scopeChat, s.handleDeleteChat))
	mux.HandleFunc("POST /ucs/v1/admin/gdpr/customers:export", s.gdprAdmin("export", scopeCustomer, s.handleExportCustomer))
	mux.HandleFunc("POST /ucs/v1/admin/gdpr/customers:delete", s.gdprAdmin("delete", scopeCustomer, s.handleDeleteCustomer))
	mux.Handle("GET /metrics", tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", s.handleHealth)
	s.handler = traced(mux, tel)
	tel.Logger.Info("ucsmock store open", "store", store.kind(), "db", cfg.storeWhere(), "admin", cfg.AdminToken != "", "writer_token", cfg.WriterToken != "",
		"reader_token", cfg.ReaderToken != "", "maxBody", cfg.MaxBody)
	if cfg.WriterToken == "" {
		tel.Logger.Warn("no writer token: anyone who reaches ucsmock can save transcripts and claim epochs (set --writer-token)")
	}
	if cfg.WriterToken == "" && cfg.ReaderToken == "" {
		tel.Logger.Warn("no reader or writer token: anyone who reaches ucsmock can read every transcript (set --reader-token)")
	}
	return s, nil
}

// Handler returns the HTTP API (with /metrics and /healthz), traced.
func (s *Server) Handler() http.Handler { return s.handler }

// Addr returns the address Run listens on, or "" before it listens.
func (s *Server) Addr() string {
	if p := s.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// Close closes the database after the write in progress. Requests after
// Close fail with 503. Close is idempotent.
func (s *Server) Close() error { return s.store.close() }

// Run serves the API on cfg.HTTPAddr until ctx is done, then shuts the HTTP
// server down (waiting up to 5 s for requests in flight) and closes the
// database.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		s.Close()
		return fmt.Errorf("listen %s: %w", s.cfg.HTTPAddr, err)
	}
	if tc := s.serverTLS(); tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	addr := ln.Addr().String()
	s.addr.Store(&addr)
	hs := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("ucsmock listening", "addr", addr)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		s.log.Warn("ucsmock shutdown", "err", err)
	}
	if serveErr == nil {
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	}
	closeErr := s.Close()
	s.log.Info("ucsmock stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return closeErr
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// handleHealth answers 200 while the database is open.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.healthy(ctx); err != nil {
		status := "closed"
		if !errors.Is(err, errClosed) {
			status = "store unreachable"
			s.metrics.storeErrors.WithLabelValues("health").Inc()
			s.log.Warn("store unhealthy", "store", s.store.kind(), "err", err)
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": status, "store": s.store.kind()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "store": s.store.kind(), "outage": s.faults.outage()})
}

func (s *Server) handleMissingChatID(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusBadRequest, errorBody{Error: "missing chatId", Code: codeInvalid})
}

// handleSave is POST /ucs/v1/transcripts/{chatId}.
func (s *Server) handleSave(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	span := trace.SpanFromContext(ctx)
	chatID := r.PathValue("chatId")
	span.SetAttributes(attribute.String("chat.id", chatID))
	if s.faults.outage() {
		s.writeFault(w, "save", faultOutage)
		return
	}
	req, events, err := s.decodeSave(w, r, chatID)
	if err != nil {
		s.metrics.saves.WithLabelValues("invalid").Inc()
		s.writeErr(w, err)
		return
	}
	span.SetAttributes(attribute.String("ucs.service", req.Service), attribute.Int64("ucs.epoch", int64(req.Epoch)),
		attribute.String("ucs.writer", req.Writer), attribute.Int("ucs.events", len(events)))
	if s.injectWrite(w, r, "save") {
		return
	}

	start := time.Now()
	var res SaveResult
	var cur Epoch
	cctx, cspan := s.tracer.Start(ctx, "ucs.commit")
	err = s.store.update(cctx, func(tx txn) error {
		var err error
		res, err = applySave(tx, req, events, time.Now().UnixMilli())
		if err != nil {
			return err
		}
		cur, err = tx.serviceEpoch(req.Service)
		return err
	})
	cspan.End()
	s.stats.countSave(res, err)
	switch {
	case err == nil:
		s.metrics.saves.WithLabelValues("ok").Inc()
		s.metrics.savedEvents.Add(float64(res.Saved))
		s.metrics.saveSeconds.Observe(time.Since(start).Seconds())
		s.metrics.epoch.WithLabelValues(req.Service).Set(float64(cur.Epoch))
		s.log.DebugContext(r.Context(), "transcript saved", "chat", chatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer,
			"saved", res.Saved, "unchanged", res.Unchanged, "highestIndex", res.HighestIndex, "ended", req.Ended)
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, ErrStaleEpoch):
		s.metrics.saves.WithLabelValues("stale").Inc()
		s.log.WarnContext(r.Context(), "save fenced: stale epoch", "chat", chatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer, "err", err)
		s.writeErr(w, err)
	case errors.Is(err, ErrConflict):
		s.metrics.saves.WithLabelValues("conflict").Inc()
		s.log.WarnContext(r.Context(), "save rejected: conflict", "chat", chatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer, "err", err)
		s.writeErr(w, err)
	case errors.Is(err, ErrDeleted):
		s.metrics.saves.WithLabelValues("deleted").Inc()
		s.log.WarnContext(r.Context(), "save refused: chat deleted (GDPR tombstone)", "chat", chatID, "service", req.Service, "epoch", req.Epoch, "writer", req.Writer)
		s.writeErr(w, err)
	default:
		s.metrics.saves.WithLabelValues("error").Inc()
		s.writeErr(w, err)
	}
}

// decodeSave reads and validates a save body; it changes nothing.
func (s *Server) decodeSave(w http.ResponseWriter, r *http.Request, chatID string) (SaveRequest, []*chatpb.Event, error) {
	var body saveBody
	if err := decodeJSON(w, r, s.cfg.MaxBody, &body); err != nil {
		return SaveRequest{}, nil, err
	}
	evs, err := unmarshalEvents(body.Events)
	if err != nil {
		return SaveRequest{}, nil, err
	}
	req := SaveRequest{ChatID: chatID, Service: body.Service, Epoch: body.Epoch, Writer: body.Writer, Events: evs, Ended: body.Ended}
	events, err := validateSave(req)
	if err != nil {
		return SaveRequest{}, nil, err
	}
	return req, events, nil
}

// tooLargeError is a body over the configured limit.
type tooLargeError struct{ limit int64 }

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("ucsmock: invalid request: body larger than %d bytes", e.limit)
}

func (e *tooLargeError) Is(target error) bool { return target == ErrInvalid }

// decodeJSON decodes exactly one JSON value of at most limit bytes into v,
// rejecting unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
			if mbe := new(http.MaxBytesError); errors.As(terr, &mbe) {
				err = terr
			}
		}
	}
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &mbe):
		return &tooLargeError{limit: limit}
	case errors.Is(err, io.EOF):
		return invalidf("empty body")
	default:
		return invalidf("malformed JSON: %v", err)
	}
}

// handleTranscript is GET /ucs/v1/transcripts/{chatId}[?format=xml].
func (s *Server) handleTranscript(w http.ResponseWriter, r *http.Request) {
	chatID := r.PathValue("chatId")
	trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("chat.id", chatID))
	if s.faults.outage() {
		s.writeFault(w, "read", faultOutage)
		return
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "json" && format != "xml" {
		writeError(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("unknown format %q: want json or xml", format), Code: codeInvalid})
		return
	}
	t, err := s.store.transcript(r.Context(), chatID)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	if t == nil {
		writeError(w, http.StatusNotFound, errorBody{Error: "unknown chat " + chatID, Code: codeNotFound})
		return
	}
	if format == "xml" {
		b, err := transcriptXML(t)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		w.Write(b)
		return
	}
	raw, err := marshalEvents(t.Events)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, transcriptBody{ChatID: t.ChatID, Service: t.Service, Ended: t.Ended, Writer: t.Writer, Epoch: t.Epoch, Events: raw})
}

// handleClaim is POST /ucs/v1/epochs/{service}/claim.
func (s *Server) handleClaim(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	service := r.PathValue("service")
	if s.faults.outage() {
		s.writeFault(w, "claim", faultOutage)
		return
	}
	var body claimBody
	err := decodeJSON(w, r, 64<<10, &body)
	if err == nil {
		err = validateClaim(service, body.Expect, body.Epoch, body.Holder)
	}
	if err == nil && (body.IfSilentMs < 0 || body.IfSilentMs > 3_600_000) {
		err = invalidf("ifSilentMs %d: want 0..3600000", body.IfSilentMs)
	}
	if err != nil {
		s.metrics.claims.WithLabelValues("invalid").Inc()
		s.writeErr(w, err)
		return
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("ucs.service", service), attribute.Int64("ucs.expect", int64(body.Expect)),
		attribute.Int64("ucs.epoch", int64(body.Epoch)), attribute.String("ucs.holder", body.Holder))
	if s.injectWrite(w, r, "claim") {
		return
	}
	var e Epoch
	err = s.store.updateEpoch(ctx, func(tx txn) error {
		var err error
		e, err = applyClaim(tx, service, body.Expect, body.Epoch, body.Holder, time.Duration(body.IfSilentMs)*time.Millisecond, time.Now())
		return err
	})
	s.stats.countClaim(err)
	switch {
	case err == nil:
		s.metrics.claims.WithLabelValues("ok").Inc()
		s.metrics.epoch.WithLabelValues(service).Set(float64(e.Epoch))
		s.log.InfoContext(r.Context(), "epoch claimed", "service", service, "epoch", e.Epoch, "holder", e.Holder, "expect", body.Expect)
		writeJSON(w, http.StatusOK, e)
	case errors.Is(err, ErrEpochConflict):
		s.metrics.claims.WithLabelValues("conflict").Inc()
		s.log.InfoContext(r.Context(), "epoch claim lost", "service", service, "epoch", body.Epoch, "holder", body.Holder, "expect", body.Expect, "err", err)
		s.writeErr(w, err)
	default:
		s.metrics.claims.WithLabelValues("error").Inc()
		s.writeErr(w, err)
	}
}

// handleChats is GET /ucs/v1/chats[?service=S][&ended=true|false].
func (s *Server) handleChats(w http.ResponseWriter, r *http.Request) {
	if s.faults.outage() {
		s.writeFault(w, "read", faultOutage)
		return
	}
	q := r.URL.Query()
	f := ChatFilter{Service: q.Get("service")}
	switch q.Get("ended") {
	case "":
	case "false":
		f.Live = true
	case "true":
		f.Ended = true
	default:
		writeError(w, http.StatusBadRequest, errorBody{Error: "ended must be true or false", Code: codeInvalid})
		return
	}
	chats, err := s.store.chats(r.Context(), f)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	if chats == nil {
		chats = []ChatInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"chats": chats})
}

// handleEpoch is GET /ucs/v1/epochs/{service}.
// handleRenew records that the holder of the service's epoch is alive (the
// primary's lease, which ClaimEpochIfSilent respects).
func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request) {
	service := r.PathValue("service")
	if s.faults.outage() {
		s.writeFault(w, "claim", faultOutage)
		return
	}
	var body renewBody
	err := decodeJSON(w, r, 64<<10, &body)
	if err == nil {
		err = validateRenew(service, body.Epoch, body.Holder)
	}
	if err != nil {
		s.writeErr(w, err)
		return
	}
	var e Epoch
	err = s.store.updateEpoch(r.Context(), func(tx txn) error {
		var err error
		e, err = applyRenew(tx, service, body.Epoch, body.Holder, time.Now())
		return err
	})
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Server) handleEpoch(w http.ResponseWriter, r *http.Request) {
	service := r.PathValue("service")
	if s.faults.outage() {
		s.writeFault(w, "read", faultOutage)
		return
	}
	if err := validName("service", service, maxNameLen, true); err != nil {
		s.writeErr(w, err)
		return
	}
	var e Epoch
	err := s.store.view(r.Context(), func(tx txn) error {
		var err error
		e, err = tx.serviceEpoch(service)
		return err
	})
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// injectWrite applies the injected faults to a save or claim; it reports
// whether it answered the request.
func (s *Server) injectWrite(w http.ResponseWriter, r *http.Request, op string) bool {
	f, delayed, err := s.faults.write(r.Context())
	if delayed {
		s.metrics.faults.WithLabelValues("latency").Inc()
	}
	if delayed || f == faultNonRecoverable || f == faultRecoverable {
		s.stats.faultsInjected.Add(1)
	}
	if err != nil {
		// The client went away during the injected latency.
		writeError(w, http.StatusServiceUnavailable, errorBody{Error: err.Error(), Code: codeUnavailable, Recoverable: true})
		return true
	}
	if f == faultNone {
		return false
	}
	s.writeFault(w, op, f)
	return true
}

// writeFault answers an injected fault.
func (s *Server) writeFault(w http.ResponseWriter, op string, f fault) {
	s.metrics.faults.WithLabelValues(f.String()).Inc()
	switch op {
	case "save":
		s.metrics.saves.WithLabelValues("fault").Inc()
	case "claim":
		s.metrics.claims.WithLabelValues("fault").Inc()
	}
	if f == faultOutage {
		// Other faults were counted by injectWrite.
		s.stats.faultsInjected.Add(1)
	}
	s.log.Debug("fault injected", "op", op, "fault", f.String())
	if f != faultNone {
		status, eb := faultAnswer(f)
		writeError(w, status, eb)
	}
}

// faultAnswer is the status and body of an injected fault's answer.
func faultAnswer(f fault) (int, errorBody) {
	switch f {
	case faultOutage:
		return http.StatusServiceUnavailable, errorBody{Error: "ucs outage (injected)", Code: codeOutage, Recoverable: true}
	case faultNonRecoverable:
		return http.StatusUnprocessableEntity, errorBody{Error: "non-recoverable error (injected)", Code: codeNonRecoverable, Recoverable: false}
	default:
		return http.StatusServiceUnavailable, errorBody{Error: "recoverable error (injected)", Code: codeUnavailable, Recoverable: true}
	}
}

// writeErr maps a store error to its HTTP answer.
func (s *Server) writeErr(w http.ResponseWriter, err error) {
	status, eb := s.errorAnswer(err)
	writeError(w, status, eb)
}

// errorAnswer maps a store error to the status and body of its answer.
func (s *Server) errorAnswer(err error) (int, errorBody) {
	var (
		se *StaleEpochError
		ce *EpochConflictError
		tl *tooLargeError
		de *DeletedError
	)
	switch {
	case errors.As(err, &de):
		ts := de.Tombstone
		return http.StatusGone, errorBody{Error: "chat deleted", Code: codeDeleted, Tombstone: &ts}
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, errorBody{Error: strings.TrimPrefix(err.Error(), "ucsmock: "), Code: codeNotFound}
	case errors.As(err, &se):
		return http.StatusConflict, errorBody{Error: "stale epoch", Code: codeStaleEpoch, Epoch: se.Epoch, Holder: se.Holder}
	case errors.As(err, &ce):
		return http.StatusConflict, errorBody{Error: "epoch claim conflict", Code: codeEpochConflict, Epoch: ce.Epoch, Holder: ce.Holder,
			HolderAlive: ce.HolderAlive, HeardAgoMs: ce.HeardAgo.Milliseconds()}
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, errorBody{Error: strings.TrimPrefix(err.Error(), "ucsmock: "), Code: codeConflict}
	case errors.As(err, &tl):
		return http.StatusRequestEntityTooLarge, errorBody{Error: strings.TrimPrefix(err.Error(), "ucsmock: invalid request: "), Code: codeTooLarge}
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest, errorBody{Error: strings.TrimPrefix(err.Error(), "ucsmock: invalid request: "), Code: codeInvalid}
	case errors.Is(err, errClosed):
		return http.StatusServiceUnavailable, errorBody{Error: "store closed", Code: codeUnavailable, Recoverable: true}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, errorBody{Error: err.Error(), Code: codeUnavailable, Recoverable: true}
	default:
		s.metrics.storeErrors.WithLabelValues("request").Inc()
		s.log.Error("store failure", "store", s.store.kind(), "err", err)
		return http.StatusInternalServerError, errorBody{Error: "store failure: " + err.Error(), Code: codeInternal, Recoverable: true}
	}
}

// bearer reports whether r carries Authorization: Bearer <want>. The
// comparison is of SHA-256 digests in constant time, so that neither the
// content nor the length of the token leaks through timing.
func bearer(r *http.Request, want string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return ok && subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// writer guards a write (save, claim) with the writer token when one is
// configured: without it the request gets 401 before anything is read,
// injected or written.
func (s *Server) writer(results *prometheus.CounterVec, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.WriterToken != "" && !bearer(r, s.cfg.WriterToken) {
			s.stats.unauthorized.Add(1)
			results.WithLabelValues("unauthorized").Inc()
			s.log.WarnContext(r.Context(), "write refused: missing or wrong writer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="ucsmock"`)
			writeError(w, http.StatusUnauthorized, errorBody{Error: "missing or wrong writer token", Code: codeUnauthorized})
			return
		}
		h(w, r)
	}
}

// reader guards a read with the reader token or the writer token, whichever
// are configured; with neither, reads are open. A refused read gets 401
// before anything is read.
func (s *Server) reader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		open := s.cfg.ReaderToken == "" && s.cfg.WriterToken == ""
		if !open && !(s.cfg.ReaderToken != "" && bearer(r, s.cfg.ReaderToken)) && !(s.cfg.WriterToken != "" && bearer(r, s.cfg.WriterToken)) {
			s.stats.unauthorized.Add(1)
			s.log.WarnContext(r.Context(), "read refused: missing or wrong reader token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="ucsmock"`)
			writeError(w, http.StatusUnauthorized, errorBody{Error: "missing or wrong reader token", Code: codeUnauthorized})
			return
		}
		h(w, r)
	}
}

// admin guards an admin handler with the bearer token.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" {
			writeError(w, http.StatusForbidden, errorBody{Error: "admin API disabled (no admin token configured)", Code: codeForbidden})
			return
		}
		if !bearer(r, s.cfg.AdminToken) {
			s.log.WarnContext(r.Context(), "admin request refused: missing or wrong admin token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="ucsmock"`)
			writeError(w, http.StatusUnauthorized, errorBody{Error: "missing or wrong admin token", Code: codeUnauthorized})
			return
		}
		h(w, r)
	}
}

func (s *Server) handleSetFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	err := decodeJSON(w, r, 64<<10, &f)
	if err == nil {
		err = s.faults.set(f)
	}
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.log.InfoContext(r.Context(), "faults set", "latencyMs", f.LatencyMs, "recoverableErrorRate", f.RecoverableErrorRate,
		"nonRecoverable", f.NonRecoverable, "outage", f.Outage)
	writeJSON(w, http.StatusOK, f)
}

func (s *Server) handleGetFaults(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.faults.get())
}

func (s *Server) handleClearFaults(w http.ResponseWriter, r *http.Request) {
	if err := s.faults.set(Faults{}); err != nil {
		s.writeErr(w, err)
		return
	}
	s.log.InfoContext(r.Context(), "faults cleared")
	writeJSON(w, http.StatusOK, Faults{})
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.stats.snapshot())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, e errorBody) {
	writeJSON(w, status, e)
}

// traced wraps h in otelhttp (a server span per /ucs/ request) when tel
// exports spans; otherwise h only takes the caller's trace context
// (telemetry.TraceContext), so that log lines keep its trace_id without
// otelhttp's cost on every save.
func traced(h http.Handler, tel *telemetry.Telemetry) http.Handler {
	if !tel.Tracing() {
		return tel.TraceContext(h)
	}
	return otelhttp.NewHandler(h, "ucsmock",
		otelhttp.WithTracerProvider(tel.Tracer),
		otelhttp.WithPropagators(tel.Propagator),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithFilter(func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/ucs/") }),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return "ucs " + r.Method + " " + spanPath(r.URL.Path)
		}),
	)
}
