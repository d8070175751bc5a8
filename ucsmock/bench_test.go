package ucsmock

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hachat/hachat/telemetry"
)

func discardTel() *telemetry.Telemetry { return telemetry.Discard() }

// BenchmarkSave measures acknowledged (committed and fsynced) saves of one
// event each over HTTP: serial (one writer) and parallel (many writers, where
// group commit shares one fsync among the saves queued together).
func BenchmarkSave(b *testing.B) {
	for _, mode := range []string{"serial", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			srv, c := newTestServer(b, filepath.Join(b.TempDir(), "ucs.db"))
			ctx := context.Background()
			var chats atomic.Uint64
			save := func(chat string, i uint64) {
				if _, err := c.Save(ctx, SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: "bench", Events: evs(chat, i, i)}); err != nil {
					b.Error(err)
				}
			}
			b.ResetTimer()
			if mode == "serial" {
				for i := range uint64(b.N) {
					save("serial", i+1)
				}
			} else {
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					chat := fmt.Sprintf("chat-%d", chats.Add(1))
					for i := uint64(1); pb.Next(); i++ {
						save(chat, i)
					}
				})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "saves/s")
			if n := srv.store.commits.Load(); n > 0 {
				b.ReportMetric(float64(srv.store.committed.Load())/float64(n), "saves/commit")
			}
		})
	}
}
