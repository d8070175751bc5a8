// Package webbench measures the customer path end to end, the way a contact
// centre's browsers load it: customers through webapi (HTTP sends, the SSE
// push channel open all along) and agents through interaction (logins,
// offers accepted, one SSE push channel per agent), on a cluster of real
// processes. It reports messages/s, send-to-deliver latency (customer send
// to the agent's push channel, and to the customer's own push channel),
// memory per chat (RSS growth of webapi, interaction and the cores), CPU
// time per message, and the customer-visible gap when the primary core is
// killed with SIGKILL under that load.
package webbench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/interaction/auth"
)

// Options shape one run.
type Options struct {
	// Chats is the number of concurrent chats, each with a customer push
	// channel open and an agent (default 10000).
	Chats int
	// Messages is the number of customer messages sent in the measured
	// phase (default 20000).
	Messages int
	// Concurrency is the number of concurrent customer senders (default 128).
	Concurrency int
	// SetupConcurrency is the number of concurrent chat starts (default 64).
	SetupConcurrency int
	// Agents is the number of logged-in agents sharing the chats (default
	// one per 100 chats); interaction's max-chats-per-agent is set to fit.
	Agents int
	// MessageSize is the message text length in bytes (default 64).
	MessageSize int
	// Mesh puts webapi and interaction behind their sidecars steered by the
	// xDS control plane (the deployed shape); false gives them both cores.
	Mesh bool
	// Kill adds the failover phase: under the same load, the primary core
	// is killed with SIGKILL.
	Kill bool
	// PProf makes webapi, interaction, the cores, the sidecars and the
	// floor server serve net/http/pprof on loopback ports
	// (--pprof=127.0.0.1:0); their addresses go to Progress once they run.
	PProf bool
	// CPUProfile, when set, is a file that receives the load generator's
	// own CPU profile of the measured message phase (the phase of
	// Report.ClientCPUPerMessage); the parts serve theirs with PProf.
	CPUProfile string
	// Floor adds the floor phase: once the cluster has stopped, the same
	// load generator, with the same chats, agents, senders and messages,
	// runs against the floor server (package webfloor), a bare net/http
	// server with the customer path's HTTP shape and nothing behind it, in
	// its own process (Report.Floor).
	Floor bool
	// FloorCommand starts the floor server; it gets --listen=127.0.0.1:0
	// appended and must print its base URL as the first line of its
	// standard output (default: this executable's hidden `bench
	// web-floor-server`, with --pprof=127.0.0.1:0 when PProf is set).
	FloorCommand []string
	// ProgressEvery is the interval of the progress line (default 5s).
	ProgressEvery time.Duration
	// Progress receives the cluster's start story and the progress lines;
	// nil discards them.
	Progress io.Writer
}

func (o *Options) defaults() {
	if o.Chats <= 0 {
		o.Chats = 10000
	}
	if o.Messages <= 0 {
		o.Messages = 20000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 128
	}
	if o.SetupConcurrency <= 0 {
		o.SetupConcurrency = 64
	}
	if o.Agents <= 0 {
		o.Agents = max(1, (o.Chats+99)/100)
	}
	if o.MessageSize <= 0 {
		o.MessageSize = 64
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// PartFigures are one process's memory and CPU figures.
type PartFigures struct {
	// RSSBefore is the resident set before the chats started, RSSChats
	// with every chat set up and every push channel open.
	RSSBefore uint64 `json:"rss_before_bytes"`
	RSSChats  uint64 `json:"rss_chats_bytes"`
	// BytesPerChat is (RSSChats - RSSBefore) / chats.
	BytesPerChat float64 `json:"bytes_per_chat"`
	// CPU is the CPU time used during the measured message phase.
	CPU time.Duration `json:"cpu_ns"`
}

// Failover is what the kill phase measured.
type Failover struct {
	// Killed is the core that was primary and got SIGKILL.
	Killed string `json:"killed"`
	// Gap runs from the last send acknowledged before the kill to the first
	// delivery (on an agent's push channel) of a message sent after it: the
	// definition of bench failover.
	Gap time.Duration `json:"gap_ns"`
	// AgentGap is the longest pause between two deliveries to the agents
	// from a second before the kill on.
	AgentGap time.Duration `json:"agent_gap_ns"`
	// PushGap is the same on the customers' own push channels: what their
	// screens show.
	PushGap time.Duration `json:"push_gap_ns"`
	// P50, P99 and Max are send-to-deliver of the messages sent within a
	// second either side of the kill.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
	// Sent, Acked and Delivered count the phase's messages; Lost counts
	// acknowledged messages never delivered to the agent.
	Sent      int `json:"sent"`
	Acked     int `json:"acked"`
	Delivered int `json:"delivered"`
	Lost      int `json:"lost"`
	// Reconnecting counts the reconnecting notices on the customers' push channels.
	Reconnecting int `json:"reconnecting_notices"`
	// Error says why the phase did not complete (for example: no message
	// sent after the kill delivered within 30s); the figures are then partial.
	Error string `json:"error,omitempty"`
}

// Phase is what the set-up and the measured message phase gave, on the
// cluster or on the floor.
type Phase struct {
	// SetupTime runs from the first chat start to the last chat accepted
	// by an agent with every customer push channel open.
	SetupTime time.Duration `json:"setup_ns"`
	Messages  int           `json:"messages"`
	Errors    int           `json:"errors"`
	Delivered int           `json:"delivered"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	PerSecond float64       `json:"messages_per_second"`
	// P50, P99, Max: customer send to delivery on the agent's push channel.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
	// PushP50, PushP99: customer send to its own push channel.
	PushP50 time.Duration `json:"push_p50_ns"`
	PushP99 time.Duration `json:"push_p99_ns"`
}

// Report is what a run measured. In JSON, durations are nanoseconds.
type Report struct {
	Path   string `json:"path"`
	Chats  int    `json:"chats"`
	Agents int    `json:"agents"`
	// Phase is the set-up and the measured message phase.
	Phase
	// Parts are the figures of every process of the cluster, by part name.
	Parts map[string]PartFigures `json:"parts"`
	// WebAPIBytesPerChat, InteractionBytesPerChat and CoresBytesPerChat
	// (primary and backup together) are RSS growth per chat.
	WebAPIBytesPerChat      float64 `json:"webapi_bytes_per_chat"`
	InteractionBytesPerChat float64 `json:"interaction_bytes_per_chat"`
	CoresBytesPerChat       float64 `json:"cores_bytes_per_chat"`
	// CPUPerMessage is the CPU time of every cluster process during the
	// message phase over the messages delivered; ClientCPUPerMessage the
	// bench's own (the load generator shares the machine).
	CPUPerMessage       time.Duration `json:"cpu_per_message_ns"`
	ClientCPUPerMessage time.Duration `json:"client_cpu_per_message_ns"`
	// Failover is the kill phase's outcome (nil when not run).
	Failover *Failover `json:"failover,omitempty"`
	// Floor is what the floor phase measured (nil when not run), and
	// RatioToFloor PerSecond over its messages/s.
	Floor        *Floor  `json:"floor,omitempty"`
	RatioToFloor float64 `json:"ratio_to_floor,omitempty"`
}

// Floor is what the load generator measured against the floor server
// (package webfloor): the same chats, agents, senders and messages as the
// measured phase, on the HTTP and SSE shape of the customer path with no
// core behind it.
type Floor struct {
	Phase
	// BytesPerChat is the floor server's RSS growth per chat.
	BytesPerChat float64 `json:"bytes_per_chat"`
	// ServerCPUPerMessage is the floor server's CPU time during the
	// message phase over the messages delivered, ClientCPUPerMessage the
	// load generator's.
	ServerCPUPerMessage time.Duration `json:"server_cpu_per_message_ns"`
	ClientCPUPerMessage time.Duration `json:"client_cpu_per_message_ns"`
	// Error says why the floor phase failed; the other figures are then
	// zero.
	Error string `json:"error,omitempty"`
}

// WriteText renders the report for a terminal.
func (r Report) WriteText(w io.Writer) {
	d := func(x time.Duration) string { return x.Round(10 * time.Microsecond).String() }
	kib := func(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }
	fmt.Fprintf(w, "hachat bench web: %s\n", r.Path)
	fmt.Fprintf(w, "chats               %d (customers with push channels open, %d agents), set up in %v\n", r.Chats, r.Agents, r.SetupTime.Round(time.Millisecond))
	fmt.Fprintf(w, "messages            %d sent, %d errors, %d delivered in %v\n", r.Messages, r.Errors, r.Delivered, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "throughput          %.0f messages/s\n", r.PerSecond)
	fmt.Fprintf(w, "send-to-deliver     agent push    p50 %s   p99 %s   max %s\n", d(r.P50), d(r.P99), d(r.Max))
	fmt.Fprintf(w, "                    customer push p50 %s   p99 %s\n", d(r.PushP50), d(r.PushP99))
	fmt.Fprintf(w, "memory per chat     webapi %s   interaction %s   cores (both) %s\n", kib(r.WebAPIBytesPerChat), kib(r.InteractionBytesPerChat), kib(r.CoresBytesPerChat))
	fmt.Fprintf(w, "CPU per message     cluster %v   load generator %v\n", r.CPUPerMessage.Round(time.Microsecond/10), r.ClientCPUPerMessage.Round(time.Microsecond/10))
	names := make([]string, 0, len(r.Parts))
	for n := range r.Parts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := r.Parts[n]
		fmt.Fprintf(w, "  %-20s RSS %4d -> %4d MiB (%s/chat)   CPU %v\n", n, p.RSSBefore>>20, p.RSSChats>>20, kib(p.BytesPerChat), p.CPU.Round(time.Millisecond))
	}
	if f := r.Failover; f != nil {
		fmt.Fprintf(w, "kill -9 %s under load: gap %s (last ack -> first new delivery)   agent gap %s   customer push gap %s\n", f.Killed, d(f.Gap), d(f.AgentGap), d(f.PushGap))
		fmt.Fprintf(w, "  sends within 1s of the kill: p50 %s   p99 %s   max %s;  %d sent, %d acked, %d delivered, %d lost, %d reconnecting notices\n",
			d(f.P50), d(f.P99), d(f.Max), f.Sent, f.Acked, f.Delivered, f.Lost, f.Reconnecting)
		if f.Error != "" {
			fmt.Fprintf(w, "  failover incomplete: %s\n", f.Error)
		}
	}
	if f := r.Floor; f != nil && f.Error != "" {
		fmt.Fprintf(w, "floor failed: %s\n", f.Error)
	} else if f != nil {
		fmt.Fprintf(w, "floor (net/http and SSE alone, the same load, no core): %d sent, %d errors, %d delivered in %v\n",
			f.Messages, f.Errors, f.Delivered, f.Elapsed.Round(time.Millisecond))
		fmt.Fprintf(w, "  throughput %.0f messages/s   agent push p50 %s   p99 %s   max %s   customer push p50 %s   p99 %s\n",
			f.PerSecond, d(f.P50), d(f.P99), d(f.Max), d(f.PushP50), d(f.PushP99))
		fmt.Fprintf(w, "  CPU per message: server %v   load generator %v;  server %s/chat\n",
			f.ServerCPUPerMessage.Round(time.Microsecond/10), f.ClientCPUPerMessage.Round(time.Microsecond/10), kib(f.BytesPerChat))
		fmt.Fprintf(w, "web / floor         %.2f (messages/s)\n", r.RatioToFloor)
	}
}

// Run starts a cluster of real processes (the standard plan with webapi
// and interaction), sets up the chats, measures, and stops the cluster;
// then, with Options.Floor, runs the floor phase.
func Run(ctx context.Context, o Options) (Report, error) {
	o.defaults()
	if _, err := RaiseFileLimit(); err != nil {
		return Report{}, err
	}
	rep, err := runCluster(ctx, o)
	if err != nil || !o.Floor {
		return rep, err
	}
	f, err := runFloor(ctx, o)
	if ctx.Err() != nil {
		return rep, err
	}
	if err != nil {
		// The cluster's figures stand; the floor's failure is reported
		// with them, as the kill phase's is.
		rep.Floor = &Floor{Error: err.Error()}
		return rep, nil
	}
	rep.Floor = f
	if f.PerSecond > 0 {
		rep.RatioToFloor = rep.PerSecond / f.PerSecond
	}
	return rep, nil
}

// runCluster is the cluster's part of Run.
func runCluster(ctx context.Context, o Options) (Report, error) {
	stage, path := demo.StagePair, "webapi and interaction given both cores"
	if o.Mesh {
		stage, path = demo.StageMesh, "webapi and interaction through their sidecars steered by xDS"
	}
	accounts := make([]demo.AccountSpec, 0, o.Agents+1)
	for i := range o.Agents {
		accounts = append(accounts, demo.AccountSpec{User: fmt.Sprintf("agent%d", i), Role: auth.RoleAgent})
	}
	accounts = append(accounts, demo.AccountSpec{User: "sup", Role: auth.RoleSupervisor})
	perAgent := (o.Chats+o.Agents-1)/o.Agents + 1
	partArgs := map[string][]string{
		"interaction": {"--max-chats-per-agent=" + strconv.Itoa(perAgent), "--max-queue=0", "--offer-timeout=60s",
			"--login-failures-per-address=1000000"},
	}
	if o.PProf {
		for _, name := range pprofParts {
			partArgs[name] = append(partArgs[name], "--pprof=127.0.0.1:0")
		}
	}
	bc, err := benchcluster.StartWith(ctx, stage, benchcluster.Options{
		Whole:    true, // webapi's chat-start limits lifted: every chat comes from one address
		Accounts: accounts,
		PartArgs: partArgs,
	}, o.Progress, fmt.Sprintf("--max-sessions=%d", o.Chats+1000), "--send-rate=100000", "--send-burst=100000")
	if err != nil {
		return Report{}, err
	}
	defer bc.Stop()
	if o.PProf {
		reportPProf(bc, o.Progress)
	}
	web, _ := bc.Plan().Part("webapi")
	inter, _ := bc.Plan().Part("interaction")
	t := target{webapi: web.URL(), inter: inter.URL(), service: bc.Layout.Filled().Service}
	for _, a := range bc.Accounts {
		if a.Role == "agent" {
			t.agents = append(t.agents, credential{a.User, a.Password})
		}
	}
	b, err := newBench(o, t)
	if err != nil {
		return Report{}, err
	}
	b.bc = bc
	defer b.close()
	rep, err := b.run(ctx)
	rep.Path = path
	return rep, err
}

// target is what the load generator drives: the customer API's and the
// agent API's base URLs, the chat service, and the agents' logins.
type target struct {
	webapi, inter, service string
	agents                 []credential
}

// credential is one agent's login.
type credential struct{ user, password string }

// bench is one run's state. Its goroutines (push channel readers, accept
// workers, the progress line) are owned by it: close cancels and waits.
type bench struct {
	o       Options
	bc      *benchcluster.Cluster // nil on the floor
	label   string                // the progress line's prefix
	webapi  string                // base URL
	inter   string                // base URL
	service string
	agentsC []credential // the agents' logins
	text    string

	web        *formClient  // the customers' posts to webapi: starts and sends
	sendHTTP   *http.Client // the agents' short calls: logins, accepts
	streamHTTP *http.Client // push channels: no timeout

	ctx    context.Context // cancelled by close: ends every stream
	cancel context.CancelFunc
	wg     sync.WaitGroup

	chats    []*customer
	agents   []*agent
	tr       *tracker
	phase    atomic.Value // string
	started  atomic.Int64
	streams  atomic.Int64
	accepted atomic.Int64
	drops    atomic.Int64
	reconn   atomic.Int64
}

func newBench(o Options, t target) (*bench, error) {
	ctx, cancel := context.WithCancel(context.Background())
	text := make([]byte, o.MessageSize)
	for i := range text {
		text[i] = 'a' + byte(i%26)
	}
	conns := o.Agents
	b := &bench{
		o: o, text: string(text),
		webapi: t.webapi, inter: t.inter, service: t.service, agentsC: t.agents,
		sendHTTP: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}},
		streamHTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}},
		ctx:        ctx, cancel: cancel,
		tr: newTracker(o.Messages * 5),
	}
	var err error
	if b.web, err = newFormClient(b.webapi, 30*time.Second, 1<<20); err != nil {
		return nil, err
	}
	b.phase.Store("starting")
	return b, nil
}

func (b *bench) close() {
	b.cancel()
	b.wg.Wait()
	b.web.close()
	b.sendHTTP.CloseIdleConnections()
	b.streamHTTP.CloseIdleConnections()
}

// progressLine prints a line every ProgressEvery until ctx ends.
func (b *bench) progressLine(ctx context.Context) {
	t := time.NewTicker(b.o.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fmt.Fprintf(b.o.Progress, "  [%s%s] chats started %d/%d, customer push channels %d, accepted %d; messages sent %d, acked %d, delivered %d\n",
			b.label, b.phase.Load(), b.started.Load(), b.o.Chats, b.streams.Load(), b.accepted.Load(),
			b.tr.sentN.Load(), b.tr.ackedN.Load(), b.tr.agentN.Load())
	}
}

func (b *bench) run(ctx context.Context) (Report, error) {
	rep := Report{Chats: b.o.Chats, Agents: b.o.Agents, Parts: map[string]PartFigures{}}
	pids := map[string]int{}
	for _, p := range b.bc.Plan().Parts {
		if pid, err := b.bc.PID(p.Name); err == nil {
			pids[p.Name] = pid
		}
	}
	rss := func(set func(PartFigures, uint64) PartFigures) error {
		for name, pid := range pids {
			v, err := processRSS(pid)
			if err != nil {
				return err
			}
			rep.Parts[name] = set(rep.Parts[name], v)
		}
		return nil
	}
	if err := rss(func(p PartFigures, v uint64) PartFigures { p.RSSBefore = v; return p }); err != nil {
		return rep, err
	}
	setup, err := b.setUp(ctx)
	if err != nil {
		return rep, err
	}
	if err := rss(func(p PartFigures, v uint64) PartFigures {
		p.RSSChats = v
		p.BytesPerChat = (float64(v) - float64(p.RSSBefore)) / float64(b.o.Chats)
		return p
	}); err != nil {
		return rep, err
	}
	for name, p := range rep.Parts {
		switch {
		case name == "webapi":
			rep.WebAPIBytesPerChat = p.BytesPerChat
		case name == "interaction":
			rep.InteractionBytesPerChat = p.BytesPerChat
		case name == "core-a" || name == "core-b":
			rep.CoresBytesPerChat += p.BytesPerChat
		}
	}

	m, err := b.messages(ctx, pids, b.o.CPUProfile)
	if err != nil {
		return rep, err
	}
	var cpuSum time.Duration
	for name, cpu := range m.cpu {
		p := rep.Parts[name]
		p.CPU = cpu
		rep.Parts[name] = p
		cpuSum += cpu
	}
	rep.Phase = m.phase(setup, b.o.Messages)
	rep.CPUPerMessage, rep.ClientCPUPerMessage = m.perMessage(cpuSum), m.perMessage(m.self)
	if !b.o.Kill {
		return rep, nil
	}
	b.phase.Store("failover")
	f, err := b.failover(ctx)
	if f == nil || ctx.Err() != nil {
		return rep, err
	}
	if err != nil {
		f.Error = err.Error() // a figure of the run, not a failure of the bench
	}
	rep.Failover = f
	return rep, nil
}

// setUp logs the agents in, starts every chat and returns once every chat
// is accepted with its customer push channel open, with the time that took
// from the first chat start. It starts the progress line.
func (b *bench) setUp(ctx context.Context) (time.Duration, error) {
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.progressLine(b.ctx) }()

	b.phase.Store("agents")
	if err := b.loginAgents(ctx); err != nil {
		return 0, err
	}
	fmt.Fprintf(b.o.Progress, "%s%d agents logged in, ready, push channels open\n", b.label, len(b.agents))
	b.phase.Store("chats")
	start := time.Now()
	if err := b.startChats(ctx); err != nil {
		return 0, err
	}
	if err := b.waitFor(ctx, 5*time.Minute, "every chat accepted", func() bool {
		return b.accepted.Load() >= int64(b.o.Chats) && b.streams.Load() >= int64(b.o.Chats)
	}); err != nil {
		return 0, err
	}
	setup := time.Since(start)
	fmt.Fprintf(b.o.Progress, "%s%d chats started, accepted, push channels open in %v\n", b.label, b.o.Chats, setup.Round(time.Millisecond))
	return setup, nil
}

// measured is what a measured message phase gave.
type measured struct {
	elapsed   time.Duration
	errs      int
	lat, push []time.Duration          // send to the agent's, and to the customer's, push channel
	cpu       map[string]time.Duration // CPU time of each process measured, by name
	self      time.Duration            // the load generator's CPU time
}

// phase is the report of the set-up (which took setup) and of this
// message phase of messages messages.
func (m measured) phase(setup time.Duration, messages int) Phase {
	p := Phase{SetupTime: setup, Messages: messages, Errors: m.errs, Delivered: len(m.lat), Elapsed: m.elapsed,
		PerSecond: float64(len(m.lat)) / m.elapsed.Seconds()}
	p.P50, p.P99, p.Max = summary(m.lat)
	p.PushP50, p.PushP99, _ = summary(m.push)
	return p
}

// perMessage is d over the messages delivered to the agents.
func (m measured) perMessage(d time.Duration) time.Duration {
	if len(m.lat) == 0 {
		return 0
	}
	return d / time.Duration(len(m.lat))
}

// messages is the measured phase: it sends Messages messages with
// Concurrency senders and waits until every acknowledged one reached its
// agent, measuring the CPU time of the processes pids (by name) and of the
// load generator, whose CPU profile goes to profile (none when empty).
func (b *bench) messages(ctx context.Context, pids map[string]int, profile string) (measured, error) {
	b.phase.Store("messages")
	m := measured{cpu: map[string]time.Duration{}}
	cpuBefore := map[string]time.Duration{}
	for name, pid := range pids {
		cpuBefore[name], _ = processCPU(pid)
	}
	stopProfile, err := startCPUProfile(profile)
	if err != nil {
		return m, err
	}
	selfBefore, _ := processCPU(selfPID)
	fmt.Fprintf(b.o.Progress, "%ssending %d messages with %d senders\n", b.label, b.o.Messages, b.o.Concurrency)
	start := time.Now()
	m.errs = b.send(ctx, 0, b.o.Messages, nil)
	acked := int(b.tr.ackedN.Load())
	if err := b.waitFor(ctx, time.Minute, "every acknowledged message delivered", func() bool {
		return b.tr.agentN.Load() >= int64(acked)
	}); err != nil {
		stopProfile()
		return m, err
	}
	m.elapsed = time.Since(start)
	if err := stopProfile(); err != nil {
		return m, err
	}
	for name, pid := range pids {
		after, _ := processCPU(pid)
		m.cpu[name] = after - cpuBefore[name]
	}
	selfAfter, _ := processCPU(selfPID)
	m.self = selfAfter - selfBefore
	m.lat, m.push = b.tr.latencies(0, b.o.Messages)
	return m, nil
}

// waitFor polls cond until it holds, within d.
func (b *bench) waitFor(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not %s within %v (started %d, push channels %d, accepted %d, acked %d, delivered %d)", what, d,
				b.started.Load(), b.streams.Load(), b.accepted.Load(), b.tr.ackedN.Load(), b.tr.agentN.Load())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// summary returns p50, p99 and max of ds (sorted in place).
func summary(ds []time.Duration) (p50, p99, mx time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}
