package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cluster makes a cert dir with one part of each kind used below.
func cluster(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	parts := []Part{{Kind: KindCore, Name: "core-a"}, {Kind: KindCore, Name: "core-b"}, {Kind: KindWebAPI, Name: "webapi"}, {Kind: KindOperator, Name: "operator"}}
	if _, err := Init(dir, "", parts, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func load(t *testing.T, dir, name string) *Source {
	t.Helper()
	s, err := Load(FilesIn(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serveHealth serves the gRPC health service with mTLS from src; only
// cores may call it.
func serveHealth(t *testing.T, src *Source) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mp := ServicePolicy(map[string]Policy{"/grpc.health.v1.Health/": Allow(KindCore)})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(src.ServerConfig())),
		grpc.UnaryInterceptor(UnaryInterceptor(mp, quiet)))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

func check(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestHandshakeAndAuthorization(t *testing.T) {
	dir := cluster(t)
	other := cluster(t) // another CA, same names
	addr := serveHealth(t, load(t, dir, "core-a"))
	noCert := &tls.Config{InsecureSkipVerify: true}
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		want  codes.Code
	}{
		{"core of the cluster", credentials.NewTLS(load(t, dir, "core-b").ClientConfig(Allow(KindCore))), codes.OK},
		{"webapi of the cluster: wrong kind", credentials.NewTLS(load(t, dir, "webapi").ClientConfig(nil)), codes.PermissionDenied},
		{"plaintext", insecure.NewCredentials(), codes.Unavailable},
		{"TLS without a certificate", credentials.NewTLS(noCert), codes.Unavailable},
		{"core from another CA", credentials.NewTLS(load(t, other, "core-b").ClientConfig(nil)), codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status.Code(check(t, addr, tc.creds)); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// The client refuses a server of the wrong kind too.
	err := check(t, addr, credentials.NewTLS(load(t, dir, "core-b").ClientConfig(Allow(KindUCS))))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("server of the wrong kind: %v", err)
	}
}

func TestRotationReloads(t *testing.T) {
	dir := cluster(t)
	src := load(t, dir, "core-a")
	before := src.cur.Load().leaf.SerialNumber
	if changed, err := src.Reload(); err != nil || changed {
		t.Fatalf("reload without change: %v %v", changed, err)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A half-done rotation (new key, old certificate) is refused and the
	// last good pair stays.
	time.Sleep(10 * time.Millisecond) // distinct mtimes on coarse filesystems
	is, err := ca.Issue(ID{TrustDomain: DefaultTrustDomain, Kind: KindCore, Name: "core-a"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "core-a.key"), is.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Reload(); err == nil {
		t.Fatal("a mismatched pair was accepted")
	}
	if src.cur.Load().leaf.SerialNumber.Cmp(before) != 0 {
		t.Fatal("the last good certificate was dropped")
	}
	if err := writeFileAtomic(filepath.Join(dir, "core-a.pem"), is.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := src.Reload(); err != nil || !changed {
		t.Fatalf("reload after rotation: %v %v", changed, err)
	}
	if src.cur.Load().leaf.SerialNumber.Cmp(before) == 0 {
		t.Fatal("still the old certificate")
	}
	// New handshakes use it.
	addr := serveHealth(t, src)
	conn, err := tls.Dial("tcp", addr, load(t, dir, "core-b").ClientConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(before) == 0 {
		t.Fatal("server presented the old certificate after the rotation")
	}
}

func TestMiddleware(t *testing.T) {
	dir := cluster(t)
	h := Middleware(func(r *http.Request) Policy { return Allow(KindOperator) }, quiet,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", load(t, dir, "core-a").ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	defer srv.Close()
	url := "https://" + ln.Addr().String()
	for _, tc := range []struct {
		name string
		part string
		want int
	}{{"operator", "operator", 200}, {"core: wrong kind", "core-b", 403}} {
		t.Run(tc.name, func(t *testing.T) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: load(t, dir, tc.part).ClientConfig(nil)}}
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if _, err := c.Get(url); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
}

func TestInitRefusesExistingCA(t *testing.T) {
	dir := cluster(t)
	if _, err := Init(dir, "", nil, false); !errors.Is(err, ErrExists) {
		t.Fatalf("init over a CA: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
}

func TestParseID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ID
		ok   bool
	}{
		{"spiffe://hachat.local/core/core-a", ID{"hachat.local", "core", "core-a"}, true},
		{"spiffe://hachat.local/core", ID{}, false},
		{"spiffe://hachat.local/core/a/b", ID{}, false},
		{"https://hachat.local/core/a", ID{}, false},
		{"spiffe://HACHAT/core/a", ID{}, false},
		{"", ID{}, false},
	} {
		got, err := ParseID(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseID(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func FuzzParseID(f *testing.F) {
	f.Add("spiffe://hachat.local/core/core-a")
	f.Add("spiffe://x/y/z/")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		back, err := ParseID(id.String())
		if err != nil || back != id {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}
