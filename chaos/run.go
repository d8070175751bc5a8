package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/pause"
	"github.com/hachat/hachat/ucsmock"
	"github.com/hachat/hachat/workload"
)

// Config is one chaos run.
type Config struct {
	// StatePath is the running demo's state file.
	StatePath string
	// Duration bounds the time faults are injected; Count, when > 0, stops
	// after that many faults (whichever comes first; Duration 0 means no
	// time bound).
	Duration time.Duration
	Count    int
	// Kinds are the faults drawn; Seed makes the schedule reproducible.
	Kinds []Kind
	Seed  uint64
	// Concurrency is how many faults may be under way at once (default 1).
	Concurrency int
	// Timing bounds the gaps between faults and how long each lasts.
	Timing Timing
	// Chats is how many chats run at once (default 4), each with a
	// customer and an agent sending and the supervisor monitoring.
	Chats int
	// Interval is the pause between one side's messages (default 100ms).
	Interval time.Duration
	// ChatMessages is how many messages each side sends in one chat
	// before the customer leaves and a new chat starts (default 300: a
	// chat stays within what interaction replays to an agent who takes it
	// again, its last 2000 events).
	ChatMessages int
	// RetryFor bounds how long one message is resent (default 60s).
	RetryFor time.Duration
	// Settle is how long the workload goes on once the last fault is
	// repaired, before the check (default 5s).
	Settle time.Duration
	// Status is the period of the status line (default 10s).
	Status time.Duration
	// Targets, when set, limits the faults to the parts with these names or
	// kinds.
	Targets []string
	// Service is the chat service customers start chats on.
	Service string
}

func (c *Config) fill() {
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.Timing == (Timing{}) {
		c.Timing = DefaultTiming()
	}
	if c.Chats <= 0 {
		c.Chats = 4
	}
	if c.Interval <= 0 {
		c.Interval = 100 * time.Millisecond
	}
	if c.ChatMessages == 0 {
		c.ChatMessages = 300
	}
	if c.RetryFor <= 0 {
		c.RetryFor = 60 * time.Second
	}
	if c.Settle <= 0 {
		c.Settle = 5 * time.Second
	}
	if c.Status <= 0 {
		c.Status = 10 * time.Second
	}
	if c.Service == "" {
		c.Service = "customer-support"
	}
}

// run holds the state of one run.
type run struct {
	cfg   Config
	start time.Time

	mu      sync.Mutex
	sent    []workload.Sent
	applied []Applied
}

func (r *run) addSent(m workload.Sent) {
	r.mu.Lock()
	r.sent = append(r.sent, m)
	r.mu.Unlock()
}

// Run drives the workload and the faults against the demo of cfg.StatePath
// and returns the report; progress gets a line per fault and a periodic
// status line. The error is for a run that could not be made (no cluster,
// no iptables); violations are in the report (Report.OK).
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	cfg.fill()
	st, err := ReadState(cfg.StatePath)
	if err != nil {
		return nil, err
	}
	targets := st.Parts
	if len(cfg.Targets) > 0 {
		targets = nil
		for _, p := range st.Parts {
			if slices.Contains(cfg.Targets, p.Name) || slices.Contains(cfg.Targets, p.Kind) {
				targets = append(targets, p)
			}
		}
	}
	sched, err := NewSchedule(cfg.Seed, cfg.Kinds, targets, cfg.Timing)
	if err != nil {
		return nil, err
	}
	var fw *Firewall
	if slices.Contains(sched.Kinds(), Partition) {
		fw, err = NewFirewall(ChainName(os.Getpid()))
		if err != nil {
			return nil, err
		}
		if err := fw.Setup(ctx); err != nil {
			return nil, fmt.Errorf("partition chain: %w", err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := fw.Close(cctx); err != nil {
				fmt.Fprintf(progress, "chaos: removing chain %s: %v\n", fw.Chain, err)
			}
		}()
	}
	nem := newNemesis(cfg.StatePath, fw)
	defer func() {
		// Whatever happens, leave the cluster whole: no process stopped, no
		// rule in place, every part running.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := nem.repair(cctx); err != nil {
			fmt.Fprintf(progress, "chaos: repair: %v\n", err)
		}
	}()

	hc := &http.Client{Timeout: 10 * time.Second}
	opTLS := &http.Client{Timeout: 5 * time.Second}
	if st.Credentials.CertDir != "" {
		if tc, err := demo.OperatorTLS(st.Credentials.CertDir); err == nil {
			opTLS.Transport = &http.Transport{TLSClientConfig: tc}
		}
	}
	r := &run{cfg: cfg, start: time.Now()}
	mon := &monitor{hc: &http.Client{Timeout: time.Second}, every: 100 * time.Millisecond}
	monCtx, stopMon := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		mon.run(monCtx, func() []Part { return st.OfKind("core") })
	}()
	defer func() { stopMon(); bg.Wait() }()

	// The clients: agents and a supervisor at the agent entrypoint, their
	// push channels kept open until the end.
	pushCtx, stopPush := context.WithCancel(ctx)
	defer stopPush()
	var agents []*desk
	var supervisor *desk
	for _, a := range st.Credentials.Accounts {
		d := newDesk(hc, st.AgentURL(), a.User, a.Password)
		switch {
		case a.Role == "agent":
			agents = append(agents, d)
		case a.Role == "supervisor" && supervisor == nil:
			supervisor = d
		default:
			continue
		}
		if err := d.login(ctx); err != nil {
			return nil, err
		}
		bg.Add(1)
		go func() { defer bg.Done(); d.push(pushCtx) }()
	}
	if len(agents) == 0 {
		return nil, errors.New("the state file has no agent account")
	}
	reg := &registry{}
	deskCtx, stopDesks := context.WithCancel(ctx)
	defer stopDesks()
	for _, ag := range agents {
		bg.Add(1)
		go func() { defer bg.Done(); reg.keepAgent(deskCtx, ag) }()
	}
	if supervisor != nil {
		bg.Add(1)
		go func() { defer bg.Done(); reg.keepSupervisor(deskCtx, supervisor) }()
	}
	sessions, err := startSessions(ctx, cfg, st, hc, reg, supervisor)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "chaos: %d chats (customers at %s, %d agents and %s at %s), faults %v, seed %d\n",
		len(sessions), st.CustomerURL(), len(agents), deskName(supervisor), st.AgentURL(), sched.Kinds(), cfg.Seed)

	// The workload.
	sendCtx, stopSends := context.WithCancel(ctx)
	defer stopSends()
	var senders sync.WaitGroup
	var allMu sync.Mutex
	all := slices.Clone(sessions) // every chat of the run, ended ones too
	for slot, first := range sessions {
		senders.Add(1)
		go func() {
			defer senders.Done()
			s := first
			for n := 1; ; n++ {
				r.converse(sendCtx, s)
				if sendCtx.Err() != nil {
					return
				}
				// The chat has had its messages: the customer leaves (after
				// reading the transcript, for the check) and a new chat
				// takes its place.
				s.end(sendCtx)
				ns, err := startSession(sendCtx, cfg, st, hc, reg, supervisor, fmt.Sprintf("chaos-customer-%d-%d", slot, n))
				if err != nil {
					return // only when the run ends
				}
				allMu.Lock()
				all = append(all, ns)
				allMu.Unlock()
				s = ns
			}
		}()
	}
	statusCtx, stopStatus := context.WithCancel(ctx)
	bg.Add(1)
	go func() { defer bg.Done(); r.statusLines(statusCtx, progress, mon) }()

	// The nemesis.
	r.nemesis(ctx, sched, nem, progress)
	stopStatus()
	fmt.Fprintf(progress, "chaos: faults over; repairing and letting the workload settle for %s\n", cfg.Settle)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	if err := nem.repair(rctx); err != nil {
		fmt.Fprintf(progress, "chaos: repair: %v\n", err)
	}
	cancel()
	pause.For(ctx, cfg.Settle)
	stopSends()
	senders.Wait()
	stopDesks() // the chats end below: no more taking or monitoring
	interrupted := ctx.Err() != nil

	// The check.
	fmt.Fprintf(progress, "chaos: checking every view and UCS\n")
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	var ucs *ucsmock.Client
	if us := st.OfKind("ucs"); len(us) > 0 {
		ucs = ucsmock.NewClient(us[0].URL(), opTLS, nil).WithToken(st.Credentials.UCSReaderToken)
	}
	wait := checkWait{view: 30 * time.Second, ucs: time.Minute}
	if interrupted {
		wait = checkWait{view: 3 * time.Second, ucs: 5 * time.Second} // Ctrl-C: check what is there, quickly
	}
	allMu.Lock()
	sessions = slices.Clone(all)
	allMu.Unlock()
	fmt.Fprintf(progress, "chaos: checking %d chats\n", len(sessions))
	checks := r.check(cctx, sessions, ucs, wait)
	stopPush()
	stopMon()
	bg.Wait()
	samples := mon.Samples()
	for _, c := range st.OfKind("core") {
		if f, err := os.Open(c.Log); err == nil {
			promos := LogPromotions(c.Name, f, r.start)
			f.Close()
			samples = append(samples, promos...)
		}
	}
	rep := r.report(samples, checks, sched.Kinds())
	rep.Interrupted = interrupted
	rep.Reaccepted, rep.Remonitored = reg.reaccepted, reg.remonitors
	for _, d := range append(slices.Clone(agents), supervisor) {
		if d != nil {
			d.mu.Lock()
			rep.Relogins += d.relogins
			d.mu.Unlock()
		}
	}
	return rep, nil
}

func deskName(d *desk) string {
	if d == nil {
		return "no supervisor"
	}
	return "supervisor " + d.id
}

// startSessions starts cfg.Chats chats and waits until each is taken by
// the agent it is offered to (keepAgent) and monitored by the supervisor.
func startSessions(ctx context.Context, cfg Config, st State, hc *http.Client, reg *registry, supervisor *desk) ([]*session, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out []*session
	for i := range cfg.Chats {
		s, err := startSession(ctx, cfg, st, hc, reg, supervisor, fmt.Sprintf("chaos-customer-%d-0", i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// startSession starts one chat and waits until an agent takes it.
func startSession(ctx context.Context, cfg Config, st State, hc *http.Client, reg *registry, supervisor *desk, nickname string) (*session, error) {
	c, err := startCustomer(ctx, hc, st.CustomerURL(), cfg.Service, nickname)
	if err != nil {
		return nil, err
	}
	s := newSession(c, supervisor)
	reg.add(s)
	select {
	case <-s.taken:
		return s, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("chat %s taken by no agent: %w", c.chatID, ctx.Err())
	}
}

// converse has the customer and the agent of s send their numbered
// messages, cfg.ChatMessages each (or until ctx ends).
func (r *run) converse(ctx context.Context, s *session) {
	var wg sync.WaitGroup
	for _, side := range []workload.Side{s.customer, agentSide{s}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 1; ctx.Err() == nil && (r.cfg.ChatMessages <= 0 || seq <= r.cfg.ChatMessages); seq++ {
				m := workload.NewSent(s.chatID, side.Name(), seq)
				workload.SendOne(ctx, side, m, workload.Retry{For: r.cfg.RetryFor, Delay: 100 * time.Millisecond})
				r.addSent(*m)
				pause.For(ctx, r.cfg.Interval)
			}
		}()
	}
	wg.Wait()
}

// nemesis draws and applies faults until the duration or the count is
// reached or ctx ends.
func (r *run) nemesis(ctx context.Context, sched *Schedule, nem *nemesis, progress io.Writer) {
	var end time.Time
	if r.cfg.Duration > 0 {
		end = r.start.Add(r.cfg.Duration)
	}
	var mu sync.Mutex // guards the schedule, the count and busy
	busy := map[string]bool{}
	drawn := 0
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				if r.cfg.Count > 0 && drawn >= r.cfg.Count {
					mu.Unlock()
					return
				}
				f := sched.Next()
				drawn++
				mu.Unlock()
				if !end.IsZero() && time.Now().Add(f.Gap).After(end) {
					return
				}
				if !pause.For(ctx, f.Gap) {
					return
				}
				mu.Lock()
				conflict := false
				for _, t := range f.Targets {
					conflict = conflict || busy[t]
				}
				if !conflict {
					for _, t := range f.Targets {
						busy[t] = true
					}
				}
				mu.Unlock()
				if conflict {
					fmt.Fprintf(progress, "chaos: fault %s skipped: its target is under another fault\n", f)
					continue
				}
				fmt.Fprintf(progress, "%8s fault %s\n", r.since(time.Now()), f)
				a := nem.apply(ctx, f)
				mu.Lock()
				for _, t := range f.Targets {
					delete(busy, t)
				}
				mu.Unlock()
				r.mu.Lock()
				r.applied = append(r.applied, a)
				r.mu.Unlock()
				note := ""
				if a.Err != "" {
					note = ": " + a.Err
				}
				fmt.Fprintf(progress, "%8s   %s %s over in %s%s\n", r.since(a.End), f.Kind, f.Targets, a.End.Sub(a.Start).Round(time.Millisecond), note)
			}
		}()
	}
	wg.Wait()
}

func (r *run) since(t time.Time) string {
	return t.Sub(r.start).Round(100 * time.Millisecond).String()
}

// statusLines prints a status line every cfg.Status.
func (r *run) statusLines(ctx context.Context, w io.Writer, mon *monitor) {
	t := time.NewTicker(r.cfg.Status)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		r.mu.Lock()
		acked, failed := 0, 0
		var worst time.Duration
		for _, m := range r.sent {
			if m.Acked {
				acked++
				if now.Sub(m.AckedAt) < r.cfg.Status {
					worst = max(worst, m.Latency())
				}
			} else {
				failed++
			}
		}
		faults := len(r.applied)
		r.mu.Unlock()
		primary := "none"
		samples := mon.Samples()
		for i := len(samples) - 1; i >= 0 && now.Sub(samples[i].At) < time.Second; i-- {
			if samples[i].Role == "primary" {
				primary = fmt.Sprintf("%s (epoch %d)", samples[i].Core, samples[i].Epoch)
				break
			}
		}
		fmt.Fprintf(w, "%8s status: %d faults, %d messages acknowledged, %d not, worst send latency in the last %s %s, primary %s\n",
			r.since(now), faults, acked, failed, r.cfg.Status, worst.Round(time.Millisecond), primary)
	}
}

// checkWait bounds the waits of the check: for a push channel to reach the
// last acknowledged index, for UCS to hold every acknowledged message.
type checkWait struct{ view, ucs time.Duration }

// viewCheck is what the checker found in one view of one chat.
type viewCheck struct {
	chatID, view string
	errs         []error
}

// check reads every view of every chat and checks it, then ends each chat
// and checks its UCS transcript.
func (r *run) check(ctx context.Context, sessions []*session, ucs *ucsmock.Client, wait checkWait) []viewCheck {
	r.mu.Lock()
	sent := slices.Clone(r.sent)
	r.mu.Unlock()
	var out []viewCheck
	for _, s := range sessions {
		var mine []workload.Sent
		var through uint64
		for _, m := range sent {
			if m.ChatID == s.chatID {
				mine = append(mine, m)
				through = max(through, m.Index)
			}
		}
		viewers := []workload.Viewer{s.customerViewer(), agentSide{s}}
		if s.supervisor != nil {
			viewers = append(viewers, supervisorView{s.supervisor, s.chatID})
		}
		var seen []workload.NamedView
		for _, v := range viewers {
			vctx, cancel := context.WithTimeout(ctx, wait.view)
			view, err := v.View(vctx, through)
			cancel()
			vc := viewCheck{chatID: s.chatID, view: v.Name()}
			if err != nil {
				vc.errs = []error{err}
			} else {
				vc.errs = workload.CheckView(mine, view, false)
				seen = append(seen, workload.NamedView{Name: v.Name(), Events: view})
			}
			out = append(out, vc)
		}
		s.end(ctx)
		if ucs != nil {
			last, errs := workload.CheckTranscript(ctx, ucs, s.chatID, mine, false, wait.ucs)
			out = append(out, viewCheck{chatID: s.chatID, view: "ucs transcript", errs: errs})
			if last != nil {
				seen = append(seen, workload.NamedView{Name: "ucs transcript", Events: last})
			}
		}
		out = append(out, viewCheck{chatID: s.chatID, view: "all views", errs: workload.CheckIndexes(seen)})
	}
	return out
}
