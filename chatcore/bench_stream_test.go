package chatcore

import (
	"context"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
)

// BenchmarkSendStream is BenchmarkSendGRPC through chatclient, whose Send
// multiplexes every concurrent send on one SendStream: the figure to set
// beside BenchmarkSendUnaryClient (the same client, unary calls).
func BenchmarkSendStream(b *testing.B) { benchSendClient(b, false, 100, 16, false) }

// BenchmarkSendUnaryClient is BenchmarkSendStream with chatclient's unary
// Send (a call option makes Send use the unary call).
func BenchmarkSendUnaryClient(b *testing.B) { benchSendClient(b, false, 100, 16, true) }

// BenchmarkSendStreamReplicatedWide is BenchmarkSendReplicatedWide (a pair,
// 1000 sessions, 128 concurrent senders) through chatclient's SendStream.
func BenchmarkSendStreamReplicatedWide(b *testing.B) { benchSendClient(b, true, 1000, 64, false) }

// BenchmarkSendUnaryClientReplicatedWide is BenchmarkSendStreamReplicatedWide
// with chatclient's unary Send.
func BenchmarkSendUnaryClientReplicatedWide(b *testing.B) { benchSendClient(b, true, 1000, 64, true) }

// benchSendClient sends through a chatclient.Client from parallelism x
// GOMAXPROCS goroutines over sessions sessions, each with an agent's
// subscriber, on one core or (replicated) on the primary of a pair. It
// reports messages/s, CPU time per message (the whole process: core,
// backup, client) and p50/p99 of Send.
func benchSendClient(b *testing.B, replicated bool, sessions, parallelism int, unary bool) {
	mod := func(cfg *Config) { cfg.TranscriptAutoSave = 1; cfg.SendRate = 1e9; cfg.SendBurst = 1 << 30 }
	var target string
	var chat func(testing.TB) (cust, agent *chatpb.Auth)
	var raw chatpb.ChatClient
	if replicated {
		a, _ := pair(b, newMemStore(), mod)
		target, chat, raw = a.addr, a.chat, a.cl
	} else {
		tc := startCore(b, mod)
		target, chat, raw = tc.conn.Target(), tc.chat, tc.cl
	}
	cl, err := chatclient.New(chatclient.Config{Targets: []string{target}, Policy: chatclient.DefaultPolicy()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	auths := make([]*chatpb.Auth, sessions)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var subs sync.WaitGroup
	defer subs.Wait()
	defer cancel()
	for i := range auths {
		var agent *chatpb.Auth
		auths[i], agent = chat(b)
		sub, err := raw.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: agent, FromIndex: 1})
		if err != nil {
			b.Fatal(err)
		}
		subs.Go(func() {
			for {
				if _, err := sub.Recv(); err != nil {
					return
				}
			}
		})
	}
	var opts []grpc.CallOption
	if unary {
		opts = []grpc.CallOption{grpc.WaitForReady(false)}
	}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			au := auths[next.Add(1)%int64(sessions)]
			t0 := time.Now()
			if _, err := cl.Send(ctx, &chatpb.SendRequest{Auth: au, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hello"}, opts...); err != nil {
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
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}

// BenchmarkFanoutSubscribeStream measures delivery to subscribers through
// chatclient, whose Subscribes are members of one SubscribeStream: 1000
// sessions, each with its customer and its agent subscribed (2000
// subscribers), messages sent from 64 x GOMAXPROCS goroutines. An
// iteration is one message, done when both its subscribers have it. It
// reports messages/s, CPU time per message (the whole process: core and
// client) and p50/p99 of send-to-deliver.
func BenchmarkFanoutSubscribeStream(b *testing.B) { benchFanout(b, 1000, false) }

// BenchmarkFanoutSubscribeUnary is BenchmarkFanoutSubscribeStream with a
// Subscribe stream per subscriber (a call option makes chatclient's
// Subscribe use the unary call): the figure to compare.
func BenchmarkFanoutSubscribeUnary(b *testing.B) { benchFanout(b, 1000, true) }

func benchFanout(b *testing.B, sessions int, unary bool) {
	tc := startCore(b, func(cfg *Config) { cfg.TranscriptAutoSave = 1; cfg.SendRate = 1e9; cfg.SendBurst = 1 << 30 })
	cl, err := chatclient.New(chatclient.Config{Targets: []string{tc.conn.Target()}, Policy: chatclient.DefaultPolicy()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	var opts []grpc.CallOption
	if unary {
		opts = []grpc.CallOption{grpc.WaitForReady(false)}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var subs sync.WaitGroup
	defer subs.Wait()
	defer cancel()
	auths := make([]*chatpb.Auth, sessions)
	var delivered atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	for i := range auths {
		cust, agent := tc.chat(b)
		auths[i] = cust
		for _, a := range []*chatpb.Auth{cust, agent} {
			sub, err := cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: a, FromIndex: 4}, opts...)
			if err != nil {
				b.Fatal(err)
			}
			subs.Go(func() {
				var mine []time.Duration
				defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
				for {
					ev, err := sub.Recv()
					if err != nil {
						return
					}
					if sent, err := strconv.ParseInt(ev.Text, 10, 64); err == nil {
						mine = append(mine, time.Duration(time.Now().UnixNano()-sent))
					}
					delivered.Add(1)
				}
			})
		}
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(64)
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			au := auths[next.Add(1)%int64(sessions)]
			text := strconv.FormatInt(time.Now().UnixNano(), 10)
			if _, err := cl.Send(ctx, &chatpb.SendRequest{Auth: au, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	for deadline := time.Now().Add(30 * time.Second); delivered.Load() < 2*int64(b.N); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d deliveries", delivered.Load(), 2*b.N)
		}
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	cancel()
	subs.Wait()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "deliver-p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "deliver-p99-µs")
	}
}
