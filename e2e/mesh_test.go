package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// Issue 4: webapi and interaction reach the cores only through their own
// sidecar, steered by the xDS control plane. Each test runs the workload
// checker around one fault.

// mesh starts the stage-4 cluster and its sessions, with mTLS on every
// hop (webapi and interaction to their sidecars, sidecars to the cores and
// to the control plane) as the demo runs it.
func mesh(t *testing.T) (*harness.Cluster, []*harness.Session) {
	t.Helper()
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	for _, p := range []string{"webapi", "interaction"} {
		for _, a := range c.Part(p).Args {
			if strings.HasPrefix(a, "--core=") && strings.Contains(a, ",") {
				t.Fatalf("%s holds core addresses: %s", p, a)
			}
		}
	}
	return c, c.StartSessions(t, matrixSessions)
}

// xdsAdmin calls the control plane's admin API.
func xdsAdmin(t *testing.T, c *harness.Cluster, method, path string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, c.URL("xds")+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.AdminToken())
	resp, err := c.HTTP().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func sumOver(c *harness.Cluster, parts []string, metric string) float64 {
	var sum float64
	for _, p := range parts {
		v := c.Metric(p, metric)
		sum += v
	}
	return sum
}

var sidecars = []string{"sidecar-webapi", "sidecar-interaction"}

// TestMeshFailoverThroughSidecars: kill -9 of the primary with the control
// plane up.
func TestMeshFailoverThroughSidecars(t *testing.T) {
	c, sessions := mesh(t)
	rec := aroundFault(t, sessions, func() {
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	if n := sumOver(c, sidecars, "hachat_proxy_failovers_total"); n < 1 {
		t.Errorf("the sidecars count %v failovers", n)
	}
}

// TestMeshControlPlaneDown: every control plane dies first; the sidecars
// keep their last configuration and fail over on their own health checks.
func TestMeshControlPlaneDown(t *testing.T) {
	c, sessions := mesh(t)
	rec := aroundFault(t, sessions, func() {
		c.Kill("xds", syscall.SIGKILL)
		c.Kill("xds-b", syscall.SIGKILL)
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
}

// TestMeshControlPlaneRestart: the control plane restarts; the sidecars
// resync without dropping a client connection and nothing fails over.
func TestMeshControlPlaneRestart(t *testing.T) {
	c, sessions := mesh(t)
	var connsBefore, closedBefore float64
	rec := aroundFault(t, sessions, func() {
		connsBefore = sumOver(c, sidecars, "hachat_proxy_connections_total")
		closedBefore = sumOver(c, sidecars, "hachat_proxy_connections_closed_on_failover_total")
		c.Kill("xds", syscall.SIGKILL)
		c.Restart("xds")
		harness.Eventually(t, "both sidecars back on ADS", 15*time.Second, func() error {
			if n := sumOver(c, sidecars, "hachat_proxy_ads_connected"); n != 2 {
				return fmt.Errorf("%v sidecars connected", n)
			}
			return nil
		})
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
	if n := sumOver(c, sidecars, "hachat_proxy_connections_total"); n != connsBefore {
		t.Errorf("client connections through the sidecars went from %v to %v: some were dropped and remade", connsBefore, n)
	}
	if n := sumOver(c, sidecars, "hachat_proxy_connections_closed_on_failover_total"); n != closedBefore {
		t.Errorf("the sidecars closed %v connections for a control-plane restart", n-closedBefore)
	}
	if role := c.Role("core-a"); role != "primary" {
		t.Errorf("core-a is %q after a control-plane restart", role)
	}
}

// TestMeshSidecarRestart: webapi's sidecar is killed and restarted; its
// client reconnects and resumes, nothing is lost.
func TestMeshSidecarRestart(t *testing.T) {
	c, sessions := mesh(t)
	rec := aroundFault(t, sessions, func() {
		c.Kill("sidecar-webapi", syscall.SIGKILL)
		c.Restart("sidecar-webapi")
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
}

// TestMeshBadResourceNACK: the control plane publishes a bad resource; the
// sidecars NACK it and keep serving with the last good configuration, and
// still fail over while it lasts.
func TestMeshBadResourceNACK(t *testing.T) {
	c, sessions := mesh(t)
	rec := aroundFault(t, sessions, func() {
		if code := xdsAdmin(t, c, http.MethodPost, "/xds/v1/admin/bad-resource", nil); code != http.StatusOK {
			t.Fatalf("bad-resource fault: HTTP %d", code)
		}
		harness.Eventually(t, "both sidecars NACK", 15*time.Second, func() error {
			if n := sumOver(c, sidecars, "hachat_proxy_ads_nacks_total"); n < 2 {
				return fmt.Errorf("%v NACKs", n)
			}
			return nil
		})
		var st struct {
			LastNack *struct {
				Node  string `json:"node"`
				Error string `json:"error"`
			} `json:"lastNack"`
		}
		xdsAdmin(t, c, http.MethodGet, "/xds/v1/status", &st)
		if st.LastNack == nil || st.LastNack.Error == "" {
			t.Errorf("the control plane's status records no NACK")
		}
		// The last good configuration still fails over.
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
		if code := xdsAdmin(t, c, http.MethodDelete, "/xds/v1/admin/bad-resource", nil); code != http.StatusOK {
			t.Errorf("end the fault: HTTP %d", code)
		}
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
}

// TestMeshSwitchoverViaControlPlane: a planned switchover through the
// control plane's admin API; no client sees an error.
func TestMeshSwitchoverViaControlPlane(t *testing.T) {
	c, sessions := mesh(t)
	rec := aroundFault(t, sessions, func() {
		var out struct {
			NewPrimary  string `json:"newPrimary"`
			PauseMicros int64  `json:"pauseMicros"`
		}
		if code := xdsAdmin(t, c, http.MethodPost, "/xds/v1/switchover", &out); code != http.StatusOK {
			t.Fatalf("switchover: HTTP %d", code)
		}
		t.Logf("switchover: new primary %s, pause %dµs", out.NewPrimary, out.PauseMicros)
		c.WaitRole("core-b", "primary", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
	// Without the token the route refuses.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.URL("xds")+"/xds/v1/switchover", nil)
	resp, err := c.HTTP().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("switchover without a token: HTTP %d, want 403", resp.StatusCode)
	}
}

// TestProxylessGRPC: grpc-go's own xDS client (not ours) dials
// xds:///chatcore with a bootstrap from `hachat xds grpc-bootstrap --state`,
// reaches the primary's health service, and after kill -9 of the primary
// reaches the new one. The cluster runs mTLS everywhere: the bootstrap
// carries "tls" channel credentials and the file_watcher certificate
// provider with the webapi's certificate (from the state file's cert dir),
// the client dials with grpc-go's xDS credentials, which take the TLS
// settings from the chat cluster the control plane publishes; the cores
// serve only mTLS, so every answer went over mTLS with the webapi's
// identity. grpc-go reads its bootstrap at init, so the client runs in a
// child process (this test binary, see xdsClientMain).
func TestProxylessGRPC(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	serving := startProxylessClient(t, c, "e2e-proxyless")
	harness.Eventually(t, "the proxyless client reaches core-a", 30*time.Second, serving("core-a"))
	c.Kill("core-a", syscall.SIGKILL)
	harness.Eventually(t, "the proxyless client reaches core-b", 30*time.Second, serving("core-b"))
}

// startProxylessClient writes the grpc-go bootstrap `hachat xds
// grpc-bootstrap --state` prints for the cluster (every control plane of the
// state file, in order) with the webapi's certificate, starts the proxyless
// client (this test binary, see xdsClientMain) on it, and returns a
// condition factory: serving(name) holds once the client's last answer came
// from the core called name. The client is stopped when the test ends.
func startProxylessClient(t *testing.T, c *harness.Cluster, nodeID string) (serving func(name string) func() error) {
	t.Helper()
	var stderrBoot strings.Builder
	bcmd := exec.Command(harness.Binary(t), "xds", "grpc-bootstrap", "--state", c.Supervisor().StatePath(),
		"--cert-dir", c.Layout().CertDir, "--cert-name", "webapi", "--node-id", nodeID)
	bcmd.Stderr = &stderrBoot
	boot, err := bcmd.Output()
	if err != nil {
		t.Fatalf("hachat xds grpc-bootstrap: %v: %s", err, stderrBoot.String())
	}
	for _, want := range []string{`"type": "tls"`, `"plugin_name": "file_watcher"`,
		`"server_uri": "` + c.Part("xds").GRPC + `"`, `"server_uri": "` + c.Part("xds-b").GRPC + `"`} {
		if !strings.Contains(string(boot), want) {
			t.Fatalf("bootstrap lacks %s:\n%s", want, boot)
		}
	}
	bootPath := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(bootPath, boot, 0o644); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, self, "-test.run=^$")
	cmd.Env = append(os.Environ(), xdsClientEnv+"=1", xdsClientTLSEnv+"=1", "GRPC_XDS_BOOTSTRAP="+bootPath, "GRPC_XDS_BOOTSTRAP_CONFIG=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("xDS client %s stderr:\n%s", nodeID, stderr.String())
		}
	})
	// The child prints "<core name> <role>" after every successful health
	// check + Status call; errors as "error ...".
	var mu sync.Mutex
	var lastName string
	lines := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] != "error" {
				mu.Lock()
				lastName = f[0]
				mu.Unlock()
			}
			select {
			case lines <- struct{}{}:
			default:
			}
		}
	}()
	return func(name string) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if lastName != name {
				return fmt.Errorf("last answer from %q", lastName)
			}
			return nil
		}
	}
}
