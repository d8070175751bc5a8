package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/mtls"
)

// The edge (issue 8, point 4): customers and agents reach every instance
// through one address each; a killed webapi instance leaves rotation at
// once and its customers carry on through the other; a killed edge comes
// back with `demo restart edge` and clients reconnect.

const (
	edgeSessions = 4
	edgeMessages = 45
)

func startEdgeCluster(t *testing.T) (*harness.Cluster, []*harness.Session) {
	t.Helper()
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	webapis := []string{c.Part("webapi").HTTP, c.Part("webapi-2").HTTP}
	harness.Eventually(t, "the edge sees both webapi instances up", 20*time.Second, func() error {
		up, err := c.UpstreamsUp("edge", "webapi")
		if err != nil {
			return err
		}
		if len(up) != 2 {
			return fmt.Errorf("up %v, want %v", up, webapis)
		}
		return nil
	})
	ep := c.Entrypoints()
	if ep.Customer != "http://"+c.Part("edge").GRPC || ep.Customer == c.WebAPIURL() {
		t.Fatalf("entrypoints %+v: the customers' address is not the edge's", ep)
	}
	return c, c.StartSessionsVia(t, c.EdgeCustomer(), c.EdgeAgents(), edgeSessions)
}

// sseProbe holds a customer's push channel open through the edge the way
// EventSource does, and each time the stream is cut reopens it with
// Last-Event-ID = the last index seen; it records whether the first event
// of the resumed stream is the very next index.
type sseProbe struct {
	mu      sync.Mutex
	cuts    int
	resumed int
	wrong   []string
}

func probeSSE(ctx context.Context, wg *sync.WaitGroup, p *sseProbe, chat *harness.Chat) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		var last uint64
		resuming := false
		for ctx.Err() == nil {
			var s *harness.Stream
			var err error
			if last == 0 {
				s, err = chat.Events(ctx, 1)
			} else {
				s, err = chat.EventsAfter(ctx, last)
			}
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond): // EventSource's retry
				}
				continue
			}
			for {
				ev, err := s.Next(ctx)
				if err != nil {
					break
				}
				if ev.ID == "" {
					continue
				}
				id, err := strconv.ParseUint(ev.ID, 10, 64)
				if err != nil {
					continue
				}
				if resuming {
					resuming = false
					p.mu.Lock()
					p.resumed++
					if id != last+1 {
						p.wrong = append(p.wrong, fmt.Sprintf("chat %s: resumed after %d with %d", chat.ChatID, last, id))
					}
					p.mu.Unlock()
				}
				last = id
			}
			s.Close()
			if ctx.Err() != nil {
				return
			}
			p.mu.Lock()
			p.cuts++
			p.mu.Unlock()
			resuming = last > 0
		}
	}()
}

func (p *sseProbe) report(t *testing.T, minCuts int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("push channels through the edge: %d cut, %d resumed with Last-Event-ID", p.cuts, p.resumed)
	if p.cuts < minCuts {
		t.Errorf("%d push channels cut, want at least %d: the fault did not reach them", p.cuts, minCuts)
	}
	if p.resumed < p.cuts {
		t.Errorf("%d cut push channels, only %d resumed", p.cuts, p.resumed)
	}
	for _, w := range p.wrong {
		t.Error(w)
	}
}

// edgeWorkload runs the workload through the edge with SSE probes, calls
// fault once a third is acknowledged, and checks the record: every message
// acknowledged, each exactly once and in order in every view and in UCS.
// It returns the record.
func edgeWorkload(t *testing.T, c *harness.Cluster, sessions []*harness.Session, minCuts int, fault func()) *harness.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pctx, pcancel := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	probe := &sseProbe{}
	// Two probes per chat: the edge spreads new connections by least
	// connections, so opened one after the other they land on both
	// instances.
	for _, s := range sessions {
		probeSSE(pctx, &pwg, probe, s.Customer)
		probeSSE(pctx, &pwg, probe, s.Customer)
	}
	w := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: edgeMessages, Interval: 30 * time.Millisecond})
	total := len(sessions) * 2 * edgeMessages
	if err := w.WaitAcked(ctx, total/3); err != nil {
		t.Fatal(err)
	}
	t.Logf("fault after %d acknowledged messages", w.Acked())
	fault()
	rec := w.Wait()
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCS()})
	if rec.Acked() != total {
		t.Errorf("%d of %d messages acknowledged: a customer or agent saw a failure it could not retry through", rec.Acked(), total)
	}
	pcancel()
	pwg.Wait()
	probe.report(t, minCuts)
	return rec
}

func TestEdgeKillWebAPI(t *testing.T) {
	c, sessions := startEdgeCluster(t)
	killed := c.Part("webapi-2").HTTP
	edgeWorkload(t, c, sessions, 1, func() {
		before := c.Metric("edge", "hachat_proxy_upstream_changes_total", `change="down"`, `cluster="webapi"`)
		c.Kill("webapi-2", syscall.SIGKILL)
		start := time.Now()
		err := harness.Poll(5*time.Second, func() error {
			up, err := c.UpstreamsUp("edge", "webapi")
			if err != nil {
				return err
			}
			for _, a := range up {
				if a == killed {
					return errors.New("still in rotation")
				}
			}
			if len(up) != 1 {
				return fmt.Errorf("up %v", up)
			}
			return nil
		})
		took := time.Since(start)
		t.Logf("killed webapi-2 out of the edge's rotation after %v", took)
		if err != nil || took > time.Second {
			t.Errorf("webapi-2 left rotation after %v (%v), want within 1s", took, err)
		}
		if after := c.Metric("edge", "hachat_proxy_upstream_changes_total", `change="down"`, `cluster="webapi"`); after <= before {
			t.Errorf("upstream changes (down) %v -> %v: the edge did not count the change", before, after)
		}
	})
	if !c.LogContains("edge", "upstream host down") && !c.LogContains("edge", "marking it down") {
		t.Error("the edge's log does not tell that the instance went down")
	}
}

func TestEdgeKillAndRestart(t *testing.T) {
	c, sessions := startEdgeCluster(t)
	// Every push channel goes through the edge: each is cut and resumes.
	edgeWorkload(t, c, sessions, 2*len(sessions), func() {
		old := c.PID("edge")
		c.Kill("edge", syscall.SIGKILL)
		// What `hachat demo restart edge` asks the supervisor over its
		// control socket.
		rctx, rcancel := context.WithTimeout(t.Context(), 45*time.Second)
		defer rcancel()
		res, err := c.Supervisor().RestartPart(rctx, "edge", demo.RestartOptions{})
		if err != nil {
			t.Fatalf("restart edge: %v", err)
		}
		if res.OldPID != old || res.OldState != demo.StateExited || res.Part.PID == old || res.Part.State != demo.StateRunning {
			t.Errorf("restart edge: %+v", res)
		}
		t.Logf("edge back in %v", res.Took)
	})
}

// TestEdgeHTTPSPassthrough serves webapi and interaction over HTTPS
// (--https) behind the edge: the browser's TLS runs end to end through the
// edge to an instance, which presents its own certificate.
func TestEdgeHTTPSPassthrough(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true,
		Tune: func(p demo.Plan) demo.Plan {
			p = p.WithKind(demo.KindWebAPI, "--https").WithKind(demo.KindInteraction, "--https")
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
	for _, tc := range []struct{ addr, page, kind string }{
		{strings.TrimPrefix(c.Entrypoints().Customer, "http://"), "/", "webapi"},
		{strings.TrimPrefix(c.Entrypoints().Agent, "http://"), "/agent", "interaction"},
	} {
		harness.Eventually(t, tc.kind+" over HTTPS through the edge", 20*time.Second, func() error {
			// A new connection each time: each may reach another instance.
			browser := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
			resp, err := browser.Get("https://" + tc.addr + tc.page)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
				return fmt.Errorf("HTTP %d, TLS %v", resp.StatusCode, resp.TLS != nil)
			}
			id, err := mtls.PeerIdentity(*resp.TLS)
			if err != nil {
				return err
			}
			if id.Kind != tc.kind {
				return fmt.Errorf("the certificate behind the edge is %s's, want a %s instance's: the edge terminated TLS", id, tc.kind)
			}
			return nil
		})
	}
}
