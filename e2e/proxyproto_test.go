package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// httpFrom is an HTTP client whose connections come from the loopback
// address ip: one more customer or agent, as the instances see it.
func httpFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// TestProxyProtocolThroughEdge runs the demo's layout with mTLS and the
// instances' per-address limits on: the edge sends each client's address
// in a PROXY protocol header, so 20 customers (20 addresses) starting chats
// at once through the edge all start although the per-address burst is 5,
// while one customer who starts more than 5 is limited alone, and its
// address (not the edge's) is in webapi's log; failed logins from one
// address slow that address only, not another agent's login. A direct
// connection from the demo's own address (no header) still works. Before
// the header, every client had the edge's address and shared each limit.
func TestProxyProtocolThroughEdge(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true, StartLimits: true, Tune: func(p demo.Plan) demo.Plan {
		return p.WithKind(demo.KindWebAPI, "--client-start-rate=0.01", "--client-start-burst=5").
			WithKind(demo.KindInteraction, "--login-failures-per-address=3", "--login-failures-per-account=100")
	}})
	harness.Eventually(t, "the edge sees both webapi instances up", 20*time.Second, func() error {
		if up, err := c.UpstreamsUp("edge", "webapi"); err != nil || len(up) != 2 {
			return fmt.Errorf("up %v %v", up, err)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	customer := func(ip string) *harness.GMS {
		g := c.EdgeCustomer()
		g.HTTP = httpFrom(ip)
		return g
	}

	t.Run("20 customers start at once through the edge", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Go(func() {
				_, r, err := customer("127.0.0."+strconv.Itoa(100+i)).Start(ctx, url.Values{"nickname": {"c" + strconv.Itoa(i)}})
				if err == nil && !r.OK() {
					err = fmt.Errorf("answer %d %s", r.HTTPStatus, r.Raw)
				}
				errs[i] = err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("not every customer started (per-address burst 5, 20 addresses): %v", err)
		}
	})

	t.Run("one customer over the limit is limited alone", func(t *testing.T) {
		flood := customer("127.0.0.40")
		ok, limited := 0, 0
		for i := range 8 {
			_, r, err := flood.Start(ctx, url.Values{"nickname": {"flood " + strconv.Itoa(i)}})
			switch {
			case err != nil:
				t.Fatal(err)
			case r.OK():
				ok++
			case r.HTTPStatus == http.StatusTooManyRequests:
				limited++
			default:
				t.Fatalf("start %d: answer %d %s", i, r.HTTPStatus, r.Raw)
			}
		}
		if ok != 5 || limited != 3 {
			t.Fatalf("flood: %d started, %d limited; want 5 and 3", ok, limited)
		}
		if _, r, err := customer("127.0.0.41").Start(ctx, url.Values{"nickname": {"Ada"}}); err != nil || !r.OK() {
			t.Fatalf("another customer during the flood: %v %+v", err, r)
		}
		// The refusal is logged with the customer's address; nothing was
		// logged against the edge's.
		clientLogged := func(p, ip string) int {
			return c.LogCount(p, "client="+ip) + c.LogCount(p, `"client":"`+ip+`"`)
		}
		harness.Eventually(t, "webapi logs the flooding customer's address", 5*time.Second, func() error {
			if clientLogged("webapi", "127.0.0.40")+clientLogged("webapi-2", "127.0.0.40") == 3 {
				return nil
			}
			return errors.New("client=127.0.0.40 not in webapi's logs 3 times")
		})
		for _, p := range []string{"webapi", "webapi-2"} {
			if clientLogged(p, demo.EdgeSource) > 0 {
				t.Errorf("%s logged the edge's address %s as a client", p, demo.EdgeSource)
			}
			if n := c.Metric(p, "hachat_edge_proxy_protocol_connections_total", "result", "refused_missing"); n != 0 {
				t.Errorf("%s refused %v of the edge's connections", p, n)
			}
		}
		if n := c.Metric("webapi", "hachat_edge_proxy_protocol_connections_total", "result", "proxied") +
			c.Metric("webapi-2", "hachat_edge_proxy_protocol_connections_total", "result", "proxied"); n < 20 {
			t.Errorf("webapi counted %v proxied connections, want at least 20", n)
		}
	})

	t.Run("failed logins slow the attacker's address only", func(t *testing.T) {
		attacker := httpFrom("127.0.0.60")
		throttled := false
		for i := 0; i < 10 && !throttled; i++ {
			body := fmt.Sprintf(`{"agentId":"nobody-%d","nickname":"x","password":"wrong"}`, i)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.Entrypoints().Agent+"/agent/v1/login", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			res, err := attacker.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			throttled = res.StatusCode == http.StatusTooManyRequests
		}
		if !throttled {
			t.Fatal("10 failed logins from one address were never slowed (--login-failures-per-address=3)")
		}
		agents := c.EdgeAgents()
		agents.HTTP = httpFrom("127.0.0.61")
		if _, err := agents.Login(ctx, "a1", "Agent One", "agent"); err != nil {
			t.Fatalf("an agent at another address was slowed by the attacker's failures: %v", err)
		}
	})

	t.Run("direct connection without a header still served", func(t *testing.T) {
		res, err := http.Get(c.URL("webapi") + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("direct /healthz: %s", res.Status)
		}
	})
}
