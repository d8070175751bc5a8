package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// Options selects and tunes the cluster a test starts.
type Options struct {
	// Stage picks the standard plan (default demo.StageSingle: ucs, core-a,
	// webapi, interaction).
	Stage demo.Stage
	// CoreArgs are extra flags for every core (after the HA-recommended ones,
	// so they override them), e.g. "--transcript-auto-save=2".
	CoreArgs []string
	// Tune, when set, edits the plan before it starts (add flags with
	// plan.With, drop parts with plan.Without).
	Tune func(demo.Plan) demo.Plan
	// StartLimits keeps webapi's chat start limits (docs/api.md). By default
	// the harness lifts them: every test client comes from 127.0.0.1, and
	// tests of other behaviour start many chats at once. A test of the limits
	// sets it and gives its own values with Tune.
	StartLimits bool
	// ReadyTimeout bounds each part's start (default 30s).
	ReadyTimeout time.Duration
	// LogLines is how many lines of each part's log a failed test prints (default 60).
	LogLines int
	// TLS runs the cluster with mTLS everywhere (demo.Layout.CertDir): the
	// harness issues the certificates and talks to the parts as the operator.
	TLS bool
	// CoordMembers runs that many coordination members (hachat coord,
	// embedded etcd: etcd-1, ...) that hold the cores' epochs and the
	// primary's lease (demo.Layout.CoordMembers; default 0: epochs at UCS).
	CoordMembers int
	// Accounts are the interaction server's accounts (default
	// TestAccounts: the demo's and those the end-to-end tests log in as).
	Accounts []demo.AccountSpec
	// Env is added to every part's environment (which inherits the test's),
	// e.g. OTEL_* variables.
	Env []string
	// UCSStore is ucs's store: "" (bbolt: one instance) or "postgres": the
	// harness starts a throwaway PostgreSQL cluster (demo.StartPostgres,
	// stopped after the parts) and the plan runs two ucs instances, ucs and
	// ucs-2, on it, as `hachat demo --ucs-store postgres` does.
	UCSStore string
	// Pairs runs that many primary/backup pairs of cores
	// (demo.Layout.Pairs; default 1).
	Pairs int
}

// TestAccounts are the accounts of a test cluster: the demo's, plus the
// agents and supervisors the end-to-end tests use.
func TestAccounts() []demo.AccountSpec {
	specs := append(demo.DemoAccounts(),
		demo.AccountSpec{User: "a1", Role: "agent"}, demo.AccountSpec{User: "a2", Role: "agent"},
		demo.AccountSpec{User: "a3", Role: "agent"},
		demo.AccountSpec{User: "sup-coach", Role: "supervisor"}, demo.AccountSpec{User: "sup-monitor", Role: "supervisor"})
	for i := range poolAgents {
		specs = append(specs, demo.AccountSpec{User: fmt.Sprintf("agent-%d", i), Role: "agent"})
	}
	return specs
}

// poolAgents is how many agents (agent-0, agent-1, ...) StartSessions can
// log in on one cluster.
const poolAgents = 8

// nextPoolAgent returns the next pool agent no StartSessions has used yet.
func (c *Cluster) nextPoolAgent(t testing.TB) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.poolUsed >= poolAgents {
		t.Fatalf("harness: all %d pool agents are in use", poolAgents)
	}
	c.poolUsed++
	return fmt.Sprintf("agent-%d", c.poolUsed-1)
}

// Cluster is a running cluster of real hachat processes, stopped when the
// test ends.
type Cluster struct {
	t      testing.TB
	bin    string
	sup    *demo.Supervisor
	plan   demo.Plan
	layout demo.Layout
	creds  demo.Credentials
	ucs    *ucsmock.Client
	httpc  *http.Client // to the parts' HTTP addresses (operator mTLS where they serve it)
	tlsc   *tls.Config  // the operator's client config; nil without mTLS

	mu       sync.Mutex
	poolUsed int // pool agents handed out by StartSessions
}

// StartCluster starts the standard plan for opts on free loopback ports and
// waits until every part is ready. When the test fails, the tail of every
// part's log is printed; every process is stopped at the end of the test.
//
// Free ports are found by asking the kernel and releasing them, so another
// process may grab one before the part binds it: when a start fails with
// "address already in use", StartCluster tries again on new ports (twice).
func StartCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	bin := Binary(t)
	var pgDSN string
	if opts.UCSStore == "postgres" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		pg, st, err := demo.StartPostgres(ctx, t.TempDir())
		cancel()
		if err != nil {
			t.Fatalf("ucs store: %v (make deps installs postgresql)", err)
		}
		t.Cleanup(func() { pg.Stop() }) // after the parts: cleanups run last first
		pgDSN = st.DSN
	}
	for attempt := 1; ; attempt++ {
		addrs, err := demo.FreeAddrs()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		layout := demo.Layout{Addrs: addrs, Stage: opts.Stage, DataDir: dir, CoreArgs: opts.CoreArgs, CoordMembers: opts.CoordMembers,
			UCSStore: opts.UCSStore, UCSPostgres: pgDSN, Pairs: opts.Pairs}
		if opts.TLS {
			layout.CertDir = filepath.Join(dir, "certs")
		}
		plan := demo.StandardPlan(layout)
		if !opts.StartLimits {
			plan = plan.WithKind(demo.KindWebAPI, "--client-start-rate=0", "--start-rate=0")
		}
		if opts.Tune != nil {
			plan = opts.Tune(plan)
		}
		c, err := startPlan(t, plan, layout, bin, dir, opts)
		if err == nil {
			return c
		}
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("cluster: a port was taken before its part bound it; retrying on new ports: %v", err)
			continue
		}
		t.Fatalf("start cluster: %v", err)
	}
}

// StartPlan starts an arbitrary plan; layout supplies the tokens and service
// name the clients use. Most tests call StartCluster.
func StartPlan(t testing.TB, plan demo.Plan, layout demo.Layout, bin, dir string, opts Options) *Cluster {
	t.Helper()
	c, err := startPlan(t, plan, layout, bin, dir, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	return c
}

func startPlan(t testing.TB, plan demo.Plan, layout demo.Layout, bin, dir string, opts Options) (*Cluster, error) {
	t.Helper()
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.LogLines <= 0 {
		opts.LogLines = 60
	}
	if layout.Service == "" {
		layout.Service = "customer-support"
	}
	if layout.ServiceToken == "" {
		layout.ServiceToken = "demo-service-token"
	}
	if layout.AdminToken == "" {
		layout.AdminToken = "demo-admin-token"
	}
	if layout.UCSReaderToken == "" {
		layout.UCSReaderToken = "demo-ucs-reader-token"
	}
	if opts.Accounts == nil {
		opts.Accounts = TestAccounts()
	}
	if layout.DataDir == "" {
		layout.DataDir = dir
	}
	creds := demo.Credentials{AdminToken: layout.AdminToken, UCSReaderToken: layout.UCSReaderToken, CertDir: layout.CertDir}
	if _, ok := plan.Part("interaction"); ok {
		accounts, err := demo.WriteAccounts(layout.AccountsFile(), opts.Accounts)
		if err != nil {
			return nil, err
		}
		creds.Accounts = accounts
	}
	progress := &lineLog{t: t}
	var tlsc *tls.Config
	httpc := &http.Client{Timeout: 10 * time.Second}
	if layout.CertDir != "" {
		if err := demo.EnsureCerts(layout.CertDir, plan); err != nil {
			return nil, err
		}
		var err error
		if tlsc, err = demo.OperatorTLS(layout.CertDir); err != nil {
			return nil, err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsc
		httpc.Transport = tr
	}
	sup, err := demo.Start(context.Background(), plan, demo.Options{
		Binary: bin, Dir: dir, Progress: progress, ReadyTimeout: opts.ReadyTimeout, Grace: 3 * time.Second, TLS: tlsc,
		Credentials: creds, Env: opts.Env,
	})
	if err != nil {
		return nil, err
	}
	// A part whose port another process took in the meantime may look
	// ready (that process answered its health check) and exit at once:
	// report it so that StartCluster tries again on new ports.
	for _, p := range plan.Parts {
		if !sup.Running(p.Name) {
			tail := demo.Tail(sup.LogPath(p.Name), 5)
			sup.Stop()
			return nil, fmt.Errorf("%s exited right after its start: %s", p.Name, tail)
		}
	}
	c := &Cluster{t: t, bin: bin, sup: sup, plan: plan, layout: layout, creds: creds, httpc: httpc, tlsc: tlsc}
	t.Cleanup(func() {
		sup.Stop()
		if t.Failed() {
			c.DumpLogs(os.Stderr, opts.LogLines)
		}
	})
	if p, ok := plan.Part("ucs"); ok {
		c.ucs = ucsmock.NewClient(p.URL(), httpc, telemetry.Discard()).WithToken(layout.UCSReaderToken)
	}
	return c, nil
}

// lineLog sends the supervisor's progress lines to t.Log.
type lineLog struct {
	t   testing.TB
	buf strings.Builder
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.buf.Write(p)
	s := l.buf.String()
	for {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			break
		}
		l.t.Log("cluster: " + s[:i])
		s = s[i+1:]
	}
	l.buf.Reset()
	l.buf.WriteString(s)
	return len(p), nil
}

// DumpLogs writes the last n lines of every part's log to w.
func (c *Cluster) DumpLogs(w io.Writer, n int) {
	for _, p := range c.plan.Parts {
		fmt.Fprintf(w, "\n----- %s (%s): last %d lines of %s -----\n%s\n", p.Name, p.Kind, n,
			c.sup.LogPath(p.Name), demo.Tail(c.sup.LogPath(p.Name), n))
	}
}

// HTTP returns an HTTP client for the parts' HTTP addresses: with the
// operator's certificate when the cluster runs mTLS.
func (c *Cluster) HTTP() *http.Client { return c.httpc }

// quick is HTTP with a one-second timeout (polls of parts that may be stopped).
func (c *Cluster) quick() *http.Client {
	return &http.Client{Timeout: time.Second, Transport: c.httpc.Transport}
}

// GRPCCreds returns transport credentials to dial a part's gRPC address
// directly: the operator's mTLS certificate, or plaintext.
func (c *Cluster) GRPCCreds() credentials.TransportCredentials {
	if c.tlsc == nil {
		return insecure.NewCredentials()
	}
	tc := c.tlsc.Clone()
	tc.NextProtos = nil // grpc sets h2
	return credentials.NewTLS(tc)
}

// TLS reports whether the cluster runs mTLS.
func (c *Cluster) TLS() bool { return c.tlsc != nil }

// Supervisor returns the supervisor running the parts.
func (c *Cluster) Supervisor() *demo.Supervisor { return c.sup }

// Plan returns the plan the cluster runs.
func (c *Cluster) Plan() demo.Plan { return c.plan.Clone() }

// Layout returns the layout (addresses, tokens, service) of the cluster.
func (c *Cluster) Layout() demo.Layout { return c.layout }

// Part returns the part called name, also one added to the running
// cluster (Supervisor.AddParts); the test fails if there is none.
func (c *Cluster) Part(name string) demo.Part {
	c.t.Helper()
	p, ok := c.sup.Plan().Part(name)
	if !ok {
		c.t.Fatalf("cluster has no part %q", name)
	}
	return p
}

// URL returns http://host:port of the named part's HTTP address.
func (c *Cluster) URL(name string) string { return c.Part(name).URL() }

// WebAPIURL is the Web API Server's base URL.
func (c *Cluster) WebAPIURL() string { return c.URL("webapi") }

// InteractionURL is the Interaction Server's base URL.
func (c *Cluster) InteractionURL() string { return c.URL("interaction") }

// UCSURL is ucsmock's base URL.
func (c *Cluster) UCSURL() string { return c.URL("ucs") }

// UCS returns a ucsmock client for the cluster's ucsmock that reads with the
// reader token (Layout.UCSReaderToken); admin calls take AdminToken.
func (c *Cluster) UCS() *ucsmock.Client {
	c.t.Helper()
	if c.ucs == nil {
		c.t.Fatal("cluster has no ucs part")
	}
	return c.ucs
}

// UCSOf returns a reading client of the ucs instance called name (ucs,
// ucs-2 with Options.UCSStore postgres), like UCS.
func (c *Cluster) UCSOf(name string) *ucsmock.Client {
	c.t.Helper()
	return ucsmock.NewClient(c.URL(name), c.httpc, telemetry.Discard()).WithToken(c.layout.UCSReaderToken)
}

// Credentials are the cluster's accounts with their passwords.
func (c *Cluster) Credentials() demo.Credentials { return c.creds }

// AdminToken is the token of ucsmock's fault API and the control plane's admin API.
func (c *Cluster) AdminToken() string { return c.layout.AdminToken }

// UCSReaderToken is the token that reads transcripts from ucsmock.
func (c *Cluster) UCSReaderToken() string { return c.layout.UCSReaderToken }

// ServiceToken is the chat cores' service token.
func (c *Cluster) ServiceToken() string { return c.layout.ServiceToken }

// Service is the chat service name customers start chats on.
func (c *Cluster) Service() string { return c.layout.Service }

// PID returns the process id of the named part's current run.
func (c *Cluster) PID(name string) int {
	c.t.Helper()
	pid, err := c.sup.PID(name)
	if err != nil {
		c.t.Fatal(err)
	}
	return pid
}

// Kill sends sig to the named part. For SIGKILL it also waits until the
// process is gone; SIGSTOP and SIGCONT return at once.
func (c *Cluster) Kill(name string, sig syscall.Signal) {
	c.t.Helper()
	c.t.Logf("cluster: sending %v to %s (pid %d)", sig, name, c.PID(name))
	if err := c.sup.Signal(name, sig); err != nil {
		c.t.Fatal(err)
	}
	pid := c.PID(name)
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM:
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.sup.WaitExit(ctx, name); err != nil {
			c.t.Fatal(err)
		}
	case syscall.SIGSTOP:
		// kill(2) returns before the target is stopped: wait until it is.
		Eventually(c.t, name+" stopped", 5*time.Second, func() error {
			if st := procState(pid); st != "T" {
				return fmt.Errorf("state %q", st)
			}
			return nil
		})
	case syscall.SIGCONT:
		Eventually(c.t, name+" running again", 5*time.Second, func() error {
			if st := procState(pid); st == "T" {
				return fmt.Errorf("state %q", st)
			}
			return nil
		})
	}
}

// procState returns the one-letter state of pid from /proc/<pid>/stat
// ("T" stopped, "S" sleeping, ...), or "" when it cannot be read.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// Stop stops the named part gracefully and waits for it.
func (c *Cluster) Stop(name string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.sup.StopPart(ctx, name); err != nil {
		c.t.Fatal(err)
	}
}

// Restart stops the named part if it runs, starts it again with the same
// flags and waits until it is ready.
func (c *Cluster) Restart(name string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := c.sup.Restart(ctx, name); err != nil {
		c.t.Fatal(err)
	}
}

// Running reports whether the named part's process is alive.
func (c *Cluster) Running(name string) bool { return c.sup.Running(name) }

// WaitReady waits until the named part answers 200 on /healthz.
func (c *Cluster) WaitReady(name string, timeout time.Duration) {
	c.t.Helper()
	url := c.URL(name) + "/healthz"
	Eventually(c.t, name+" ready", timeout, func() error {
		resp, err := c.quick().Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
}

// LogContains reports whether the named part's log holds substr.
func (c *Cluster) LogContains(name, substr string) bool {
	return c.LogCount(name, substr) > 0
}

// LogCount counts the occurrences of substr in the named part's log (every
// run of the part: a restart appends to the same file).
func (c *Cluster) LogCount(name, substr string) int {
	b, err := os.ReadFile(c.sup.LogPath(name))
	if err != nil {
		return 0
	}
	return strings.Count(string(b), substr)
}

// Metric returns the sum of the samples of the Prometheus metric called name
// (all label sets whose rendering contains every one of labels, e.g.
// `outcome="retry"`) on the named part's /metrics. It fails the test when no
// sample matches: a renamed metric must not read as 0 and let a negative
// check pass. Call it from the test's goroutine.
func (c *Cluster) Metric(part, name string, labels ...string) float64 {
	c.t.Helper()
	resp, err := c.httpc.Get(c.URL(part) + "/metrics")
	if err != nil {
		c.t.Fatalf("metrics of %s: %v", part, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v, ok := SumMetric(string(b), name, labels...)
	if !ok {
		c.t.Fatalf("%s exposes no %s%v: renamed or gone?", part, name, labels)
	}
	return v
}

// WaitBackupInSync waits until primary reports a backup connected and in
// sync (hachat_core_backup_in_sync 1) with nothing unacknowledged
// (replication lag 0). Lag alone is no proof: it reads 0 when no backup is
// connected at all.
func (c *Cluster) WaitBackupInSync(primary string, timeout time.Duration) {
	c.t.Helper()
	Eventually(c.t, "a backup in sync with "+primary, timeout, func() error {
		in := c.Metric(primary, "hachat_core_backup_in_sync")
		lag := c.Metric(primary, "hachat_core_replication_lag")
		if in != 1 || lag != 0 {
			return fmt.Errorf("%s: backup in sync %v, replication lag %v", primary, in, lag)
		}
		return nil
	})
}

// SumMetric sums the samples of metric name in a Prometheus text exposition
// whose label set contains every one of labels.
func SumMetric(exposition, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		head, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		metric, lbls, _ := strings.Cut(head, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(lbls, l) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		fields := strings.Fields(val) // value, then an optional timestamp
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// Role returns the role a core reports on its /metrics (hachat_core_role
// gauge: the label whose value is 1), or "" when it does not answer.
func (c *Cluster) Role(core string) string {
	resp, err := c.quick().Get(c.URL(core) + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, role := range []string{"primary", "backup"} {
		if v, ok := SumMetric(string(b), "hachat_core_role", `role="`+role+`"`); ok && v == 1 {
			return role
		}
	}
	return ""
}

// WaitRole waits until the core reports role.
func (c *Cluster) WaitRole(core, role string, timeout time.Duration) {
	c.t.Helper()
	Eventually(c.t, core+" is "+role, timeout, func() error {
		if got := c.Role(core); got != role {
			return fmt.Errorf("%s reports role %q", core, got)
		}
		return nil
	})
}

// Ctl runs `hachat ctl args... --state <the cluster's state file>` and
// returns its combined output.
func (c *Cluster) Ctl(args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"ctl"}, args...)
	full = append(full, "--state", c.sup.StatePath())
	out, err := exec.CommandContext(ctx, c.bin, full...).CombinedOutput()
	return string(out), err
}
