package scalebench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/xds"
)

// PushOptions shape the push measurement.
type PushOptions struct {
	// Pairs is the number of pairs (default 100).
	Pairs int
	// Sidecars is the number of ADS client streams (default 1000), each on
	// its own gRPC connection, as a thousand sidecar processes would hold.
	Sidecars int
	// Timeout bounds each phase (default 5 minutes).
	Timeout time.Duration
	// Binary, when set, runs the sidecar streams in a process of their own
	// (Binary bench scale-sidecars), so that this process's CPU and heap
	// are the control plane's alone. Empty: the streams run in this process.
	Binary string
}

func (o *PushOptions) defaults() {
	if o.Pairs <= 0 {
		o.Pairs = 100
	}
	if o.Sidecars <= 0 {
		o.Sidecars = 1000
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
}

// PushPhase is one push of the control plane to every sidecar.
type PushPhase struct {
	// What changed.
	Name string `json:"name"`
	// LastACK is from the change (the stream starts, or the membership
	// change handed to the control plane) to the last sidecar's ACK of
	// the new resources; P50ACK is the median sidecar's.
	LastACK time.Duration `json:"last_ack_ns"`
	P50ACK  time.Duration `json:"p50_ack_ns"`
	// BytesPerSidecar is the size of the responses one sidecar received
	// in this phase (DiscoveryResponse messages, protobuf-encoded).
	BytesPerSidecar int `json:"bytes_per_sidecar"`
	// Responses is how many responses one sidecar received.
	Responses int `json:"responses_per_sidecar"`
	// CPU is this process's CPU time (user + system) over the phase: the
	// control plane's alone when the sidecars run in their own process
	// (PushReport.SidecarProcess), else both ends together. The machine's
	// load stretches LastACK, much less CPU.
	CPU time.Duration `json:"cpu_ns"`
	// SidecarCPU is the sidecar process's CPU time over the phase.
	SidecarCPU time.Duration `json:"sidecar_cpu_ns,omitempty"`
}

// PushReport is what the push measurement measured.
type PushReport struct {
	Pairs    int `json:"pairs"`
	Sidecars int `json:"sidecars"`
	// SidecarProcess says the sidecar streams ran in their own process.
	SidecarProcess bool        `json:"sidecar_process"`
	Phases         []PushPhase `json:"phases"`
	// HeapBefore is the Go heap in use before the control plane started;
	// HeapConnected with the control plane serving every sidecar stream:
	// the control plane's alone with SidecarProcess, else both ends'.
	HeapBefore    uint64 `json:"heap_before_bytes"`
	HeapConnected uint64 `json:"heap_connected_bytes"`
	Goroutines    int    `json:"goroutines_connected"`
}

// HeapPerSidecar is the heap growth per sidecar stream (both ends).
func (r PushReport) HeapPerSidecar() float64 {
	if r.Sidecars == 0 || r.HeapConnected < r.HeapBefore {
		return 0
	}
	return float64(r.HeapConnected-r.HeapBefore) / float64(r.Sidecars)
}

// adsSidecar is a sidecar's ADS client as package proxy runs it: one ADS
// stream, listeners and clusters by wildcard, the assignments of every EDS
// cluster by name, each response decoded and acknowledged.
type adsSidecar struct {
	id string

	mu        sync.Mutex
	versions  map[string]string    // acknowledged version per type
	ackedAt   map[string]time.Time // when the current version was acknowledged
	responses int
	bytes     int
	err       error

	// onACK, when set, is told every acknowledged response (the sidecar
	// process reports them to the bench).
	onACK func(typ, version string, at time.Time, size int)
}

func newSidecar(id string) *adsSidecar {
	return &adsSidecar{id: id, versions: map[string]string{}, ackedAt: map[string]time.Time{}}
}

// snapshot returns the acknowledged versions and their times, and the
// response and byte counters.
func (s *adsSidecar) snapshot() (map[string]string, map[string]time.Time, int, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := make(map[string]string, len(s.versions))
	t := make(map[string]time.Time, len(s.ackedAt))
	for k, x := range s.versions {
		v[k] = x
		t[k] = s.ackedAt[k]
	}
	return v, t, s.responses, s.bytes, s.err
}

// acked reports whether the sidecar acknowledged a version of each of
// types other than its version in before (nil: any version), and the
// latest time it acknowledged one of them; and the error that ended its
// stream.
func (s *adsSidecar) acked(types []string, before map[string]string) (time.Time, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for _, t := range types {
		v := s.versions[t]
		if v == "" || before != nil && v == before[t] {
			return time.Time{}, false, s.err
		}
		if s.ackedAt[t].After(last) {
			last = s.ackedAt[t]
		}
	}
	return last, true, s.err
}

// record notes an acknowledged response of typ: its version, when, and
// its size; it tells onACK too.
func (s *adsSidecar) record(typ, version string, at time.Time, size int) {
	s.mu.Lock()
	s.responses++
	s.bytes += size
	if s.versions[typ] != version {
		s.versions[typ] = version
		s.ackedAt[typ] = at
	}
	s.mu.Unlock()
	if s.onACK != nil {
		s.onACK(typ, version, at, size)
	}
}

// fail notes the error that ended the sidecar's stream.
func (s *adsSidecar) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// run holds the stream on conn until ctx ends.
func (s *adsSidecar) run(ctx context.Context, conn *grpc.ClientConn) {
	err := s.stream(ctx, conn)
	if ctx.Err() == nil && err != nil {
		s.fail(err)
	}
}

func (s *adsSidecar) stream(ctx context.Context, conn *grpc.ClientConn) error {
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open ADS stream: %w", err)
	}
	node := &corev3.Node{Id: s.id, Cluster: "bench-sidecars", UserAgentName: "hachat-proxy"}
	req := func(typ, version, nonce string, names []string) *discoveryv3.DiscoveryRequest {
		return &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
	}
	if err := st.Send(req(resource.ListenerType, "", "", nil)); err != nil {
		return fmt.Errorf("ADS send: %w", err)
	}
	if err := st.Send(req(resource.ClusterType, "", "", nil)); err != nil {
		return fmt.Errorf("ADS send: %w", err)
	}
	var edsNames []string
	edsNonce := ""
	for {
		resp, err := st.Recv()
		if err != nil {
			return fmt.Errorf("ADS receive: %w", err)
		}
		typ := resp.GetTypeUrl()
		var clusters []string
		for _, a := range resp.GetResources() {
			var m proto.Message
			switch typ {
			case resource.ListenerType:
				m = &listenerv3.Listener{}
			case resource.ClusterType:
				m = &clusterv3.Cluster{}
			case resource.EndpointType:
				m = &endpointv3.ClusterLoadAssignment{}
			default:
				return fmt.Errorf("unexpected type %q", typ)
			}
			if err := a.UnmarshalTo(m); err != nil {
				return fmt.Errorf("decode %s: %w", shortName(typ), err)
			}
			if c, ok := m.(*clusterv3.Cluster); ok && c.GetType() == clusterv3.Cluster_EDS {
				name := c.GetEdsClusterConfig().GetServiceName()
				if name == "" {
					name = c.GetName()
				}
				clusters = append(clusters, name)
			}
		}
		names := []string(nil)
		if typ == resource.EndpointType {
			names, edsNonce = edsNames, resp.GetNonce()
		}
		if err := st.Send(req(typ, resp.GetVersionInfo(), resp.GetNonce(), names)); err != nil {
			return fmt.Errorf("ADS send: %w", err)
		}
		s.record(typ, resp.GetVersionInfo(), time.Now(), proto.Size(resp))
		if typ == resource.ClusterType {
			slices.Sort(clusters)
			if !slices.Equal(clusters, edsNames) {
				edsNames = clusters
				s.mu.Lock()
				ev := s.versions[resource.EndpointType]
				s.mu.Unlock()
				if err := st.Send(req(resource.EndpointType, ev, edsNonce, edsNames)); err != nil {
					return fmt.Errorf("ADS send: %w", err)
				}
			}
		}
	}
}

// zeroLive is the pair poller's seam: every primary reports no live
// session, so the weights stay put and only membership changes push.
func zeroLive(context.Context, string) (uint64, error) { return 0, nil }

// RunPush starts the real control plane (xds.Server: go-control-plane's
// snapshot cache and ADS server behind gRPC on loopback) for Pairs pairs and
// opens Sidecars ADS streams to it, each on its own connection. It measures
// three pushes: the first (every stream gets every resource), a failover in
// one pair (one assignment changes) and a new pair joining (listeners,
// clusters and assignments change). Each ends when every sidecar has
// acknowledged the new versions and the control plane counts every node in
// sync.
func RunPush(ctx context.Context, o PushOptions, progress io.Writer) (PushReport, error) {
	o.defaults()
	rep := PushReport{Pairs: o.Pairs, Sidecars: o.Sidecars}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.HeapBefore = ms.HeapInuse

	cfg := xds.DefaultConfig()
	cfg.GRPC, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	members := ModelMembers(o.Pairs)
	view := xds.NewMemoryView(members...)
	srv, err := xds.New(cfg, telemetry.Discard(), view, xds.Options{PairLive: zeroLive})
	if err != nil {
		return rep, fmt.Errorf("control plane: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	served := make(chan error, 1)
	wg.Go(func() { served <- srv.Run(ctx) })

	// Every sidecar dials its own connection (a sidecar is a process).
	sidecars := make([]*adsSidecar, o.Sidecars)
	conns := make([]*grpc.ClientConn, o.Sidecars)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for i := range sidecars {
		sidecars[i] = newSidecar("bench-sidecar-" + strconv.Itoa(i))
		if o.Binary != "" {
			continue
		}
		conns[i], err = grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return rep, fmt.Errorf("dial the control plane: %w", err)
		}
	}
	where := "in this process"
	if o.Binary != "" {
		where = "in a sidecar process"
	}
	fmt.Fprintf(progress, "push: control plane of %d pairs at %s; opening %d ADS streams %s\n", o.Pairs, srv.GRPCAddr(), o.Sidecars, where)
	start := time.Now()
	sideCPU := func() time.Duration { return 0 }
	if o.Binary != "" {
		proc, err := startSidecarProcess(ctx, o.Binary, srv.GRPCAddr(), sidecars)
		if err != nil {
			return rep, err
		}
		defer func() { cancel(); <-proc.done }()
		rep.SidecarProcess, sideCPU = true, proc.cpu
	} else {
		for i, s := range sidecars {
			wg.Go(func() { s.run(ctx, conns[i]) })
		}
	}
	all := []string{resource.ListenerType, resource.ClusterType, resource.EndpointType}
	phase, err := waitPushed(ctx, o, srv, sidecars, sideCPU, nil, all, start, "first push: every resource to every new stream", served, progress)
	if err != nil {
		return rep, err
	}
	rep.Phases = append(rep.Phases, phase)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	rep.HeapConnected = ms.HeapInuse
	rep.Goroutines = runtime.NumGoroutine()

	// A failover in pair 7 (or the last pair): its backup is the primary now.
	fp := min(7, o.Pairs)
	failed := failover(members, fp)
	phase, err = change(ctx, o, srv, view, sidecars, sideCPU, failed, []string{resource.EndpointType},
		fmt.Sprintf("failover in pair %d: its assignment changes", fp), served, progress)
	if err != nil {
		return rep, err
	}
	rep.Phases = append(rep.Phases, phase)

	// A new pair joins.
	joined := append(failed, ModelMembers(o.Pairs + 1)[2*o.Pairs:]...)
	phase, err = change(ctx, o, srv, view, sidecars, sideCPU, joined, all,
		fmt.Sprintf("pair %d joins: a listener, a cluster and an assignment more", o.Pairs+1), served, progress)
	if err != nil {
		return rep, err
	}
	rep.Phases = append(rep.Phases, phase)
	return rep, nil
}

// failover returns members with pair p's primary dead and its backup
// primary at the next epoch.
func failover(members []xds.Member, p int) []xds.Member {
	out := slices.Clone(members)
	a, b := fmt.Sprintf("core-%da", p), fmt.Sprintf("core-%db", p)
	for i := range out {
		switch out[i].Name {
		case a:
			out[i].State = xds.StateDead
		case b:
			out[i].Role, out[i].Epoch = xds.RolePrimary, out[i].Epoch+1
		}
	}
	return out
}

// change hands members to the control plane and measures the push.
func change(ctx context.Context, o PushOptions, srv *xds.Server, view *xds.MemoryView, sidecars []*adsSidecar, sideCPU func() time.Duration,
	members []xds.Member, types []string, name string, served <-chan error, progress io.Writer) (PushPhase, error) {
	before := make([]map[string]string, len(sidecars))
	for i, s := range sidecars {
		before[i], _, _, _, _ = s.snapshot()
	}
	start := time.Now()
	view.Set(members...)
	return waitPushed(ctx, o, srv, sidecars, sideCPU, before, types, start, name, served, progress)
}

// waitPushed waits until every sidecar acknowledged a version of each of
// types other than its version in before (nil: any version), and the
// control plane counts every node in sync; it reports the times of the
// acknowledgements from start and what each sidecar received meanwhile.
func waitPushed(ctx context.Context, o PushOptions, srv *xds.Server, sidecars []*adsSidecar, sideCPU func() time.Duration, before []map[string]string,
	types []string, start time.Time, name string, served <-chan error, progress io.Writer) (PushPhase, error) {
	ph := PushPhase{Name: name}
	cpu0, scpu0 := selfCPU(), sideCPU()
	resp0 := make([]int, len(sidecars))
	bytes0 := make([]int, len(sidecars))
	if before != nil {
		for i, s := range sidecars {
			_, _, resp0[i], bytes0[i], _ = s.snapshot()
		}
	}
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	// The check only decides when to stop (the times are the ACKs' own):
	// every 50ms, without allocating, to keep the control plane's CPU its own.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastNote := time.Now()
	for {
		done := 0
		var firstErr error
		acks := make([]time.Duration, 0, len(sidecars))
		for i, s := range sidecars {
			var prev map[string]string
			if before != nil {
				prev = before[i]
			}
			last, ok, err := s.acked(types, prev)
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("sidecar %s: %w", s.id, err)
			}
			if ok {
				done++
				acks = append(acks, last.Sub(start))
			}
		}
		if firstErr != nil {
			return ph, firstErr
		}
		if done == len(sidecars) && allInSync(srv, len(sidecars)) {
			sort.Slice(acks, func(i, j int) bool { return acks[i] < acks[j] })
			ph.LastACK, ph.P50ACK = acks[len(acks)-1], acks[len(acks)/2]
			ph.CPU, ph.SidecarCPU = selfCPU()-cpu0, sideCPU()-scpu0
			_, _, r, b, _ := sidecars[0].snapshot()
			ph.Responses, ph.BytesPerSidecar = r-resp0[0], b-bytes0[0]
			fmt.Fprintf(progress, "push: %s: last ACK after %v (median %v)\n", name, ph.LastACK.Round(time.Millisecond), ph.P50ACK.Round(time.Millisecond))
			return ph, nil
		}
		if time.Since(lastNote) > 5*time.Second {
			fmt.Fprintf(progress, "push: %s: %d/%d sidecars acknowledged so far\n", name, done, len(sidecars))
			lastNote = time.Now()
		}
		select {
		case <-ctx.Done():
			return ph, ctx.Err()
		case err := <-served:
			return ph, fmt.Errorf("control plane stopped: %w", errors.Join(err, errors.New("while pushing")))
		case <-deadline.C:
			return ph, fmt.Errorf("%s: %d/%d sidecars acknowledged after %v", name, done, len(sidecars), o.Timeout)
		case <-tick.C:
		}
	}
}

// selfCPU is this process's CPU time so far (0 when unknown).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// allInSync reports whether the control plane counts n nodes, each having
// acknowledged what it serves.
func allInSync(srv *xds.Server, n int) bool {
	st := srv.Status()
	if len(st.Nodes) != n {
		return false
	}
	for _, nd := range st.Nodes {
		if !nd.InSync {
			return false
		}
	}
	return true
}
