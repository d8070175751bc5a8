package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// MembersPath is the route of MembersHandler.
const MembersPath = "/membership/v1/members"

// MembersView is the JSON answer of MembersHandler.
type MembersView struct {
	// Self is the name of the answering node.
	Self string `json:"self"`
	// Members are all members it knows, itself included, sorted by name.
	Members []Member `json:"members"`
}

// MembersHandler serves GET MembersPath: this node's view of the cluster
// as MembersView JSON. Any part that holds a Membership may mount it.
func (m *Membership) MembersHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed: use GET"})
			return
		}
		writeJSON(w, http.StatusOK, MembersView{Self: m.cfg.Name, Members: m.Members()})
	})
}

// Witness is a member that only watches and votes: it joins the gossip as
// kind witness, so that indirect probes have a third vantage point, and it
// answers reachability questions from the backup core. It serves /healthz,
// /metrics, MembersPath and ReachablePath on its HTTP address.
type Witness struct {
	m      *Membership
	ln     net.Listener
	srv    *http.Server
	log    *slog.Logger
	checks *prometheus.CounterVec
	tel    *telemetry.Telemetry
	tls    bool
}

// UseTLS makes the witness serve HTTPS with mTLS from src (call before
// Run): reachability questions from cores only; the member list, health
// and metrics from any part of the cluster.
func (w *Witness) UseTLS(src *mtls.Source) {
	policy := func(r *http.Request) mtls.Policy {
		if r.URL.Path == ReachablePath {
			return mtls.Allow(mtls.KindCore)
		}
		return mtls.AnyKind
	}
	w.srv.Handler = mtls.Middleware(policy, w.log, w.srv.Handler)
	w.srv.TLSConfig = src.ServerConfig()
	w.tls = true
}

// NewWitness listens on httpAddr and joins the cluster as a witness that
// advertises that HTTP address. Call Run to serve.
func NewWitness(ctx context.Context, cfg Config, httpAddr string, tel *telemetry.Telemetry) (*Witness, error) {
	if tel == nil {
		tel = telemetry.Discard()
	}
	if _, err := cfg.memberlistConfig(); err != nil {
		return nil, err
	}
	if err := checkListenAddr(httpAddr); err != nil {
		return nil, fmt.Errorf("%w: http %q: %w", ErrBadConfig, httpAddr, err)
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return nil, fmt.Errorf("listen http: %w", err)
	}
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hachat_witness_reachability_checks_total",
		Help: "Reachability questions answered by the witness, by answer (reachable, unreachable).",
	}, []string{"answer"})
	if err := tel.Registry.Register(checks); err != nil {
		ln.Close()
		return nil, fmt.Errorf("register witness metrics: %w", err)
	}
	m, err := New(ctx, cfg, Meta{Kind: KindWitness, HTTPAddr: ln.Addr().String()}, tel)
	if err != nil {
		ln.Close()
		tel.Registry.Unregister(checks)
		return nil, err
	}
	w := &Witness{m: m, ln: ln, log: m.log, checks: checks, tel: tel}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", tel.MetricsHandler())
	mux.Handle(MembersPath, m.MembersHandler())
	mux.Handle(ReachablePath, reachableHandler(w.observe))
	w.srv = &http.Server{
		Handler: otelhttp.NewHandler(mux, "witness",
			otelhttp.WithTracerProvider(tel.Tracer), otelhttp.WithPropagators(tel.Propagator)),
		ReadHeaderTimeout: 5 * time.Second,
	}
	return w, nil
}

// checkListenAddr accepts host:port with a port in 0..65535.
func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("empty host: give an address such as 127.0.0.1:7211")
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 || fmt.Sprint(p) != port {
		return fmt.Errorf("port %q must be 0-65535", port)
	}
	return nil
}

func (w *Witness) observe(addr string, ans Reachability) {
	if ans.Reachable {
		w.checks.WithLabelValues("reachable").Inc()
		w.log.Info("reachability check: reachable", "target", addr)
		return
	}
	w.checks.WithLabelValues("unreachable").Inc()
	w.log.Info("reachability check: unreachable", "target", addr, "err", ans.Error)
}

// HTTPAddr is the address the witness serves on (resolved when the
// configured port was 0).
func (w *Witness) HTTPAddr() string { return w.ln.Addr().String() }

// Membership is the witness's seat in the cluster.
func (w *Witness) Membership() *Membership { return w.m }

// Run serves until ctx is done, then leaves the cluster cleanly and stops.
func (w *Witness) Run(ctx context.Context) error {
	w.log.Info("witness serving", "http", w.HTTPAddr(), "gossip", w.m.Local().Addr)
	errc := make(chan error, 1)
	go func() {
		if w.tls {
			errc <- w.srv.ServeTLS(w.ln, "", "")
			return
		}
		errc <- w.srv.Serve(w.ln)
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	lctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := w.m.Leave(lctx); err != nil {
		w.log.Warn("leave", "err", err)
	}
	shErr := w.m.Shutdown()
	if err := w.srv.Shutdown(lctx); err != nil {
		w.srv.Close()
	}
	if serveErr == nil {
		serveErr = <-errc
	}
	w.tel.Registry.Unregister(w.checks)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", serveErr)
	}
	return shErr
}

// RunWitness joins the cluster as a witness and serves on httpAddr until
// ctx is done.
func RunWitness(ctx context.Context, cfg Config, httpAddr string, tel *telemetry.Telemetry) error {
	w, err := NewWitness(ctx, cfg, httpAddr, tel)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
