package demo

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Options tunes a Supervisor. The zero value is usable: see each field's default.
type Options struct {
	// Binary is the hachat binary every part runs. Default: os.Executable().
	Binary string
	// Dir is the state directory; each part logs to Dir/<name>.log.
	// Default ".hachat".
	Dir string
	// StatePath is the state file. Default Dir/demo.json.
	StatePath string
	// Progress receives the human-readable story: "starting core-a ... ready
	// in 120ms", "core-a exited: signal: killed" (with Control set, followed
	// by "; bring it back: hachat demo restart core-a --state FILE").
	// Default: discarded.
	Progress io.Writer
	// Logger receives the same story as structured logs. Default: discarded.
	Logger *slog.Logger
	// ReadyTimeout bounds the wait for one part's readiness. Default 20s.
	ReadyTimeout time.Duration
	// Grace is how long a part may take to exit after SIGTERM before it gets
	// SIGKILL. Default 5s.
	Grace time.Duration
	// Env is added to the children's environment (which inherits ours).
	Env []string
	// TLS is the client configuration of readiness checks of parts whose
	// HTTP address serves mTLS (Part.TLS): the operator's certificate.
	TLS *tls.Config
	// Credentials are written to the state file, so that an operator or a
	// test can act as each account (see WriteAccounts).
	Credentials Credentials
	// UCSStore, if set, is recorded in the state file: the PostgreSQL
	// cluster the ucs instances share.
	UCSStore *UCSStoreState
	// Control is the path of a Unix socket on which the supervisor takes
	// restart requests (`hachat demo restart`, see ControlPath); it is
	// recorded in the state file. Default: none.
	Control string
	// NewPair, when set, returns the parts of pair p (the next pair of
	// the running plan; PairParts) and readies what they need (their
	// certificates): it enables AddPair and the control socket's
	// POST /add-pair (`hachat demo add-pair`).
	NewPair func(p int) ([]Part, error)
}

func (o *Options) fill() error {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own binary: %w", err)
		}
		o.Binary = exe
	}
	if o.Dir == "" {
		o.Dir = ".hachat"
	}
	if o.StatePath == "" {
		o.StatePath = filepath.Join(o.Dir, "demo.json")
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 20 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	return nil
}

// The states a part can be in, as written to the state file.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StateExited   = "exited"  // it died or was killed; the supervisor did not stop it
	StateStopped  = "stopped" // the supervisor stopped it
)

// Supervisor runs the parts of one plan as child processes.
type Supervisor struct {
	opts Options
	plan Plan
	root context.Context
	stop context.CancelFunc

	mu       sync.Mutex
	procs    map[string]*proc
	stopping bool
	progMu   sync.Mutex
	stateMu  sync.Mutex
	stopOnce sync.Once

	restartMu    sync.Mutex // one RestartPart at a time
	controlPath  string     // absolute path of the control socket, once it listens
	closeControl func()     // stops the control socket's server and removes the socket
}

// proc is one run of one part.
type proc struct {
	part    Part
	cmd     *exec.Cmd
	pid     int
	cancel  context.CancelFunc
	done    chan struct{}
	state   string
	exit    string
	started time.Time
}

// Start validates plan, starts its parts in order, each as a child process of
// opts.Binary with its own log file, and waits for each one to be ready before
// starting the next. It writes the state file as parts come up. When a part
// fails to start, Start stops the ones already running and returns the error
// (with the tail of the part's log). Cancelling ctx stops every part (as Stop
// does); call Stop to wait for that.
func Start(ctx context.Context, plan Plan, opts Options) (*Supervisor, error) {
	if err := plan.Validate(); err != nil {
		return nil, err
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if dir := filepath.Dir(opts.StatePath); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create state file dir: %w", err)
		}
	}
	root, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Supervisor{opts: opts, plan: plan.Clone(), root: root, stop: cancel, procs: map[string]*proc{}}
	if opts.Control != "" {
		if err := s.serveControl(); err != nil {
			cancel()
			return nil, err
		}
	}
	context.AfterFunc(ctx, s.Stop)
	for _, part := range s.plan.Parts {
		if err := s.startPart(ctx, part); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// Plan returns the plan the supervisor runs.
func (s *Supervisor) Plan() Plan {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plan.Clone()
}

// AddParts adds parts to the running plan and starts them, in order, each
// ready before the next (a new pair of cores joins this way: nothing else
// restarts). A name the plan already holds is refused before anything
// starts.
func (s *Supervisor) AddParts(ctx context.Context, parts ...Part) error {
	s.mu.Lock()
	grown := s.plan.Clone()
	grown.Parts = append(grown.Parts, parts...)
	if err := grown.Validate(); err != nil {
		s.mu.Unlock()
		return err
	}
	s.plan = grown
	s.mu.Unlock()
	for _, part := range parts {
		if err := s.startPart(ctx, part); err != nil {
			return err
		}
	}
	return nil
}

// Dir returns the state directory.
func (s *Supervisor) Dir() string { return s.opts.Dir }

// StatePath returns the path of the state file.
func (s *Supervisor) StatePath() string { return s.opts.StatePath }

// LogPath returns the log file of the part called name.
func (s *Supervisor) LogPath(name string) string {
	return filepath.Join(s.opts.Dir, name+".log")
}

func (s *Supervisor) progressf(format string, args ...any) {
	s.progMu.Lock()
	defer s.progMu.Unlock()
	fmt.Fprintf(s.opts.Progress, format, args...)
}

// startPart starts one part and waits for it to be ready.
func (s *Supervisor) startPart(ctx context.Context, part Part) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return fmt.Errorf("start %s: supervisor is stopping", part.Name)
	}
	if p := s.procs[part.Name]; p != nil && (p.state == StateRunning || p.state == StateStarting) {
		s.mu.Unlock()
		return fmt.Errorf("start %s: already running as pid %d", part.Name, p.pid)
	}
	s.mu.Unlock()

	logPath := s.LogPath(part.Name)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", part.Name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	fmt.Fprintf(logf, "=== hachat demo: starting %s at %s: %s %s\n", part.Name,
		time.Now().UTC().Format(time.RFC3339Nano), s.opts.Binary, strings.Join(part.Command(), " "))

	pctx, cancel := context.WithCancel(s.root)
	cmd := exec.CommandContext(pctx, s.opts.Binary, part.Command()...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), s.opts.Env...)
	cmd.Env = append(cmd.Env, InstanceEnv(cmd.Env, part.Name))
	if abs, err := filepath.Abs(s.opts.StatePath); err == nil {
		cmd.Env = append(cmd.Env, StateEnv+"="+abs) // CheckFree of a second demo reads it
	}
	// Own process group: the terminal's Ctrl-C reaches only the supervisor,
	// which then stops the children itself, once. Pdeathsig: children do not
	// outlive a supervisor that was killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error {
		return cmd.Process.Signal(syscall.SIGTERM)
	}
	cmd.WaitDelay = s.opts.Grace

	s.progressf("starting %-*s ... ", s.nameWidth(), part.Name)
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		s.progressf("failed: %v\n", err)
		return fmt.Errorf("start %s: %w", part.Name, err)
	}
	p := &proc{part: part, cmd: cmd, pid: cmd.Process.Pid, cancel: cancel, done: make(chan struct{}),
		state: StateStarting, started: begin}
	s.mu.Lock()
	s.procs[part.Name] = p
	s.mu.Unlock()
	go s.watch(p)

	if err := s.waitReady(ctx, p); err != nil {
		s.progressf("failed after %s: %v\n", time.Since(begin).Round(time.Millisecond), err)
		s.opts.Logger.Error("part failed to start", "child", part.Name, "pid", p.pid, "err", err)
		cancel()
		<-p.done
		return fmt.Errorf("start %s: %w\n%s", part.Name, err, indent(Tail(logPath, 30)))
	}
	s.mu.Lock()
	if p.state == StateStarting {
		p.state = StateRunning
	}
	s.mu.Unlock()
	took := time.Since(begin).Round(time.Millisecond)
	s.progressf("ready in %s (pid %d)\n", took, p.pid)
	s.opts.Logger.Info("part ready", "child", part.Name, "pid", p.pid, "took", took.String())
	return s.writeState()
}

// nameWidth is the longest part name, for aligned progress lines.
func (s *Supervisor) nameWidth() int {
	w := 0
	for _, p := range s.Plan().Parts {
		w = max(w, len(p.Name))
	}
	return w
}

// watch waits for the process to exit and records how.
func (s *Supervisor) watch(p *proc) {
	err := p.cmd.Wait()
	how := "exit status 0"
	if err != nil {
		how = err.Error()
	}
	s.mu.Lock()
	stopping := s.stopping || p.state == StateStopped
	if stopping {
		p.state = StateStopped
	} else {
		p.state = StateExited
	}
	p.exit = how
	s.mu.Unlock()
	p.cancel()
	close(p.done)
	if !stopping {
		if s.opts.Control != "" {
			// The demo never restarts a part by itself: say how to.
			s.progressf("%s exited: %s; bring it back: hachat demo restart %s --state %s\n", p.part.Name, how, p.part.Name, s.opts.StatePath)
		} else {
			s.progressf("%s exited: %s\n", p.part.Name, how)
		}
		s.opts.Logger.Warn("part exited; not restarting it", "child", p.part.Name, "pid", p.pid, "exit", how)
		if err := s.writeState(); err != nil {
			s.opts.Logger.Error("write state file", "err", err)
		}
	}
}

// waitReady polls the part's URL/healthz (or dials GRPC when the part has no
// HTTP address) until it answers, the process exits, or the deadline passes.
func (s *Supervisor) waitReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReadyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	if p.part.TLS {
		if s.opts.TLS == nil {
			return fmt.Errorf("%s serves mTLS but the supervisor has no client certificate (Options.TLS)", p.part.Name)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = s.opts.TLS
		client.Transport = tr
		defer tr.CloseIdleConnections()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		switch {
		case p.part.HTTP != "":
			last = probeHTTP(ctx, client, p.part.URL()+"/healthz")
		case p.part.GRPC != "":
			last = probeTCP(ctx, p.part.GRPC)
		default:
			last = nil
		}
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready: %s", p.exit)
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", s.opts.ReadyTimeout, last)
		case <-tick.C:
		}
	}
}

func probeHTTP(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func probeTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// Stop stops every part, one at a time in reverse plan order (clients
// before the services they use, the backup core before the primary, so that
// nothing fails over during a shutdown): SIGTERM, then SIGKILL for a part
// still running after the grace period. It waits for all of them, writes the
// final state file, and is safe to call more than once and concurrently
// (every caller returns once the cluster is down).
func (s *Supervisor) Stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		plan := s.Plan()
		for i := len(plan.Parts) - 1; i >= 0; i-- {
			s.mu.Lock()
			p := s.procs[plan.Parts[i].Name]
			s.mu.Unlock()
			if p == nil {
				continue
			}
			p.cancel()
			<-p.done
		}
		s.stop() // and any run that started meanwhile
		if s.closeControl != nil {
			s.closeControl()
		}
		s.mu.Lock()
		procs := make([]*proc, 0, len(s.procs))
		for _, p := range s.procs {
			procs = append(procs, p)
		}
		s.mu.Unlock()
		for _, p := range procs {
			<-p.done
		}
		if err := s.writeState(); err != nil {
			s.opts.Logger.Error("write state file", "err", err)
		}
	})
}

func (s *Supervisor) get(name string) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.procs[name]
	if p == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPart, name)
	}
	return p, nil
}

// PID returns the process id of the part's current (or last) run.
func (s *Supervisor) PID(name string) (int, error) {
	p, err := s.get(name)
	if err != nil {
		return 0, err
	}
	return p.pid, nil
}

// Signal sends sig to the part's process (SIGKILL, SIGSTOP, SIGCONT, ...).
// It does not wait; a part killed this way is not restarted.
func (s *Supervisor) Signal(name string, sig syscall.Signal) error {
	p, err := s.get(name)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		return fmt.Errorf("signal %s: not running (%s)", name, p.exit)
	default:
	}
	if err := syscall.Kill(p.pid, sig); err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	return nil
}

// Kill sends SIGKILL to the part and waits until it is gone.
func (s *Supervisor) Kill(ctx context.Context, name string) error {
	if err := s.Signal(name, syscall.SIGKILL); err != nil {
		return err
	}
	return s.WaitExit(ctx, name)
}

// WaitExit waits until the part's current run has exited.
func (s *Supervisor) WaitExit(ctx context.Context, name string) error {
	p, err := s.get(name)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to exit: %w", name, ctx.Err())
	}
}

// StopPart stops one part gracefully (SIGTERM, SIGKILL after the grace
// period) and waits for it; the state file marks it stopped.
func (s *Supervisor) StopPart(ctx context.Context, name string) error {
	p, err := s.get(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	running := p.state == StateRunning || p.state == StateStarting
	if running {
		p.state = StateStopped
	}
	s.mu.Unlock()
	if running {
		s.progressf("stopping %s (pid %d)\n", name, p.pid)
		p.cancel()
	}
	if err := s.WaitExit(ctx, name); err != nil {
		return err
	}
	return s.writeState()
}

// Restart stops the part if it still runs, starts it again with the same
// flags and waits until it is ready.
func (s *Supervisor) Restart(ctx context.Context, name string) error {
	part, ok := s.Plan().Part(name)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownPart, name)
	}
	if _, err := s.get(name); err == nil {
		if err := s.StopPart(ctx, name); err != nil {
			return err
		}
	}
	return s.startPart(ctx, part)
}

// Running reports whether the part's current run is alive.
func (s *Supervisor) Running(name string) bool {
	p, err := s.get(name)
	if err != nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// PartState is one entry of the state file.
type PartState struct {
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	PID  int    `json:"pid"`
	Role string `json:"role,omitempty"`
	// Pair is a core's pair (package pairs).
	Pair string `json:"pair,omitempty"`
	HTTP string `json:"http,omitempty"`
	GRPC string `json:"grpc,omitempty"`
	// TLS says HTTP serves HTTPS with mTLS (use the operator certificate).
	TLS   bool   `json:"tls,omitempty"`
	State string `json:"state"`
	// Exit is how the process ended ("signal: killed"), once it has.
	Exit string `json:"exit,omitempty"`
	// Log is the part's log file.
	Log string `json:"log"`
}

// Status returns the state of every part in plan order.
func (s *Supervisor) Status() []PartState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []PartState
	for _, part := range s.plan.Parts {
		p := s.procs[part.Name]
		if p == nil {
			continue
		}
		out = append(out, PartState{Name: part.Name, Kind: part.Kind, PID: p.pid, Role: part.Role, Pair: part.Pair,
			HTTP: part.HTTP, GRPC: part.GRPC, TLS: part.TLS, State: p.state, Exit: p.exit, Log: s.LogPath(part.Name)})
	}
	return out
}

// WriteTable prints the parts with their PID and URL.
func (s *Supervisor) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tROLE\tPID\tSTATE\tURL\tGRPC")
	for _, st := range s.Status() {
		url := ""
		if st.HTTP != "" {
			url = Part{HTTP: st.HTTP, TLS: st.TLS}.URL() + "/"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", st.Name, st.Kind, dash(st.Role), st.PID, st.State, dash(url), dash(st.GRPC))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Tail returns the last n lines of the file at path ("" if unreadable).
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*n {
			lines = slices.Clone(lines[len(lines)-n:])
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string {
	if s == "" {
		return "    (empty log)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// ResourceAttributesEnv is the OpenTelemetry variable of resource
// attributes (key=value,key=value) that every part's spans carry.
const ResourceAttributesEnv = "OTEL_RESOURCE_ATTRIBUTES"

// InstanceEnv returns the OTEL_RESOURCE_ATTRIBUTES entry of a child named
// part whose environment is env: the attributes env already sets (its last
// OTEL_RESOURCE_ATTRIBUTES, as exec uses) plus service.instance.id=part,
// which wins, so that the spans of two parts of one kind (core-a and
// core-b, the two sidecars) tell their process apart.
func InstanceEnv(env []string, part string) string {
	attrs := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, ResourceAttributesEnv+"="); ok {
			attrs = v
		}
	}
	id := "service.instance.id=" + url.PathEscape(part)
	if attrs = strings.TrimSpace(attrs); attrs != "" {
		id = attrs + "," + id
	}
	return ResourceAttributesEnv + "=" + id
}
