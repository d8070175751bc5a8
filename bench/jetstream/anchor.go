package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options shape one run of the anchor.
type Options struct {
	// Publishers is the number of concurrent synchronous publishers, each
	// on its own connection, spread over the servers (default 128).
	Publishers int
	// Subjects is the number of subjects the messages are spread over (default 10000).
	Subjects int
	// Messages is the number of messages published in all (default 60000).
	Messages int
	// MessageSize is the payload size in bytes, at least 8 (default 64).
	MessageSize int
	// Replicas is the stream's replication factor (default 3).
	Replicas int
	// Progress receives a line per phase; nil discards them.
	Progress io.Writer
}

func (o *Options) defaults() {
	if o.Publishers <= 0 {
		o.Publishers = 128
	}
	if o.Subjects <= 0 {
		o.Subjects = 10000
	}
	if o.Messages <= 0 {
		o.Messages = 60000
	}
	if o.MessageSize < 8 {
		o.MessageSize = 64
	}
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Report is what a run measured. Durations are nanoseconds in JSON.
type Report struct {
	Servers     int           `json:"servers"`
	Replicas    int           `json:"replicas"`
	Publishers  int           `json:"publishers"`
	Subjects    int           `json:"subjects"`
	MessageSize int           `json:"message_size"`
	Acked       int           `json:"acked"`
	Errors      int           `json:"errors"`
	Delivered   int           `json:"delivered"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	PerSecond   float64       `json:"messages_per_second"`
	AckP50      time.Duration `json:"ack_p50_ns"`
	AckP99      time.Duration `json:"ack_p99_ns"`
	AckMax      time.Duration `json:"ack_max_ns"`
	DeliverP50  time.Duration `json:"deliver_p50_ns"`
	DeliverP99  time.Duration `json:"deliver_p99_ns"`
	DeliverMax  time.Duration `json:"deliver_max_ns"`
}

const (
	servers    = 3
	streamName = "BENCH"
)

// Run starts the cluster, measures, and stops the cluster.
func Run(ctx context.Context, o Options) (Report, error) {
	o.defaults()
	rep := Report{Servers: servers, Replicas: o.Replicas, Publishers: o.Publishers, Subjects: o.Subjects, MessageSize: o.MessageSize}
	dir, err := os.MkdirTemp("", "hachat-jetstream-")
	if err != nil {
		return rep, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	srvs, err := startCluster(dir)
	if err != nil {
		return rep, err
	}
	defer func() {
		for _, s := range srvs {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}()
	fmt.Fprintf(o.Progress, "cluster of %d servers up\n", len(srvs))

	admin, err := nats.Connect(srvs[0].ClientURL())
	if err != nil {
		return rep, fmt.Errorf("connect: %w", err)
	}
	defer admin.Close()
	js, err := jetstream.New(admin)
	if err != nil {
		return rep, fmt.Errorf("jetstream: %w", err)
	}
	if err := createStream(ctx, js, o.Replicas); err != nil {
		return rep, err
	}
	fmt.Fprintf(o.Progress, "stream %s R%d file storage ready\n", streamName, o.Replicas)

	// The consumer: an ordered consumer on another server, timing delivery
	// from the send time carried in the first 8 bytes of each message.
	cnc, err := nats.Connect(srvs[1%len(srvs)].ClientURL())
	if err != nil {
		return rep, fmt.Errorf("connect consumer: %w", err)
	}
	defer cnc.Close()
	cjs, err := jetstream.New(cnc)
	if err != nil {
		return rep, fmt.Errorf("jetstream: %w", err)
	}
	cons, err := cjs.OrderedConsumer(ctx, streamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return rep, fmt.Errorf("consumer: %w", err)
	}
	var (
		dmu      sync.Mutex
		deliver  = make([]time.Duration, 0, o.Messages)
		received atomic.Int64
	)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now().UnixNano()
		d := m.Data()
		if len(d) < 8 {
			return
		}
		sent := int64(binary.BigEndian.Uint64(d))
		dmu.Lock()
		deliver = append(deliver, time.Duration(now-sent))
		dmu.Unlock()
		received.Add(1)
	})
	if err != nil {
		return rep, fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()

	// The publishers, each on its own connection, spread over the servers.
	pubs := make([]jetstream.JetStream, o.Publishers)
	for i := range pubs {
		nc, err := nats.Connect(srvs[i%len(srvs)].ClientURL())
		if err != nil {
			return rep, fmt.Errorf("connect publisher %d: %w", i, err)
		}
		defer nc.Close()
		if pubs[i], err = jetstream.New(nc); err != nil {
			return rep, fmt.Errorf("jetstream: %w", err)
		}
	}
	fmt.Fprintf(o.Progress, "publishing %d messages with %d publishers over %d subjects\n", o.Messages, o.Publishers, o.Subjects)
	var (
		next     atomic.Int64
		errs     atomic.Int64
		amu      sync.Mutex
		acks     = make([]time.Duration, 0, o.Messages)
		wg       sync.WaitGroup
		subjects = make([]string, o.Subjects)
	)
	for i := range subjects {
		subjects[i] = "bench." + strconv.Itoa(i)
	}
	start := time.Now()
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, o.MessageSize)
			for j := range buf {
				buf[j] = 'a' + byte(j%26)
			}
			mine := make([]time.Duration, 0, o.Messages/o.Publishers+1)
			defer func() {
				amu.Lock()
				acks = append(acks, mine...)
				amu.Unlock()
			}()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= o.Messages {
					return
				}
				t0 := time.Now()
				binary.BigEndian.PutUint64(buf, uint64(t0.UnixNano()))
				if _, err := pubs[p].Publish(ctx, subjects[i%len(subjects)], buf); err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	rep.Elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.Acked = len(acks)
	rep.Errors = int(errs.Load())
	rep.PerSecond = float64(rep.Acked) / rep.Elapsed.Seconds()

	// Wait for the consumer to have everything acknowledged.
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < int64(rep.Acked) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	cc.Stop()
	dmu.Lock()
	rep.Delivered = len(deliver)
	rep.DeliverP50, rep.DeliverP99, rep.DeliverMax = summary(deliver)
	dmu.Unlock()
	rep.AckP50, rep.AckP99, rep.AckMax = summary(acks)
	if rep.Delivered < rep.Acked {
		return rep, fmt.Errorf("only %d of %d acknowledged messages delivered within 30s", rep.Delivered, rep.Acked)
	}
	return rep, nil
}

// summary returns p50, p99 and max of ds (sorted in place).
func summary(ds []time.Duration) (p50, p99, mx time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}

// startCluster starts three JetStream servers on loopback, routed to each
// other, with their stores under dir, and waits until they accept clients.
func startCluster(dir string) ([]*server.Server, error) {
	routePorts := make([]int, servers)
	for i := range routePorts {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		routePorts[i] = p
	}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	srvs := make([]*server.Server, 0, servers)
	stop := func() {
		for _, s := range srvs {
			s.Shutdown()
		}
	}
	for i := range servers {
		name := "n" + strconv.Itoa(i+1)
		opts := &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			NoLog:      true,
			NoSigs:     true,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, name),
			Cluster: server.ClusterOpts{
				Name: "anchor",
				Host: "127.0.0.1",
				Port: routePorts[i],
			},
			Routes: server.RoutesFromStr(joinComma(routes)),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			stop()
			return nil, fmt.Errorf("server %s: %w", name, err)
		}
		go s.Start() // owned by the returned server: Shutdown ends it
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(20 * time.Second) {
			stop()
			return nil, fmt.Errorf("server %s not ready within 20s", s.Name())
		}
	}
	return srvs, nil
}

// createStream creates the stream, retrying while the cluster elects its
// meta leader.
func createStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.CreateStream(cctx, jetstream.StreamConfig{
			Name:     streamName,
			Subjects: []string{"bench.>"},
			Replicas: replicas,
			Storage:  jetstream.FileStorage,
		})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("create stream: %w", errors.Join(err, ctx.Err()))
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func joinComma(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
