package k8s

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// istioPorts are the port lists docs/deploy.md ("Beside Istio") gives for a
// mesh that injects istio-proxy into hachat's pods.
type istioPorts struct {
	inbound, outbound, udp []int32
}

var (
	inboundRE  = regexp.MustCompile(`excludeInboundPorts: "([0-9,]+)"`)
	outboundRE = regexp.MustCompile(`excludeOutboundPorts: "([0-9,]+)"`)
	udpRE      = regexp.MustCompile(`Gossip also uses UDP ([0-9/]+)`)
)

// parseIstioPorts reads the three port lists out of the deploy guide.
func parseIstioPorts(doc string) (istioPorts, error) {
	var out istioPorts
	for _, f := range []struct {
		re   *regexp.Regexp
		sep  string
		dest *[]int32
	}{{inboundRE, ",", &out.inbound}, {outboundRE, ",", &out.outbound}, {udpRE, "/", &out.udp}} {
		m := f.re.FindStringSubmatch(doc)
		if m == nil {
			return out, fmt.Errorf("docs/deploy.md has no match for %s", f.re)
		}
		for _, s := range strings.Split(m[1], f.sep) {
			n, err := strconv.ParseInt(s, 10, 32)
			if err != nil {
				return out, err
			}
			*f.dest = append(*f.dest, int32(n))
		}
		slices.Sort(*f.dest)
	}
	return out, nil
}

// dialedPorts returns the ports of every address in a container's flags
// that another pod (or the container itself) dials: the targets it is given
// (--xds, --coordination, --gossip-join, --ucs, --initial-cluster, ...) and
// the addresses it advertises or listens on at its pod IP. Binds to
// 0.0.0.0 and loopback addresses are nobody's dial target across pods.
func dialedPorts(c corev1.Container) []int32 {
	var out []int32
	for _, a := range c.Args {
		_, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			continue
		}
		for _, item := range strings.Split(v, ",") {
			if _, after, ok := strings.Cut(item, "="); ok { // --initial-cluster=name=host:port
				item = after
			}
			if u, err := url.Parse(item); err == nil && u.Scheme != "" && u.Host != "" {
				item = u.Host
			}
			host, port, err := net.SplitHostPort(item)
			if err != nil || host == "0.0.0.0" || host == "127.0.0.1" || host == "" {
				continue
			}
			if n, err := strconv.ParseInt(port, 10, 32); err == nil {
				out = append(out, int32(n))
			}
		}
	}
	return out
}

// TestIstioExclusionsMatchTheManifests: the ports docs/deploy.md tells an
// Istio mesh to keep istio-proxy off are those of the manifests: inbound,
// every TCP container port but the browser-facing ones (the edge's
// LoadBalancer Service); outbound, every port a hachat pod dials or
// advertises to the others; and the gossip UDP ports. A port added to the
// base without the guide fails here.
func TestIstioExclusionsMatchTheManifests(t *testing.T) {
	b, err := os.ReadFile("../../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseIstioPorts(string(b))
	if err != nil {
		t.Fatal(err)
	}
	m := load(t)
	var browser []int32
	for _, s := range m.services {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			for _, p := range s.Spec.Ports {
				browser = append(browser, p.Port)
			}
		}
	}
	if len(browser) == 0 {
		t.Fatal("no LoadBalancer Service: which ports face browsers?")
	}
	var inbound, outbound, udp []int32
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			for _, p := range c.Ports {
				switch {
				case p.Protocol == corev1.ProtocolUDP:
					udp = append(udp, p.ContainerPort)
				case !slices.Contains(browser, p.ContainerPort):
					inbound = append(inbound, p.ContainerPort)
				}
			}
			outbound = append(outbound, dialedPorts(c)...)
		}
	}
	for _, tc := range []struct {
		what       string
		docs, want []int32
	}{
		{"excludeInboundPorts", docs.inbound, inbound},
		{"excludeOutboundPorts", docs.outbound, outbound},
		{"gossip UDP ports", docs.udp, udp},
	} {
		slices.Sort(tc.want)
		tc.want = slices.Compact(tc.want)
		if !slices.Equal(tc.docs, tc.want) {
			t.Errorf("docs/deploy.md %s = %v, the manifests want %v", tc.what, tc.docs, tc.want)
		}
	}
}

func TestDialedPorts(t *testing.T) {
	c := corev1.Container{Args: []string{"core", "--grpc=0.0.0.0:7101", "--grpc-advertise=$(POD_IP):7101",
		"--core=127.0.0.1:7301", "--ucs=https://ucs.hachat.svc.cluster.local:7080", "--verbose",
		"--initial-cluster=a=a.x:7402,b=b.x:7402", "--xds=x-0:7200,x-1:7201", "--name=x"}}
	got := dialedPorts(c)
	if want := []int32{7101, 7080, 7402, 7402, 7200, 7201}; !slices.Equal(got, want) {
		t.Errorf("dialedPorts = %v, want %v", got, want)
	}
}
