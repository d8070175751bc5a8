// Package soakbench runs a soak: a steady chat workload against a whole
// cluster of real processes for a while, then a drain, sampling every part's
// memory (RSS and Go heap), goroutines and open file descriptors throughout.
// It tells whether each part gives back after the load what the load took:
// a part whose heap stays above its starting heap keeps something per chat
// or per agent.
//
// The workload is what a contact centre does: customers start chats on the
// customer API (webapi), follow their push channel and send messages; agents
// log in on the agent API (interaction), follow theirs, accept offers, answer,
// close the chat once the customer has left, and log out and in again every
// few chats.
//
// Phases: a short warm-up load (so that what a part allocates once for good,
// connections, pools, caches, is in the baseline), an idle phase (the
// baseline), the load, and the drain.
//
// No part exposes a way to force a garbage collection. Two figures stand in
// for the live heap, each taken over a part's samples of the idle phase
// (start) and of the last EndWindow of the drain (end): the minimum of the
// heap in use (heap_alloc), a sample taken soon after a collection (the Go
// runtime collects at least every two minutes, so a window of more than two
// minutes holds one), and the median of the live heap estimate of
// Sample.Live (half the runtime's heap goal); the median, because the first
// samples of a window still carry the goal of a collection made before it.
// Each overstates the live heap in its own way, and never understates it:
// heap_alloc by the garbage allocated since the last collection (a part that
// collects every few seconds shows minima a megabyte apart from the sampling
// phase alone), the goal by goroutine stacks and by when the collection ran
// (a chat core's flips between two levels). A part that keeps memory raises
// both, so a part has returned when either end figure is within Tolerance
// of its start.
package soakbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hachat/hachat/pause"
)

// Options shape a soak.
type Options struct {
	// Duration is the load phase (default 2m).
	Duration time.Duration
	// Warmup is the short load before the baseline (default 30s; a
	// negative value skips it).
	Warmup time.Duration
	// Idle is the baseline phase before the load (default EndWindow, so that
	// it holds a collection too).
	Idle time.Duration
	// Drain is the phase after the load: the last chats end, agents log
	// out, the cluster idles (default 2m30s; at least EndWindow + 10s).
	Drain time.Duration
	// EndWindow is the end of the drain over which the end heap is the
	// minimum sample (default 2m10s: it holds one of the runtime's forced
	// collections, which come at least every 2 minutes).
	EndWindow time.Duration
	// Every is the sampling period (default 2s).
	Every time.Duration
	// ProgressEvery is the period of progress lines (default 10s).
	ProgressEvery time.Duration
	// Chats is the number of chats live at once during the load (default 12).
	Chats int
	// Agents is the number of agents (default 4).
	Agents int
	// Messages each side sends per chat (default 10).
	Messages int
	// MessageInterval is the pause between one side's messages (default 300ms).
	MessageInterval time.Duration
	// ChatsPerShift is how many chats an agent takes before it logs out and
	// in again (default 5).
	ChatsPerShift int
	// Service is the chat service customers start chats on.
	Service string
	// Tolerance is how far above its start heap a part's end heap may be
	// and still count as returned (default 0.10).
	Tolerance float64
}

func (o *Options) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Duration, 2*time.Minute)
	def(&o.EndWindow, 130*time.Second)
	def(&o.Idle, o.EndWindow)
	if o.Warmup == 0 {
		o.Warmup = 30 * time.Second
	}
	def(&o.Drain, 150*time.Second)
	o.Drain = max(o.Drain, o.EndWindow+10*time.Second)
	def(&o.Every, 2*time.Second)
	def(&o.ProgressEvery, 10*time.Second)
	def(&o.MessageInterval, 300*time.Millisecond)
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	defInt(&o.Chats, 12)
	defInt(&o.Agents, 4)
	defInt(&o.Messages, 10)
	defInt(&o.ChatsPerShift, 5)
	if o.Service == "" {
		o.Service = "customer-support"
	}
	if o.Tolerance <= 0 {
		o.Tolerance = 0.10
	}
}

// Cluster is where the soak runs: the base URLs of the customer API
// (webapi) and the agent API (interaction), and the processes to sample.
type Cluster struct {
	// WebAPI is the customer API's base URL (http://host:port).
	WebAPI string
	// Interaction is the agent API's base URL.
	Interaction string
	// Parts are the processes sampled, in the order they are reported.
	Parts []Target
	// Passwords are the agents' passwords by id (AgentID(i) for agent i).
	Passwords map[string]string
}

// AgentID is the account id of the soak's agent i.
func AgentID(i int) string { return fmt.Sprintf("soak-agent-%d", i) }

// PartSummary is what one part did over the run. Start figures are taken
// over the idle phase, end figures over the last EndWindow of the drain; -1
// is unknown. Bytes throughout.
type PartSummary struct {
	// Part names the part.
	Part string
	// StartHeap and EndHeap are the minimum heap_alloc samples; PeakHeap the
	// maximum of the run.
	StartHeap, PeakHeap, EndHeap int64
	// StartLive and EndLive are the medians of the live heap estimate
	// (Sample.Live).
	StartLive, EndLive int64
	// StartRSS and EndRSS are minima, PeakRSS the maximum.
	StartRSS, PeakRSS, EndRSS int64
	// StartGoroutines, EndGoroutines, StartFDs and EndFDs are minima.
	StartGoroutines, EndGoroutines int64
	StartFDs, EndFDs               int64
	// Returned reports EndHeap within Options.Tolerance of StartHeap, or
	// EndLive of StartLive.
	Returned bool
	// HeapSamples counts samples with a heap figure, MissingHeap those
	// without (the part's /metrics did not answer).
	HeapSamples, MissingHeap int
}

// Report is the outcome of a soak. Times are since the first sample (the
// warm-up starts at 0).
type Report struct {
	// Options are the options the soak ran with (defaults filled in).
	Options Options
	// Samples holds every sample, in time order.
	Samples []Sample
	// Parts summarizes each part.
	Parts []PartSummary
	// IdleStart, LoadStart, DrainStart and End bound the phases.
	IdleStart, LoadStart, DrainStart, End time.Duration
	// WarmupChats and WarmupMessages are the warm-up's share of the totals.
	WarmupChats, WarmupMessages int64
	// ChatsStarted, ChatsEnded and Messages (acknowledged, both sides) are
	// the workload's totals; Logins and Logouts count agent shifts.
	ChatsStarted, ChatsEnded, Messages int64
	Logins, Logouts                    int64
	// Errors counts failed workload calls; LastError is the last one.
	Errors    int64
	LastError string
	// SampleErrors counts samples with a figure missing; LastSampleErr is
	// the last reason.
	SampleErrors  int
	LastSampleErr string
}

// AllReturned reports whether every part's heap returned within tolerance.
func (r Report) AllReturned() bool {
	for _, p := range r.Parts {
		if !p.Returned {
			return false
		}
	}
	return len(r.Parts) > 0
}

// Run runs the soak against cl: Warmup, Idle, Duration of load, then Drain,
// sampling every part every Every and writing a progress line to progress
// every ProgressEvery. It returns the report even when ctx ends early.
func Run(ctx context.Context, cl Cluster, opts Options, progress io.Writer) (Report, error) {
	opts.fill()
	if len(cl.Parts) == 0 {
		return Report{}, errors.New("soak: no parts to sample")
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 4 * (opts.Chats + opts.Agents), IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	n := &counters{}
	w := &workload{opts: opts, webapi: cl.WebAPI, interaction: cl.Interaction, http: hc, n: n, passwords: cl.Passwords}
	smp := sampler{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, proc: "/proc"}

	t0 := time.Now()
	var mu sync.Mutex
	phase := PhaseWarmup
	rep := Report{Options: opts}
	setPhase := func(p Phase) {
		mu.Lock()
		defer mu.Unlock()
		phase = p
		switch p {
		case PhaseIdle:
			rep.IdleStart = time.Since(t0)
		case PhaseLoad:
			rep.LoadStart = time.Since(t0)
		case PhaseDrain:
			rep.DrainStart = time.Since(t0)
		}
	}

	// The sampler: every Every, every part; a progress line every ProgressEvery.
	sampCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Go(func() {
		tick := time.NewTicker(opts.Every)
		defer tick.Stop()
		lastProgress := time.Duration(-1)
		for {
			at := time.Since(t0)
			mu.Lock()
			ph := phase
			mu.Unlock()
			var round []Sample
			for _, p := range cl.Parts {
				s, err := smp.sample(sampCtx, p, at, ph)
				if err != nil && sampCtx.Err() == nil {
					mu.Lock()
					rep.SampleErrors++
					rep.LastSampleErr = err.Error()
					mu.Unlock()
				}
				round = append(round, s)
			}
			mu.Lock()
			rep.Samples = append(rep.Samples, round...)
			mu.Unlock()
			if lastProgress < 0 || at-lastProgress >= opts.ProgressEvery {
				lastProgress = at
				fmt.Fprintln(progress, progressLine(at, ph, n, round))
			}
			select {
			case <-sampCtx.Done():
				return
			case <-tick.C:
			}
		}
	})
	finish := func() (Report, error) {
		stopSampling()
		sampling.Wait()
		mu.Lock()
		defer mu.Unlock()
		rep.End = time.Since(t0)
		rep.ChatsStarted, rep.ChatsEnded, rep.Messages = n.chatsStarted.Load(), n.chatsEnded.Load(), n.messages.Load()
		rep.Logins, rep.Logouts, rep.Errors = n.logins.Load(), n.logouts.Load(), n.errors.Load()
		if e := n.lastErr.Load(); e != nil {
			rep.LastError = *e
		}
		rep.Parts = summarize(rep.Samples, rep.DrainStart, rep.End, opts)
		return rep, ctx.Err()
	}

	if opts.Warmup > 0 {
		w.load(ctx, opts.Warmup, func() {})
	}
	mu.Lock()
	rep.WarmupChats, rep.WarmupMessages = n.chatsStarted.Load(), n.messages.Load()
	mu.Unlock()
	setPhase(PhaseIdle)
	if !pause.For(ctx, opts.Idle) {
		return finish()
	}
	setPhase(PhaseLoad)
	// Drain: from the last chat started on; the chats in flight end, the
	// agents log out, the cluster idles.
	w.load(ctx, opts.Duration, func() { setPhase(PhaseDrain) })
	hc.CloseIdleConnections()
	pause.For(ctx, opts.Drain-(time.Since(t0)-rep.DrainStart))
	return finish()
}

// load runs the workload for d: agents work shifts, customers keep
// opts.Chats chats going. Then no chat starts (load calls stopped); load
// returns once the chats in flight have ended and the agents have logged out.
func (w *workload) load(ctx context.Context, d time.Duration, stopped func()) {
	loadCtx, endLoad := context.WithTimeout(ctx, d)
	defer endLoad()
	agentsCtx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	var agents, customers sync.WaitGroup
	for i := range w.opts.Agents {
		agents.Go(func() { w.agent(ctx, agentsCtx, AgentID(i)) })
	}
	slots := make(chan struct{}, w.opts.Chats)
launch:
	for {
		select {
		case <-loadCtx.Done():
			break launch
		case slots <- struct{}{}:
		}
		i := w.nextChat.Add(1)
		customers.Go(func() {
			defer func() { <-slots }()
			w.customer(ctx, i)
		})
		// Stagger the starts so that chats do not all end together.
		if !pause.For(loadCtx, w.opts.MessageInterval*time.Duration(w.opts.Messages)/time.Duration(w.opts.Chats)) {
			break launch
		}
	}
	stopped()
	customers.Wait()
	stopAgents()
	agents.Wait()
}

// Replay rebuilds the report of samples read back with ReadCSV (the phase
// bounds from the samples' phases, the summaries with opts): to redraw a
// soak or judge it again. The workload's totals are not in the samples.
func Replay(samples []Sample, opts Options) Report {
	opts.fill()
	rep := Report{Options: opts, Samples: samples}
	seen := map[Phase]bool{}
	for _, s := range samples {
		if !seen[s.Phase] {
			seen[s.Phase] = true
			switch s.Phase {
			case PhaseIdle:
				rep.IdleStart = s.At
			case PhaseLoad:
				rep.LoadStart = s.At
			case PhaseDrain:
				rep.DrainStart = s.At
			}
		}
		rep.End = max(rep.End, s.At)
	}
	rep.Parts = summarize(samples, rep.DrainStart, rep.End, opts)
	return rep
}

// progressLine renders one progress line: totals and each part's figures.
func progressLine(at time.Duration, ph Phase, n *counters, round []Sample) string {
	line := fmt.Sprintf("%6s %-5s chats %d started %d ended, %d messages, %d errors |",
		at.Truncate(time.Second), ph, n.chatsStarted.Load(), n.chatsEnded.Load(), n.messages.Load(), n.errors.Load())
	for _, s := range round {
		line += fmt.Sprintf(" %s heap %s live %s rss %s g %d fd %d;", s.Part, mb(s.Heap), mb(s.Live), mb(s.RSS), s.Goroutines, s.FDs)
	}
	return line
}

// mb renders bytes as MB with one decimal, "?" for unknown.
func mb(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1fM", float64(b)/1e6)
}

// num renders bytes as MB with one decimal, "?" for unknown.
func num(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f", float64(b)/1e6)
}

// ratio renders end/start, "?" when unknown.
func ratio(end, start int64) string {
	if start <= 0 || end < 0 {
		return "?"
	}
	return fmt.Sprintf("%.2f", float64(end)/float64(start))
}

// median returns the upper median of vs, -1 when there is none.
func median(vs []int64) int64 {
	if len(vs) == 0 {
		return -1
	}
	vs = slices.Clone(vs)
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// summarize computes each part's start, peak and end figures.
func summarize(samples []Sample, drainStart, end time.Duration, opts Options) []PartSummary {
	var order []string
	by := map[string][]Sample{}
	for _, s := range samples {
		if _, ok := by[s.Part]; !ok {
			order = append(order, s.Part)
		}
		by[s.Part] = append(by[s.Part], s)
	}
	windowStart := max(end-opts.EndWindow, drainStart)
	var out []PartSummary
	for _, part := range order {
		ss := by[part]
		ps := PartSummary{Part: part, StartHeap: -1, EndHeap: -1, StartLive: -1, EndLive: -1, StartRSS: -1, EndRSS: -1,
			StartGoroutines: -1, EndGoroutines: -1, StartFDs: -1, EndFDs: -1}
		minOf := func(cur *int64, v int64) {
			if v >= 0 && (*cur < 0 || v < *cur) {
				*cur = v
			}
		}
		var idleLive, endLive []int64
		for _, s := range ss {
			if s.Heap < 0 {
				ps.MissingHeap++
			} else {
				ps.HeapSamples++
			}
			ps.PeakHeap = max(ps.PeakHeap, s.Heap)
			ps.PeakRSS = max(ps.PeakRSS, s.RSS)
			switch {
			case s.Phase == PhaseIdle:
				minOf(&ps.StartHeap, s.Heap)
				if s.Live >= 0 {
					idleLive = append(idleLive, s.Live)
				}
				minOf(&ps.StartRSS, s.RSS)
				minOf(&ps.StartGoroutines, s.Goroutines)
				minOf(&ps.StartFDs, s.FDs)
			case s.Phase == PhaseDrain && s.At >= windowStart:
				minOf(&ps.EndHeap, s.Heap)
				if s.Live >= 0 {
					endLive = append(endLive, s.Live)
				}
				minOf(&ps.EndRSS, s.RSS)
				minOf(&ps.EndGoroutines, s.Goroutines)
				minOf(&ps.EndFDs, s.FDs)
			}
		}
		ps.StartLive, ps.EndLive = median(idleLive), median(endLive)
		within := func(start, end int64) bool {
			return start > 0 && end >= 0 && float64(end) <= float64(start)*(1+opts.Tolerance)
		}
		ps.Returned = within(ps.StartHeap, ps.EndHeap) || within(ps.StartLive, ps.EndLive)
		out = append(out, ps)
	}
	return out
}

// WriteSummary prints the per-part table and the verdict.
func (r Report) WriteSummary(w io.Writer) {
	phases := fmt.Sprintf("warm-up %v, idle %v, load %v, drain %v", r.IdleStart.Truncate(time.Second),
		(r.LoadStart - r.IdleStart).Truncate(time.Second), (r.DrainStart - r.LoadStart).Truncate(time.Second),
		(r.End - r.DrainStart).Truncate(time.Second))
	if r.ChatsStarted == 0 && r.Logins == 0 { // replayed from a CSV: no workload totals
		fmt.Fprintln(w, phases)
	} else {
		fmt.Fprintf(w, "%s; warm-up %d chats, %d messages; in all: chats %d started, %d ended; %d messages acknowledged; agent logins %d, logouts %d; workload errors %d\n",
			phases, r.WarmupChats, r.WarmupMessages, r.ChatsStarted, r.ChatsEnded, r.Messages, r.Logins, r.Logouts, r.Errors)
	}
	if r.LastError != "" {
		fmt.Fprintf(w, "last workload error: %s\n", r.LastError)
	}
	if r.SampleErrors > 0 {
		fmt.Fprintf(w, "sampling errors %d; last: %s\n", r.SampleErrors, r.LastSampleErr)
	}
	fmt.Fprintf(w, "start = over the idle phase after the warm-up, end = over the last %v of the drain (no GC can be forced):\n"+
		"heap_alloc minimum; live = median of heap goal / 2 (go_memstats_next_gc_bytes, GOGC=100); returned: either end within %.0f%% of its start\n",
		r.Options.EndWindow, r.Options.Tolerance*100)
	fmt.Fprintf(w, "%-20s %29s %22s %25s %11s %9s  %s\n", "", "heap_alloc MB", "live estimate MB", "RSS MB", "", "", "")
	fmt.Fprintf(w, "%-20s %7s %7s %7s %5s %7s %7s %6s %7s %7s %7s %11s %9s  %s\n",
		"part", "start", "peak", "end", "ratio", "start", "end", "ratio", "start", "peak", "end", "goroutines", "fds",
		fmt.Sprintf("returned within %.0f%%", r.Options.Tolerance*100))
	for _, p := range r.Parts {
		verdict := "yes"
		if !p.Returned {
			verdict = "NO"
		}
		fmt.Fprintf(w, "%-20s %7s %7s %7s %5s %7s %7s %6s %7s %7s %7s %5d→%-5d %4d→%-4d  %s\n", p.Part,
			num(p.StartHeap), num(p.PeakHeap), num(p.EndHeap), ratio(p.EndHeap, p.StartHeap),
			num(p.StartLive), num(p.EndLive), ratio(p.EndLive, p.StartLive),
			num(p.StartRSS), num(p.PeakRSS), num(p.EndRSS),
			p.StartGoroutines, p.EndGoroutines, p.StartFDs, p.EndFDs, verdict)
	}
}
