package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// Issue 8, point 5: more than one control plane. The mesh runs two (xds
// and xds-b); sidecars know both and keep their last configuration on disk.

// controlPlanes are the control planes of the mesh stage.
var controlPlanes = []string{"xds", "xds-b"}

// onControlPlane waits until every sidecar's ADS stream is open to the
// control plane called cp (hachat_proxy_ads_control_plane{address} = 1).
func onControlPlane(t *testing.T, c *harness.Cluster, cp string, parts ...string) {
	t.Helper()
	addr := c.Part(cp).GRPC
	harness.Eventually(t, "sidecars on "+cp, 15*time.Second, func() error {
		for _, p := range parts {
			if v := c.Metric(p, "hachat_proxy_ads_control_plane", `address="`+addr+`"`); v != 1 {
				return fmt.Errorf("%s is not connected to %s (%s)", p, cp, addr)
			}
		}
		return nil
	})
}

// memberNotAlive waits until the control plane called viewer sees the
// gossip member called name as not alive.
func memberNotAlive(t *testing.T, c *harness.Cluster, viewer, name string) {
	t.Helper()
	harness.Eventually(t, viewer+" sees "+name+" gone", 15*time.Second, func() error {
		resp, err := c.HTTP().Get(c.URL(viewer) + "/membership/v1/members")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var v struct {
			Members []struct {
				Name  string `json:"name"`
				State string `json:"state"`
			} `json:"members"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return err
		}
		for _, m := range v.Members {
			if m.Name == name && m.State == "alive" {
				return fmt.Errorf("%s still sees %s alive", viewer, name)
			}
		}
		return nil
	})
}

// cacheReady waits until the sidecar's cache file holds listeners,
// clusters and assignments.
func cacheReady(t *testing.T, c *harness.Cluster, sidecar string) {
	t.Helper()
	path := demo.XDSCacheFile(c.Layout().DataDir, sidecar)
	harness.Eventually(t, sidecar+"'s xDS cache file", 15*time.Second, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var f struct {
			Types []struct {
				Type string `json:"type"`
			} `json:"types"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return err
		}
		if len(f.Types) != 3 {
			return fmt.Errorf("%s holds %d types", path, len(f.Types))
		}
		return nil
	})
}

// statusThrough asks Chat/Status through the sidecar's listener, as a
// client of the sidecar (the operator's certificate), on a new connection.
func statusThrough(c *harness.Cluster, sidecar string) (*chatpb.StatusResponse, error) {
	cc, err := grpc.NewClient(c.Part(sidecar).GRPC, grpc.WithTransportCredentials(c.GRPCCreds()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return chatpb.NewChatClient(cc).Status(ctx, &chatpb.StatusRequest{})
}

// reaches waits until a call through the sidecar is answered by the core
// called core as primary.
func reaches(t *testing.T, c *harness.Cluster, sidecar, core string) {
	t.Helper()
	harness.Eventually(t, sidecar+" reaches primary "+core, 15*time.Second, func() error {
		st, err := statusThrough(c, sidecar)
		if err != nil {
			return err
		}
		if st.GetName() != core || st.GetRole() != "primary" {
			return fmt.Errorf("answered by %s as %s", st.GetName(), st.GetRole())
		}
		return nil
	})
}

// TestMeshOneControlPlaneKilled: under load, kill -9 of the control plane
// every sidecar is connected to changes nothing: the sidecars move to the
// other one at once, receive the versions they already hold, keep every
// client connection; a proxyless grpc-go client started now falls back to
// the surviving control plane. Then kill -9 of the primary still fails over
// through the sidecars and for the proxyless client.
func TestMeshOneControlPlaneKilled(t *testing.T) {
	c, sessions := mesh(t)
	onControlPlane(t, c, "xds", sidecars...)
	var conns, closed float64
	var serving func(string) func() error
	rec := aroundFault(t, sessions, func() {
		conns = sumOver(c, sidecars, "hachat_proxy_connections_total")
		closed = sumOver(c, sidecars, "hachat_proxy_connections_closed_on_failover_total")
		start := time.Now()
		c.Kill("xds", syscall.SIGKILL)
		onControlPlane(t, c, "xds-b", sidecars...)
		t.Logf("both sidecars on xds-b %v after the kill", time.Since(start).Round(time.Millisecond))
		if n := sumOver(c, sidecars, "hachat_proxy_connections_total"); n != conns {
			t.Errorf("client connections through the sidecars went from %v to %v with the move", conns, n)
		}
		if n := sumOver(c, sidecars, "hachat_proxy_connections_closed_on_failover_total"); n != closed {
			t.Errorf("the sidecars closed %v connections for a control plane's death", n-closed)
		}
		// A proxyless client that starts now finds xds dead and falls
		// back to xds-b (grpc-go, gRFC A71).
		serving = startProxylessClient(t, c, "e2e-proxyless-fallback")
		harness.Eventually(t, "the proxyless client reaches core-a", 30*time.Second, serving("core-a"))
		// The cores ask a live control plane as their witness.
		memberNotAlive(t, c, "xds-b", "xds")
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	harness.Eventually(t, "the proxyless client reaches core-b", 30*time.Second, serving("core-b"))
	for _, p := range sidecars {
		if n := c.Metric(p, "hachat_proxy_ads_moves_total"); n != 1 {
			t.Errorf("%s counts %v moves between control planes, want 1", p, n)
		}
		if n := c.Metric(p, "hachat_proxy_ads_nacks_total"); n != 0 {
			t.Errorf("%s NACKed %v responses", p, n)
		}
		if n := c.Metric(p, "hachat_proxy_failovers_total"); n < 1 {
			t.Errorf("%s counts %v failovers", p, n)
		}
		// The story of the move in the log.
		for _, line := range []string{"control plane lost; moving to the next one", "moved=true", "unchanged=true"} {
			if !c.LogContains(p, line) {
				t.Errorf("%s's log lacks %q", p, line)
			}
		}
	}
	onControlPlane(t, c, "xds-b", sidecars...)
}

// TestMeshNoControlPlane: under load, every control plane is killed. A
// sidecar killed and restarted now starts from its cache file and keeps
// routing; a sidecar started cold (its process stopped before, started
// again with no control plane running at all) reaches the primary from its
// cache file. Then kill -9 of the primary fails over through both on their
// own health checks.
func TestMeshNoControlPlane(t *testing.T) {
	var coldAdmin, coldListen string
	for _, p := range []*string{&coldAdmin, &coldListen} {
		a, err := demo.FreePort(false)
		if err != nil {
			t.Fatal(err)
		}
		*p = a
	}
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true, Tune: func(p demo.Plan) demo.Plan {
		// sidecar-cold is a third sidecar, like webapi's, that no client
		// uses: the test calls through it.
		src, _ := p.Part("sidecar-webapi")
		cold := src
		cold.Name, cold.HTTP, cold.GRPC, cold.Args = "sidecar-cold", coldAdmin, coldListen, nil
		for _, a := range src.Args {
			switch {
			case strings.HasPrefix(a, "--admin="):
				a = "--admin=" + coldAdmin
			case strings.HasPrefix(a, "--listen="):
				a = "--listen=" + coldListen
			default:
				a = strings.ReplaceAll(a, "sidecar-webapi", "sidecar-cold")
			}
			cold.Args = append(cold.Args, a)
		}
		p.Parts = append(p.Parts, cold)
		return p
	}})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	all := append([]string{"sidecar-cold"}, sidecars...)
	for _, p := range all {
		cacheReady(t, c, p)
	}
	reaches(t, c, "sidecar-cold", "core-a")
	c.Stop("sidecar-cold")
	sessions := c.StartSessions(t, matrixSessions)

	rec := aroundFault(t, sessions, func() {
		for _, cp := range controlPlanes {
			c.Kill(cp, syscall.SIGKILL)
		}
		// Restarted while every control plane is down: ready (healthz
		// 200) only from the cache file.
		c.Kill("sidecar-webapi", syscall.SIGKILL)
		c.Restart("sidecar-webapi")
		// Started cold with no control plane running at all.
		c.Restart("sidecar-cold")
		reaches(t, c, "sidecar-cold", "core-a")
		for _, p := range []string{"sidecar-webapi", "sidecar-cold"} {
			if n := c.Metric(p, "hachat_proxy_xds_cache_loads_total", `result="ok"`); n != 1 {
				t.Errorf("%s: %v good cache loads at start, want 1", p, n)
			}
			if n := c.Metric(p, "hachat_proxy_ads_connected"); n != 0 {
				t.Errorf("%s: ADS connected %v with every control plane dead", p, n)
			}
		}
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
		reaches(t, c, "sidecar-cold", "core-b")
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	for _, p := range []string{"sidecar-webapi", "sidecar-cold"} {
		if !c.LogContains(p, "starting from the cached xDS configuration") {
			t.Errorf("%s's log does not tell that it started from its cache", p)
		}
	}
}
