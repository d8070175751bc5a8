package ucsmock

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// BenchmarkBoltSaveBatch measures the bbolt store alone (no HTTP, no
// decoding): one group commit of 256 saves of one event each, over 10,000
// chats that already hold a few events (the web path's steady state: at
// its rate every session's save carries its one new message). It reports
// per saved session: wall time (ns/session, mostly the wait for fsync),
// the process's CPU (cpu-ns/session), allocations (allocs/session,
// B/session) and bbolt pages written (pages/session).
func BenchmarkBoltSaveBatch(b *testing.B) {
	for _, c := range []struct{ chats, held int }{{10000, 4}, {1000, 40}} {
		b.Run(fmt.Sprintf("chats/%d/held/%d", c.chats, c.held), func(b *testing.B) { benchBoltSaveBatch(b, c.chats, c.held, 256) })
	}
}

func benchBoltSaveBatch(b *testing.B, chats, held, size int) {
	s, err := openBolt(filepath.Join(b.TempDir(), "ucs.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.close() })
	ctx := context.Background()
	ids := make([]string, chats)
	next := make([]uint64, chats)
	for i := range ids {
		ids[i] = fmt.Sprintf("chat-%08d", i)
	}
	// batch saves one event to each of size chats starting at chat first
	// (a stride that spreads a batch over the key space, as sessions
	// dirtied at random do).
	batch := func(first int) {
		saves := make([]batchSave, size)
		for i := range saves {
			c := (first + i*7919) % chats
			next[c]++
			req := SaveRequest{ChatID: ids[c], Service: "chat", Epoch: 1, Writer: "bench", Events: evs(ids[c], next[c], next[c])}
			saves[i] = batchSave{i: i, req: req, events: req.Events}
		}
		err := s.update(ctx, func(tx txn) error {
			now := time.Now().UnixMilli()
			for _, bs := range saves {
				if _, err := applySave(tx, bs.req, bs.events, now); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for round := range held {
		for first := 0; first < chats; first += size {
			batch(first + round)
		}
	}
	writes0 := pagesWritten(s)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU(b)
	b.ResetTimer()
	for n := range b.N {
		batch(n * size)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	runtime.ReadMemStats(&m1)
	sessions := float64(b.N * size)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/sessions, "ns/session")
	b.ReportMetric(float64(cpu.Nanoseconds())/sessions, "cpu-ns/session")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/sessions, "allocs/session")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/sessions, "B/session")
	b.ReportMetric(float64(pagesWritten(s)-writes0)/sessions, "pages/session")
}

// pagesWritten is the number of pages bbolt has written.
func pagesWritten(s *boltStore) int64 {
	st := s.db.Stats()
	return st.TxStats.GetWrite()
}
