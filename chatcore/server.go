package chatcore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
)

const (
	healthServing    = healthpb.HealthCheckResponse_SERVING
	healthNotServing = healthpb.HealthCheckResponse_NOT_SERVING
)

// Run listens on cfg.GRPC and cfg.HTTP and serves until ctx is done.
func (c *Core) Run(ctx context.Context) error {
	var lc net.ListenConfig
	gl, err := lc.Listen(ctx, "tcp", c.cfg.GRPC)
	if err != nil {
		return fmt.Errorf("listen grpc: %w", err)
	}
	hl, err := lc.Listen(ctx, "tcp", c.cfg.HTTP)
	if err != nil {
		gl.Close()
		return fmt.Errorf("listen http: %w", err)
	}
	return c.Serve(ctx, gl, hl)
}

// Serve serves gRPC on gl and HTTP on hl until ctx is done, then stops the
// servers (in-flight calls get a moment to finish) and the background work.
// A core configured as primary claims the next epoch at the store first;
// Chat calls answer UNAVAILABLE until it holds it.
func (c *Core) Serve(ctx context.Context, gl, hl net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.grpcAddr = membership.Announced(gl.Addr().String(), c.cfg.GRPCAdvertise)
	c.httpAddr = membership.Announced(hl.Addr().String(), c.cfg.HTTPAdvertise)
	gs := c.grpcServer()
	hs := &http.Server{Handler: c.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	c.health.SetServingStatus("", healthServing)
	c.health.SetServingStatus(ChatServiceName, healthNotServing)
	c.log.Info("chat core serving", "grpc", gl.Addr().String(), "http", hl.Addr().String(), "role", c.cfg.Role,
		"transcript-auto-save", c.cfg.TranscriptAutoSave, "session-restoration-mode", c.cfg.SessionRestorationMode)

	c.warnOpenTokens()
	c.bg.start(ctx)
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := gs.Serve(gl); err != nil {
			errc <- fmt.Errorf("serve grpc: %w", err)
		}
	})
	wg.Go(func() {
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve http: %w", err)
		}
	})
	wg.Go(func() { c.saver.Run(ctx) })
	wg.Go(func() { c.janitor(ctx) })
	wg.Go(func() { c.repl.FlushProgress(ctx) })
	wg.Go(func() { c.roleLoop(ctx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if c.role.IsPrimary() && !c.abrupt.Load() {
		// A clean stop of the primary is a planned switchover when a backup
		// is in sync: no failover, no restoration.
		hctx, hcancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, herr := c.handover(hctx, "shutdown handover"); herr != nil && status.Code(herr) != codes.FailedPrecondition {
			c.log.Warn("could not hand over before stopping", "err", herr)
		}
		hcancel()
	}
	cancel()
	c.log.Info("chat core stopping")
	c.health.Shutdown()
	c.stepDown("shutting down", 0)
	if c.members != nil {
		// Serve's ctx is done, so the step-down's own publish is cut short:
		// tell gossip we are no longer primary before we go.
		pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		c.publishMeta(pctx)
		pcancel()
	}
	c.peers.close()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		gs.Stop()
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	_ = hs.Shutdown(sctx)
	wg.Wait()
	c.bg.stop() // restoration after a switchover, meta publishing
	// After bg: no prepareClaim runs any more.
	dropPreparedClaim(c.fencer)
	return err
}

// warnOpenTokens logs, at start, the protections a paired core runs
// without (the defaults keep working, so this warns and does not refuse).
func (c *Core) warnOpenTokens() {
	if !c.paired() {
		return
	}
	if c.cfg.ServiceToken == "" {
		c.log.Warn("SECURITY: paired core with an empty service-token: Join and WatchSessions accept ANY token " +
			"(anyone who reaches the gRPC port can join sessions as agent or supervisor and watch every session); set --service-token")
	}
	if c.cfg.AdminToken == "" {
		c.log.Warn("SECURITY: paired core with an empty admin-token: the replication stream is unauthenticated " +
			"(anyone who reaches the gRPC port can replicate every session) and switchover is refused; set --admin-token on both cores")
	}
}

// grpcServer builds the gRPC server with Chat, health, the role gate and,
// when spans are exported, tracing.
func (c *Core) grpcServer() *grpc.Server {
	unary, stream := []grpc.UnaryServerInterceptor{c.unaryGate}, []grpc.StreamServerInterceptor{c.streamGate}
	opts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1 << 20),
	}
	if c.tel.Tracing() {
		// Only when spans are exported: with the no-op tracer the handler
		// still costs every call (and every stream message) allocations.
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(c.tel.Tracer), otelgrpc.WithPropagators(c.tel.Propagator))))
	}
	if c.tls != nil {
		// Who may call what is decided before the role gate.
		unary = append([]grpc.UnaryServerInterceptor{mtls.UnaryInterceptor(CallPolicy(), c.log)}, unary...)
		stream = append([]grpc.StreamServerInterceptor{mtls.StreamInterceptor(CallPolicy(), c.log)}, stream...)
		opts = append(opts, grpc.Creds(credentials.NewTLS(c.tls.ServerConfig())))
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	gs := grpc.NewServer(opts...)
	chatpb.RegisterChatServer(gs, c)
	chatpb.RegisterReplicationServer(gs, c)
	healthpb.RegisterHealthServer(gs, c.health)
	return gs
}

// gate refuses Chat calls (except Status and Switchover) unless this core is
// the serving primary, and replication from a primary that is still
// merging what UCS holds (its log is not yet complete). A Chat call that
// this core would refuse while its role is changing (a backup promoting
// itself, a primary draining for a handover) first waits for the change's
// end (at most maxRoleChangeHold, rolechange.go), then is judged as any
// other.
func (c *Core) gate(ctx context.Context, method string) error {
	if strings.HasPrefix(method, "/"+chatpb.Replication_ServiceDesc.ServiceName+"/") {
		if c.role.Unmerged() {
			return errRestoring
		}
		return nil
	}
	if !strings.HasPrefix(method, "/"+ChatServiceName+"/") {
		return nil
	}
	switch method[len(ChatServiceName)+2:] {
	case "Status", "Switchover":
		return nil
	}
	if !c.role.IsPrimary() || c.role.Draining() {
		c.changing.wait(ctx, maxRoleChangeHold)
	}
	if !c.role.IsPrimary() {
		return c.notPrimary()
	}
	if c.role.Unmerged() {
		return errRestoring
	}
	if c.role.Draining() {
		return errDraining
	}
	return nil
}

func (c *Core) unaryGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.gate(ctx, info.FullMethod); err != nil {
		c.countRPC(info.FullMethod, err)
		return nil, err
	}
	resp, err := h(ctx, req)
	c.countRPC(info.FullMethod, err)
	return resp, err
}

func (c *Core) streamGate(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := c.gate(ss.Context(), info.FullMethod)
	if err == nil {
		err = h(srv, ss)
	}
	c.countRPC(info.FullMethod, err)
	return err
}

func (c *Core) countRPC(method string, err error) {
	if i := strings.LastIndexByte(method, '/'); i >= 0 {
		method = method[i+1:]
	}
	c.m.rpcs.WithLabelValues(method, status.Code(err).String()).Inc()
}

// httpHandler serves /metrics, /healthz and /status.
func (c *Core) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", c.tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		role, epoch := c.role.RoleEpoch()
		fmt.Fprintf(w, "ok %s %s epoch %d\n", c.cfg.Name, role, epoch)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(c.status())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// The pair is not in the StatusResponse message: it leads the
		// JSON object (b is never "{}": every field is emitted).
		pj, _ := json.Marshal(pairs.Norm(c.cfg.Pair))
		b = append(append([]byte(`{"pair":`), pj...), append([]byte{','}, b[1:]...)...)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	return otelhttp.NewHandler(mux, "chatcore", otelhttp.WithTracerProvider(c.tel.Tracer), otelhttp.WithPropagators(c.tel.Propagator))
}

// grpcCode maps an error to its gRPC code (tests and logs).
func grpcCode(err error) codes.Code { return status.Code(err) }
