package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
)

// tlsCertDir makes a cert dir with a part of every kind the tests use.
func tlsCertDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	parts := []mtls.Part{
		{Kind: mtls.KindCore, Name: "core-a"}, {Kind: mtls.KindCore, Name: "core-b"},
		{Kind: mtls.KindXDS, Name: "xds"}, {Kind: mtls.KindProxy, Name: "sidecar"},
		{Kind: mtls.KindWebAPI, Name: "webapi"}, {Kind: mtls.KindOperator, Name: "operator"},
		{Kind: mtls.KindUCS, Name: "ucs"}, {Kind: mtls.KindEnvoy, Name: "envoy"},
	}
	if _, err := mtls.Init(dir, "", parts, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func tlsSource(t *testing.T, dir, name string) *mtls.Source {
	t.Helper()
	s, err := mtls.Load(mtls.FilesIn(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tlsHTTPClient(t *testing.T, f mtls.Files) *http.Client {
	t.Helper()
	s, err := mtls.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: s.ClientConfig(mtls.Allow(mtls.KindXDS))}}
}

// upstreamTLSOf returns the UpstreamTlsContext of a cluster.
func upstreamTLSOf(t *testing.T, c *cluster.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	ts := c.GetTransportSocket()
	if ts.GetName() != TransportSocketTLS {
		t.Fatalf("cluster transport socket = %v", ts)
	}
	var u tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&u); err != nil {
		t.Fatal(err)
	}
	return &u
}

func TestBuildTLS(t *testing.T) {
	plain, err := Build(testConfig(), pair())
	if err != nil {
		t.Fatal(err)
	}
	if plain.Clusters[0].(*cluster.Cluster).GetTransportSocket() != nil || plain.EnvoyClusters != nil || plain.EnvoyListeners != nil {
		t.Fatal("TLS settings published without a trust domain")
	}
	cfg := testConfig()
	cfg.TrustDomain = "example.org"
	r, err := Build(cfg, pair())
	if err != nil {
		t.Fatal(err)
	}
	if r.Version == plain.Version {
		t.Fatal("TLS does not change the version")
	}
	// grpc-go's and the sidecar's flavour: certificate provider instances,
	// the cores' SPIFFE prefix in both SAN lists.
	u := upstreamTLSOf(t, r.Clusters[0].(*cluster.Cluster))
	c := u.GetCommonTlsContext()
	vc := c.GetValidationContext()
	if c.GetTlsCertificateProviderInstance().GetInstanceName() != CertProviderInstance ||
		vc.GetCaCertificateProviderInstance().GetInstanceName() != CertProviderInstance ||
		len(c.GetTlsCertificateSdsSecretConfigs()) != 0 || c.GetAlpnProtocols()[0] != "h2" {
		t.Fatalf("provider flavour = %v", c)
	}
	typed := vc.GetMatchTypedSubjectAltNames()
	if len(typed) != 1 || typed[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI ||
		typed[0].GetMatcher().GetPrefix() != "spiffe://example.org/core/" ||
		vc.GetMatchSubjectAltNames()[0].GetPrefix() != "spiffe://example.org/core/" { //nolint:staticcheck // grpc-go's field
		t.Fatalf("SAN matchers = %v", vc)
	}
	// Envoy's flavour: SDS secrets of its bootstrap, typed SAN matchers
	// only, and a sidecar listener that requires a client certificate.
	eu := upstreamTLSOf(t, r.EnvoyClusters[0].(*cluster.Cluster))
	ec := eu.GetCommonTlsContext()
	if ec.GetTlsCertificateProviderInstance() != nil || ec.GetTlsCertificateSdsSecretConfigs()[0].GetName() != SDSCertSecret ||
		ec.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName() != SDSCASecret ||
		len(ec.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames()) != 0 { //nolint:staticcheck
		t.Fatalf("envoy flavour = %v", ec)
	}
	var sidecar *listener.Listener
	for _, l := range r.EnvoyListeners {
		if l.(*listener.Listener).GetName() == ListenerName {
			sidecar = l.(*listener.Listener)
		}
	}
	var d tlsv3.DownstreamTlsContext
	if err := sidecar.GetFilterChains()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(&d); err != nil || !d.GetRequireClientCertificate().GetValue() {
		t.Fatalf("envoy sidecar listener TLS = %v %v", &d, err)
	}
	if got := len(d.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()); got != len(SidecarClientKinds()) {
		t.Fatalf("envoy sidecar listener admits %d kinds", got)
	}
	// The fault breaks both flavours.
	f := withFault(r)
	if err := ValidateAll(f); !errors.Is(err, ErrInvalidResource) {
		t.Fatalf("fault with TLS validates: %v", err)
	}
}

// dialADSWith opens an ADS stream with creds and asks for every cluster.
func dialADSWith(t *testing.T, addr string, creds credentials.TransportCredentials, node *core.Node) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	// A Send that finds the stream already ended by the server (a refused
	// identity) fails with io.EOF; the stream's status is what Recv returns.
	if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return st.Recv()
}

func TestTLSServer(t *testing.T) {
	dir, other := tlsCertDir(t), tlsCertDir(t)
	cfg := testConfig()
	cfg.TLS = mtls.FilesIn(dir, "xds")
	sw := &fakeSwitchover{}
	s := startServer(t, cfg, NewMemoryView(pair()...), Options{Switchover: sw.call, Handlers: map[string]http.Handler{
		membership.ReachablePath: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("reachable")) }),
	}})
	ads := func(dir, name string) credentials.TransportCredentials {
		return credentials.NewTLS(tlsSource(t, dir, name).ClientConfig(mtls.Allow(mtls.KindXDS)))
	}

	t.Run("ADS", func(t *testing.T) {
		resp, err := dialADSWith(t, s.GRPCAddr(), ads(dir, "sidecar"), &core.Node{Id: "sidecar-1"})
		if err != nil {
			t.Fatalf("sidecar: %v", err)
		}
		var c cluster.Cluster
		if err := resp.GetResources()[0].UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if upstreamTLSOf(t, &c).GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName() != CertProviderInstance {
			t.Fatalf("sidecar got cluster %v", &c)
		}
		resp, err = dialADSWith(t, s.GRPCAddr(), ads(dir, "envoy"), &core.Node{Id: "envoy-1", UserAgentName: "envoy"})
		if err != nil {
			t.Fatalf("envoy: %v", err)
		}
		if err := resp.GetResources()[0].UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if upstreamTLSOf(t, &c).GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName() != SDSCertSecret {
			t.Fatalf("envoy got cluster %v", &c)
		}
		for _, tc := range []struct {
			name  string
			creds credentials.TransportCredentials
			want  codes.Code
		}{
			{"ucs: wrong kind", ads(dir, "ucs"), codes.PermissionDenied},
			{"plaintext", insecure.NewCredentials(), codes.Unavailable},
			{"TLS without a certificate", credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}), codes.Unavailable},
			{"sidecar from another CA", ads(other, "sidecar"), codes.Unavailable},
		} {
			if _, err := dialADSWith(t, s.GRPCAddr(), tc.creds, &core.Node{Id: "x"}); status.Code(err) != tc.want {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
		}
	})

	t.Run("admin", func(t *testing.T) {
		do := func(name, method, path string) (int, error) {
			var c *http.Client
			switch name {
			case "":
				c = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
			default:
				c = tlsHTTPClient(t, mtls.FilesIn(dir, name))
			}
			req, _ := http.NewRequest(method, "https://"+s.HTTPAddr()+path, nil)
			req.Header.Set("Authorization", "Bearer s3cret")
			resp, err := c.Do(req)
			if err != nil {
				return 0, err
			}
			resp.Body.Close()
			return resp.StatusCode, nil
		}
		for _, tc := range []struct {
			who, method, path string
			want              int
		}{
			{"operator", "GET", StatusPath, 200},
			{"operator", "POST", SwitchoverPath, 200},
			{"webapi", "POST", SwitchoverPath, 403},
			{"core-a", "POST", SwitchoverPath, 403},
			{"webapi", "GET", StatusPath, 403},
			{"core-a", "GET", membership.ReachablePath, 200},
			{"webapi", "GET", membership.ReachablePath, 403},
			{"webapi", "GET", "/healthz", 200},
			{"ucs", "GET", "/metrics", 200},
		} {
			if code, err := do(tc.who, tc.method, tc.path); err != nil || code != tc.want {
				t.Errorf("%s %s %s = %d %v, want %d", tc.who, tc.method, tc.path, code, err, tc.want)
			}
		}
		if sw.token != "s3cret" {
			t.Errorf("the operator's switchover did not reach the core")
		}
		if _, err := do("", "GET", "/healthz"); err == nil {
			t.Error("a client without a certificate got an answer")
		}
		if resp, err := http.Get("http://" + s.HTTPAddr() + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Error("plain HTTP got 200")
			}
		}
	})
}

// TestSwitchoverOverMTLS: the control plane calls a core's Switchover with
// its own certificate and requires the core's identity: a server with a
// webapi certificate is not called.
func TestSwitchoverOverMTLS(t *testing.T) {
	dir := tlsCertDir(t)
	serve := func(cert string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsSource(t, dir, cert).ServerConfig())))
		chatpb.RegisterChatServer(srv, &chatStub{token: "s3cret"})
		go srv.Serve(ln)
		t.Cleanup(srv.Stop)
		return ln.Addr().String()
	}
	sw := dialSwitchover(telemetry.Discard(), tlsSource(t, dir, "xds"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if resp, err := sw(ctx, serve("core-a"), "s3cret"); err != nil || resp.GetNewEpoch() != 5 {
		t.Fatalf("switchover at a core: %v %v", resp, err)
	}
	if _, err := sw(ctx, serve("webapi"), "s3cret"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("switchover at an impostor: %v", err)
	}
}
