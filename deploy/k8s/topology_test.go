package k8s

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The tests in this file check that the manifests run the cluster that
// deploy/compose.yaml and `hachat demo` run: three coordination members
// that the cores use, two control planes that every sidecar knows, the
// edge fed by webapi and interaction instances registered in gossip.

const clusterDomain = "svc.cluster.local"

// flagValue returns the value of --name in c's args and whether it is set.
func flagValue(c corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name {
			return "", true
		}
	}
	return "", false
}

// containersRunning returns the containers whose part (first arg) is part,
// with the workload they are in.
func (m *manifests) containersRunning(part string) map[string]corev1.Container {
	out := map[string]corev1.Container{}
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			if len(c.Args) > 0 && c.Args[0] == part {
				out[w.name+"/"+c.Name] = c
			}
		}
	}
	return out
}

func (m *manifests) statefulSetRunning(t *testing.T, part string) *appsv1.StatefulSet {
	t.Helper()
	var found []*appsv1.StatefulSet
	for _, st := range m.statefulSets {
		for _, c := range st.Spec.Template.Spec.Containers {
			if len(c.Args) > 0 && c.Args[0] == part {
				found = append(found, st)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one StatefulSet running hachat %s, got %d", part, len(found))
	}
	return found[0]
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// replicas is st's replica count, or "unset".
func replicas(st *appsv1.StatefulSet) string {
	if st.Spec.Replicas == nil {
		return "unset"
	}
	return strconv.Itoa(int(*st.Spec.Replicas))
}

// podNames are the stable DNS names of a StatefulSet's pods, with port.
func podNames(st *appsv1.StatefulSet, port int32) []string {
	var out []string
	for i := range *st.Spec.Replicas {
		out = append(out, fmt.Sprintf("%s-%d.%s.%s.%s:%d", st.Name, i, st.Spec.ServiceName, st.Namespace, clusterDomain, port))
	}
	return out
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// portOf returns the port of a host:port flag value.
func portOf(t *testing.T, where, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, hostport, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, hostport, err)
	}
	return int32(n)
}

// admitted returns who the NetworkPolicies let reach port/proto of the
// pods of w: workload names, "namespace:NAME" for a namespaceSelector, and
// "*" for a rule with no from (anyone).
func (m *manifests) admitted(w workload, port int32, proto corev1.Protocol) map[string]bool {
	out := map[string]bool{}
	for _, np := range m.netpols {
		sel := np.Spec.PodSelector.MatchLabels
		selects := true
		for k, v := range sel {
			if w.tmpl.Labels[k] != v {
				selects = false
			}
		}
		if !selects {
			continue
		}
		for _, in := range np.Spec.Ingress {
			hit := len(in.Ports) == 0
			for _, p := range in.Ports {
				pp := corev1.ProtocolTCP
				if p.Protocol != nil {
					pp = *p.Protocol
				}
				if pp == proto && p.Port != nil && p.Port.Type == intstr.Int && p.Port.IntVal == port {
					hit = true
				}
			}
			if !hit {
				continue
			}
			if len(in.From) == 0 {
				out["*"] = true
			}
			for _, f := range in.From {
				switch {
				case f.NamespaceSelector != nil:
					out["namespace:"+f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]] = true
				case f.PodSelector != nil:
					for _, s := range m.selected(f.PodSelector.MatchLabels) {
						out[s.name] = true
					}
				}
			}
		}
	}
	return out
}

func sortedKeys(s map[string]bool) []string {
	return slices.Sorted(maps.Keys(s))
}

// TestEveryReplicatedWorkloadHasABudget: every StatefulSet and Deployment
// of more than one pod has a PodDisruptionBudget that keeps at least one
// of them through a drain; none blocks the drain of a single pod (a PDB of
// minAvailable 1 on one replica would hang every `kubectl drain` of its
// node).
func TestEveryReplicatedWorkloadHasABudget(t *testing.T) {
	m := load(t)
	type wl struct {
		name     string
		replicas int32
		labels   map[string]string
	}
	var wls []wl
	for _, s := range m.statefulSets {
		wls = append(wls, wl{"StatefulSet/" + s.Name, *s.Spec.Replicas, s.Spec.Template.Labels})
	}
	for _, d := range m.deployments {
		wls = append(wls, wl{"Deployment/" + d.Name, *d.Spec.Replicas, d.Spec.Template.Labels})
	}
	for _, w := range wls {
		var keeps []int
		for _, p := range m.pdbs {
			match := true
			for k, v := range p.Spec.Selector.MatchLabels {
				if w.labels[k] != v {
					match = false
				}
			}
			if !match {
				continue
			}
			switch {
			case p.Spec.MinAvailable != nil:
				keeps = append(keeps, p.Spec.MinAvailable.IntValue())
			case p.Spec.MaxUnavailable != nil:
				keeps = append(keeps, int(w.replicas)-p.Spec.MaxUnavailable.IntValue())
			}
		}
		switch {
		case w.replicas > 1 && (len(keeps) == 0 || slices.Max(keeps) < 1):
			t.Errorf("%s: %d replicas and no PodDisruptionBudget keeping one (%v)", w.name, w.replicas, keeps)
		case len(keeps) > 0 && slices.Max(keeps) >= int(w.replicas):
			t.Errorf("%s: a PodDisruptionBudget keeps %d of %d pods: no drain can ever evict one", w.name, slices.Max(keeps), w.replicas)
		}
	}
}

// TestCoordinationMembers: three `hachat coord` members in a StatefulSet,
// one per node, behind a headless Service that publishes them before they
// are ready, a PodDisruptionBudget keeping the quorum (2), each announcing
// its stable DNS name on the ports it serves, the initial cluster naming
// exactly those members, a coord certificate; the cores' --coordination
// lists every member's client address; only cores and interaction reach
// the client port and only members the peer port.
func TestCoordinationMembers(t *testing.T) {
	m := load(t)
	st := m.statefulSetRunning(t, "coord")
	if st.Spec.Replicas == nil || *st.Spec.Replicas != 3 {
		t.Fatalf("coordination: replicas %v, want 3", replicas(st))
	}
	svc := m.service(st.Spec.ServiceName)
	if svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("coordination: serviceName %q must be a headless Service publishing not-ready addresses, got %+v", st.Spec.ServiceName, svc)
	}
	quorum := false
	for _, p := range m.pdbs {
		if p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() == 2 && maps.Equal(p.Spec.Selector.MatchLabels, st.Spec.Selector.MatchLabels) {
			quorum = true
		}
	}
	if !quorum {
		t.Error("coordination: no PodDisruptionBudget with minAvailable 2 on its selector")
	}
	if aa := st.Spec.Template.Spec.Affinity; aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("coordination: want required anti-affinity (one member per node)")
	}

	c := st.Spec.Template.Spec.Containers[0]
	clientPort, peerPort := containerPort(t, c, "coord-client"), containerPort(t, c, "coord-peer")
	self := fmt.Sprintf("$(POD_NAME).%s.%s.%s", st.Spec.ServiceName, st.Namespace, clusterDomain)
	for flag, port := range map[string]int32{"client": clientPort, "peer": peerPort} {
		listen, _ := flagValue(c, flag)
		if portOf(t, "--"+flag, listen) != port {
			t.Errorf("coordination: --%s=%s is not on container port %d", flag, listen, port)
		}
		if adv, _ := flagValue(c, flag+"-advertise"); adv != fmt.Sprintf("%s:%d", self, port) {
			t.Errorf("coordination: --%s-advertise=%q, want the pod's stable name %s:%d", flag, adv, self, port)
		}
	}
	if name, _ := flagValue(c, "name"); name != "$(POD_NAME)" {
		t.Errorf("coordination: --name=%q, want $(POD_NAME)", name)
	}
	var want []string
	for i, n := range podNames(st, peerPort) {
		want = append(want, fmt.Sprintf("%s-%d=%s", st.Name, i, n))
	}
	if ic, _ := flagValue(c, "initial-cluster"); ic != strings.Join(want, ",") {
		t.Errorf("coordination: --initial-cluster=%q\nwant %q", ic, strings.Join(want, ","))
	}
	tlsSecret := ""
	for _, v := range st.Spec.Template.Spec.Volumes {
		if v.Name == "tls" && v.Secret != nil {
			tlsSecret = v.Secret.SecretName
		}
	}
	if tlsSecret == "" || !slices.ContainsFunc(m.secrets, func(s *corev1.Secret) bool { return s.Name == tlsSecret }) {
		t.Errorf("coordination: certificates from Secret %q, which is not in the base", tlsSecret)
	}
	for _, f := range []string{"tls-ca", "tls-cert", "tls-key", "data-dir"} {
		if _, ok := flagValue(c, f); !ok {
			t.Errorf("coordination: no --%s", f)
		}
	}

	cores := m.containersRunning("core")
	if len(cores) == 0 {
		t.Fatal("no core")
	}
	for where, core := range cores {
		if got, _ := flagValue(core, "coordination"); got != strings.Join(podNames(st, clientPort), ",") {
			t.Errorf("%s: --coordination=%q, want every member: %q", where, got, strings.Join(podNames(st, clientPort), ","))
		}
	}

	members := workload{"StatefulSet/" + st.Name, &st.Spec.Template}
	got := sortedKeys(m.admitted(members, clientPort, corev1.ProtocolTCP))
	var wantClients []string
	for _, w := range slices.Concat(m.selected(map[string]string{"app.kubernetes.io/name": "hachat-core"}), m.selected(map[string]string{"app.kubernetes.io/name": "hachat-interaction"})) {
		wantClients = append(wantClients, w.name)
	}
	slices.Sort(wantClients)
	if !slices.Equal(got, wantClients) {
		t.Errorf("coordination client port %d admits %v, want exactly the cores and interaction %v", clientPort, got, wantClients)
	}
	if got := sortedKeys(m.admitted(members, peerPort, corev1.ProtocolTCP)); !slices.Equal(got, []string{members.name}) {
		t.Errorf("coordination peer port %d admits %v, want only the members", peerPort, got)
	}
}

// TestControlPlanes: two control planes from one template (so the same
// flags, the same snapshots under the same versions) with stable names,
// and every sidecar and edge lists each of them in --xds and keeps its
// last configuration in --xds-cache on a writable volume.
func TestControlPlanes(t *testing.T) {
	m := load(t)
	st := m.statefulSetRunning(t, "xds")
	if st.Spec.Replicas == nil || *st.Spec.Replicas != 2 {
		t.Fatalf("xds: replicas %v, want 2", replicas(st))
	}
	if svc := m.service(st.Spec.ServiceName); svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("xds: serviceName %q must be a headless Service (pod names)", st.Spec.ServiceName)
	}
	c := st.Spec.Template.Spec.Containers[0]
	want := strings.Join(podNames(st, containerPort(t, c, "xds-grpc")), ",")
	proxies := m.containersRunning("proxy")
	if len(proxies) < 3 {
		t.Fatalf("want the webapi and interaction sidecars and the edge, got %v", slices.Sorted(maps.Keys(proxies)))
	}
	for _, w := range m.workloads() {
		for _, p := range w.tmpl.Spec.Containers {
			if len(p.Args) == 0 || p.Args[0] != "proxy" {
				continue
			}
			where := w.name + "/" + p.Name
			if got, _ := flagValue(p, "xds"); got != want {
				t.Errorf("%s: --xds=%q, want both control planes %q", where, got, want)
			}
			cache, ok := flagValue(p, "xds-cache")
			if !ok || cache == "" {
				t.Errorf("%s: no --xds-cache", where)
				continue
			}
			writable := false
			for _, vm := range p.VolumeMounts {
				if strings.HasPrefix(cache, strings.TrimSuffix(vm.MountPath, "/")+"/") && !vm.ReadOnly {
					for _, v := range w.tmpl.Spec.Volumes {
						if v.Name == vm.Name && (v.EmptyDir != nil || v.PersistentVolumeClaim != nil) {
							writable = true
						}
					}
				}
			}
			if !writable {
				t.Errorf("%s: --xds-cache=%s is on no writable emptyDir or claim (the root filesystem is read-only)", where, cache)
			}
		}
	}
}

// TestEdgeAndRegisteredInstances: the edge (hachat proxy --ingress) is
// behind a LoadBalancer Service; the control planes publish its listeners;
// every webapi and interaction pod registers in gossip under its pod name,
// announcing its pod IP, with its HTTP listener on the pod IP (the address
// the edge dials); only the edge (and Prometheus) reach those listeners.
func TestEdgeAndRegisteredInstances(t *testing.T) {
	m := load(t)
	var edge *workload
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			if _, ok := flagValue(c, "ingress"); ok && len(c.Args) > 0 && c.Args[0] == "proxy" {
				edge = &w
			}
		}
	}
	if edge == nil {
		t.Fatal("no edge (hachat proxy --ingress)")
	}
	lb := false
	for _, s := range m.services {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && len(m.selected(s.Spec.Selector)) == 1 && m.selected(s.Spec.Selector)[0].name == edge.name {
			lb = true
		}
	}
	if !lb {
		t.Errorf("%s: no LoadBalancer Service in front of it", edge.name)
	}
	for where, x := range m.containersRunning("xds") {
		for _, f := range []string{"ingress-customer", "ingress-agent"} {
			if v, _ := flagValue(x, f); v == "" {
				t.Errorf("%s: no --%s: the edge would get no listener", where, f)
			}
		}
	}
	for _, part := range []string{"webapi", "interaction"} {
		ws := m.selected(map[string]string{"app.kubernetes.io/name": "hachat-" + part})
		if len(ws) != 1 {
			t.Fatalf("want one %s workload, got %d", part, len(ws))
		}
		w := ws[0]
		c := w.tmpl.Spec.Containers[0]
		if c.Args[0] != part {
			t.Fatalf("%s: first container runs %q", w.name, c.Args[0])
		}
		gport := containerPort(t, c, "gossip-tcp")
		for flag, want := range map[string]string{
			"gossip-name":      "$(POD_NAME)",
			"gossip-advertise": fmt.Sprintf("$(POD_IP):%d", gport),
			"gossip-bind":      fmt.Sprintf("0.0.0.0:%d", gport),
		} {
			if got, _ := flagValue(c, flag); got != want {
				t.Errorf("%s: --%s=%q, want %q", w.name, flag, got, want)
			}
		}
		if j, _ := flagValue(c, "gossip-join"); j == "" {
			t.Errorf("%s: no --gossip-join: the edge never learns it", w.name)
		}
		http, _ := flagValue(c, "http")
		if !strings.HasPrefix(http, "$(POD_IP):") {
			t.Errorf("%s: --http=%q: the announced listener must be the pod IP, not 0.0.0.0", w.name, http)
		}
		got := sortedKeys(m.admitted(w, portOf(t, "--http", http), corev1.ProtocolTCP))
		if want := []string{edge.name, "namespace:monitoring"}; !slices.Equal(got, want) {
			t.Errorf("%s: its HTTP port admits %v, want %v", w.name, got, want)
		}
	}
	ia := m.selected(map[string]string{"app.kubernetes.io/name": "hachat-interaction"})[0]
	for _, d := range m.deployments {
		if "Deployment/"+d.Name == ia.name && (*d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType) {
			t.Errorf("%s: interaction keeps its queue in memory: want 1 replica and the Recreate strategy, got %d, %q", ia.name, *d.Spec.Replicas, d.Spec.Strategy.Type)
		}
	}
}

// TestGossipMesh: every pod that gossips carries hachat.io/gossip=true,
// announces its pod IP, and admits every other gossiping pod on its gossip
// port over TCP and UDP (memberlist probes every member directly).
func TestGossipMesh(t *testing.T) {
	m := load(t)
	var members []string
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			if _, ok := flagValue(c, "gossip-join"); ok {
				members = append(members, w.name)
			}
		}
	}
	slices.Sort(members)
	if len(members) < 4 {
		t.Fatalf("gossip members %v: want the cores, the control planes, webapi and interaction", members)
	}
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			bind, ok := flagValue(c, "gossip-bind")
			if !ok {
				continue
			}
			if w.tmpl.Labels["hachat.io/gossip"] != "true" {
				t.Errorf("%s: gossips without the label hachat.io/gossip=true", w.name)
			}
			port := portOf(t, w.name+" --gossip-bind", bind)
			if adv, _ := flagValue(c, "gossip-advertise"); adv != fmt.Sprintf("$(POD_IP):%d", port) {
				t.Errorf("%s: --gossip-advertise=%q, want $(POD_IP):%d", w.name, adv, port)
			}
			for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
				if got := sortedKeys(m.admitted(w, port, proto)); !slices.Equal(got, members) {
					t.Errorf("%s: gossip port %d/%s admits %v, want every member %v", w.name, port, proto, got, members)
				}
			}
		}
	}
}
