// Package webapi is the Web API Server: the customer chat API shaped like the
// Genesys GMS Chat API v2 (POST /genesys/2/chat/{service} and the per-chat
// calls under it), a Server-Sent Events push channel that survives chat core
// failovers, and the Chat HA web sample page at /.
//
// webapi holds no chat state. Every call goes to the chat core through a
// chatpb.ChatClient (normally package chatclient, dialled through the local
// sidecar), so a webapi process can be restarted at will: the browser keeps
// its chatId, userId and secureKey and resumes its push channel from the last
// transcript position.
package webapi

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/edge"
	"github.com/hachat/hachat/telemetry"
)

//go:embed static
var staticFS embed.FS

// Server is the Web API Server. It is safe for concurrent use.
type Server struct {
	cfg     Config
	core    chatpb.ChatClient
	tel     *telemetry.Telemetry
	log     *slog.Logger
	metrics *metrics
	page    *template.Template
	handler http.Handler

	starts  *edge.Limiter // chat start limits, per client address and overall
	origins edge.Origins  // sites allowed to call the API (CORS)
	proxies edge.Proxies  // load balancers whose X-Forwarded-For is believed

	stopOnce sync.Once
	stopping chan struct{} // closed when Run begins shutting down: ends push channels

	rotation *rotation // in or out of the edge's rotation (LeaveRotation)

	routeLogs []*routeLog // the hot routes, whose access log has a summary

	// retried is the chat client's retry observer of an untraced call
	// (Server.retry), made once: a traced call gets its own, whose log
	// lines carry the trace.
	retried chatclient.RetryObserver
}

// New builds a Server that reaches the chat core through core. It registers
// its metrics on tel.Registry, so build one Server per registry. webapi makes
// one call per request and retries nothing itself: core should be a
// *chatclient.Client, the one retry layer of the clients of the core.
func New(cfg Config, core chatpb.ChatClient, tel *telemetry.Telemetry) (*Server, error) {
	if core == nil {
		return nil, errors.New("webapi: nil chat client")
	}
	if tel == nil {
		return nil, errors.New("webapi: nil telemetry")
	}
	if cfg.MaxBody <= 0 {
		return nil, fmt.Errorf("webapi: max-body must be positive, got %d", cfg.MaxBody)
	}
	if cfg.SSEHeartbeat <= 0 {
		return nil, fmt.Errorf("webapi: sse-heartbeat must be positive, got %s", cfg.SSEHeartbeat)
	}
	if cfg.CoreTimeout <= 0 {
		return nil, fmt.Errorf("webapi: core-timeout must be positive, got %s", cfg.CoreTimeout)
	}
	if cfg.RetryBudget < 0 {
		return nil, fmt.Errorf("webapi: retry-budget must not be negative, got %s", cfg.RetryBudget)
	}
	if cfg.RetryBudget > 0 {
		tel.Logger.Warn("webapi: retry-budget is deprecated and ignored; the chat client's core-retry-for and core-max-attempts rule retries",
			"component", "webapi", "retry_budget", cfg.RetryBudget)
	}
	if cfg.Service == "" {
		cfg.Service = DefaultConfig().Service
	}
	starts, err := edge.NewLimiter(edge.Limits{ClientRate: cfg.ClientStartRate, ClientBurst: cfg.ClientStartBurst,
		Rate: cfg.StartRate, Burst: cfg.StartBurst}, nil)
	if err != nil {
		return nil, fmt.Errorf("webapi: start limits: %w", err)
	}
	origins, err := edge.ParseOrigins(cfg.AllowedOrigins)
	if err != nil {
		return nil, fmt.Errorf("webapi: allowed-origins: %w", err)
	}
	proxies, err := edge.ParseProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("webapi: trusted-proxies: %w", err)
	}
	m, err := newMetrics(tel.Registry)
	if err != nil {
		return nil, err
	}
	page, err := template.ParseFS(staticFS, "static/index.html")
	if err != nil {
		return nil, fmt.Errorf("webapi: parse page: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		core:     core,
		tel:      tel,
		log:      tel.Logger.With("component", "webapi"),
		metrics:  m,
		page:     page,
		stopping: make(chan struct{}),
		rotation: newRotation(),
		starts:   starts,
		origins:  origins,
		proxies:  proxies,
	}
	s.retried = func(method string, attempt int, err error) { s.retry(context.Background(), method, attempt, err) }
	s.handler = s.routes()
	return s, nil
}

// DialOptions returns the gRPC dial options webapi's core connection needs:
// the otelgrpc client stats handler built from tel, so that each call carries
// the trace context of the HTTP request that caused it (webapi → chatcore).
// The caller adds transport credentials and any resolver options.
func DialOptions(tel *telemetry.Telemetry) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tel.Tracer),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
	}
}

// Handler returns the HTTP handler with every route: the customer API under
// /genesys/2/chat/ (behind the CORS allow-list), the web sample at /,
// /metrics and /healthz, every answer with the security headers of
// edge.SecurityHeaders.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on cfg.HTTP and serves until ctx is cancelled, then shuts down:
// push channels end (browsers reconnect elsewhere with Last-Event-ID) and
// in-flight calls get a few seconds to finish.
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.HTTP)
	if err != nil {
		return fmt.Errorf("webapi: listen %s: %w", s.cfg.HTTP, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller made; it closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.rotation.serving(srv)
	s.log.Info("web api server listening", "http", ln.Addr().String(), "service", s.cfg.Service)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	// The access log's summary runs until Serve returns (after the
	// shutdown's last requests), then writes a last one.
	sumCtx, stopSum := context.WithCancel(context.WithoutCancel(ctx))
	sumDone := make(chan struct{})
	go func() { // owned by Serve: ends with it
		defer close(sumDone)
		s.summarize(sumCtx, accessSummaryEvery)
	}()
	defer func() { stopSum(); <-sumDone }()
	select {
	case err := <-errc:
		return fmt.Errorf("webapi: serve: %w", err)
	case <-ctx.Done():
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("webapi: shutdown: %w", err)
	}
	s.log.Info("web api server stopped")
	return nil
}

// routes builds the handler: the mux, whose every route is counted, logged
// and (when spans are exported) traced under its pattern; in front of the API the GMS leniencies
// (one trailing slash dropped) and the apikey check, and in front of those
// the CORS allow-list (preflights included, which the mux would answer 405);
// the security headers in front of everything.
func (s *Server) routes() http.Handler {
	mux := s.mux()
	api := s.origins.CORS(s.gms(mux), s.refuseOrigin)
	return edge.SecurityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/genesys/") {
			api.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}), edge.DefaultCSP)
}

// gms adapts real GMS clients' requests before next routes them: a path
// with one trailing slash (POST /genesys/2/chat/{service}/, as GMS accepts
// it) is served as the path without it, and, when api-key is set, a
// request whose apikey header (or, for the push channel, apikey query
// parameter) is missing or wrong is refused with 401 before anything else.
func (s *Server) gms(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; len(p) > len("/genesys/") && strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "//") {
			u := *r.URL
			u.Path = strings.TrimSuffix(p, "/")
			u.RawPath = strings.TrimSuffix(u.RawPath, "/")
			r2 := new(http.Request)
			*r2 = *r
			r2.URL = &u
			r = r2
			s.metrics.lenient.WithLabelValues("trailing-slash").Inc()
		}
		if s.cfg.APIKey != "" && !s.apiKeyOK(r) {
			s.metrics.refused.WithLabelValues("apikey").Inc()
			s.log.WarnContext(r.Context(), "request refused: missing or wrong apikey", "method", r.Method, "path", r.URL.Path,
				"client", s.proxies.ClientAddr(r).String(), "given", r.Header.Get("apikey") != "")
			writeJSON(w, http.StatusUnauthorized, &response{
				StatusCode: statusUnrecovered,
				Errors:     []apiError{{Code: codeAPIKey, Advice: "missing or wrong apikey header"}},
			})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiKeyOK reports whether r carries the configured api key, compared in
// constant time: in the apikey header, or on a GET (the push channel, whose
// EventSource cannot set headers) in the apikey query parameter.
func (s *Server) apiKeyOK(r *http.Request) bool {
	got := r.Header.Get("apikey")
	if got == "" && r.Method == http.MethodGet {
		got = r.URL.Query().Get("apikey")
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.APIKey)) == 1
}

// mux routes each path to its handler.
func (s *Server) mux() *http.ServeMux {
	mux := http.NewServeMux()
	const base = "/genesys/2/chat/{service}"
	handle := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.instrument(pattern, h)) }
	handle("POST "+base, s.handleStart)
	handle("POST "+base+"/{chatId}/send", s.handleSend)
	handle("POST "+base+"/{chatId}/refresh", s.handleRefresh)
	handle("POST "+base+"/{chatId}/startTyping", s.handleTyping(true))
	handle("POST "+base+"/{chatId}/stopTyping", s.handleTyping(false))
	handle("POST "+base+"/{chatId}/customNotice", s.handleCustomNotice)
	handle("POST "+base+"/{chatId}/pushUrl", s.handlePushURL)
	handle("POST "+base+"/{chatId}/disconnect", s.handleDisconnect)
	handle("GET "+base+"/{chatId}/events", s.handleEvents)
	handle("/genesys/", s.handleNoRoute)
	handle("GET /{$}", s.handlePage)
	sub, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(sub)))
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// handlePage serves the Chat HA web sample.
func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	// The security headers (edge.DefaultCSP: the page runs only its own
	// script and talks only to this server) are set by routes.
	if err := s.page.Execute(w, struct{ Service string }{s.cfg.Service}); err != nil {
		s.log.Warn("render page", "err", err)
	}
}

// isHot reports the routes a page calls for every message or keystroke
// (send, refresh, typing): their successful requests are logged at debug,
// and counted in the access log's summary (see routeLog).
func isHot(route string) bool {
	return hasSuffix(route, "/send") || hasSuffix(route, "/refresh") || hasSuffix(route, "Typing")
}

// isStream reports the push channel route, whose duration is its lifetime.
func isStream(route string) bool { return hasSuffix(route, "/events") }

func hasSuffix(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}
