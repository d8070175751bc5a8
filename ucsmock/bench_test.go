package ucsmock

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
)

func discardTel() *telemetry.Telemetry { return telemetry.Discard() }

// benchStores are the stores the benchmarks compare: bbolt, and PostgreSQL
// (the shared throwaway cluster, fsync on) through one ucs instance.
var benchStores = []struct {
	name  string
	start func(b *testing.B) (*Server, *Client)
}{
	{"bbolt", func(b *testing.B) (*Server, *Client) { return newTestServer(b, filepath.Join(b.TempDir(), "ucs.db")) }},
	{"postgres", func(b *testing.B) (*Server, *Client) { return newPGServer(b, newPGDatabase(b)) }},
}

// BenchmarkSave measures acknowledged (committed and fsynced) saves of one
// event each over HTTP, on each store: serial (one writer) and parallel
// (many writers, where group commit shares one fsync among the saves
// queued together: bbolt's committer, PostgreSQL's WAL flush).
func BenchmarkSave(b *testing.B) {
	for _, st := range benchStores {
		for _, mode := range []string{"serial", "parallel"} {
			b.Run(st.name+"/"+mode, func(b *testing.B) { benchSave(b, mode, st.start) })
		}
	}
}

func benchSave(b *testing.B, mode string, start func(b *testing.B) (*Server, *Client)) {
	{
		{
			srv, c := start(b)
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
			if bs, ok := srv.store.(*boltStore); ok && bs.commits.Load() > 0 {
				b.ReportMetric(float64(bs.committed.Load())/float64(bs.commits.Load()), "saves/commit")
			}
		}
	}
}

// BenchmarkSaveBatch measures acknowledged saves of one event each, sent
// as batches of 100 chats (out of 10,000, as a busy core's saver does), on
// each store, in the binary body (the client's) and in the JSON body (a
// client that fell back). cpu-us/save is the process's CPU time (client
// and server, user and system) per save: the figure that matters on a
// saturated machine, where ns/op mostly measures the wait for fsync.
//
// The chats/1000 cases spread the saves over 1,000 chats instead, so that
// each transcript grows long (400 batches: 40 events a chat, as in
// hachat bench chat), where a save rewrites pages of a deep transcript.
// pages/save is bbolt's pages written per save.
func BenchmarkSaveBatch(b *testing.B) {
	for _, st := range benchStores {
		for _, form := range []string{"binary", "json"} {
			b.Run(st.name+"/"+form, func(b *testing.B) { benchSaveBatch(b, st.start, form == "json", 10000, 100) })
		}
		b.Run(st.name+"/binary/chats/1000", func(b *testing.B) { benchSaveBatch(b, st.start, false, 1000, 100) })
		// CPU per save by batch size (a core's saver sends at most 256;
		// UCS takes MaxBatchSaves): run each with the same number of saves,
		// e.g. -benchtime 640x, 160x and 40x.
		for _, size := range []int{4, 16, 64, 256, MaxBatchSaves} {
			b.Run(fmt.Sprintf("%s/binary/batch/%d", st.name, size), func(b *testing.B) { benchSaveBatch(b, st.start, false, 10000, size) })
		}
	}
}

// processCPU is the CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchSaveBatch(b *testing.B, start func(b *testing.B) (*Server, *Client), json bool, chats, size int) {
	srv, c := start(b)
	var writes0 int64
	if bs, ok := srv.store.(*boltStore); ok {
		st := bs.db.Stats()
		writes0 = st.TxStats.GetWrite()
	}
	c.batchJSON.Store(json)
	ctx := context.Background()
	cpu0 := processCPU(b)
	next := map[string]uint64{}
	b.ResetTimer()
	saves := 0
	for n := 0; n < b.N; n++ {
		reqs := make([]SaveRequest, size)
		for i := range reqs {
			chat := fmt.Sprintf("chat-%d", (n*size+i)%chats)
			next[chat]++
			reqs[i] = SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: "bench", Events: evs(chat, next[chat], next[chat])}
		}
		res, err := c.SaveBatch(ctx, reqs)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		saves += len(reqs)
	}
	b.ReportMetric(float64(saves)/b.Elapsed().Seconds(), "saves/s")
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(saves), "cpu-us/save")
	if bs, ok := srv.store.(*boltStore); ok {
		st := bs.db.Stats()
		b.ReportMetric(float64(st.TxStats.GetWrite()-writes0)/float64(saves), "pages/save")
	}
}
