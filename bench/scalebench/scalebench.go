package scalebench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Options shape a run of the whole model.
type Options struct {
	Placement PlacementOptions
	Push      PushOptions
	Restore   RestoreOptions
	// SkipRestore leaves out the restore measurement (it starts real core
	// processes); RestoreRate then gives the rate to use, sessions/s.
	SkipRestore bool
	RestoreRate float64
}

// LossReport is what losing one pair costs.
type LossReport struct {
	// Sessions is the lost pair's live sessions: the busiest pair's at
	// the end of the churn (the worst pair to lose); Mean a typical one's.
	Sessions uint64  `json:"sessions"`
	Mean     float64 `json:"mean_sessions"`
	// Rate is the restore rate used, sessions/s, and RateSource where it
	// came from.
	Rate       float64 `json:"restore_rate_per_second"`
	RateSource string  `json:"restore_rate_source"`
	// OnePair is the time for one pair to restore Sessions at Rate; Spread
	// the time when every surviving pair restores its share at once (each
	// pair on its own cores).
	OnePair time.Duration `json:"one_pair_ns"`
	Spread  time.Duration `json:"spread_ns"`
}

// lossOf computes the cost of losing the busiest pair of b among pairs
// pairs at rate sessions/s.
func lossOf(b Balance, pairs int, rate float64, source string) LossReport {
	l := LossReport{Sessions: b.Max, Mean: b.Mean, Rate: rate, RateSource: source}
	if rate <= 0 {
		return l
	}
	l.OnePair = time.Duration(float64(b.Max) / rate * float64(time.Second))
	if pairs > 1 {
		l.Spread = l.OnePair / time.Duration(pairs-1)
	}
	return l
}

// Report is the model's figures.
type Report struct {
	Placement PlacementReport `json:"placement"`
	Restore   *RestoreReport  `json:"restore,omitempty"`
	Loss      LossReport      `json:"loss"`
	Snapshot  SnapshotReport  `json:"snapshot"`
	Push      PushReport      `json:"push"`
	// Load is the machine's load average (1, 5, 15 min) when the run
	// ended: the measurements share the machine with it.
	Load    string        `json:"load"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Run runs every part of the model in turn: placement, snapshot size,
// push, then the restore measurement and the cost of a lost pair.
func Run(ctx context.Context, o Options, progress io.Writer) (Report, error) {
	if progress == nil {
		progress = io.Discard
	}
	start := time.Now()
	var rep Report
	var err error
	fmt.Fprintln(progress, "scale: placement model")
	if rep.Placement, err = RunPlacement(ctx, o.Placement, progress); err != nil {
		return rep, fmt.Errorf("placement: %w", err)
	}
	pairs := rep.Placement.Pairs
	live := uint64(rep.Placement.AfterChurn.Mean + 0.5)
	if rep.Snapshot, err = MeasureSnapshot(pairs, live); err != nil {
		return rep, fmt.Errorf("snapshot: %w", err)
	}
	o.Push.Pairs = pairs
	fmt.Fprintln(progress, "scale: push to the sidecars")
	if rep.Push, err = RunPush(ctx, o.Push, progress); err != nil {
		return rep, fmt.Errorf("push: %w", err)
	}
	rate, source := o.RestoreRate, "given (--restore-rate)"
	if !o.SkipRestore {
		fmt.Fprintln(progress, "scale: restore rate of a real promotion")
		r, err := RunRestore(ctx, o.Restore, progress)
		if err != nil {
			return rep, fmt.Errorf("restore: %w", err)
		}
		rep.Restore = &r
		rate = r.PerSecond()
		source = fmt.Sprintf("measured: a backup process promoted by kill -9 of its primary restored %d sessions from its %s in %v",
			r.Sessions, r.Source, r.Took.Round(time.Millisecond))
	}
	rep.Loss = lossOf(rep.Placement.AfterChurn, pairs, rate, source)
	rep.Load = loadAverage()
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// WriteText writes the report for a reader.
func (r Report) WriteText(w io.Writer) {
	p := r.Placement
	fmt.Fprintf(w, "placement (xds.BuildPairs weights, re-polled every %d arrivals, weighted random pick):\n", p.PerPoll)
	fmt.Fprintf(w, "  %d pairs, %d arrivals, %d ends, %d polls, capacity %d/pair, %d rejected\n",
		p.Pairs, p.Arrivals, p.Ends, p.Polls, p.Capacity, p.Rejected)
	fmt.Fprintf(w, "  after the ramp:  live %d, mean %.0f, min %d, max %d, max/mean %.3f\n",
		p.AfterRamp.Live, p.AfterRamp.Mean, p.AfterRamp.Min, p.AfterRamp.Max, p.AfterRamp.MaxOverMean)
	fmt.Fprintf(w, "  after the churn: live %d, mean %.0f, min %d, max %d, max/mean %.3f (worst during churn %.3f)\n",
		p.AfterChurn.Live, p.AfterChurn.Mean, p.AfterChurn.Min, p.AfterChurn.Max, p.AfterChurn.MaxOverMean, p.WorstChurn)
	fmt.Fprintf(w, "  one BuildPairs of %d pairs: mean %v, max %v\n", p.Pairs, p.BuildMean.Round(time.Microsecond), p.BuildMax.Round(time.Microsecond))
	if rr := r.Restore; rr != nil {
		fmt.Fprintf(w, "restore (kill -9 of a real primary, its backup promoted): %d sessions from %s in %v = %.0f sessions/s; kill to restored %v\n",
			rr.Sessions, rr.Source, rr.Took.Round(time.Millisecond), rr.PerSecond(), rr.FromKill.Round(time.Millisecond))
	}
	l := r.Loss
	fmt.Fprintf(w, "losing one pair: %d sessions to restore (the busiest pair; mean %.0f) at %.0f sessions/s:\n", l.Sessions, l.Mean, l.Rate)
	fmt.Fprintf(w, "  one pair restores them all: %v; the %d other pairs share them: %v\n", l.OnePair.Round(time.Millisecond), max(p.Pairs-1, 0), l.Spread.Round(time.Millisecond))
	fmt.Fprintf(w, "  rate: %s\n", l.RateSource)
	s := r.Snapshot
	var parts []string
	for _, t := range s.Types {
		parts = append(parts, fmt.Sprintf("%s %d = %d B", t.Type, t.Resources, t.Bytes))
	}
	fmt.Fprintf(w, "snapshot of %d pairs (every resource marshalled): %d B (%s); Envoy flavour %d B\n", s.Pairs, s.Bytes, strings.Join(parts, ", "), s.EnvoyBytes)
	u := r.Push
	where, heap := "in this process", "both ends in this process"
	if u.SidecarProcess {
		where, heap = "in a process of their own", "the control plane's"
	}
	fmt.Fprintf(w, "push (xds.Server; %d ADS streams %s, each on its own loopback gRPC connection, subscribing as the sidecar):\n", u.Sidecars, where)
	for _, ph := range u.Phases {
		cpu := fmt.Sprintf("CPU %v (both ends)", ph.CPU.Round(time.Millisecond))
		if u.SidecarProcess {
			cpu = fmt.Sprintf("CPU %v control plane, %v sidecars", ph.CPU.Round(time.Millisecond), ph.SidecarCPU.Round(time.Millisecond))
		}
		fmt.Fprintf(w, "  %s: last ACK %v, median %v, %d B in %d responses per sidecar, %s\n", ph.Name,
			ph.LastACK.Round(time.Millisecond), ph.P50ACK.Round(time.Millisecond), ph.BytesPerSidecar, ph.Responses, cpu)
	}
	fmt.Fprintf(w, "  Go heap in use: %.1f MiB before, %.1f MiB with %d streams (%s: %.1f KiB per stream), %d goroutines\n",
		float64(u.HeapBefore)/(1<<20), float64(u.HeapConnected)/(1<<20), u.Sidecars, heap, u.HeapPerSidecar()/1024, u.Goroutines)
	fmt.Fprintf(w, "load average at the end: %s; took %v\n", r.Load, r.Elapsed.Round(time.Second))
}

// loadAverage reads /proc/loadavg's three load averages ("" elsewhere).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
