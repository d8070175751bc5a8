package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/edge"
	"github.com/hachat/hachat/telemetry"
)

// remoteAddrInstance is an HTTP instance behind edge's PROXY protocol
// listener, trusting trusted, that answers with the request's RemoteAddr.
func remoteAddrInstance(t *testing.T, name, trusted string) *instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	from, err := edge.ParseProxies(trusted)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := edge.NewProxyProtocolListener(ln, from, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	}))
	srv.Listener = pl
	srv.Start()
	t.Cleanup(srv.Close)
	return &instance{name: name, ln: ln}
}

// remoteAddrVia asks through addr, dialling from the local address from,
// which address the instance saw; "" when the connection was refused.
func remoteAddrVia(t *testing.T, addr, from string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	res, err := c.Get("http://" + addr + "/")
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// TestIngressProxyProtocol: the edge dials the instances from its
// upstream source and starts each connection with a PROXY protocol header,
// so an instance that trusts that source sees each client's own address,
// on both listeners. Without the header the instance refuses the edge.
func TestIngressProxyProtocol(t *testing.T) {
	for _, send := range []bool{true, false} {
		name := "header sent"
		if !send {
			name = "no header"
		}
		t.Run(name, func(t *testing.T) {
			cp := newControlPlane(t)
			w := remoteAddrInstance(t, "webapi-1", "127.0.0.9")
			ix := remoteAddrInstance(t, "interaction-1", "127.0.0.9")
			res := ingressResources(10*time.Second, []*instance{w}, ix)
			cp.set("edge-customer", "v1", res)
			cp.set("edge-agent", "v1", res)
			base := testConfig(cp.addr)
			base.NodeID = "edge"
			in, err := NewIngress(IngressConfig{Base: base, Customer: "127.0.0.1:0", Agent: "127.0.0.1:0",
				ProxyProtocol: send, UpstreamSource: netip.MustParseAddr("127.0.0.9")}, telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			startProxy(t, in.Customer)
			startProxy(t, in.Agent)
			waitFor(t, 5*time.Second, "the instances up", func() bool {
				up := 0
				for _, p := range []*Proxy{in.Customer, in.Agent} {
					for _, cl := range p.Dump().Clusters {
						for _, e := range cl.Endpoints {
							if e.Health == "up" {
								up++
							}
						}
					}
				}
				return up >= 2
			})
			for i, from := range []string{"127.0.0.5", "127.0.0.6"} {
				got := remoteAddrVia(t, in.Customer.Addr().String(), from)
				if send != strings.HasPrefix(got, from+":") {
					t.Errorf("customer %d from %s: instance saw %q", i, from, got)
				}
			}
			got := remoteAddrVia(t, in.Agent.Addr().String(), "127.0.0.7")
			if send != strings.HasPrefix(got, "127.0.0.7:") {
				t.Errorf("agent from 127.0.0.7: instance saw %q", got)
			}
		})
	}
}
