package k8s

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestProxyProtocolTrust: the webapi and interaction instances take the
// client's address from the edge's PROXY protocol header, trusting the
// edge pods' range (ConfigMap hachat-edge, a CIDR that is not the whole
// pod network), so webapi's per-address start limit is on again; the edge
// sends the header (its default), its pods take their addresses from
// their own pool, and its Service keeps the client's source address.
func TestProxyProtocolTrust(t *testing.T) {
	m := load(t)
	var cidr string
	for _, cm := range m.configMaps {
		if cm.Name == "hachat-edge" {
			cidr = cm.Data["source-cidr"]
		}
	}
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		t.Fatalf("ConfigMap hachat-edge source-cidr %q: %v", cidr, err)
	}
	if pfx.Bits() < 16 {
		t.Errorf("source-cidr %s is wider than a /16: the edge pods' own range, not the pod network", pfx)
	}
	ref := regexp.MustCompile(`^--proxy-protocol-from=\$\(([A-Z_]+)\)$`)
	for _, part := range []string{"webapi", "interaction"} {
		cs := m.containersRunning(part)
		if len(cs) == 0 {
			t.Fatalf("no %s container", part)
		}
		for where, c := range cs {
			var env string
			for _, a := range c.Args {
				if sm := ref.FindStringSubmatch(a); sm != nil {
					env = sm[1]
				}
				if part == "webapi" && strings.HasPrefix(a, "--client-start-rate=0") && !strings.HasPrefix(a, "--client-start-rate=0.") {
					t.Errorf("%s: %s: the per-address start limit is off", where, a)
				}
			}
			if env == "" {
				t.Errorf("%s: no --proxy-protocol-from=$(VAR)", where)
				continue
			}
			i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == env })
			if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.ConfigMapKeyRef == nil ||
				c.Env[i].ValueFrom.ConfigMapKeyRef.Name != "hachat-edge" || c.Env[i].ValueFrom.ConfigMapKeyRef.Key != "source-cidr" {
				t.Errorf("%s: $(%s) does not come from ConfigMap hachat-edge, key source-cidr", where, env)
			}
		}
	}
	edges := m.containersRunning("proxy")
	found := false
	for where, c := range edges {
		if !slices.Contains(c.Args, "--ingress") {
			continue
		}
		found = true
		if slices.Contains(c.Args, "--proxy-protocol=false") {
			t.Errorf("%s: the edge does not send the header", where)
		}
	}
	if !found {
		t.Fatal("no edge container")
	}
	for _, d := range m.deployments {
		if d.Name == "edge" && d.Spec.Template.Annotations["cni.projectcalico.org/ipv4pools"] != `["hachat-edge"]` {
			t.Errorf("edge pods: no address pool of their own")
		}
	}
	for _, s := range m.services {
		if s.Name == "edge" && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("Service edge: externalTrafficPolicy %q: the edge would see a node's address", s.Spec.ExternalTrafficPolicy)
		}
	}
}
