package anchor

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hachat/hachat/bench/chatbench"
)

// Round is one chat bench run and one anchor run.
type Round struct {
	Chat   chatbench.Report `json:"chat"`
	Anchor Report           `json:"anchor"`
	// AnchorFirst says the anchor ran before the chat bench in this round.
	AnchorFirst bool `json:"anchor_first"`
}

// Figures are the medians over the rounds of one side. For the anchor,
// P50/P99/Max are publish-to-ack and Deliver* publish-to-delivery; for
// hachat they are send-to-deliver (the acknowledgement comes first).
type Figures struct {
	PerSecond  float64       `json:"messages_per_second"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	DeliverP50 time.Duration `json:"deliver_p50_ns,omitempty"`
	DeliverP99 time.Duration `json:"deliver_p99_ns,omitempty"`
}

// Comparison is the outcome of Compare.
type Comparison struct {
	Rounds []Round `json:"rounds"`
	// Chat and Anchor are the medians over the rounds.
	Chat   Figures `json:"chat_median"`
	Anchor Figures `json:"anchor_median"`
	// ThroughputRatio is hachat's messages/s over the anchor's (target >= 1).
	ThroughputRatio float64 `json:"throughput_ratio"`
	// P99Ratio is hachat's send-to-deliver p99 over the anchor's ack p99 (target <= 1).
	P99Ratio float64 `json:"p99_ratio"`
	// DeliverP99Ratio is hachat's send-to-deliver p99 over the anchor's
	// publish-to-delivery p99.
	DeliverP99Ratio float64 `json:"deliver_p99_ratio"`
}

// Compare runs rounds rounds of chat and anchor, alternating which goes
// first, and reports the medians and ratios. progress receives a line per run.
func Compare(ctx context.Context, rounds int, chat func(context.Context) (chatbench.Report, error),
	anchor func(context.Context) (Report, error), progress io.Writer) (Comparison, error) {
	if rounds <= 0 {
		rounds = 1
	}
	if progress == nil {
		progress = io.Discard
	}
	var c Comparison
	for r := range rounds {
		rd := Round{AnchorFirst: r%2 == 1}
		runChat := func() error {
			fmt.Fprintf(progress, "round %d/%d: hachat chat bench\n", r+1, rounds)
			rep, err := chat(ctx)
			if err != nil {
				return fmt.Errorf("round %d: chat: %w", r+1, err)
			}
			rd.Chat = rep
			fmt.Fprintf(progress, "round %d/%d: hachat %.0f messages/s, p99 %v\n", r+1, rounds, rep.PerSecond, rep.P99.Round(time.Microsecond))
			return nil
		}
		runAnchor := func() error {
			fmt.Fprintf(progress, "round %d/%d: JetStream anchor\n", r+1, rounds)
			rep, err := anchor(ctx)
			if err != nil {
				return fmt.Errorf("round %d: anchor: %w", r+1, err)
			}
			rd.Anchor = rep
			fmt.Fprintf(progress, "round %d/%d: JetStream %.0f messages/s, ack p99 %v\n", r+1, rounds, rep.PerSecond, rep.AckP99.Round(time.Microsecond))
			return nil
		}
		first, second := runChat, runAnchor
		if rd.AnchorFirst {
			first, second = runAnchor, runChat
		}
		if err := first(); err != nil {
			return c, err
		}
		if err := second(); err != nil {
			return c, err
		}
		c.Rounds = append(c.Rounds, rd)
	}
	c.summarize()
	return c, nil
}

func (c *Comparison) summarize() {
	pick := func(f func(Round) float64) float64 {
		vs := make([]float64, len(c.Rounds))
		for i, r := range c.Rounds {
			vs[i] = f(r)
		}
		return median(vs)
	}
	dur := func(f func(Round) time.Duration) time.Duration {
		return time.Duration(pick(func(r Round) float64 { return float64(f(r)) }))
	}
	c.Chat = Figures{
		PerSecond: pick(func(r Round) float64 { return r.Chat.PerSecond }),
		P50:       dur(func(r Round) time.Duration { return r.Chat.P50 }),
		P99:       dur(func(r Round) time.Duration { return r.Chat.P99 }),
		Max:       dur(func(r Round) time.Duration { return r.Chat.Max }),
	}
	c.Anchor = Figures{
		PerSecond:  pick(func(r Round) float64 { return r.Anchor.PerSecond }),
		P50:        dur(func(r Round) time.Duration { return r.Anchor.AckP50 }),
		P99:        dur(func(r Round) time.Duration { return r.Anchor.AckP99 }),
		Max:        dur(func(r Round) time.Duration { return r.Anchor.AckMax }),
		DeliverP50: dur(func(r Round) time.Duration { return r.Anchor.DeliverP50 }),
		DeliverP99: dur(func(r Round) time.Duration { return r.Anchor.DeliverP99 }),
	}
	if c.Anchor.PerSecond > 0 {
		c.ThroughputRatio = c.Chat.PerSecond / c.Anchor.PerSecond
	}
	if c.Anchor.P99 > 0 {
		c.P99Ratio = float64(c.Chat.P99) / float64(c.Anchor.P99)
	}
	if c.Anchor.DeliverP99 > 0 {
		c.DeliverP99Ratio = float64(c.Chat.P99) / float64(c.Anchor.DeliverP99)
	}
}

// median returns the median of vs (the mean of the middle two for an even count).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// WriteText renders the comparison for a terminal.
func (c Comparison) WriteText(w io.Writer) {
	d := func(x time.Duration) string { return x.Round(10 * time.Microsecond).String() }
	fmt.Fprintf(w, "hachat chat bench vs JetStream anchor: medians of %d alternating rounds\n", len(c.Rounds))
	fmt.Fprintf(w, "%-34s %12s %10s %10s %10s\n", "", "messages/s", "p50", "p99", "max")
	fmt.Fprintf(w, "%-34s %12.0f %10s %10s %10s\n", "hachat send-to-deliver", c.Chat.PerSecond, d(c.Chat.P50), d(c.Chat.P99), d(c.Chat.Max))
	fmt.Fprintf(w, "%-34s %12.0f %10s %10s %10s\n", "JetStream R3 publish-to-ack", c.Anchor.PerSecond, d(c.Anchor.P50), d(c.Anchor.P99), d(c.Anchor.Max))
	fmt.Fprintf(w, "%-34s %12s %10s %10s\n", "JetStream R3 publish-to-deliver", "", d(c.Anchor.DeliverP50), d(c.Anchor.DeliverP99))
	fmt.Fprintf(w, "ratio hachat/JetStream: messages/s %.2fx (target >= 1), p99 vs ack p99 %.2fx (target <= 1), p99 vs deliver p99 %.2fx\n",
		c.ThroughputRatio, c.P99Ratio, c.DeliverP99Ratio)
	for i, r := range c.Rounds {
		fmt.Fprintf(w, "  round %d: hachat %.0f/s p99 %s | JetStream %.0f/s ack p99 %s\n", i+1,
			r.Chat.PerSecond, d(r.Chat.P99), r.Anchor.PerSecond, d(r.Anchor.AckP99))
	}
}
