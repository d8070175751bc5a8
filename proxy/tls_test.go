package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// certDir makes a cert dir with a part of every kind the tests use.
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	parts := []mtls.Part{
		{Kind: mtls.KindCore, Name: "core-a"}, {Kind: mtls.KindCore, Name: "core-b"},
		{Kind: mtls.KindProxy, Name: "sidecar"}, {Kind: mtls.KindWebAPI, Name: "webapi"},
		{Kind: mtls.KindOperator, Name: "operator"}, {Kind: mtls.KindXDS, Name: "xds"},
		{Kind: mtls.KindUCS, Name: "ucs"},
	}
	if _, err := mtls.Init(dir, "", parts, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func loadSource(t *testing.T, dir, name string) *mtls.Source {
	t.Helper()
	s, err := mtls.Load(mtls.FilesIn(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newTLSFakeCore is a fakeCore that serves mTLS with the certificate name
// of dir (any client of the trust domain admitted).
func newTLSFakeCore(t *testing.T, dir, cert, name, role string, epoch uint64) *fakeCore {
	t.Helper()
	f := &fakeCore{t: t, name: name, creds: credentials.NewTLS(loadSource(t, dir, cert).ServerConfig()), health: health.NewServer()}
	f.set(role, epoch)
	f.start("127.0.0.1:0")
	t.Cleanup(f.stop)
	return f
}

// clientCreds are a client's credentials to a sidecar: the certificate name
// of dir, the sidecar's identity (kind proxy) required.
func clientCreds(t *testing.T, dir, name string) credentials.TransportCredentials {
	t.Helper()
	return credentials.NewTLS(loadSource(t, dir, name).ClientConfig(mtls.Allow(mtls.KindProxy)))
}

// statusWith calls Chat/Status at addr with creds on a fresh connection.
func statusWith(addr string, creds credentials.TransportCredentials) (string, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return "", err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := chatpb.NewChatClient(cc).Status(ctx, &chatpb.StatusRequest{})
	return resp.GetName(), err
}

// staticResources turns a resource map into the static form.
func staticResources(m map[resource.Type][]any) Resources {
	var r Resources
	for _, l := range m[resource.ListenerType] {
		r.Listeners = append(r.Listeners, l.(*listenerv3.Listener))
	}
	for _, c := range m[resource.ClusterType] {
		r.Clusters = append(r.Clusters, c.(*clusterv3.Cluster))
	}
	for _, e := range m[resource.EndpointType] {
		r.Endpoints = append(r.Endpoints, e.(*endpointv3.ClusterLoadAssignment))
	}
	return r
}

// newTLSStaticProxy runs a static sidecar with the certificate "sidecar"
// of dir in front of the pair a (primary), b (backup).
func newTLSStaticProxy(t *testing.T, dir string, a, b *fakeCore, interval time.Duration, unhealthy uint32) *Proxy {
	t.Helper()
	cfg := testConfig("")
	cfg.TLS = mtls.FilesIn(dir, "sidecar")
	m := map[resource.Type][]any{}
	for typ, items := range pairResources(a, b, interval, unhealthy) {
		for _, it := range items {
			m[typ] = append(m[typ], it)
		}
	}
	p, err := NewStatic(cfg, telemetry.Discard(), staticResources(m))
	if err != nil {
		t.Fatalf("NewStatic: %v", err)
	}
	startProxy(t, p)
	return p
}

// TestTLSSidecarPassesAndRefuses: under mTLS the sidecar passes a webapi's
// chat traffic to the primary, presenting its own identity to the core,
// and refuses at the handshake a plaintext client, a TLS client without a
// certificate, a certificate from another CA and a certificate of a kind
// that may not use it.
func TestTLSSidecarPassesAndRefuses(t *testing.T) {
	dir, other := certDir(t), certDir(t)
	a := newTLSFakeCore(t, dir, "core-a", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	p := newTLSStaticProxy(t, dir, a, b, 100*time.Millisecond, 2)
	addr := p.Addr().String()

	waitFor(t, 5*time.Second, "webapi reaches the primary through the sidecar", func() bool {
		name, _ := statusWith(addr, clientCreds(t, dir, "webapi"))
		return name == "a"
	})
	if got, _ := a.lastPeer.Load().(string); got != "spiffe://hachat.local/proxy/sidecar" {
		t.Fatalf("the core saw caller %q, want the sidecar's identity", got)
	}
	if name, err := statusWith(addr, clientCreds(t, dir, "operator")); err != nil || name != "a" {
		t.Fatalf("operator through the sidecar: %q %v", name, err)
	}

	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"plaintext", insecure.NewCredentials()},
		{"TLS without a certificate", credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})},
		{"webapi certificate from another CA", clientCreds(t, other, "webapi")},
		{"ucs certificate: a kind that may not use the sidecar", clientCreds(t, dir, "ucs")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metricValue(p.m.tlsRefused)
			if name, err := statusWith(addr, tc.creds); err == nil {
				t.Fatalf("answered by %q", name)
			}
			waitFor(t, 2*time.Second, "refusal counted", func() bool { return metricValue(p.m.tlsRefused) > before })
		})
	}
}

// TestTLSSidecarRefusesImpostorCore: an upstream that presents a valid
// certificate of the wrong kind (a webapi posing as core a) gets no
// traffic: its health checks and connects fail, the backup takes it.
func TestTLSSidecarRefusesImpostorCore(t *testing.T) {
	dir := certDir(t)
	a := newTLSFakeCore(t, dir, "webapi", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	p := newTLSStaticProxy(t, dir, a, b, 50*time.Millisecond, 2)
	creds := clientCreds(t, dir, "webapi")
	waitFor(t, 5*time.Second, "traffic to the real core", func() bool {
		name, _ := statusWith(p.Addr().String(), creds)
		return name == "b"
	})
	for range 5 {
		if name, _ := statusWith(p.Addr().String(), creds); name == "a" {
			t.Fatal("the impostor got traffic")
		}
	}
	for _, e := range p.Dump().Clusters[0].Endpoints {
		if e.Address == a.addr && (e.Health != "down" || !strings.Contains(e.LastError, "not allowed")) {
			t.Fatalf("impostor endpoint = %+v, want down with an identity error", e)
		}
	}
}

// TestTLSSidecarFailover: with mTLS on both sides a dead primary is still
// seen at once (refused connection, not the 10s timer), live client
// connections to it are closed, new ones go to the backup.
func TestTLSSidecarFailover(t *testing.T) {
	dir := certDir(t)
	a := newTLSFakeCore(t, dir, "core-a", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	p := newTLSStaticProxy(t, dir, a, b, 10*time.Second, 5)
	creds := clientCreds(t, dir, "webapi")
	addr := p.Addr().String()
	waitFor(t, 5*time.Second, "traffic to the primary", func() bool { n, _ := statusWith(addr, creds); return n == "a" })
	waitFor(t, 5*time.Second, "both hosts checked", func() bool {
		n := 0
		for _, e := range p.Dump().Clusters[0].Endpoints {
			if e.Health == "up" {
				n++
			}
		}
		return n == 2
	})
	live, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if resp, err := chatpb.NewChatClient(live).Status(ctx, &chatpb.StatusRequest{}); err != nil || resp.GetName() != "a" {
		t.Fatalf("long-lived connection: %v %v", resp, err)
	}
	start := time.Now()
	a.stop()
	b.set("primary", 2)
	waitFor(t, 3*time.Second, "traffic to the backup", func() bool { n, _ := statusWith(addr, creds); return n == "b" })
	t.Logf("failover over mTLS took %v", time.Since(start))
	waitClosed(t, live, "connection to the dead primary closed")
}

// TestTLSAdmin: the sidecar's admin API serves HTTPS only to the trust
// domain: the clusters dump to operators, /healthz and /metrics to any
// verified identity; no certificate, no answer.
func TestTLSAdmin(t *testing.T) {
	dir := certDir(t)
	a := newTLSFakeCore(t, dir, "core-a", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	p := newTLSStaticProxy(t, dir, a, b, 100*time.Millisecond, 2)
	base := "https://" + p.AdminAddr().String()
	get := func(cfg *tls.Config, path string) (int, string, error) {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get(base + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	op := loadSource(t, dir, "operator").ClientConfig(mtls.Allow(mtls.KindProxy))
	web := loadSource(t, dir, "webapi").ClientConfig(mtls.Allow(mtls.KindProxy))
	code, body, err := get(op, "/proxy/v1/clusters")
	var d Dump
	if err != nil || code != 200 || json.Unmarshal([]byte(body), &d) != nil || d.Node != "test-sidecar" {
		t.Fatalf("operator: clusters = %d %v %.200s", code, err, body)
	}
	if code, _, err := get(web, "/proxy/v1/clusters"); err != nil || code != http.StatusForbidden {
		t.Fatalf("webapi: clusters = %d %v, want 403", code, err)
	}
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, _, err := get(web, path); err != nil || code != 200 {
			t.Fatalf("webapi: %s = %d %v, want 200", path, code, err)
		}
	}
	if _, _, err := get(&tls.Config{InsecureSkipVerify: true}, "/healthz"); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
	resp, err := http.Get("http://" + p.AdminAddr().String() + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP got 200")
		}
	}
}

// TestTLSWithControlPlane: the sidecar takes its configuration over mTLS
// from the real control plane (whose chat cluster carries an
// UpstreamTlsContext) and passes chat traffic end to end over mTLS; a
// sidecar without a certificate gets nothing from the control plane.
func TestTLSWithControlPlane(t *testing.T) {
	dir := certDir(t)
	a := newTLSFakeCore(t, dir, "core-a", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	view := xds.NewMemoryView(
		xds.Member{Name: "core-a", Kind: xds.KindCore, Role: xds.RolePrimary, Epoch: 1, GRPCAddr: a.addr, State: xds.StateAlive},
		xds.Member{Name: "core-b", Kind: xds.KindCore, Role: xds.RoleBackup, Epoch: 1, GRPCAddr: b.addr, State: xds.StateAlive},
	)
	xcfg := xds.DefaultConfig()
	xcfg.GRPC, xcfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	xcfg.TLS = mtls.FilesIn(dir, "xds")
	s, err := xds.New(xcfg, telemetry.Discard(), view, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})

	cfg := testConfig(s.GRPCAddr())
	cfg.TLS = mtls.FilesIn(dir, "sidecar")
	p, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	startProxy(t, p)
	creds := clientCreds(t, dir, "webapi")
	waitFor(t, 10*time.Second, "chat traffic through the sidecar", func() bool {
		n, _ := statusWith(p.Addr().String(), creds)
		return n == "a"
	})
	if d := p.Dump(); !d.XDS.Connected || d.XDS.NACKs != 0 {
		t.Fatalf("ADS state = %+v", d.XDS)
	}

	plain, err := New(testConfig(s.GRPCAddr()), telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	startProxy(t, plain)
	time.Sleep(500 * time.Millisecond)
	if d := plain.Dump(); d.Configured || d.XDS.Updates != 0 {
		t.Fatalf("a plaintext sidecar got configuration from an mTLS control plane: %+v", d.XDS)
	}
}

// TestClientKindsMatchPublished: the kinds the sidecar admits are the kinds
// the Envoy flavour of the sidecar listener admits.
func TestClientKindsMatchPublished(t *testing.T) {
	if !slices.Equal(ClientKinds(), xds.SidecarClientKinds()) {
		t.Fatalf("sidecar admits %v, the published Envoy listener %v", ClientKinds(), xds.SidecarClientKinds())
	}
}

// TestTLSSidecarRotation: a rotated certificate is presented at the next
// handshake, while a connection opened before keeps working.
func TestTLSSidecarRotation(t *testing.T) {
	dir := certDir(t)
	a := newTLSFakeCore(t, dir, "core-a", "a", "primary", 1)
	b := newTLSFakeCore(t, dir, "core-b", "b", "backup", 1)
	p := newTLSStaticProxy(t, dir, a, b, 100*time.Millisecond, 2)
	addr := p.Addr().String()
	web := loadSource(t, dir, "webapi")
	served := func() string {
		c, err := tls.Dial("tcp", addr, web.ClientConfig(mtls.Allow(mtls.KindProxy)))
		if err != nil {
			return ""
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	if before == "" {
		t.Fatal("no handshake with the sidecar")
	}
	live, err := grpc.NewClient(addr, grpc.WithTransportCredentials(clientCreds(t, dir, "webapi")))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := chatpb.NewChatClient(live).Status(ctx, &chatpb.StatusRequest{})
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	ca, err := mtls.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // distinct mtimes on coarse filesystems
	if err := ca.WritePart(dir, mtls.Part{Kind: mtls.KindProxy, Name: "sidecar"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the rotated certificate served", func() bool {
		s := served()
		return s != "" && s != before
	})
	if err := call(); err != nil {
		t.Fatalf("the connection opened before the rotation: %v", err)
	}
	if live.GetState() != connectivity.Ready {
		t.Fatalf("the connection opened before the rotation is %v", live.GetState())
	}
}
