package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// coreHeader names the stand-in core that answered a call.
const coreHeader = "x-hachat-core"

// helperEnv marks the child process of TestProxylessGRPC.
const helperEnv = "HACHAT_XDS_PROXYLESS_HELPER"

// helperTLSEnv makes the child dial with grpc-go's xDS credentials.
const helperTLSEnv = "HACHAT_XDS_PROXYLESS_TLS"

// standIn is a plain gRPC server with grpc.health.v1 standing in for a
// chat core; every answer carries its name in a header.
type standIn struct {
	name string
	addr string
	srv  *grpc.Server
}

func startStandIn(t *testing.T, name, addr string, primary bool) *standIn {
	return startStandInTLS(t, name, addr, primary, nil)
}

// startStandInTLS is startStandIn serving mTLS with src when it is not
// nil: only a caller of kind webapi is answered (PermissionDenied
// otherwise), so an answer proves the client presented the webapi
// certificate.
func startStandInTLS(t *testing.T, name, addr string, primary bool, src *mtls.Source) *standIn {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	unary := []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs(coreHeader, name))
		return h(ctx, req)
	}}
	var opts []grpc.ServerOption
	if src != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(src.ServerConfig())))
		unary = append(unary, mtls.UnaryInterceptor(mtls.ServicePolicy(map[string]mtls.Policy{
			"/grpc.health.v1.Health/": mtls.Allow(mtls.KindWebAPI),
		}), telemetry.Discard().Logger))
	}
	srv := grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(unary...))...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if primary {
		st = healthpb.HealthCheckResponse_SERVING
	}
	hs.SetServingStatus(HealthService, st)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	s := &standIn{name: name, addr: ln.Addr().String(), srv: srv}
	t.Cleanup(srv.Stop)
	return s
}

// answers collects the helper's lines: "ok <core>" or "err <code>".
type answers struct {
	mu    sync.Mutex
	lines []string
}

func (a *answers) add(l string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lines = append(a.lines, l)
}

// waitOK waits until an answer from core arrives after index from and
// returns the index after it and the time it arrived.
func (a *answers) waitOK(t *testing.T, core string, from int, d time.Duration) (int, time.Time) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		a.mu.Lock()
		for i := from; i < len(a.lines); i++ {
			if a.lines[i] == "ok "+core {
				a.mu.Unlock()
				return i + 1, time.Now()
			}
		}
		n := len(a.lines)
		last := ""
		if n > 0 {
			last = a.lines[n-1]
		}
		a.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no answer from %s within %v (%d answers, last %q)", core, d, n, last)
		}
		<-tick.C
	}
}

func (a *answers) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.lines)
}

// TestProxylessGRPC is the acceptance test of issue 4 for proxyless
// clients: grpc-go's own xDS client, configured only by a bootstrap file
// that points at this control plane, dials xds:///chatcore and reaches the
// primary; after the primary is killed it reaches the backup; after a
// membership change makes the restarted core primary again, it moves back
// (steered by the push alone, the backup still serving).
//
// grpc-go reads GRPC_XDS_BOOTSTRAP when its package initialises, so a
// t.Setenv here would come too late: the client runs in a child process
// (this test binary, TestProxylessHelper) started with the variable set.
func TestProxylessGRPC(t *testing.T) {
	proxyless(t, "")
}

// TestProxylessGRPCmTLS is TestProxylessGRPC under mTLS: the control
// plane serves ADS with mTLS and publishes the chat cluster with an
// UpstreamTlsContext; the client's bootstrap (GRPCBootstrap with files)
// has "tls" channel credentials and the file_watcher certificate provider
// "hachat"; the client dials with grpc-go's xDS credentials; the stand-in
// cores accept only mTLS and answer only a webapi identity. An answer thus
// proves that the client's xDS credentials took the TLS settings from the
// control plane and the certificate from the bootstrap's provider.
func TestProxylessGRPCmTLS(t *testing.T) {
	proxyless(t, tlsCertDir(t))
}

// proxyless runs the proxyless scenario, under mTLS with the certificates
// of dir when it is not empty.
func proxyless(t *testing.T, dir string) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	var coreA, coreB *mtls.Source
	cfg := testConfig()
	bo := BootstrapOptions{NodeID: "proxyless-test"}
	if dir != "" {
		coreA, coreB = tlsSource(t, dir, "core-a"), tlsSource(t, dir, "core-b")
		cfg.TLS = mtls.FilesIn(dir, "xds")
		bo.TLS = mtls.FilesIn(dir, "webapi")
		bo.CertRefresh = 100 * time.Millisecond
	}
	a := startStandInTLS(t, "a", "127.0.0.1:0", true, coreA)
	b := startStandInTLS(t, "b", "127.0.0.1:0", false, coreB)
	view := NewMemoryView(
		core_("core-a", RolePrimary, 1, a.addr, StateAlive),
		core_("core-b", RoleBackup, 1, b.addr, StateAlive),
		Member{Name: "xds", Kind: KindXDS, State: StateAlive},
	)
	s := startServer(t, cfg, view, Options{})
	bo.XDS = s.GRPCAddr()

	boot, err := GRPCBootstrap(bo)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(path, boot, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxylessHelper$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "GRPC_XDS_BOOTSTRAP="+path, "GRPC_XDS_BOOTSTRAP_CONFIG=")
	if dir != "" {
		cmd.Env = append(cmd.Env, helperTLSEnv+"=1")
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var got answers
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "answer: "); ok {
				got.add(l)
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close() // the helper stops at EOF
		select {
		case <-readDone:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-readDone
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
		if t.Failed() {
			t.Logf("helper stderr (tail):\n%s", tail(stderr.String(), 3000))
		}
	})

	// 1. The primary answers.
	i, _ := got.waitOK(t, "a", 0, 20*time.Second)
	st := s.Status()
	if len(st.Nodes) != 1 || st.Nodes[0].ID != "proxyless-test" {
		t.Fatalf("control plane nodes = %+v", st.Nodes)
	}
	for typ, want := range map[string]string{"listener": APIListenerName, "route": RouteName, "cluster": ClusterName, "endpoint": ClusterName} {
		if names := st.Nodes[0].Subscriptions[typ]; len(names) != 1 || names[0] != want {
			t.Errorf("grpc-go subscribed %s %v, want [%s]", typ, names, want)
		}
	}
	if st.LastNACK != nil {
		t.Fatalf("grpc-go rejected our resources: %+v", st.LastNACK)
	}

	// 2. Kill the primary; membership marks it dead. The backup answers.
	killed := time.Now()
	a.srv.Stop()
	view.Update("core-a", func(m *Member) { m.State = StateDead })
	i, at := got.waitOK(t, "b", i, 5*time.Second)
	t.Logf("failover to the backup after the primary was stopped: %v", at.Sub(killed))

	// 3. Core a comes back on its address and becomes primary with a newer
	// epoch; b is still up, so only the pushed assignment moves the client.
	startStandInTLS(t, "a", a.addr, true, coreA)
	pushed := time.Now()
	view.Set(
		core_("core-a", RolePrimary, 3, a.addr, StateAlive),
		core_("core-b", RoleBackup, 3, b.addr, StateAlive),
		Member{Name: "xds", Kind: KindXDS, State: StateAlive},
	)
	_, at = got.waitOK(t, "a", i, 5*time.Second)
	t.Logf("moved back to the new primary after the push: %v", at.Sub(pushed))
	if s.Status().LastNACK != nil {
		t.Fatalf("grpc-go rejected our resources: %+v", s.Status().LastNACK)
	}
}

// TestProxylessHelper is the child process of TestProxylessGRPC: a plain
// grpc-go client of xds:///chatcore that calls grpc.health.v1 Check every
// few milliseconds and prints who answered, until stdin closes.
func TestProxylessHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("child process of TestProxylessGRPC")
	}
	creds := insecure.NewCredentials()
	if os.Getenv(helperTLSEnv) == "1" {
		// The fallback is used only when the control plane sends no TLS
		// settings; the stand-ins refuse plaintext, so it cannot answer.
		var err error
		creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient("xds:///"+APIListenerName, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	client := healthpb.NewHealthClient(conn)
	errs := 0
	tick := time.NewTicker(3 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		var md metadata.MD
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		_, err := client.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
		ccancel()
		if err != nil {
			fmt.Printf("answer: err %s\n", status.Code(err))
			if errs++; errs%100 == 1 {
				fmt.Fprintf(os.Stderr, "check: %v\n", err)
			}
		} else {
			fmt.Printf("answer: ok %s\n", strings.Join(md.Get(coreHeader), ","))
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
