// Package failoverbench measures what a customer notices of a failover: the
// gap in a running conversation when the primary is killed with SIGKILL, and
// the pause of a planned switchover. Each trial keeps one customer sending
// numbered messages and one agent receiving them, then kills (or switches
// over) the primary; the gap runs from the last message the old primary
// acknowledged to the first message delivered end to end through the new
// one.
package failoverbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hachat/hachat/bench/workers"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/clusterctl"
)

// Cluster is the running cluster under test: real processes.
type Cluster interface {
	// Kill sends SIGKILL to the named core and waits until it has exited.
	Kill(ctx context.Context, name string) error
	// Restart starts the named core again with its original flags.
	Restart(ctx context.Context, name string) error
	// Signal sends sig to the named core (SIGSTOP, SIGCONT for a silent primary).
	Signal(name string, sig syscall.Signal) error
}

// Options shape a run.
type Options struct {
	// Trials is the number of kill -9 trials and of switchover trials (default 5).
	Trials int
	// Cores maps core names to their gRPC addresses (for status queries).
	Cores map[string]string
	// Ctl asks the cores for their status and drives switchovers (its
	// credentials: the operator's certificate under mTLS).
	Ctl clusterctl.Ctl
	// AdminToken authorises switchovers.
	AdminToken string
	// ServiceToken lets the bench join an agent.
	ServiceToken string
	// Interval is the pause between two customer sends (default 2ms).
	Interval time.Duration
	// Settle bounds the wait for the pair to be whole again after a trial (default 30s).
	Settle time.Duration
	// SkipSwitchover leaves out the switchover trials.
	SkipSwitchover bool
	// Silent adds trials that SIGSTOP the primary (a silent primary: its
	// kernel still accepts connections, so only gossip and missing answers
	// tell), then SIGCONT it once the chat goes on: it must find itself
	// fenced and come back as backup.
	Silent bool
	// Sessions is the number of extra live sessions opened before the
	// trials (customer started, agent joined, one message each) through
	// the client under test, and left open through every trial: the
	// snapshot a backup resyncs from after each failover or switchover
	// holds them all (0: none). The cores must not end them meanwhile
	// (their flex-disconnect-timeout must outlast the run).
	Sessions int
	// SetupConcurrency is the number of sessions opened at once (default 32).
	SetupConcurrency int
}

// Validate reports options that cannot run.
func (o Options) Validate() error {
	if o.Sessions < 0 {
		return fmt.Errorf("sessions must be 0 or more (extra live sessions), got %d", o.Sessions)
	}
	if o.SetupConcurrency < 0 {
		return fmt.Errorf("setup concurrency must be 0 (default) or more, got %d", o.SetupConcurrency)
	}
	return nil
}

// Report holds the measured gaps.
type Report struct {
	Kill       []time.Duration
	Silent     []time.Duration
	Switchover []time.Duration
	// KillAck is the send side of each kill -9 gap: from the last send
	// acknowledged before the kill to the first acknowledgement of a
	// message sent after it. Kill minus KillAck is what the delivery to
	// the subscriber added (its stream's resumption).
	KillAck []time.Duration
	// Sessions is the number of extra live sessions held through the trials.
	Sessions int
	// SetupTime is how long opening them took.
	SetupTime time.Duration
	// LiveAfter is the primary's count of live sessions after the last
	// trial (with Sessions > 0; it includes trial sessions still lingering).
	LiveAfter uint64
}

// GapSummary is one kind of trial in the JSON report: every gap and its
// p50, p99 and max, in nanoseconds.
type GapSummary struct {
	Trials []time.Duration `json:"gaps_ns"`
	P50    time.Duration   `json:"p50_ns"`
	P99    time.Duration   `json:"p99_ns"`
	Max    time.Duration   `json:"max_ns"`
}

func summarize(ds []time.Duration) *GapSummary {
	if len(ds) == 0 {
		return nil
	}
	p50, p99, mx := Summary(ds)
	return &GapSummary{Trials: ds, P50: p50, P99: p99, Max: mx}
}

// MarshalJSON renders the report as {"kill", "silent", "switchover",
// "kill_ack"}, each a GapSummary (absent when no such trial ran).
func (r Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Kill       *GapSummary `json:"kill,omitempty"`
		Silent     *GapSummary `json:"silent,omitempty"`
		Switchover *GapSummary `json:"switchover,omitempty"`
		KillAck    *GapSummary `json:"kill_ack,omitempty"`
	}{summarize(r.Kill), summarize(r.Silent), summarize(r.Switchover), summarize(r.KillAck)})
}

// Summary returns p50, p99 and max of ds.
func Summary(ds []time.Duration) (p50, p99, max time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)], s[len(s)-1]
}

// String renders the report.
func (r Report) String() string {
	line := func(name string, ds []time.Duration) string {
		if len(ds) == 0 {
			return fmt.Sprintf("%-22s no trials\n", name)
		}
		p50, p99, mx := Summary(ds)
		return fmt.Sprintf("%-22s trials %d   p50 %v   p99 %v   max %v\n", name, len(ds),
			p50.Round(time.Microsecond), p99.Round(time.Microsecond), mx.Round(time.Microsecond))
	}
	out := ""
	if r.Sessions > 0 {
		out = fmt.Sprintf("%d extra live sessions through every trial (set up in %v; the primary held %d live after the trials)\n",
			r.Sessions, r.SetupTime.Round(time.Millisecond), r.LiveAfter)
	}
	out += line("kill -9 gap", r.Kill)
	if len(r.KillAck) > 0 {
		out += line("  of which to the ack", r.KillAck)
	}
	if len(r.Silent) > 0 {
		out += line("SIGSTOP gap", r.Silent)
	}
	return out + line("switchover pause", r.Switchover)
}

// Run runs the trials. cl is the client under test (through the sidecar or
// with both core addresses): it must resume on its own.
func Run(ctx context.Context, cl chatpb.ChatClient, cluster Cluster, opts Options, progress io.Writer) (rep Report, err error) {
	if err := opts.Validate(); err != nil {
		return Report{}, err
	}
	if opts.Trials <= 0 {
		opts.Trials = 5
	}
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Millisecond
	}
	if opts.Settle <= 0 {
		opts.Settle = 30 * time.Second
	}
	if progress == nil {
		progress = io.Discard
	}
	if opts.Sessions > 0 {
		if err := waitPair(ctx, opts, opts.Settle); err != nil {
			return rep, fmt.Errorf("before the sessions' set-up: %w", err)
		}
		start := time.Now()
		if err := OpenSessions(ctx, cl, opts, progress); err != nil {
			return rep, err
		}
		rep.Sessions, rep.SetupTime = opts.Sessions, time.Since(start)
		defer func() {
			if err == nil {
				rep.LiveAfter, err = primaryLive(ctx, opts)
				fmt.Fprintf(progress, "after the trials the primary holds %d live sessions (%d opened before them)\n", rep.LiveAfter, opts.Sessions)
			}
		}()
	}
	for i := 0; i < opts.Trials; i++ {
		if err := waitPair(ctx, opts, opts.Settle); err != nil {
			return rep, fmt.Errorf("kill trial %d: %w", i+1, err)
		}
		primary, err := primaryName(ctx, opts)
		if err != nil {
			return rep, err
		}
		res, err := trial(ctx, cl, opts, func(ctx context.Context) error { return cluster.Kill(ctx, primary) })
		gap := res.gap
		if err != nil {
			return rep, fmt.Errorf("kill trial %d: %w", i+1, err)
		}
		rep.Kill = append(rep.Kill, gap)
		rep.KillAck = append(rep.KillAck, res.ackGap)
		fmt.Fprintf(progress, "kill -9 %s: gap %v\n", primary, gap.Round(time.Microsecond))
		if err := cluster.Restart(ctx, primary); err != nil {
			return rep, fmt.Errorf("restart %s: %w", primary, err)
		}
	}
	for i := 0; opts.Silent && i < opts.Trials; i++ {
		if err := waitPair(ctx, opts, opts.Settle); err != nil {
			return rep, fmt.Errorf("SIGSTOP trial %d: %w", i+1, err)
		}
		primary, err := primaryName(ctx, opts)
		if err != nil {
			return rep, err
		}
		res, err := trial(ctx, cl, opts, func(context.Context) error { return cluster.Signal(primary, syscall.SIGSTOP) })
		gap := res.gap
		if cerr := cluster.Signal(primary, syscall.SIGCONT); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return rep, fmt.Errorf("SIGSTOP trial %d: %w", i+1, err)
		}
		rep.Silent = append(rep.Silent, gap)
		fmt.Fprintf(progress, "SIGSTOP %s: gap %v (SIGCONT sent: it must step down and rejoin as backup)\n", primary, gap.Round(time.Microsecond))
	}
	if opts.SkipSwitchover {
		return rep, nil
	}
	addrs := make([]string, 0, len(opts.Cores))
	for _, a := range opts.Cores {
		addrs = append(addrs, a)
	}
	for i := 0; i < opts.Trials; i++ {
		if err := waitPair(ctx, opts, opts.Settle); err != nil {
			return rep, fmt.Errorf("switchover trial %d: %w", i+1, err)
		}
		res, err := trial(ctx, cl, opts, func(ctx context.Context) error {
			_, err := opts.Ctl.Switchover(ctx, addrs, opts.AdminToken, 10*time.Second)
			return err
		})
		if err != nil {
			return rep, fmt.Errorf("switchover trial %d: %w", i+1, err)
		}
		// The switchover's pause is the longest silence of the chat while
		// the switchover ran: the call first finds the primary, and
		// messages sent meanwhile are still delivered by the old primary,
		// so the first delivery after the call began says little.
		gap := res.pause
		rep.Switchover = append(rep.Switchover, gap)
		fmt.Fprintf(progress, "switchover: pause %v\n", gap.Round(time.Microsecond))
	}
	return rep, nil
}

// waitPair waits until one core is primary and another is a caught-up backup.
func waitPair(ctx context.Context, opts Options, within time.Duration) error {
	deadline := time.Now().Add(within)
	addrs := make([]string, 0, len(opts.Cores))
	for _, a := range opts.Cores {
		addrs = append(addrs, a)
	}
	for {
		sts := opts.Ctl.Status(ctx, addrs, time.Second)
		var primaries, backups int
		var lag uint64
		for _, s := range sts {
			switch s.Status.GetRole() {
			case "primary":
				primaries++
				lag += s.Status.GetReplicationLag()
				if s.Status.GetBackup() == "" {
					lag++ // no backup connected yet
				}
			case "backup":
				backups++
			}
		}
		if primaries == 1 && backups >= 1 && lag == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pair not whole within %v (%d primaries, %d backups, lag %d)", within, primaries, backups, lag)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// OpenSessions opens opts.Sessions live sessions through cl, on
// opts.SetupConcurrency goroutines: each a customer's StartSession, an
// agent's Join and one message from the customer. The sessions stay open
// (nobody leaves). progress gets a line per 1000 sessions and one at the end.
func OpenSessions(ctx context.Context, cl chatpb.ChatClient, opts Options, progress io.Writer) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	if progress == nil {
		progress = io.Discard
	}
	conc := opts.SetupConcurrency
	if conc == 0 {
		conc = 32
	}
	start := time.Now()
	var made atomic.Int64
	err := workers.Range(ctx, conc, 0, opts.Sessions, nil, func(ctx context.Context, i int) error {
		js, err := cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "bench", Nickname: fmt.Sprintf("customer-%d", i), Subject: "live"})
		if err != nil {
			return fmt.Errorf("start live session %d: %w", i, err)
		}
		if _, err := cl.Join(ctx, &chatpb.JoinRequest{SessionId: js.GetAuth().GetSessionId(), Nickname: "agent",
			Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: opts.ServiceToken}); err != nil {
			return fmt.Errorf("join live session %d: %w", i, err)
		}
		id := fmt.Sprintf("live-%d", i)
		if _, err := cl.Send(ctx, &chatpb.SendRequest{Auth: js.GetAuth(), Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
			Text: "hello", ClientMessageId: id}); err != nil {
			return fmt.Errorf("send in live session %d: %w", i, err)
		}
		if n := made.Add(1); n%1000 == 0 {
			fmt.Fprintf(progress, "  %d/%d sessions\n", n, opts.Sessions)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "%d live sessions ready in %v (kept open through every trial)\n", opts.Sessions, time.Since(start).Round(time.Millisecond))
	return nil
}

// primaryLive returns the primary's count of live sessions.
func primaryLive(ctx context.Context, opts Options) (uint64, error) {
	if err := waitPair(ctx, opts, opts.Settle); err != nil {
		return 0, fmt.Errorf("after the trials: %w", err)
	}
	_, st, err := primary(ctx, opts)
	return st.GetLiveSessions(), err
}

func primaryName(ctx context.Context, opts Options) (string, error) {
	name, _, err := primary(ctx, opts)
	return name, err
}

// primary returns the name and status of the core that says it is primary.
func primary(ctx context.Context, opts Options) (string, *chatpb.StatusResponse, error) {
	for name, addr := range opts.Cores {
		sts := opts.Ctl.Status(ctx, []string{addr}, time.Second)
		if st := sts[0].Status; st.GetRole() == "primary" {
			return name, st, nil
		}
	}
	return "", nil, clusterctl.ErrNoPrimary
}

// trial runs one conversation across fault and measures the gap.
// trialResult is what one trial measured. gap is from the last send
// acknowledged before the fault to the first delivery of a message sent
// after it began (the kill -9 gap). pause is the longest interval between
// two deliveries of the customer's messages, from the last one before the
// fault to the first delivery of a message sent after the fault returned
// (longestPause). ackGap is the send side of gap: from the same last
// acknowledgement to the first acknowledgement of a message sent after the
// fault began.
type trialResult struct {
	gap, pause, ackGap time.Duration
}

// await waits up to 30s for every channel of chs to close. It returns the
// customer's send error if one comes first, and an error saying late
// otherwise.
func await(sendErr <-chan error, late string, chs ...chan struct{}) error {
	limit := time.NewTimer(30 * time.Second)
	defer limit.Stop()
	for _, ch := range chs {
		select {
		case <-ch:
		case err := <-sendErr:
			return err
		case <-limit.C:
			return errors.New(late)
		}
	}
	return nil
}

// longestPause returns the longest interval between consecutive times of
// start followed by ts (start zero: ts alone); 0 for fewer than two.
func longestPause(start time.Time, ts []time.Time) time.Duration {
	var longest time.Duration
	prev := start
	for _, t := range ts {
		if !prev.IsZero() && t.Sub(prev) > longest {
			longest = t.Sub(prev)
		}
		prev = t
	}
	return longest
}

func trial(ctx context.Context, cl chatpb.ChatClient, opts Options, fault func(context.Context) error) (trialResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	js, err := cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "bench", Nickname: "customer", Subject: "failover"})
	if err != nil {
		return trialResult{}, fmt.Errorf("start session: %w", err)
	}
	ja, err := cl.Join(ctx, &chatpb.JoinRequest{SessionId: js.GetAuth().GetSessionId(), Nickname: "agent",
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: opts.ServiceToken})
	if err != nil {
		return trialResult{}, fmt.Errorf("join: %w", err)
	}
	st, err := cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: ja.GetAuth(), FromIndex: 1})
	if err != nil {
		return trialResult{}, fmt.Errorf("subscribe: %w", err)
	}

	var (
		mu         sync.Mutex
		faultAt    time.Time
		lastAck    time.Time // last ack received before the fault
		firstAck   time.Time // first ack of a message sent after the fault
		gotAck     = make(chan struct{})
		firstNew   time.Time // first delivery of a message sent after the fault
		sentAfter  = map[string]bool{}
		gotNew     = make(chan struct{})
		lastBefore time.Time   // last delivery of a message before the fault
		during     []time.Time // deliveries of messages from the fault to doneNew
		doneAt     time.Time   // when the fault returned
		doneNew    time.Time   // first delivery of a message sent after doneAt
		sentDone   = map[string]bool{}
		gotDone    = make(chan struct{})
		warmed     = make(chan struct{}) // closed at the first ack and delivery before the fault
	)
	// warm closes warmed once a message was both acknowledged and delivered
	// before the fault: a fault before that has no gap to measure from.
	// Call with mu held.
	warm := func() {
		if !lastAck.IsZero() && !lastBefore.IsZero() {
			select {
			case <-warmed:
			default:
				close(warmed)
			}
		}
	}
	go func() {
		for {
			ev, err := st.Recv()
			if err != nil {
				return
			}
			now := time.Now()
			id := ev.GetClientMessageId()
			mu.Lock()
			switch {
			case id == "":
			case faultAt.IsZero():
				lastBefore = now
				warm()
			case doneNew.IsZero():
				during = append(during, now)
			}
			if !faultAt.IsZero() && firstNew.IsZero() && sentAfter[id] {
				firstNew = now
				close(gotNew)
			}
			if !doneAt.IsZero() && doneNew.IsZero() && sentDone[id] {
				doneNew = now
				close(gotDone)
			}
			mu.Unlock()
		}
	}()

	sendErr := make(chan error, 1)
	go func() {
		for n := 0; ctx.Err() == nil; n++ {
			id := fmt.Sprintf("m%d", n)
			mu.Lock()
			if !faultAt.IsZero() {
				sentAfter[id] = true
			}
			if !doneAt.IsZero() {
				sentDone[id] = true
			}
			mu.Unlock()
			_, err := cl.Send(ctx, &chatpb.SendRequest{Auth: js.GetAuth(), Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
				Text: id, ClientMessageId: id})
			if err != nil {
				if ctx.Err() == nil {
					sendErr <- fmt.Errorf("send %s: %w", id, err)
				}
				return
			}
			now := time.Now()
			mu.Lock()
			if faultAt.IsZero() {
				lastAck = now
				warm()
			} else if firstAck.IsZero() && sentAfter[id] {
				firstAck = now
				close(gotAck)
			}
			mu.Unlock()
			time.Sleep(opts.Interval) // pacing of the customer, not a wait for a condition
		}
	}()

	// Let the conversation run before the fault: 200ms, and at least one
	// message acknowledged and delivered (a loaded machine may take longer).
	warmup := time.NewTimer(200 * time.Millisecond)
	defer warmup.Stop()
	select {
	case <-warmup.C:
	case err := <-sendErr:
		return trialResult{}, err
	}
	if err := await(sendErr, "no message acknowledged and delivered within 30s before the fault", warmed); err != nil {
		return trialResult{}, err
	}
	mu.Lock()
	faultAt = time.Now()
	mu.Unlock()
	if err := fault(ctx); err != nil {
		return trialResult{}, fmt.Errorf("fault: %w", err)
	}
	mu.Lock()
	doneAt = time.Now()
	mu.Unlock()
	// The delivery of a message may come before its ack: wait for both, so
	// that the send side of the gap is measured in every trial.
	if err := await(sendErr, "no message sent after the fault delivered and acknowledged within 30s", gotNew, gotDone, gotAck); err != nil {
		return trialResult{}, err
	}
	cancel()
	_, _ = cl.Leave(context.WithoutCancel(ctx), &chatpb.LeaveRequest{Auth: ja.GetAuth(), EndSession: true})
	mu.Lock()
	defer mu.Unlock()
	return trialResult{gap: firstNew.Sub(lastAck), pause: longestPause(lastBefore, during), ackGap: firstAck.Sub(lastAck)}, nil
}
