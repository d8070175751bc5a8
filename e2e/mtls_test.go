package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/mtls"
)

// mtlsPair starts the stage-3 cluster with mTLS everywhere.
func mtlsPair(t *testing.T) (*harness.Cluster, []*harness.Session) {
	return pair(t, harness.Options{TLS: true})
}

// partCreds returns gRPC credentials presenting the named part's
// certificate from the cluster's cert dir.
func partCreds(t *testing.T, certDir, name string) credentials.TransportCredentials {
	t.Helper()
	src, err := mtls.Load(mtls.FilesIn(certDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(src.ClientConfig(nil))
}

func statusCall(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err = chatpb.NewChatClient(conn).Status(ctx, &chatpb.StatusRequest{})
	return err
}

// TestMTLSChatAndFailover runs the failure matrix's kill -9 row with mTLS
// on every internal hop (webapi and interaction to the cores, core to core,
// cores to UCS and the witness): the chat goes on and nothing is lost.
func TestMTLSChatAndFailover(t *testing.T) {
	c, sessions := mtlsPair(t)
	killPrimaryUnderLoad(t, c, sessions, nil)
}

// killPrimaryUnderLoad runs the workload on sessions, and in its middle
// calls before (when set), kills core-a and waits for core-b to promote;
// then checks that every message was acknowledged and is in every view.
func killPrimaryUnderLoad(t *testing.T, c *harness.Cluster, sessions []*harness.Session, before func()) {
	t.Helper()
	// A fault with a before (a rotation: every part's reload is polled each
	// second) takes a second or more; at the matrix's pace the workload
	// could end before the kill, and no message would follow it.
	interval := 30 * time.Millisecond
	if before != nil {
		interval = 120 * time.Millisecond
	}
	rec := aroundFaultEvery(t, sessions, interval, func(*harness.Workload) {
		if before != nil {
			before()
		}
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
}

// foreignCA makes a cert dir of another CA (same trust domain) holding an
// operator certificate and parts: strangers with valid-looking identities.
func foreignCA(t *testing.T, parts ...mtls.Part) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := mtls.Init(dir, "", append(parts, mtls.Part{Kind: mtls.KindOperator, Name: "operator"}), false); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestMTLSRefusals: a plaintext client, a TLS client without a certificate
// and a certificate from another CA are refused by every core, UCS and the
// witness; a webapi certificate cannot replicate from a core nor write to
// UCS; an operator certificate may ask a core's status.
func TestMTLSRefusals(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StagePair, TLS: true})
	certDir := c.Layout().CertDir
	other := foreignCA(t, mtls.Part{Kind: mtls.KindCore, Name: "core-x"})
	refuseStrangersGRPC(t, map[string]string{"core-a": c.Part("core-a").GRPC, "core-b": c.Part("core-b").GRPC}, other, "core-x")
	for _, core := range []string{"core-a", "core-b"} {
		addr := c.Part(core).GRPC
		t.Run(core+"/operator", func(t *testing.T) {
			if err := statusCall(t, addr, c.GRPCCreds()); err != nil {
				t.Fatalf("Status as the operator: %v", err)
			}
		})
		t.Run(core+"/webapi cannot replicate", func(t *testing.T) {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(partCreds(t, certDir, "webapi")))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			stream, err := chatpb.NewReplicationClient(conn).Replicate(t.Context())
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("replicate with a webapi certificate: %v, want PermissionDenied", err)
			}
		})
	}
	refuseStrangersHTTP(t, c, []string{"ucs", "witness"}, other)
	t.Run("ucs/webapi cannot write", func(t *testing.T) {
		body := strings.NewReader(`{"service":"hachat","epoch":99,"writer":"mallory","events":[]}`)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.URL("ucs")+"/ucs/v1/transcripts/x", body)
		req.Header.Set("Content-Type", "application/json")
		resp, err := clientOf(t, certDir, "webapi").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("save with a webapi certificate: HTTP %d, want 403", resp.StatusCode)
		}
	})
	t.Run("witness/webapi cannot ask reachability", func(t *testing.T) {
		resp, err := clientOf(t, certDir, "webapi").Get(c.URL("witness") + "/membership/v1/reachable?addr=" + c.Part("core-a").GRPC)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("reachability with a webapi certificate: HTTP %d, want 403", resp.StatusCode)
		}
	})
}

// clientOf returns an HTTP client presenting the named certificate of dir.
func clientOf(t *testing.T, dir, name string) *http.Client {
	t.Helper()
	src, err := mtls.Load(mtls.FilesIn(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return src.HTTPClient(nil, 5*time.Second)
}

// TestMTLSRotationUnderLoad reissues every part's certificate (same CA)
// in the middle of chats: the parts reload their files, new connections
// use the new certificates, and the workload checker finds nothing lost.
func TestMTLSRotationUnderLoad(t *testing.T) {
	c, sessions := mtlsPair(t)
	certDir := c.Layout().CertDir
	ca, err := mtls.LoadCA(certDir)
	if err != nil {
		t.Fatal(err)
	}
	var rotated []string
	// The rotation happens mid-chat; then new connections carry the new
	// certificates: the cores' replication reconnects after a kill -9 of the
	// primary, over the new ones.
	killPrimaryUnderLoad(t, c, sessions, func() {
		for _, p := range c.Plan().Parts {
			kind := demo.CertKind(p.Kind)
			if kind == "" {
				continue
			}
			if err := ca.WritePart(certDir, mtls.Part{Kind: kind, Name: p.Name}, time.Hour); err != nil {
				t.Error(err)
			}
			rotated = append(rotated, p.Name)
		}
		// Every part logs the reload; wait for each.
		for _, name := range rotated {
			harness.Eventually(t, name+" reloaded its certificate", 10*time.Second, func() error {
				if !c.LogContains(name, "certificate files reloaded") {
					return fmt.Errorf("no reload in %s", filepath.Base(c.Supervisor().LogPath(name)))
				}
				return nil
			})
		}
	})
}

// TestMTLSRefusalsMesh: in the mesh (control plane, sidecars), a plaintext
// client, a TLS client without a certificate and a certificate from another
// CA are refused by the control plane's ADS and admin API and by every
// sidecar's listener and admin API, as by the cores and UCS; a webapi
// certificate cannot switch over through the control plane, and a ucs
// certificate cannot use a sidecar.
func TestMTLSRefusalsMesh(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true})
	certDir := c.Layout().CertDir
	other := foreignCA(t, mtls.Part{Kind: mtls.KindWebAPI, Name: "webapi"})
	refuseStrangersGRPC(t, map[string]string{"xds ADS": c.Part("xds").GRPC, "xds-b ADS": c.Part("xds-b").GRPC, "core-a": c.Part("core-a").GRPC, "core-b": c.Part("core-b").GRPC,
		"sidecar-webapi": c.Part("sidecar-webapi").GRPC, "sidecar-interaction": c.Part("sidecar-interaction").GRPC}, other, "webapi")
	// The sidecar carries a webapi certificate's calls to the primary, and
	// refuses a kind that has no business there.
	t.Run("sidecar-webapi/webapi passes", func(t *testing.T) {
		if err := statusCall(t, c.Part("sidecar-webapi").GRPC, partCreds(t, certDir, "webapi")); err != nil {
			t.Fatalf("status through the sidecar with the webapi certificate: %v", err)
		}
	})
	t.Run("sidecar-webapi/ucs refused", func(t *testing.T) {
		if err := statusCall(t, c.Part("sidecar-webapi").GRPC, partCreds(t, certDir, "ucs")); err == nil {
			t.Fatal("a ucs certificate used the sidecar")
		}
	})
	refuseStrangersHTTP(t, c, []string{"xds", "xds-b", "sidecar-webapi", "sidecar-interaction", "ucs"}, other)
	t.Run("xds/webapi cannot switch over", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.URL("xds")+"/xds/v1/switchover", nil)
		req.Header.Set("Authorization", "Bearer "+c.AdminToken())
		resp, err := clientOf(t, certDir, "webapi").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("switchover with a webapi certificate and the admin token: HTTP %d, want 403", resp.StatusCode)
		}
		if c.Role("core-a") != "primary" {
			t.Fatal("the refused switchover moved the primary")
		}
	})
}

// refuseStrangersGRPC checks that every gRPC target refuses, at the
// handshake, a plaintext client, a TLS client without a certificate and the
// certificate foreign (of the cert dir other, another CA).
func refuseStrangersGRPC(t *testing.T, targets map[string]string, other, foreign string) {
	t.Helper()
	noCert := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	for name, addr := range targets {
		for _, tc := range []struct {
			what  string
			creds credentials.TransportCredentials
		}{
			{"plaintext", insecure.NewCredentials()},
			{"TLS without a certificate", noCert},
			{"certificate of another CA", partCreds(t, other, foreign)},
		} {
			t.Run(name+"/"+tc.what, func(t *testing.T) {
				if err := statusCall(t, addr, tc.creds); status.Code(err) != codes.Unavailable {
					t.Fatalf("got %v, want the handshake refused (Unavailable)", err)
				}
			})
		}
	}
}

// refuseStrangersHTTP checks that the HTTPS address of every part answers
// no 200 to a plaintext client, a TLS client without a certificate and the
// operator certificate of another CA (of the cert dir other).
func refuseStrangersHTTP(t *testing.T, c *harness.Cluster, parts []string, other string) {
	t.Helper()
	for _, part := range parts {
		url := c.URL(part) + "/healthz"
		if !strings.HasPrefix(url, "https://") {
			t.Fatalf("%s serves %s, want https", part, url)
		}
		for _, tc := range []struct {
			what   string
			client *http.Client
			url    string
		}{
			{"plaintext", &http.Client{Timeout: 3 * time.Second}, "http://" + strings.TrimPrefix(url, "https://")},
			{"TLS without a certificate", &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}, url},
			{"certificate of another CA", clientOf(t, other, "operator"), url},
		} {
			t.Run(part+"/"+tc.what, func(t *testing.T) {
				resp, err := tc.client.Get(tc.url)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						t.Fatalf("GET %s answered 200", tc.url)
					}
				}
			})
		}
	}
}

// TestWebHTTPS: webapi and interaction serve HTTPS with their certificate
// when started with --https (browsers trust the cluster CA once imported):
// the page and the API answer over TLS to a client that trusts ca.pem, and
// plain HTTP gets no page.
func TestWebHTTPS(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StagePair, TLS: true,
		Tune: func(p demo.Plan) demo.Plan {
			p = p.With("webapi", "--https").With("interaction", "--https")
			for i := range p.Parts {
				if k := p.Parts[i].Kind; k == demo.KindWebAPI || k == demo.KindInteraction {
					p.Parts[i].TLS = true // the supervisor's readiness check goes over TLS
				}
			}
			return p
		}})
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(c.Layout().CertDir, "ca.pem"))
	if err != nil || !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("ca.pem: %v", err)
	}
	browser := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, part := range []string{"webapi", "interaction"} {
		addr := c.Part(part).HTTP
		page := map[string]string{"webapi": "/", "interaction": "/agent"}[part]
		resp, err := browser.Get("https://" + addr + page)
		if err != nil {
			t.Fatalf("%s over HTTPS: %v", part, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			t.Fatalf("%s over HTTPS: HTTP %d, TLS %v", part, resp.StatusCode, resp.TLS != nil)
		}
		if resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + addr + page); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("%s answered a page over plain HTTP with --https", part)
			}
		}
	}
}
