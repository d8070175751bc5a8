package chatcore

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSweepIdle measures one janitor pass (sweep) over a primary core
// holding 10,000 idle sessions (a customer and an agent joined, no events in
// doubt, no retries, nothing ended): the janitor's cost when there is no
// work, which every tick pays. flex-disconnect-timeout is an hour, so no
// customer falls idle during the run.
func BenchmarkSweepIdle(b *testing.B) {
	c := newLocalCore(b, func(cfg *Config) { cfg.FlexDisconnectTimeout = time.Hour })
	const n = 10000
	for range n {
		localChat(b, c)
	}
	ctx := context.Background()
	c.sweep(ctx) // the first pass starts the customers' idle clocks
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c.sweep(ctx)
	}
}
