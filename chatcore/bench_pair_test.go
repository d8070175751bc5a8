package chatcore

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// BenchmarkSendReplicated measures Send over loopback gRPC to a primary
// with synchronous replication to its backup and transcript-auto-save=1,
// with one subscriber per session: messages/s and p50/p99 of the Send call
// (the ack comes after the backup's ack).
func BenchmarkSendReplicated(b *testing.B) { benchSendReplicated(b, 100, 16, false) }

// BenchmarkSendReplicatedWide is BenchmarkSendReplicated at the shape of
// `hachat bench chat --concurrency 128`: 1000 sessions, 128 concurrent
// senders, so that many sends are in flight on the replication stream at
// once (group commit). It also reports CPU time per message (user+sys of
// the process: both cores and the clients), which the machine's other
// load disturbs less than messages/s.
func BenchmarkSendReplicatedWide(b *testing.B) { benchSendReplicated(b, 1000, 64, false) }

// BenchmarkAppendReplicated isolates the replication stream: 128 goroutines
// call Send in process (no unary gRPC call, no subscriber) on 1000 sessions
// of a pair, so the CPU per message is the core's append path plus the
// stream to the backup, the backup's apply and its acknowledgements.
func BenchmarkAppendReplicated(b *testing.B) { benchSendReplicated(b, 1000, 64, true) }

// benchSendReplicated sends from parallelism x GOMAXPROCS goroutines over
// sessions sessions of a pair; direct calls the primary's Send in process
// and opens no subscriber.
func benchSendReplicated(b *testing.B, sessions, parallelism int, direct bool) {
	a, _ := pair(b, newMemStore(), func(c *Config) { c.TranscriptAutoSave = 1; c.SendRate = 1e9; c.SendBurst = 1 << 30 })
	auths := make([]*chatpb.Auth, sessions)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range auths {
		var agent *chatpb.Auth
		auths[i], agent = a.chat(b)
		if direct {
			continue
		}
		sub, err := a.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: agent, FromIndex: 1})
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				if _, err := sub.Recv(); err != nil {
					return
				}
			}
		}()
	}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.ReportAllocs()
	b.SetParallelism(parallelism) // 16: 32 concurrent senders on 2 cores: many sessions at once
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			au := auths[next.Add(1)%int64(sessions)]
			t0 := time.Now()
			send := a.cl.Send
			if direct {
				send = func(ctx context.Context, req *chatpb.SendRequest, _ ...grpc.CallOption) (*chatpb.SendResponse, error) {
					return a.c.Send(ctx, req)
				}
			}
			if _, err := send(ctx, &chatpb.SendRequest{Auth: au, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hello"}); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
	reportBatches(b, a.c)
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}

// BenchmarkRestore measures a promotion's restoration of 10,000 live
// sessions (each gets 2 disconnected and 2 reconnected notices).
func BenchmarkRestore(b *testing.B) {
	for range b.N {
		b.StopTimer()
		c := newLocalCore(b, nil)
		for i := range 10000 {
			s := newSession(fmt.Sprintf("s%05d", i))
			for _, ev := range []*chatpb.Event{
				{SessionId: s.id, Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, From: systemParticipant, Attrs: map[string]string{"service": "x"}},
				{SessionId: s.id, Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pCust, KeyHash: "h"},
				{SessionId: s.id, Index: 3, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pAgent, KeyHash: "h"},
			} {
				s.log.Commit(ev)
			}
			c.putSession(s)
		}
		b.StartTimer()
		start := time.Now()
		if n := c.restore.all(context.Background(), "replica"); n != 10000 {
			b.Fatalf("restored %d", n)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/10k-sessions")
	}
}

// BenchmarkResync measures how long a (re)started backup takes to receive
// and apply a snapshot of 10,000 live sessions and report in sync.
func BenchmarkResync(b *testing.B) {
	store := newMemStore()
	la, lb := listen(b), listen(b)
	a := startNode(b, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(b, "a primary", func() bool { return a.c.role.IsPrimary() })
	lb.Close() // no backup yet: second copies go to UCS while sessions are created
	ctx := context.Background()
	for range 10000 {
		r, err := a.c.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s", Nickname: "n"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.c.Join(ctx, &chatpb.JoinRequest{SessionId: r.Auth.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc-token"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		bk := startNode(b, fmt.Sprintf("core-b%d", i), RoleBackup, la.Addr().String(), ln, store, nil)
		waitInSync(b, a, bk.c.cfg.Name)
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/10k-sessions")
		bk.stop()
	}
}

// cpuTime is the process's user+sys CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportBatches reports how many events the primary's replication batches
// carried on average (0: none was batched), when the core has the metric.
func reportBatches(b *testing.B, c *Core) {
	mfs, err := c.tel.Registry.Gather()
	if err != nil {
		return
	}
	for _, mf := range mfs {
		if mf.GetName() != "hachat_core_replication_batch_size" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil && h.GetSampleCount() > 0 {
				b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount()), "msgs/batch")
			}
		}
	}
}
