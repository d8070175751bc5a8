package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// newObject returns an empty typed object for apiVersion and kind: the
// kinds the base may hold. Anything else fails the test, so a new kind
// (an Istio resource, say) comes with its Go type here.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	}
	return nil, false
}

// decodeStrict decodes one YAML document into its typed object: duplicate
// keys and fields the type does not have are errors.
func decodeStrict(doc string) (any, error) {
	j, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return nil, err
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, err
	}
	obj, ok := newObject(tm.APIVersion, tm.Kind)
	if !ok {
		return nil, fmt.Errorf("unknown kind %s %s (add its Go type to newObject)", tm.APIVersion, tm.Kind)
	}
	// sigs.k8s.io/json is what the API server decodes with: field names
	// are case-sensitive (encoding/json would take readinessprobe for
	// readinessProbe), unknown and duplicate fields are strict errors.
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, errors.Join(strict...))
	}
	return obj, nil
}

// manifests is the decoded base, by kind.
type manifests struct {
	namespaces      []*corev1.Namespace
	secrets         []*corev1.Secret
	configMaps      []*corev1.ConfigMap
	services        []*corev1.Service
	statefulSets    []*appsv1.StatefulSet
	deployments     []*appsv1.Deployment
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	serviceMonitors []*monitoringv1.ServiceMonitor
}

// workload is a pod template with the name of what owns it.
type workload struct {
	name string
	tmpl *corev1.PodTemplateSpec
}

func (m *manifests) workloads() []workload {
	var out []workload
	for _, s := range m.statefulSets {
		out = append(out, workload{"StatefulSet/" + s.Name, &s.Spec.Template})
	}
	for _, d := range m.deployments {
		out = append(out, workload{"Deployment/" + d.Name, &d.Spec.Template})
	}
	return out
}

// selected returns the workloads whose pod labels hold every label of sel.
func (m *manifests) selected(sel map[string]string) []workload {
	var out []workload
	for _, w := range m.workloads() {
		ok := len(sel) > 0
		for k, v := range sel {
			if w.tmpl.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, w)
		}
	}
	return out
}

func load(t *testing.T) *manifests {
	t.Helper()
	docs, err := Documents()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{}
	for _, d := range docs {
		obj, err := decodeStrict(d.YAML)
		if err != nil {
			t.Fatalf("%s: %v", d.File, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			m.namespaces = append(m.namespaces, o)
		case *corev1.Secret:
			m.secrets = append(m.secrets, o)
		case *corev1.ConfigMap:
			m.configMaps = append(m.configMaps, o)
		case *corev1.Service:
			m.services = append(m.services, o)
		case *appsv1.StatefulSet:
			m.statefulSets = append(m.statefulSets, o)
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, o)
		case *networkingv1.NetworkPolicy:
			m.netpols = append(m.netpols, o)
		case *monitoringv1.ServiceMonitor:
			m.serviceMonitors = append(m.serviceMonitors, o)
		}
	}
	return m
}

func TestDecodeStrictRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {prots: []}\n", "prots"},
		{"misplaced field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: c, readinessprobe: {}}]}}}\n", "readinessprobe"},
		{"duplicate key", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nmetadata: {name: y}\n", "metadata"},
		{"unknown kind", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\n", "unknown kind"},
		{"wrong type", "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {minAvailable: [1]}\n", "minAvailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeStrict(tc.doc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeStrict = %v, want an error about %q", err, tc.want)
			}
		})
	}
}

// TestContract: `make -s k8s` prints at least StatefulSet, Deployment,
// Service, PodDisruptionBudget and NetworkPolicy objects, and every
// container has a readinessProbe (and a liveness probe of its own).
func TestContract(t *testing.T) {
	var out bytes.Buffer
	if err := Render(&out); err != nil {
		t.Fatal(err)
	}
	docs := splitDocuments(out.String())
	if len(docs) < 10 {
		t.Fatalf("rendered %d documents", len(docs))
	}
	kinds := map[string]int{}
	for _, d := range docs {
		if _, err := decodeStrict(d); err != nil {
			t.Fatalf("rendered document does not decode: %v\n%s", err, d)
		}
		var tm struct{ Kind string }
		if err := yaml.Unmarshal([]byte(d), &tm); err != nil {
			t.Fatal(err)
		}
		kinds[tm.Kind]++
	}
	for _, k := range []string{"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "Secret"} {
		if kinds[k] == 0 {
			t.Errorf("no %s rendered (kinds: %v)", k, kinds)
		}
	}
	m := load(t)
	for _, w := range m.workloads() {
		for _, c := range slices.Concat(w.tmpl.Spec.InitContainers, w.tmpl.Spec.Containers) {
			if c.ReadinessProbe == nil {
				t.Errorf("%s container %s: no readinessProbe", w.name, c.Name)
				continue
			}
			if c.LivenessProbe == nil || reflect.DeepEqual(c.LivenessProbe, c.ReadinessProbe) {
				t.Errorf("%s container %s: want a liveness probe separate from readiness", w.name, c.Name)
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
				if p == nil {
					continue
				}
				var port *intstr.IntOrString
				switch {
				case p.HTTPGet != nil:
					port = &p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = &p.TCPSocket.Port
				case p.GRPC != nil:
					port = &intstr.IntOrString{IntVal: p.GRPC.Port}
				}
				if port != nil && !hasPort(c, *port, corev1.ProtocolTCP) {
					t.Errorf("%s container %s: probe port %s is not a container port", w.name, c.Name, port.String())
				}
			}
		}
	}
}

func hasPort(c corev1.Container, port intstr.IntOrString, proto corev1.Protocol) bool {
	for _, p := range c.Ports {
		pp := p.Protocol
		if pp == "" {
			pp = corev1.ProtocolTCP
		}
		if pp != proto {
			continue
		}
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

// TestServicePortsMatchContainers: every Service selects pods, and each of
// its ports targets a container port (by name or number, same protocol)
// of every workload it selects.
func TestServicePortsMatchContainers(t *testing.T) {
	m := load(t)
	for _, s := range m.services {
		ws := m.selected(s.Spec.Selector)
		if len(ws) == 0 {
			t.Errorf("Service %s selects no workload (selector %v)", s.Name, s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			proto := sp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			for _, w := range ws {
				found := false
				for _, c := range w.tmpl.Spec.Containers {
					if hasPort(c, target, proto) {
						found = true
					}
				}
				if !found {
					t.Errorf("Service %s port %s (%s/%s) targets no container port of %s", s.Name, sp.Name, target.String(), proto, w.name)
				}
			}
		}
	}
	for _, st := range m.statefulSets {
		found := false
		for _, s := range m.services {
			if s.Name == st.Spec.ServiceName {
				found = true
			}
		}
		if !found {
			t.Errorf("StatefulSet %s: serviceName %q is no Service", st.Name, st.Spec.ServiceName)
		}
	}
}

// TestCorePairs: the cores run as one StatefulSet per pair: two replicas,
// required anti-affinity across nodes, a PodDisruptionBudget with
// minAvailable 1, readiness from the gRPC health service (`hachat ctl
// health`) and a separate liveness probe, and every advertise flag set to
// the pod IP.
func TestCorePairs(t *testing.T) {
	m := load(t)
	pairs := 0
	for _, st := range m.statefulSets {
		tmpl := st.Spec.Template
		if tmpl.Labels["app.kubernetes.io/name"] != "hachat-core" {
			continue
		}
		pairs++
		if st.Spec.Replicas == nil || *st.Spec.Replicas != 2 {
			t.Errorf("%s: replicas %v, want 2", st.Name, st.Spec.Replicas)
		}
		aa := tmpl.Spec.Affinity
		if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 ||
			aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" {
			t.Errorf("%s: want required pod anti-affinity across kubernetes.io/hostname", st.Name)
		}
		pdb := false
		for _, p := range m.pdbs {
			if p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() == 1 && reflect.DeepEqual(p.Spec.Selector.MatchLabels, st.Spec.Selector.MatchLabels) {
				pdb = true
			}
		}
		if !pdb {
			t.Errorf("%s: no PodDisruptionBudget with minAvailable 1 on its selector", st.Name)
		}
		c := tmpl.Spec.Containers[0]
		if r := c.ReadinessProbe; r == nil || r.Exec == nil || !slices.Equal(r.Exec.Command[:3], []string{"/hachat", "ctl", "health"}) {
			t.Errorf("%s: readiness must ask the gRPC health service (hachat ctl health), got %+v", st.Name, c.ReadinessProbe)
		}
		for _, f := range []string{"--gossip-advertise=$(POD_IP):7103", "--grpc-advertise=$(POD_IP):7101", "--http-advertise=$(POD_IP):7102"} {
			if !slices.Contains(c.Args, f) {
				t.Errorf("%s: missing %s", st.Name, f)
			}
		}
	}
	if pairs == 0 {
		t.Fatal("no core StatefulSet")
	}
}

// TestPDBsAndMonitorsSelectSomething: every PodDisruptionBudget selects a
// workload, every NetworkPolicy port is a container port of the pods it
// selects, and every ServiceMonitor endpoint names a port of a Service it
// selects.
func TestPDBsAndMonitorsSelectSomething(t *testing.T) {
	m := load(t)
	for _, p := range m.pdbs {
		if len(m.selected(p.Spec.Selector.MatchLabels)) == 0 {
			t.Errorf("PodDisruptionBudget %s selects nothing", p.Name)
		}
	}
	for _, np := range m.netpols {
		ws := m.workloads()
		if len(np.Spec.PodSelector.MatchLabels) > 0 {
			ws = m.selected(np.Spec.PodSelector.MatchLabels)
		}
		if len(ws) == 0 {
			t.Errorf("NetworkPolicy %s selects nothing", np.Name)
		}
		for _, in := range np.Spec.Ingress {
			for _, p := range in.Ports {
				proto := corev1.ProtocolTCP
				if p.Protocol != nil {
					proto = *p.Protocol
				}
				found := false
				for _, w := range ws {
					for _, c := range w.tmpl.Spec.Containers {
						if hasPort(c, *p.Port, proto) {
							found = true
						}
					}
				}
				if !found {
					t.Errorf("NetworkPolicy %s: port %s/%s is no container port of the pods it selects", np.Name, p.Port.String(), proto)
				}
			}
		}
	}
	if len(m.serviceMonitors) == 0 {
		t.Fatal("no ServiceMonitor")
	}
	for _, sm := range m.serviceMonitors {
		ports := map[string]bool{}
		for _, s := range m.services {
			ok := true
			for k, v := range sm.Spec.Selector.MatchLabels {
				if s.Labels[k] != v {
					ok = false
				}
			}
			if ok {
				for _, p := range s.Spec.Ports {
					ports[p.Name] = true
				}
			}
		}
		for _, ep := range sm.Spec.Endpoints {
			if !ports[ep.Port] {
				t.Errorf("ServiceMonitor %s: endpoint port %q is on no Service it selects (%v)", sm.Name, ep.Port, ports)
			}
		}
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// hachatBinary builds the hachat binary of this checkout (or takes
// $HACHAT_BIN).
func hachatBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("HACHAT_BIN"); b != "" {
		return b
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hachat-k8s-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "hachat")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/hachat")
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build hachat: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

var helpFlag = regexp.MustCompile(`(?m)^\s+--?([a-z0-9][a-z0-9-]*)`)

// partFlags returns the flags `hachat <part...> --help` lists.
func partFlags(t *testing.T, bin string, part []string) map[string]bool {
	t.Helper()
	args := append(slices.Clone(part), "--help")
	out, _ := exec.Command(bin, args...).CombinedOutput() // --help exits non-zero
	flags := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("hachat %s --help lists no flags:\n%s", strings.Join(part, " "), out)
	}
	return flags
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// TestFlagsExist: every flag a hachat container is given (in args, as a
// HACHAT_<FLAG> variable, or in a probe's `/hachat ...` command) is listed
// by `hachat <part> --help` of the binary built from this checkout, and
// every $(VAR) an argument refers to is in the container's environment
// (the kubelet leaves an unknown one unexpanded).
func TestFlagsExist(t *testing.T) {
	m := load(t)
	bin := hachatBinary(t)
	cache := map[string]map[string]bool{}
	flagsOf := func(part []string) map[string]bool {
		k := strings.Join(part, " ")
		if cache[k] == nil {
			cache[k] = partFlags(t, bin, part)
		}
		return cache[k]
	}
	check := func(where string, part []string, args []string) {
		flags := flagsOf(part)
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !flags[name] {
				t.Errorf("%s: hachat %s has no flag --%s", where, strings.Join(part, " "), name)
			}
		}
	}
	checked := 0
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			where := w.name + " container " + c.Name
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, a := range slices.Concat(c.Command, c.Args) {
				for _, ref := range varRef.FindAllStringSubmatch(a, -1) {
					if !env[ref[1]] {
						t.Errorf("%s: %s refers to $(%s), which is not in its env", where, a, ref[1])
					}
				}
			}
			if !strings.HasPrefix(c.Image, "hachat:") {
				continue // the coordination store's placeholder (etcd)
			}
			if len(c.Command) > 0 || len(c.Args) == 0 {
				t.Errorf("%s: want the image's entrypoint and the part as the first arg", where)
				continue
			}
			part := []string{c.Args[0]}
			check(where, part, c.Args[1:])
			checked++
			flags := flagsOf(part)
			for _, e := range c.Env {
				if name, ok := strings.CutPrefix(e.Name, "HACHAT_"); ok {
					if f := strings.ReplaceAll(strings.ToLower(name), "_", "-"); !flags[f] {
						t.Errorf("%s: %s names no flag of hachat %s (--%s)", where, e.Name, part[0], f)
					}
				}
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
				if p == nil || p.Exec == nil || len(p.Exec.Command) < 3 || p.Exec.Command[0] != "/hachat" {
					continue
				}
				part := p.Exec.Command[1:2]
				if part[0] == "ctl" {
					part = p.Exec.Command[1:3]
				}
				check(where+" probe", part, p.Exec.Command[len(part)+1:])
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked the flags of %d hachat containers, want every part", checked)
	}
}

// TestFlagCheckCatchesAMissingFlag: the help parser finds flags, and a
// made-up one is not among them (so TestFlagsExist can fail).
func TestFlagCheckCatchesAMissingFlag(t *testing.T) {
	flags := partFlags(t, hachatBinary(t), []string{"core"})
	for _, f := range []string{"grpc", "gossip-bind", "gossip-advertise", "grpc-advertise", "http-advertise", "tls-ca"} {
		if !flags[f] {
			t.Errorf("hachat core --help: no --%s", f)
		}
	}
	if flags["no-such-flag"] {
		t.Fatal("the help parser accepts anything")
	}
	var names []string
	for f := range flags {
		names = append(names, f)
	}
	sort.Strings(names)
	t.Logf("hachat core flags: %s", strings.Join(names, " "))
}

// TestNoIstioProxy: docs/deploy.md says hachat's sidecar is the only proxy:
// the namespace is not injected and no pod template asks for istio-proxy.
func TestNoIstioProxy(t *testing.T) {
	m := load(t)
	if len(m.namespaces) != 1 || m.namespaces[0].Labels["istio-injection"] != "disabled" {
		t.Errorf("want one namespace labelled istio-injection=disabled, got %+v", m.namespaces)
	}
	for _, w := range m.workloads() {
		if got := w.tmpl.Annotations["sidecar.istio.io/inject"]; got != "false" {
			t.Errorf("%s: sidecar.istio.io/inject %q, want \"false\"", w.name, got)
		}
	}
}
