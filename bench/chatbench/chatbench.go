// Package chatbench measures a chat core (or a primary/backup pair) the way
// a contact centre loads it: many live sessions, each with a customer and an
// agent, customers sending messages that the agent's subscription receives.
// It reports throughput, send-to-deliver latency and memory per session.
package chatbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/bench/workers"
	"github.com/hachat/hachat/chatcore/chatpb"
)

// Options shape one run.
type Options struct {
	// Sessions is the number of live sessions (default 1000).
	Sessions int
	// Messages is the number of customer messages sent in all (default 20000).
	Messages int
	// Concurrency is the number of concurrent senders (default 64).
	Concurrency int
	// Service is the chat service name (default "bench").
	Service string
	// ServiceToken lets the bench join agents.
	ServiceToken string
	// MessageSize is the message text length in bytes (default 64).
	MessageSize int
	// CPU, when set, is read at the start and the end of the message phase:
	// the measured processes' CPU time per message (Report.CPUPerMessage).
	// ClientCPU likewise for the load generator (Report.ClientCPUPerMessage).
	// StoreCPU likewise for the transcript store (Report.StoreCPUPerMessage).
	CPU       CPUProbe
	ClientCPU CPUProbe
	StoreCPU  CPUProbe
}

func (o *Options) defaults() {
	if o.Sessions <= 0 {
		o.Sessions = 1000
	}
	if o.Messages <= 0 {
		o.Messages = 20000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Service == "" {
		o.Service = "bench"
	}
	if o.MessageSize <= 0 {
		o.MessageSize = 64
	}
}

// Report is what a run measured. In JSON, durations are nanoseconds.
type Report struct {
	Sessions    int           `json:"sessions"`
	Messages    int           `json:"messages"`
	Errors      int           `json:"errors"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	PerSecond   float64       `json:"messages_per_second"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	Max         time.Duration `json:"max_ns"`
	SetupTime   time.Duration `json:"setup_ns"`
	MemPerIdle  float64       `json:"bytes_per_idle_session"` // RSS growth / sessions, 0 if unknown
	RSSBefore   uint64        `json:"rss_before_bytes"`
	RSSSessions uint64        `json:"rss_sessions_bytes"`
	// CPUPerMessage is the measured processes' CPU time (user + system)
	// over the message phase per message sent (0 without Options.CPU);
	// ClientCPUPerMessage the load generator's.
	CPUPerMessage       time.Duration `json:"cpu_per_message_ns,omitempty"`
	ClientCPUPerMessage time.Duration `json:"client_cpu_per_message_ns,omitempty"`
	// StoreCPUPerMessage is the transcript store's (UCS's) CPU time over
	// the message phase per message sent (0 without Options.StoreCPU):
	// the asynchronous saves, which share the machine with the cores.
	StoreCPUPerMessage time.Duration `json:"ucs_cpu_per_message_ns,omitempty"`
}

// String renders the report for a terminal.
func (r Report) String() string {
	mem := "n/a"
	if r.MemPerIdle > 0 {
		mem = fmt.Sprintf("%.0f B (%.2f KiB)", r.MemPerIdle, r.MemPerIdle/1024)
	}
	cpu := ""
	if r.CPUPerMessage > 0 || r.ClientCPUPerMessage > 0 {
		cpu = fmt.Sprintf("\ncpu per message     %v in the cores (and control planes), %v in the load generator",
			r.CPUPerMessage.Round(100*time.Nanosecond), r.ClientCPUPerMessage.Round(100*time.Nanosecond))
	}
	if r.StoreCPUPerMessage > 0 {
		cpu += fmt.Sprintf("\ncpu per message     %v in UCS (transcript saves)", r.StoreCPUPerMessage.Round(100*time.Nanosecond))
	}
	return fmt.Sprintf(`sessions            %d (set up in %v)
messages            %d sent, %d errors, in %v
throughput          %.0f messages/s
send-to-deliver     p50 %v   p99 %v   max %v
memory per session  %s (core RSS %d -> %d bytes)%s`,
		r.Sessions, r.SetupTime.Round(time.Millisecond), r.Messages, r.Errors, r.Elapsed.Round(time.Millisecond),
		r.PerSecond, r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond),
		mem, r.RSSBefore, r.RSSSessions, cpu)
}

// MemoryProbe reads the memory the measured core uses now (e.g. its RSS).
type MemoryProbe func(ctx context.Context) (uint64, error)

type session struct {
	customer *chatpb.Auth
	agent    *chatpb.Auth
}

// Run sets up the sessions, sends the messages and measures. progress
// receives a line per phase; mem may be nil.
func Run(ctx context.Context, cl chatpb.ChatClient, opts Options, mem MemoryProbe, progress io.Writer) (Report, error) {
	opts.defaults()
	if progress == nil {
		progress = io.Discard
	}
	rep := Report{Sessions: opts.Sessions}
	if mem != nil {
		v, err := mem(ctx)
		if err != nil {
			return rep, fmt.Errorf("read memory: %w", err)
		}
		rep.RSSBefore = v
	}

	start := time.Now()
	sessions := make([]session, opts.Sessions)
	var made atomic.Int64
	err := workers.Range(ctx, opts.Concurrency, 0, opts.Sessions, nil, func(ctx context.Context, i int) error {
		js, err := cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: opts.Service, Nickname: fmt.Sprintf("customer-%d", i), Subject: "bench"})
		if err != nil {
			return fmt.Errorf("start session %d: %w", i, err)
		}
		ja, err := cl.Join(ctx, &chatpb.JoinRequest{SessionId: js.GetAuth().GetSessionId(), Nickname: "agent",
			Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: opts.ServiceToken})
		if err != nil {
			return fmt.Errorf("join session %d: %w", i, err)
		}
		sessions[i] = session{customer: js.GetAuth(), agent: ja.GetAuth()}
		if n := made.Add(1); n%1000 == 0 {
			fmt.Fprintf(progress, "  %d/%d sessions\n", n, opts.Sessions)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.SetupTime = time.Since(start)
	fmt.Fprintf(progress, "%d sessions ready in %v\n", opts.Sessions, rep.SetupTime.Round(time.Millisecond))
	if mem != nil {
		v, err := mem(ctx)
		if err != nil {
			return rep, fmt.Errorf("read memory: %w", err)
		}
		rep.RSSSessions = v
		if v > rep.RSSBefore {
			rep.MemPerIdle = float64(v-rep.RSSBefore) / float64(opts.Sessions)
		}
	}

	// The agents' subscriptions measure delivery. Message i goes with the
	// client message id "b<i>" and its send time in sentAt[i] (Unix
	// nanoseconds); the subscriber that sees it takes the time (once: the
	// swap leaves 0) and writes the latency to its own slot of lat. No
	// lock and no map on the message path: the load generator shares the
	// cluster's cores, as the anchor's, which carries the send time in the
	// message itself.
	var (
		sentAt = make([]atomic.Int64, opts.Messages)
		lat    = make([]time.Duration, opts.Messages)
		done   = make(chan struct{})
		got    atomic.Int64
	)
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	var subs sync.WaitGroup
	ready := make(chan error, len(sessions))
	for _, s := range sessions {
		subs.Add(1)
		go func() {
			defer subs.Done()
			st, err := cl.Subscribe(subCtx, &chatpb.SubscribeRequest{Auth: s.agent, FromIndex: 1})
			if err != nil {
				ready <- err
				return
			}
			// A subscription is ready once it has caught up to the agent's
			// own join: the message phase does not start while the core
			// is still opening the subscriptions and replaying their first
			// events (that cost and delay landed on the first messages).
			caughtUp := false
			recvLoop(st, func(ev *chatpb.Event) {
				if !caughtUp && ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED && ev.GetFrom().GetId() == s.agent.GetParticipantId() {
					caughtUp = true
					ready <- nil
				}
				if ev.GetKind() != chatpb.EventKind_EVENT_KIND_MESSAGE || ev.GetClientMessageId() == "" {
					return
				}
				now := time.Now().UnixNano()
				i, ok := messageNumber(ev.GetClientMessageId(), len(sentAt))
				if !ok {
					return
				}
				t0 := sentAt[i].Swap(0)
				if t0 == 0 {
					return // not sent by this run, or already counted
				}
				k := got.Add(1)
				lat[k-1] = time.Duration(now - t0)
				if k == int64(opts.Messages) {
					close(done)
				}
			})
			if !caughtUp {
				ready <- fmt.Errorf("subscription of session %s ended before its agent's join arrived", s.agent.GetSessionId())
			}
		}()
	}
	for range sessions {
		if err := <-ready; err != nil {
			return rep, fmt.Errorf("subscribe: %w", err)
		}
	}
	fmt.Fprintf(progress, "%d agent subscriptions open and caught up; sending %d messages with %d senders\n", len(sessions), opts.Messages, opts.Concurrency)

	text := make([]byte, opts.MessageSize)
	for i := range text {
		text[i] = 'a' + byte(i%26)
	}
	var errs atomic.Int64
	cpu0, err := readCPU(opts.CPU)
	if err != nil {
		return rep, err
	}
	ccpu0, err := readCPU(opts.ClientCPU)
	if err != nil {
		return rep, err
	}
	scpu0, err := readCPU(opts.StoreCPU)
	if err != nil {
		return rep, err
	}
	start = time.Now()
	_ = workers.Range(ctx, opts.Concurrency, 0, opts.Messages, nil, func(ctx context.Context, i int) error {
		s := sessions[i%len(sessions)]
		sentAt[i].Store(time.Now().UnixNano())
		if _, err := cl.Send(ctx, &chatpb.SendRequest{Auth: s.customer, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
			Text: string(text), ClientMessageId: messageID(i)}); err != nil {
			errs.Add(1)
			sentAt[i].Store(0)
		}
		if i > 0 && i%5000 == 0 {
			fmt.Fprintf(progress, "  %d/%d messages sent\n", i, opts.Messages)
		}
		return nil
	})
	want := int64(opts.Messages) - errs.Load()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	if want < int64(opts.Messages) {
		// Some sends failed: wait until what was sent has arrived.
		for got.Load() < want {
			select {
			case <-deadline.C:
				return rep, fmt.Errorf("only %d of %d messages delivered", got.Load(), want)
			case <-time.After(10 * time.Millisecond):
			}
		}
	} else {
		select {
		case <-done:
		case <-deadline.C:
			return rep, fmt.Errorf("only %d of %d messages delivered within 30s", got.Load(), want)
		case <-ctx.Done():
			return rep, ctx.Err()
		}
	}
	rep.Elapsed = time.Since(start)
	cpu1, err := readCPU(opts.CPU)
	if err != nil {
		return rep, err
	}
	ccpu1, err := readCPU(opts.ClientCPU)
	if err != nil {
		return rep, err
	}
	rep.CPUPerMessage = (cpu1 - cpu0) / time.Duration(opts.Messages)
	scpu1, err := readCPU(opts.StoreCPU)
	if err != nil {
		return rep, err
	}
	rep.ClientCPUPerMessage = (ccpu1 - ccpu0) / time.Duration(opts.Messages)
	rep.StoreCPUPerMessage = (scpu1 - scpu0) / time.Duration(opts.Messages)
	stopSubs()
	subs.Wait()
	lat = lat[:got.Load()]

	rep.Messages = opts.Messages
	rep.Errors = int(errs.Load())
	rep.PerSecond = float64(len(lat)) / rep.Elapsed.Seconds()
	slices.Sort(lat)
	if len(lat) > 0 {
		rep.P50 = lat[len(lat)/2]
		rep.P99 = lat[len(lat)*99/100]
		rep.Max = lat[len(lat)-1]
	}
	return rep, nil
}

// readCPU reads probe; 0 without one.
func readCPU(probe CPUProbe) (time.Duration, error) {
	if probe == nil {
		return 0, nil
	}
	d, err := probe()
	if err != nil {
		return 0, fmt.Errorf("read cpu: %w", err)
	}
	return d, nil
}

// messageID is the client message id of the load's message i.
func messageID(i int) string { return "b" + strconv.Itoa(i) }

// messageNumber returns i for the client message id messageID(i), when
// 0 <= i < n.
func messageNumber(id string, n int) (int, bool) {
	digits, ok := strings.CutPrefix(id, "b")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(digits)
	if err != nil || i < 0 || i >= n {
		return 0, false
	}
	return i, true
}

func recvLoop(st grpc.ServerStreamingClient[chatpb.Event], fn func(*chatpb.Event)) {
	for {
		ev, err := st.Recv()
		if err != nil {
			return
		}
		fn(ev)
	}
}

// ProcessRSS is a MemoryProbe that reads the resident set size of process
// pid from /proc.
func ProcessRSS(pid int) MemoryProbe {
	return func(context.Context) (uint64, error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("read rss: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("parse rss %q: %w", v, err)
				}
				return kb * 1024, nil
			}
		}
		return 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
}
