// Package proxybench measures the hachat sidecar against a direct connection
// and against HAProxy on the same machine in the same run: request/response
// latency (p50/p99) and throughput over raw TCP echo, and the kill -9
// failover gap through the sidecar and through HAProxy.
//
// The upstreams are two echo servers (ServeEcho), a primary and a backup
// stand-in, each its own process so that the primary can be killed with
// SIGKILL; they also answer chatpb Chat/Status so the sidecar's health
// checks work unchanged. The sidecar runs in this process, built with
// proxy.NewStatic from the same resources the control plane publishes.
package proxybench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/proxy"
	"github.com/hachat/hachat/telemetry"
)

// Health check settings used by both proxies: HAProxy's `check inter 100
// fall 2 rise 1 fastinter 50` and the sidecar's CDS health check.
const (
	checkInterval = 100 * time.Millisecond
	checkTimeout  = 100 * time.Millisecond
	checkFall     = 2
	checkRise     = 1
)

// ErrNoHAProxy reports that the HAProxy binary could not be run; Run then
// measures the rest and says so in the report.
var ErrNoHAProxy = errors.New("haproxy not available")

// Options tune a run.
type Options struct {
	// Duration of each latency phase (default 5s).
	Duration time.Duration
	// Conns is the number of concurrent client connections in the latency
	// phases, each doing one round trip at a time (default 8).
	Conns int
	// PayloadSize is the size of each request and response (default 64).
	PayloadSize int
	// Rounds is how many turns the paths take, each measured for
	// Duration/Rounds per turn (default 5).
	Rounds int
	// Trials is the number of kill -9 failover trials (default 5).
	Trials int
	// HAProxy is the HAProxy binary (default /usr/sbin/haproxy).
	HAProxy string
	// EchoCommand starts an echo server process; Run appends --addr,
	// --name, --role and --epoch. Default: this executable with the
	// arguments "bench echo-server" (the hidden `hachat bench echo-server`).
	EchoCommand []string
	// SidecarCommand starts the sidecar process; Run appends --listen,
	// --admin, --primary and --backup. Default: this executable with the
	// arguments "bench proxy-sidecar" (the hidden `hachat bench
	// proxy-sidecar`, which calls ServeSidecar).
	SidecarCommand []string
	// EchoEnv is added to the child processes' environment.
	EchoEnv []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// TLS runs every hop with mTLS: Run makes a throwaway cluster CA and
	// certificates (package mtls); the clients dial with a webapi
	// certificate, the sidecar terminates and originates mTLS with its
	// proxy certificate, HAProxy does the same (ssl on bind and server
	// lines), and the echo servers serve mTLS with core certificates.
	// Connections are long-lived, so latency and throughput show the cost
	// of encryption; the failover gap includes the new handshakes.
	TLS bool

	certDir   string      // with TLS: the cert dir Run made
	clientTLS *tls.Config // with TLS: the clients' configuration
}

// dial connects to addr, with TLS when o.TLS is set (the handshake done).
func (o *Options) dial(addr string, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if o.clientTLS == nil {
		return d.Dial("tcp", addr)
	}
	return tls.DialWithDialer(d, "tcp", addr, o.clientTLS)
}

// tlsArgs are the --tls-* flags of the part name in the cert dir.
func (o *Options) tlsArgs(name string) []string {
	if o.certDir == "" {
		return nil
	}
	f := mtls.FilesIn(o.certDir, name)
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
}

// setupTLS makes the cert dir of a TLS run: the echo servers are cores,
// the sidecar and HAProxy proxies, the client a webapi, the admin reader an
// operator.
func (o *Options) setupTLS() (cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "proxybench-certs-")
	if err != nil {
		return nil, fmt.Errorf("cert dir: %w", err)
	}
	parts := []mtls.Part{{Kind: mtls.KindCore, Name: "primary"}, {Kind: mtls.KindCore, Name: "backup"},
		{Kind: mtls.KindProxy, Name: "sidecar"}, {Kind: mtls.KindProxy, Name: "haproxy"},
		{Kind: mtls.KindWebAPI, Name: "client"}, {Kind: mtls.KindOperator, Name: "operator"}}
	if _, err := mtls.Init(filepath.Join(dir, "certs"), "", parts, false); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	o.certDir = filepath.Join(dir, "certs")
	src, err := mtls.Load(mtls.FilesIn(o.certDir, "client"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	o.clientTLS = src.ClientConfig(nil)
	// HAProxy reads its certificate and key from one file.
	f := mtls.FilesIn(o.certDir, "haproxy")
	cert, err := os.ReadFile(f.Cert)
	if err == nil {
		var key []byte
		if key, err = os.ReadFile(f.Key); err == nil {
			err = os.WriteFile(filepath.Join(o.certDir, "haproxy-combined.pem"), append(cert, key...), 0o600)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("haproxy certificate: %w", err)
	}
	return func() { os.RemoveAll(dir) }, nil
}

func (o *Options) defaults() error {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Conns <= 0 {
		o.Conns = 8
	}
	if o.PayloadSize <= 0 {
		o.PayloadSize = 64
	}
	if o.Trials <= 0 {
		o.Trials = 5
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.HAProxy == "" {
		o.HAProxy = "/usr/sbin/haproxy"
	}
	if len(o.EchoCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		o.EchoCommand = []string{exe, "bench", "echo-server"}
	}
	if len(o.SidecarCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		o.SidecarCommand = []string{exe, "bench", "proxy-sidecar"}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	// Progress lines and the children's stderr share the writer.
	o.Log = &lockedWriter{w: o.Log}
	return nil
}

// lockedWriter serializes writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Result is the latency and throughput of one path.
type Result struct {
	Name       string        `json:"name"`
	Requests   int           `json:"requests"`
	Errors     int           `json:"errors"`
	Throughput float64       `json:"requestsPerSecond"`
	P50        time.Duration `json:"p50"`
	P99        time.Duration `json:"p99"`
	Max        time.Duration `json:"max"`
	// CPU is the CPU time (user+system) the proxy process used during the
	// phase, and CPUPerRequest that divided by the requests; zero for the
	// direct path.
	CPU           time.Duration `json:"cpu"`
	CPUPerRequest time.Duration `json:"cpuPerRequest"`
}

// Gaps are the kill -9 failover gaps of one proxy, one per trial: from the
// SIGKILL to the first round trip answered after the primary is gone.
type Gaps struct {
	Name   string          `json:"name"`
	Trials []time.Duration `json:"trials"`
	P50    time.Duration   `json:"p50"`
	Max    time.Duration   `json:"max"`
	Failed int             `json:"failed"`
}

// Report is the outcome of Run.
type Report struct {
	Options struct {
		Duration    time.Duration `json:"duration"`
		Conns       int           `json:"conns"`
		PayloadSize int           `json:"payloadSize"`
		Rounds      int           `json:"rounds"`
		Trials      int           `json:"trials"`
		TLS         bool          `json:"tls"`
	} `json:"options"`
	HAProxyVersion string  `json:"haproxyVersion,omitempty"`
	HAProxyError   string  `json:"haproxyError,omitempty"`
	Direct         Result  `json:"direct"`
	Sidecar        Result  `json:"sidecar"`
	HAProxy        *Result `json:"haproxy,omitempty"`
	// Added latency over the direct connection, p50 and p99.
	SidecarAddedP50 time.Duration `json:"sidecarAddedP50"`
	SidecarAddedP99 time.Duration `json:"sidecarAddedP99"`
	HAProxyAddedP50 time.Duration `json:"haproxyAddedP50,omitempty"`
	HAProxyAddedP99 time.Duration `json:"haproxyAddedP99,omitempty"`
	// Ratios: sidecar over direct and sidecar over HAProxy (latency: lower
	// is better; throughput: higher is better).
	SidecarDirectP50        float64 `json:"sidecarDirectP50Ratio"`
	SidecarDirectP99        float64 `json:"sidecarDirectP99Ratio"`
	SidecarDirectThroughput float64 `json:"sidecarDirectThroughputRatio"`
	SidecarHAProxyP50       float64 `json:"sidecarHAProxyP50Ratio,omitempty"`
	SidecarHAProxyP99       float64 `json:"sidecarHAProxyP99Ratio,omitempty"`
	SidecarHAProxyTput      float64 `json:"sidecarHAProxyThroughputRatio,omitempty"`
	SidecarFailover         Gaps    `json:"sidecarFailover"`
	HAProxyFailover         *Gaps   `json:"haproxyFailover,omitempty"`
}

// Run starts the echo pair, the sidecar and HAProxy, measures, and stops
// everything it started.
func Run(ctx context.Context, o Options) (Report, error) {
	var rep Report
	if err := o.defaults(); err != nil {
		return rep, err
	}
	rep.Options.Duration, rep.Options.Conns, rep.Options.PayloadSize, rep.Options.Rounds, rep.Options.Trials = o.Duration, o.Conns, o.PayloadSize, o.Rounds, o.Trials
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "proxybench: "+format+"\n", args...) }
	rep.Options.TLS = o.TLS
	if o.TLS {
		cleanup, err := o.setupTLS()
		if err != nil {
			return rep, err
		}
		defer cleanup()
	}

	ports, err := freePorts(5)
	if err != nil {
		return rep, err
	}
	primaryAddr, backupAddr, haAddr := ports[0], ports[1], ports[2]
	primary := &echoProc{child: child{name: "primary", o: &o}, addr: primaryAddr, st: EchoStatus{Name: "primary", Role: "primary", Epoch: 1}}
	backup := &echoProc{child: child{name: "backup", o: &o}, addr: backupAddr, st: EchoStatus{Name: "backup", Role: "backup", Epoch: 1}}
	defer primary.kill()
	defer backup.kill()
	for _, e := range []*echoProc{primary, backup} {
		if err := e.start(ctx); err != nil {
			return rep, err
		}
	}
	logf("echo servers: primary %s (pid %d), backup %s (pid %d)", primaryAddr, primary.pid(), backupAddr, backup.pid())

	// The sidecar, its own process like HAProxy, built from the resources
	// the control plane would publish.
	sc := &child{name: "sidecar", o: &o}
	sidecarAddr, adminAddr := ports[3], ports[4]
	if err := sc.start(append(append(slices.Clone(o.SidecarCommand), "--listen", sidecarAddr, "--admin", adminAddr,
		"--primary", primaryAddr, "--backup", backupAddr), o.tlsArgs("sidecar")...)); err != nil {
		return rep, err
	}
	defer sc.kill()
	sidecarOnPrimary := func() bool {
		d, err := sidecarDump(&o, adminAddr)
		return err == nil && len(d.Clusters) == 1 && d.Clusters[0].Chosen == primaryAddr && d.Clusters[0].Definitive
	}
	if err := waitUntil(ctx, 10*time.Second, func() bool { return sc.exited() || sidecarOnPrimary() }); err != nil || sc.exited() {
		return rep, fmt.Errorf("sidecar never chose the primary (exited %v): %v", sc.exited(), err)
	}
	logf("sidecar %s (pid %d)", sidecarAddr, sc.pid())

	// HAProxy, same machine, same run.
	var ha *haproxyProc
	if v, err := haproxyVersion(o.HAProxy); err != nil {
		rep.HAProxyError = err.Error()
		logf("%v", err)
	} else {
		rep.HAProxyVersion = v
		ha = &haproxyProc{bin: o.HAProxy, addr: haAddr, primary: primaryAddr, backup: backupAddr, certDir: o.certDir}
		if err := ha.start(ctx); err != nil {
			rep.HAProxyError = err.Error()
			logf("%v", err)
			ha = nil
		} else {
			defer ha.stop()
		}
	}
	haOnPrimary := func() bool { return ha != nil && ha.serverUp("primary") }
	if ha != nil {
		if err := waitUntil(ctx, 5*time.Second, haOnPrimary); err != nil {
			return rep, fmt.Errorf("haproxy never saw the primary up: %w", err)
		}
	}

	// Latency and throughput: the paths take turns in short rounds, so that
	// the machine's changing load falls on all of them alike.
	payload := makePayload(o.PayloadSize)
	paths := []*pathRun{{res: Result{Name: "direct"}, addr: primaryAddr},
		{res: Result{Name: "hachat sidecar"}, addr: sidecarAddr, pid: sc.pid()}}
	if ha != nil {
		paths = append(paths, &pathRun{res: Result{Name: "haproxy"}, addr: haAddr, pid: ha.cmd.Process.Pid})
	}
	logf("latency: %d rounds of %v per path", o.Rounds, o.Duration/time.Duration(o.Rounds))
	if err := measure(ctx, paths, o, payload); err != nil {
		return rep, err
	}
	rep.Direct, rep.Sidecar = paths[0].res, paths[1].res
	if ha != nil {
		rep.HAProxy = &paths[2].res
	}
	rep.ratios()

	// Failover: each trial kills the primary under traffic through both
	// proxies at once, then restarts it and waits for both to return to it.
	rep.SidecarFailover = Gaps{Name: "hachat sidecar"}
	if ha != nil {
		rep.HAProxyFailover = &Gaps{Name: "haproxy"}
	}
	for i := 0; i < o.Trials; i++ {
		if i > 0 {
			if err := primary.start(ctx); err != nil {
				return rep, err
			}
			if err := waitUntil(ctx, 10*time.Second, func() bool { return sidecarOnPrimary() && (ha == nil || haOnPrimary()) }); err != nil {
				return rep, fmt.Errorf("trial %d: proxies did not return to the restarted primary: %w", i+1, err)
			}
		}
		targets := []string{sidecarAddr}
		if ha != nil {
			targets = append(targets, haAddr)
		}
		gaps, err := failoverTrial(ctx, &o, primary, targets, payload)
		if err != nil {
			return rep, fmt.Errorf("trial %d: %w", i+1, err)
		}
		rep.SidecarFailover.add(gaps[0])
		if ha != nil {
			rep.HAProxyFailover.add(gaps[1])
		}
		logf("failover trial %d: sidecar %v, haproxy %v", i+1, gaps[0], gaps[1:])
	}
	rep.SidecarFailover.summarize()
	if ha != nil {
		rep.HAProxyFailover.summarize()
	}
	return rep, nil
}

func (r *Report) ratios() {
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	r.SidecarAddedP50 = r.Sidecar.P50 - r.Direct.P50
	r.SidecarAddedP99 = r.Sidecar.P99 - r.Direct.P99
	r.SidecarDirectP50 = ratio(float64(r.Sidecar.P50), float64(r.Direct.P50))
	r.SidecarDirectP99 = ratio(float64(r.Sidecar.P99), float64(r.Direct.P99))
	r.SidecarDirectThroughput = ratio(r.Sidecar.Throughput, r.Direct.Throughput)
	if h := r.HAProxy; h != nil {
		r.HAProxyAddedP50 = h.P50 - r.Direct.P50
		r.HAProxyAddedP99 = h.P99 - r.Direct.P99
		r.SidecarHAProxyP50 = ratio(float64(r.Sidecar.P50), float64(h.P50))
		r.SidecarHAProxyP99 = ratio(float64(r.Sidecar.P99), float64(h.P99))
		r.SidecarHAProxyTput = ratio(r.Sidecar.Throughput, h.Throughput)
	}
}

// gapFailed marks a trial in which no round trip succeeded in time.
const gapFailed = -1

func (g *Gaps) add(d time.Duration) {
	if d == gapFailed {
		g.Failed++
		return
	}
	g.Trials = append(g.Trials, d)
}

func (g *Gaps) summarize() {
	if len(g.Trials) == 0 {
		return
	}
	s := slices.Clone(g.Trials)
	slices.Sort(s)
	g.P50 = s[len(s)/2]
	g.Max = s[len(s)-1]
}

// WriteText writes the report for people.
func (r Report) WriteText(w io.Writer) {
	mode := "plaintext"
	if r.Options.TLS {
		mode = "mTLS on every hop"
	}
	fmt.Fprintf(w, "hachat bench proxy: %d connections, %d-byte request/response, %v per path in %d rounds, %s\n",
		r.Options.Conns, r.Options.PayloadSize, r.Options.Duration, r.Options.Rounds, mode)
	if r.HAProxyVersion != "" {
		fmt.Fprintf(w, "haproxy: %s\n", r.HAProxyVersion)
	}
	if r.HAProxyError != "" {
		fmt.Fprintf(w, "haproxy: not measured: %s\n", r.HAProxyError)
	}
	fmt.Fprintf(w, "\n%-16s %12s %10s %10s %10s %12s %12s %10s\n", "path", "requests/s", "p50", "p99", "max", "added p50", "added p99", "cpu/req")
	row := func(res Result, a50, a99 time.Duration) {
		fmt.Fprintf(w, "%-16s %12.0f %10v %10v %10v %12v %12v %10v\n", res.Name, res.Throughput,
			res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond), res.Max.Round(time.Microsecond),
			a50.Round(time.Microsecond), a99.Round(time.Microsecond), res.CPUPerRequest.Round(100*time.Nanosecond))
	}
	row(r.Direct, 0, 0)
	row(r.Sidecar, r.SidecarAddedP50, r.SidecarAddedP99)
	if r.HAProxy != nil {
		row(*r.HAProxy, r.HAProxyAddedP50, r.HAProxyAddedP99)
	}
	fmt.Fprintf(w, "\nsidecar/direct:  p50 %.2fx  p99 %.2fx  throughput %.2fx\n", r.SidecarDirectP50, r.SidecarDirectP99, r.SidecarDirectThroughput)
	if r.HAProxy != nil {
		fmt.Fprintf(w, "sidecar/haproxy: p50 %.2fx  p99 %.2fx  throughput %.2fx\n", r.SidecarHAProxyP50, r.SidecarHAProxyP99, r.SidecarHAProxyTput)
	}
	fmt.Fprintf(w, "\nkill -9 failover gap (SIGKILL of the primary to the first round trip answered by the backup), %d trials:\n", r.Options.Trials)
	gaps := []Gaps{r.SidecarFailover}
	if r.HAProxyFailover != nil {
		gaps = append(gaps, *r.HAProxyFailover)
	}
	for _, g := range gaps {
		var ts []string
		for _, t := range g.Trials {
			ts = append(ts, t.Round(10*time.Microsecond).String())
		}
		fmt.Fprintf(w, "%-16s p50 %-10v max %-10v failed %d  [%s]\n", g.Name, g.P50.Round(10*time.Microsecond),
			g.Max.Round(10*time.Microsecond), g.Failed, strings.Join(ts, " "))
	}
}

// Resources are the xDS resources of the benchmark's sidecar: what the
// control plane publishes for a pair, with the benchmark's check timings.
func Resources(primaryAddr, backupAddr string) proxy.Resources {
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: "chatcore",
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "chatcore"}})
	lis := &listenerv3.Listener{
		Name: "chatcore-sidecar",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 7301}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}},
	}
	cl := &clusterv3.Cluster{
		Name:                 "chatcore",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(time.Second),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		HealthChecks: []*corev3.HealthCheck{{
			Interval:           durationpb.New(checkInterval),
			Timeout:            durationpb.New(checkTimeout),
			UnhealthyThreshold: wrapperspb.UInt32(checkFall),
			HealthyThreshold:   wrapperspb.UInt32(checkRise),
			HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
				ServiceName: "hachat.chat.v1.Chat"}},
		}},
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "chatcore"}
	for i, e := range []struct{ addr, name, role string }{{primaryAddr, "primary", "primary"}, {backupAddr, "backup", "backup"}} {
		host, portS, _ := net.SplitHostPort(e.addr)
		port, _ := strconv.Atoi(portS)
		md, _ := structpb.NewStruct(map[string]any{"name": e.name, "role": e.role, "epoch": 1.0})
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: uint32(i),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}},
				HealthStatus: corev3.HealthStatus_HEALTHY,
				Metadata:     &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"hachat": md}},
			}}})
	}
	return proxy.Resources{Listeners: []*listenerv3.Listener{lis}, Clusters: []*clusterv3.Cluster{cl},
		Endpoints: []*endpointv3.ClusterLoadAssignment{cla}}
}

// makePayload returns n bytes that do not look like an HTTP/2 preface.
func makePayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// pathRun accumulates the measurements of one path.
type pathRun struct {
	res  Result
	addr string
	pid  int // the proxy process, 0 for the direct path
	lat  []time.Duration
}

// measure runs o.Conns closed-loop clients against each path in turn, in
// o.Rounds rounds that together last o.Duration per path.
func measure(ctx context.Context, paths []*pathRun, o Options, payload []byte) error {
	for _, p := range paths {
		// Warm up: connections, buffers, the proxies' pools.
		if _, _, err := load(ctx, &o, p.addr, o.Conns, 300*time.Millisecond, payload); err != nil {
			return fmt.Errorf("%s warm-up: %w", p.res.Name, err)
		}
	}
	slice := o.Duration / time.Duration(o.Rounds)
	for r := 0; r < o.Rounds; r++ {
		for _, p := range paths {
			var before time.Duration
			if p.pid != 0 {
				before, _ = procCPU(p.pid)
			}
			lat, errs, err := load(ctx, &o, p.addr, o.Conns, slice, payload)
			if err != nil {
				return fmt.Errorf("%s: %w", p.res.Name, err)
			}
			if p.pid != 0 {
				if after, err := procCPU(p.pid); err == nil {
					p.res.CPU += after - before
				}
			}
			p.lat = append(p.lat, lat...)
			p.res.Errors += errs
		}
	}
	for _, p := range paths {
		lat := p.lat
		slices.Sort(lat)
		p.res.Requests = len(lat)
		p.res.Throughput = float64(len(lat)) / (slice * time.Duration(o.Rounds)).Seconds()
		if len(lat) > 0 {
			p.res.P50 = lat[len(lat)/2]
			p.res.P99 = lat[len(lat)*99/100]
			p.res.Max = lat[len(lat)-1]
			p.res.CPUPerRequest = p.res.CPU / time.Duration(len(lat))
		}
		p.lat = nil
	}
	return nil
}

// procCPU reads the user+system CPU time of pid and its threads from
// /proc/<pid>/stat (Linux; clock ticks of 10ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat times")
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// load runs conns clients, each on its own connection doing one round trip
// at a time for d, and returns every round trip's latency. The connections
// (and their TLS handshakes) are made before the clock starts: a phase
// measures round trips, not dials.
func load(ctx context.Context, o *Options, addr string, conns int, d time.Duration, payload []byte) ([]time.Duration, int, error) {
	cs := make([]net.Conn, conns)
	dialErrs := make([]error, conns)
	var dials sync.WaitGroup
	for i := range cs {
		dials.Add(1)
		go func() {
			defer dials.Done()
			cs[i], dialErrs[i] = o.dial(addr, 5*time.Second)
		}()
	}
	dials.Wait()
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := errors.Join(dialErrs...); err != nil {
		return nil, 0, fmt.Errorf("dial %s: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var all []time.Duration
	errs := 0
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
			defer stop()
			buf := make([]byte, len(payload))
			lat := make([]time.Duration, 0, 1<<14)
			n := 0
			for ctx.Err() == nil {
				t := time.Now()
				if _, err := c.Write(payload); err != nil {
					n++
					break
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					n++
					break
				}
				lat = append(lat, time.Since(t))
			}
			if ctx.Err() != nil && n > 0 {
				n-- // the round trip cut by the end of the phase
			}
			mu.Lock()
			all = append(all, lat...)
			errs += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, errs, nil
}

// failoverTrial runs one client per target doing round trips (reconnecting
// at once on any error), kills the primary with SIGKILL, and returns for each
// target the time from the kill to the first round trip that started after
// the primary was reaped and succeeded (gapFailed if none within 10s).
func failoverTrial(ctx context.Context, o *Options, primary *echoProc, targets []string, payload []byte) ([]time.Duration, error) {
	type ok struct{ start, end time.Time }
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([][]ok, len(targets))
	var mu sync.Mutex
	var wg sync.WaitGroup
	warm := make(chan struct{}, len(targets))
	for i, addr := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(payload))
			var c net.Conn
			warmed := false
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for cctx.Err() == nil {
				if c == nil {
					var err error
					c, err = o.dial(addr, time.Second)
					if err != nil {
						c = nil
						time.Sleep(time.Millisecond)
						continue
					}
				}
				t := time.Now()
				c.SetDeadline(t.Add(time.Second))
				_, err := c.Write(payload)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err != nil {
					c.Close()
					c = nil
					time.Sleep(time.Millisecond)
					continue
				}
				mu.Lock()
				results[i] = append(results[i], ok{t, time.Now()})
				mu.Unlock()
				if !warmed {
					warmed = true
					warm <- struct{}{}
				}
				// A request every ~millisecond: a chat client's pace, not a flood.
				time.Sleep(time.Millisecond)
			}
		}()
	}
	for range targets {
		select {
		case <-warm:
		case <-time.After(5 * time.Second):
			return nil, errors.New("no round trip through the proxies before the kill")
		}
	}
	time.Sleep(50 * time.Millisecond) // steady traffic before the kill
	killAt := time.Now()
	reaped, err := primary.killAndWait()
	if err != nil {
		return nil, err
	}
	gaps := make([]time.Duration, len(targets))
	deadline := time.Now().Add(10 * time.Second)
	for i := range targets {
		gaps[i] = gapFailed
		for gaps[i] == gapFailed && time.Now().Before(deadline) {
			mu.Lock()
			for _, r := range results[i] {
				if !r.start.Before(reaped) {
					gaps[i] = r.end.Sub(killAt)
					break
				}
			}
			mu.Unlock()
			if gaps[i] == gapFailed {
				time.Sleep(time.Millisecond)
			}
		}
	}
	cancel()
	wg.Wait()
	return gaps, nil
}

// waitUntil polls cond every 5ms until it holds, ctx ends or d passes.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// freePorts returns n distinct free loopback addresses.
func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// child is one child process of the benchmark.
type child struct {
	name string
	o    *Options
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *child) start(argv []string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.o.EchoEnv...)
	cmd.Stderr = c.o.Log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	c.cmd = cmd
	c.done = make(chan struct{})
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	return nil
}

func (c *child) pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

func (c *child) exited() bool {
	if c.done == nil {
		return true
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// killAndWait sends SIGKILL and returns when the process is reaped.
func (c *child) killAndWait() (time.Time, error) {
	if c.cmd == nil {
		return time.Time{}, fmt.Errorf("%s not running", c.name)
	}
	if err := c.cmd.Process.Kill(); err != nil && !c.exited() {
		return time.Time{}, fmt.Errorf("kill %s: %w", c.name, err)
	}
	<-c.done
	c.cmd = nil
	return time.Now(), nil
}

func (c *child) kill() {
	if c.cmd != nil {
		c.killAndWait()
	}
}

// echoProc is one echo server child process.
type echoProc struct {
	child
	addr string
	st   EchoStatus
}

func (e *echoProc) start(ctx context.Context) error {
	argv := append(slices.Clone(e.o.EchoCommand), "--addr", e.addr, "--name", e.st.Name,
		"--role", e.st.Role, "--epoch", strconv.FormatUint(e.st.Epoch, 10))
	argv = append(argv, e.o.tlsArgs(e.st.Name)...)
	if err := e.child.start(argv); err != nil {
		return err
	}
	// Ready when it echoes.
	err := waitUntil(ctx, 10*time.Second, func() bool {
		if e.exited() {
			return true
		}
		c, err := e.o.dial(e.addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("ready?")); err != nil {
			return false
		}
		line, err := bufio.NewReader(c).Peek(6)
		return err == nil && string(line) == "ready?"
	})
	if e.exited() {
		return fmt.Errorf("echo server %s exited at start", e.st.Name)
	}
	if err != nil {
		e.kill()
		return fmt.Errorf("echo server %s not ready: %w", e.st.Name, err)
	}
	return nil
}

// sidecarDump reads the sidecar's admin dump (over mTLS as an operator in
// a TLS run).
func sidecarDump(o *Options, adminAddr string) (proxy.Dump, error) {
	var d proxy.Dump
	cl := http.Client{Timeout: time.Second}
	url := "http://" + adminAddr + "/proxy/v1/clusters"
	if o.certDir != "" {
		src, err := mtls.Load(mtls.FilesIn(o.certDir, "operator"))
		if err != nil {
			return d, err
		}
		cl.Transport = &http.Transport{TLSClientConfig: src.ClientConfig(mtls.Allow(mtls.KindProxy))}
		url = "https://" + adminAddr + "/proxy/v1/clusters"
	}
	resp, err := cl.Get(url)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("admin: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&d)
	return d, err
}

// ServeSidecar runs a hachat sidecar on listen (admin on admin) in front of
// the primary and backup echo servers, from Resources, until ctx ends. It
// is what `hachat bench proxy-sidecar` runs.
//
// With files set the sidecar speaks mTLS (proxy.Config.TLS).
func ServeSidecar(ctx context.Context, listen, admin, primaryAddr, backupAddr string, files mtls.Files) error {
	cfg := proxy.DefaultConfig()
	cfg.NodeID = "proxybench"
	cfg.Listen = listen
	cfg.Admin = admin
	cfg.TLS = files
	p, err := proxy.NewStatic(cfg, telemetry.Discard(), Resources(primaryAddr, backupAddr))
	if err != nil {
		return fmt.Errorf("build sidecar: %w", err)
	}
	return p.Run(ctx)
}

// haproxyProc is the HAProxy child process.
type haproxyProc struct {
	bin, addr, primary, backup string
	certDir                    string // with TLS: the cert dir (ssl on bind and server lines)
	dir                        string
	cmd                        *exec.Cmd
	done                       chan struct{}
}

func haproxyVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "-v").Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s -v: %v", ErrNoHAProxy, bin, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first), nil
}

// config is the HAProxy configuration: the primary and the backup server
// with checks as fast as the sidecar's, a stats socket to read server state.
func (h *haproxyProc) config() string {
	bind, server := "", ""
	if h.certDir != "" {
		// mTLS like the sidecar: a client certificate required on the
		// bind, HAProxy's own certificate to the servers, the cluster CA
		// both ways, ALPN h2.
		f := mtls.FilesIn(h.certDir, "haproxy")
		crt := filepath.Join(h.certDir, "haproxy-combined.pem")
		bind = fmt.Sprintf(" ssl crt %s ca-file %s verify required alpn h2", crt, f.CA)
		server = fmt.Sprintf(" ssl crt %s ca-file %s verify required alpn h2", crt, f.CA)
	}
	return fmt.Sprintf(`global
    maxconn 4096
    stats socket %s mode 600 level admin

defaults
    mode tcp
    timeout connect 100ms
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

listen chatcore
    bind %s%s
    server primary %s%s check inter 100 fall 2 rise 1 fastinter 50
    server backup %s%s check inter 100 fall 2 rise 1 fastinter 50 backup
`, filepath.Join(h.dir, "haproxy.sock"), h.addr, bind, h.primary, server, h.backup, server)
}

func (h *haproxyProc) start(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "proxybench-haproxy-")
	if err != nil {
		return fmt.Errorf("haproxy dir: %w", err)
	}
	h.dir = dir
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(h.config()), 0o600); err != nil {
		return fmt.Errorf("write haproxy config: %w", err)
	}
	cmd := exec.Command(h.bin, "-db", "-f", cfgPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: start: %v", ErrNoHAProxy, err)
	}
	h.cmd = cmd
	h.done = make(chan struct{})
	go func() {
		cmd.Wait()
		close(h.done)
	}()
	err = waitUntil(ctx, 5*time.Second, func() bool {
		select {
		case <-h.done:
			return true
		default:
		}
		c, err := net.DialTimeout("tcp", h.addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	select {
	case <-h.done:
		return fmt.Errorf("%w: exited at start: %s", ErrNoHAProxy, strings.TrimSpace(stderr.String()))
	default:
	}
	if err != nil {
		h.stop()
		return fmt.Errorf("%w: not listening: %v", ErrNoHAProxy, err)
	}
	return nil
}

// serverUp asks the stats socket whether the named server is UP.
func (h *haproxyProc) serverUp(name string) bool {
	c, err := net.DialTimeout("unix", filepath.Join(h.dir, "haproxy.sock"), 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return false
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return false
	}
	// CSV: pxname,svname,...,status (field 18).
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 17 && f[0] == "chatcore" && f[1] == name {
			return strings.HasPrefix(f[17], "UP")
		}
	}
	return false
}

func (h *haproxyProc) stop() {
	if h.cmd != nil {
		h.cmd.Process.Kill()
		<-h.done
		h.cmd = nil
	}
	if h.dir != "" {
		os.RemoveAll(h.dir)
	}
}
