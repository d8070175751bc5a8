package anchor

import (
	"context"
	"testing"
	"time"

	"github.com/hachat/hachat/bench/chatbench"
)

func TestCompareAlternatesAndTakesMedians(t *testing.T) {
	var order []string
	chatRates := []float64{100, 300, 200}
	anchorRates := []float64{400, 200, 300}
	var ci, ai int
	c, err := Compare(context.Background(), 3, func(context.Context) (chatbench.Report, error) {
		order = append(order, "chat")
		r := chatbench.Report{PerSecond: chatRates[ci], P99: time.Duration(ci+1) * time.Millisecond}
		ci++
		return r, nil
	}, func(context.Context) (Report, error) {
		order = append(order, "anchor")
		r := Report{PerSecond: anchorRates[ai], AckP99: 4 * time.Millisecond, DeliverP99: 8 * time.Millisecond}
		ai++
		return r, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"chat", "anchor", "anchor", "chat", "chat", "anchor"}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
	if c.Chat.PerSecond != 200 || c.Anchor.PerSecond != 300 {
		t.Fatalf("medians %v %v", c.Chat.PerSecond, c.Anchor.PerSecond)
	}
	if c.ThroughputRatio < 0.66 || c.ThroughputRatio > 0.67 {
		t.Fatalf("throughput ratio %v", c.ThroughputRatio)
	}
	if c.P99Ratio != 0.5 || c.DeliverP99Ratio != 0.25 {
		t.Fatalf("p99 ratios %v %v", c.P99Ratio, c.DeliverP99Ratio)
	}
}

func TestMedianEven(t *testing.T) {
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median %v", m)
	}
}
