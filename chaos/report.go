package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hachat/hachat/workload"
)

// Point is one acknowledged (or given-up) send, for the plot.
type Point struct {
	// At is the send's start, from the run's start.
	At time.Duration `json:"at_ns"`
	// Latency is the time to the acknowledgement (or to giving up).
	Latency time.Duration `json:"latency_ns"`
	Side    string        `json:"side"`
	Acked   bool          `json:"acked"`
}

// KindSummary sums up the faults of one kind.
type KindSummary struct {
	Kind   Kind `json:"kind"`
	Count  int  `json:"count"`
	Failed int  `json:"failed"` // faults whose injection or repair reported an error
	// WorstPause is the longest client-visible send latency of a send that
	// overlapped a fault of this kind (from the fault's start to 5 s after
	// its repair).
	WorstPause time.Duration `json:"worst_pause_ns"`
	// NotAcked counts the sends started in those windows and never
	// acknowledged (each once per kind).
	NotAcked int `json:"not_acked"`
}

// Report is the outcome of a chaos run.
type Report struct {
	Seed        uint64        `json:"seed"`
	Kinds       []Kind        `json:"kinds"`
	Started     time.Time     `json:"started"`
	Took        time.Duration `json:"took_ns"`
	Interrupted bool          `json:"interrupted,omitempty"`
	Faults      []Applied     `json:"faults"`
	ByKind      []KindSummary `json:"by_kind"`
	Failovers   []Failover    `json:"failovers"`
	// Epochs are the epochs seen with a primary.
	Epochs      int `json:"epochs"`
	RoleSamples int `json:"role_samples"`
	// LogPromotions counts the cores' log lines taking an epoch as primary
	// (checked with the samples).
	LogPromotions int `json:"log_promotions"`
	// Messages sent, acknowledged, and never acknowledged.
	Sent     int `json:"sent"`
	Acked    int `json:"acked"`
	NotAcked int `json:"not_acked"`
	Relogins int `json:"relogins"`
	// Reaccepted counts chats an agent took again after losing them (an
	// interaction instance that lost its state), Remonitored the chats the
	// supervisor had to monitor again.
	Reaccepted  int `json:"reaccepted"`
	Remonitored int `json:"remonitored"`
	// Failures describes sends never acknowledged: the last error of each
	// distinct kind, with how many sends ended with it, per side.
	Failures []string `json:"failures,omitempty"`
	// ViewsChecked counts the views checked (participants, supervisor, UCS).
	ViewsChecked int `json:"views_checked"`
	// The violations, by kind, and each one.
	Lost         int      `json:"lost"`
	Duplicated   int      `json:"duplicated"`
	OutOfOrder   int      `json:"out_of_order"`
	WrongIndex   int      `json:"wrong_index"`
	Conflicts    int      `json:"index_conflicts"`
	TwoPrimaries int      `json:"epochs_with_two_primaries"`
	Unreadable   int      `json:"views_unreadable"`
	Violations   []string `json:"violations"`
	// Baseline is the 99th percentile of send latencies outside any fault.
	Baseline time.Duration `json:"baseline_p99_ns"`
	Points   []Point       `json:"points"`
}

// OK reports a run without any violation.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

// pauseWindow is how long after a fault's repair sends still count as
// paused by it.
const pauseWindow = 5 * time.Second

// report builds the report from the run's record.
func (r *run) report(samples []RoleSample, checks []viewCheck, kinds []Kind) *Report {
	r.mu.Lock()
	sent := slices.Clone(r.sent)
	applied := slices.Clone(r.applied)
	r.mu.Unlock()
	rep := &Report{Seed: r.cfg.Seed, Kinds: kinds, Started: r.start, Took: time.Since(r.start), Faults: applied, RoleSamples: len(samples)}
	for _, m := range sent {
		rep.Sent++
		lat := m.Latency()
		if m.Acked {
			rep.Acked++
		} else {
			rep.NotAcked++
			lat = 0
		}
		rep.Points = append(rep.Points, Point{At: m.At.Sub(r.start), Latency: lat, Side: m.Side, Acked: m.Acked})
	}
	rep.Failures = failures(sent)
	rep.ByKind = Summarize(applied, sent, kinds)
	rep.Baseline = baseline(applied, sent)
	for _, c := range checks {
		rep.ViewsChecked++
		for _, e := range c.errs {
			switch workload.KindOf(e) {
			case workload.Lost:
				rep.Lost++
			case workload.Duplicated:
				rep.Duplicated++
			case workload.OutOfOrder:
				rep.OutOfOrder++
			case workload.WrongIndex:
				rep.WrongIndex++
			case workload.Conflict:
				rep.Conflicts++
			default:
				rep.Unreadable++
			}
			rep.Violations = append(rep.Violations, fmt.Sprintf("chat %s, %s: %v", c.chatID, c.view, e))
		}
	}
	for _, v := range CheckPrimaries(samples) {
		rep.TwoPrimaries++
		rep.Violations = append(rep.Violations, v.String())
	}
	var sampled []RoleSample
	for _, s := range samples {
		if s.Source == "log" {
			rep.LogPromotions++
		} else {
			sampled = append(sampled, s)
		}
	}
	rep.RoleSamples = len(sampled)
	rep.Failovers = Failovers(sampled)
	epochs := map[uint64]bool{}
	for _, s := range samples {
		if s.Role == "primary" {
			epochs[s.Epoch] = true
		}
	}
	rep.Epochs = len(epochs)
	return rep
}

// Summarize counts the faults of each kind and finds the worst pause each
// caused: the longest latency of a send whose [start, acknowledgement]
// overlaps [fault start, repair + 5 s].
func Summarize(applied []Applied, sent []workload.Sent, kinds []Kind) []KindSummary {
	out := make([]KindSummary, 0, len(kinds))
	for _, k := range kinds {
		ks := KindSummary{Kind: k}
		counted := map[int]bool{} // sends not acknowledged, counted once per kind
		for _, a := range applied {
			if a.Kind != k {
				continue
			}
			ks.Count++
			if a.Err != "" {
				ks.Failed++
			}
			from, to := a.Start, a.End.Add(pauseWindow)
			for i, m := range sent {
				end := m.AckedAt
				if !m.Acked {
					end = m.At // counted where it started
				}
				if m.At.After(to) || end.Before(from) {
					continue
				}
				if !m.Acked {
					if !counted[i] {
						counted[i] = true
						ks.NotAcked++
					}
					continue
				}
				ks.WorstPause = max(ks.WorstPause, m.Latency())
			}
		}
		out = append(out, ks)
	}
	return out
}

// baseline is the 99th percentile of the latencies of sends made outside
// every fault window.
func baseline(applied []Applied, sent []workload.Sent) time.Duration {
	var lats []time.Duration
outer:
	for _, m := range sent {
		if !m.Acked {
			continue
		}
		for _, a := range applied {
			if !m.At.After(a.End.Add(pauseWindow)) && !m.AckedAt.Before(a.Start) {
				continue outer
			}
		}
		lats = append(lats, m.Latency())
	}
	if len(lats) == 0 {
		return 0
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	return lats[(len(lats)-1)*99/100]
}

// WriteText writes the report for a person.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	verdict := "OK: no violation"
	if !r.OK() {
		verdict = fmt.Sprintf("FAILED: %d violations", len(r.Violations))
	}
	fmt.Fprintf(&b, "hachat chaos report: seed %d, faults %v, %s (%s)\n", r.Seed, r.Kinds, r.Took.Round(time.Second), verdict)
	if r.Interrupted {
		fmt.Fprintf(&b, "interrupted before the end (Ctrl-C)\n")
	}
	fmt.Fprintf(&b, "\nfaults injected: %d\n", len(r.Faults))
	fmt.Fprintf(&b, "  %-10s %6s %7s %12s %9s\n", "kind", "count", "errors", "worst pause", "not acked")
	for _, k := range r.ByKind {
		fmt.Fprintf(&b, "  %-10s %6d %7d %12s %9d\n", k.Kind, k.Count, k.Failed, k.WorstPause.Round(time.Millisecond), k.NotAcked)
	}
	fmt.Fprintf(&b, "  send latency p99 outside faults: %s\n", r.Baseline.Round(time.Millisecond))
	fmt.Fprintf(&b, "\nfailovers: %d (primary changes seen in %d role samples of /status and /metrics; %d epochs with a primary; %d epoch claims in the cores' logs)\n",
		len(r.Failovers), r.RoleSamples, r.Epochs, r.LogPromotions)
	for _, f := range r.Failovers {
		fmt.Fprintf(&b, "  %8s %s -> %s (epoch %d)\n", f.At.Sub(r.Started).Round(100*time.Millisecond), f.From, f.To, f.Epoch)
	}
	fmt.Fprintf(&b, "\nworkload: %d messages sent, %d acknowledged, %d not acknowledged; %d views checked; %d re-logins at the agent API, %d chats taken again by an agent, %d monitored again\n",
		r.Sent, r.Acked, r.NotAcked, r.ViewsChecked, r.Relogins, r.Reaccepted, r.Remonitored)
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  not acknowledged: %s\n", f)
	}
	fmt.Fprintf(&b, "checker: %d lost, %d duplicated, %d out of order, %d at a wrong index, %d index conflicts, %d epochs with two primaries, %d views unreadable\n",
		r.Lost, r.Duplicated, r.OutOfOrder, r.WrongIndex, r.Conflicts, r.TwoPrimaries, r.Unreadable)
	for i, v := range r.Violations {
		if i == 50 {
			fmt.Fprintf(&b, "  ... and %d more (all in the JSON report)\n", len(r.Violations)-50)
			break
		}
		fmt.Fprintf(&b, "  %s\n", v)
	}
	var failed []string
	for _, a := range r.Faults {
		if a.Err != "" {
			failed = append(failed, fmt.Sprintf("  %s: %s", a.Fault, a.Err))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(&b, "\nfaults that reported errors:\n%s\n", strings.Join(failed, "\n"))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ErrViolations is returned by callers that turn a failed report into an error.
var ErrViolations = errors.New("chaos: violations found")

// WriteFiles writes chaos-report.txt, chaos-report.json and chaos-report.svg
// into dir.
func (r *Report) WriteFiles(dir string) error {
	var txt, svg strings.Builder
	if err := r.WriteText(&txt); err != nil {
		return err
	}
	if err := r.WriteSVG(&svg); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	for name, b := range map[string][]byte{"chaos-report.txt": []byte(txt.String()), "chaos-report.json": js, "chaos-report.svg": []byte(svg.String())} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// failures groups the sends never acknowledged by side and error text
// (numbers such as indexes and ids taken out), most frequent first.
func failures(sent []workload.Sent) []string {
	type key struct{ side, err string }
	count := map[key]int{}
	first := map[key]time.Time{}
	for _, m := range sent {
		if m.Acked {
			continue
		}
		e := "cut short by the end of the run"
		if m.Err != nil {
			e = m.Err.Error()
		}
		k := key{m.Side, strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' {
				return 'N'
			}
			return r
		}, e)}
		if count[k] == 0 || m.At.Before(first[k]) {
			first[k] = m.At
		}
		count[k]++
	}
	keys := make([]key, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return count[keys[i]] > count[keys[j]] })
	var out []string
	for i, k := range keys {
		if i == 10 {
			break
		}
		out = append(out, fmt.Sprintf("%d %s sends, first at %s: %.300s", count[k], k.side, first[k].Format(time.TimeOnly), k.err))
	}
	return out
}
