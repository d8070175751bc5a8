package scalebench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
	"github.com/hachat/hachat/xds"
)

func TestBalanceOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		live []uint64
		want Balance
	}{
		{"none", nil, Balance{}},
		{"nothing live", []uint64{0, 0}, Balance{Live: 0, Mean: 0, Min: 0, Max: 0}},
		{"even", []uint64{5, 5, 5, 5}, Balance{Live: 20, Mean: 5, Min: 5, Max: 5, MaxOverMean: 1}},
		{"uneven", []uint64{2, 4, 6}, Balance{Live: 12, Mean: 4, Min: 2, Max: 6, MaxOverMean: 1.5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := balanceOf(tc.live); got != tc.want {
				t.Errorf("balanceOf(%v) = %+v, want %+v", tc.live, got, tc.want)
			}
		})
	}
}

func TestSmoothArrivals(t *testing.T) {
	for _, tc := range []struct {
		name        string
		prev        float64
		before, now []uint64
		want        float64
	}{
		{"a burst counts at once", 10, []uint64{0, 0}, []uint64{30, 20}, 50},
		{"a lull halves the estimate", 40, []uint64{5, 5}, []uint64{5, 5}, 20},
		{"only growth counts", 0, []uint64{10, 10}, []uint64{4, 16}, 6},
		{"a smaller growth halves the distance", 40, []uint64{0}, []uint64{10}, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := smoothArrivals(tc.prev, tc.before, tc.now); got != tc.want {
				t.Errorf("smoothArrivals = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWeightedPick(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name    string
		weights []uint64
		want    []int // the indexes that may come out; -1 for none
	}{
		{"all zero", []uint64{0, 0, 0}, []int{-1}},
		{"only one", []uint64{0, 7, 0}, []int{1}},
		{"last", []uint64{0, 0, 1}, []int{2}},
		{"two", []uint64{3, 0, 3}, []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cum := make([]uint64, len(tc.weights))
			var s uint64
			for i, w := range tc.weights {
				s += w
				cum[i] = s
			}
			seen := map[int]bool{}
			for range 200 {
				got := weightedPick(r, cum)
				if !containsInt(tc.want, got) {
					t.Fatalf("weightedPick(%v) = %d, want one of %v", tc.weights, got, tc.want)
				}
				seen[got] = true
			}
			if len(seen) != len(tc.want) {
				t.Errorf("200 picks of %v gave %v, want every one of %v", tc.weights, seen, tc.want)
			}
		})
	}
}

func TestLivePick(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		name string
		live []uint64
		want []int
	}{
		{"nothing live", []uint64{0, 0}, []int{-1}},
		{"one pair holds all", []uint64{0, 0, 9}, []int{2}},
		{"two", []uint64{1, 0, 1}, []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var total uint64
			for _, n := range tc.live {
				total += n
			}
			for range 100 {
				if got := livePick(r, tc.live, total); !containsInt(tc.want, got) {
					t.Fatalf("livePick(%v) = %d, want one of %v", tc.live, got, tc.want)
				}
			}
		})
	}
}

func containsInt(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// TestRunPlacementTiny drives the real weights on cases small enough to
// know the outcome: capacity caps a pair (BuildPairs gives a full pair
// weight 0), arrivals beyond every pair's capacity are rejected, and
// churn keeps the live count.
func TestRunPlacementTiny(t *testing.T) {
	for _, tc := range []struct {
		name                                            string
		o                                               PlacementOptions
		wantArrivals, wantEnds, wantRejected, wantPolls int
		wantRamp, wantChurn                             Balance
	}{
		{"full pairs take nothing", PlacementOptions{Pairs: 2, Sessions: 6, Churn: -1, PerPoll: 1, Capacity: 3},
			6, 0, 0, 6, Balance{Live: 6, Mean: 3, Min: 3, Max: 3, MaxOverMean: 1}, Balance{Live: 6, Mean: 3, Min: 3, Max: 3, MaxOverMean: 1}},
		{"beyond capacity is rejected", PlacementOptions{Pairs: 2, Sessions: 8, Churn: -1, PerPoll: 1, Capacity: 3},
			8, 0, 2, 8, Balance{Live: 6, Mean: 3, Min: 3, Max: 3, MaxOverMean: 1}, Balance{Live: 6, Mean: 3, Min: 3, Max: 3, MaxOverMean: 1}},
		{"one pair holds all", PlacementOptions{Pairs: 1, Sessions: 10, Churn: 5, PerPoll: 4},
			15, 5, 0, 4, Balance{Live: 10, Mean: 10, Min: 10, Max: 10, MaxOverMean: 1}, Balance{Live: 10, Mean: 10, Min: 10, Max: 10, MaxOverMean: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := RunPlacement(context.Background(), tc.o, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Arrivals != tc.wantArrivals || rep.Ends != tc.wantEnds || rep.Rejected != tc.wantRejected || rep.Polls != tc.wantPolls {
				t.Errorf("arrivals %d ends %d rejected %d polls %d, want %d %d %d %d", rep.Arrivals, rep.Ends, rep.Rejected, rep.Polls,
					tc.wantArrivals, tc.wantEnds, tc.wantRejected, tc.wantPolls)
			}
			if rep.AfterRamp != tc.wantRamp || rep.AfterChurn != tc.wantChurn {
				t.Errorf("after ramp %+v, after churn %+v; want %+v, %+v", rep.AfterRamp, rep.AfterChurn, tc.wantRamp, tc.wantChurn)
			}
		})
	}
}

// TestRunPlacementBalances checks the model places by the weights: over
// ten pairs with a poll every 50 arrivals, the live sessions stay within a
// few percent of even (random placement would not: the same seed with
// equal weights gives a wider spread, which the weights pull back).
func TestRunPlacementBalances(t *testing.T) {
	rep, err := RunPlacement(context.Background(), PlacementOptions{Pairs: 10, Sessions: 5000, Churn: 5000, PerPoll: 50}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if rep.AfterRamp.Live != 5000 || rep.AfterChurn.Live != 5000 || rep.Ends != 5000 {
		t.Fatalf("live %d/%d, ends %d; want 5000, 5000, 5000", rep.AfterRamp.Live, rep.AfterChurn.Live, rep.Ends)
	}
	if rep.AfterChurn.MaxOverMean > 1.05 || rep.AfterChurn.MaxOverMean < 1 {
		t.Errorf("max/mean after churn %.3f, want within 1.05", rep.AfterChurn.MaxOverMean)
	}
}

func TestLossOf(t *testing.T) {
	for _, tc := range []struct {
		name          string
		b             Balance
		pairs         int
		rate          float64
		wantOne, want time.Duration
	}{
		{"no rate", Balance{Max: 100, Mean: 90}, 10, 0, 0, 0},
		{"one pair", Balance{Max: 1000, Mean: 1000}, 1, 500, 2 * time.Second, 0},
		{"spread", Balance{Max: 10000, Mean: 9800}, 101, 1000, 10 * time.Second, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lossOf(tc.b, tc.pairs, tc.rate, "test")
			if l.Sessions != tc.b.Max || l.OnePair != tc.wantOne || l.Spread != tc.want {
				t.Errorf("lossOf = %+v, want sessions %d, one pair %v, spread %v", l, tc.b.Max, tc.wantOne, tc.want)
			}
		})
	}
}

// TestParseRestored reads the line slog's JSON handler writes, as the
// core logs it.
func TestParseRestored(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("restoration done", "mode", "replica", "sessions", 0, "source", "replica", "took", time.Millisecond)
	log.Info("something else", "sessions", 5)
	log.Info("restoration done", "mode", "replica", "sessions", 1234, "source", "replica", "took", 1500*time.Millisecond)
	for _, tc := range []struct {
		name     string
		in       string
		ok       bool
		sessions int
		took     time.Duration
	}{
		{"the first restoring line", buf.String(), true, 1234, 1500 * time.Millisecond},
		{"none", "not json\n{\"msg\":\"restoration done\",\"sessions\":0}\n", false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, ok := parseRestored(strings.NewReader(tc.in))
			if ok != tc.ok || l.Sessions != tc.sessions || time.Duration(l.Took) != tc.took {
				t.Errorf("parseRestored = %+v, %v; want %d sessions in %v, %v", l, ok, tc.sessions, tc.took, tc.ok)
			}
		})
	}
}

// TestMeasureSnapshotCountsEveryResource: two pairs are an API listener
// and a sidecar listener per pair, one route, a cluster and an assignment
// per pair, and the sum is the sum of the types.
func TestMeasureSnapshotCountsEveryResource(t *testing.T) {
	for _, tc := range []struct {
		pairs int
		want  map[string]int
	}{
		{2, map[string]int{"Listener": 3, "RouteConfiguration": 1, "Cluster": 2, "ClusterLoadAssignment": 2}},
		{5, map[string]int{"Listener": 6, "RouteConfiguration": 1, "Cluster": 5, "ClusterLoadAssignment": 5}},
	} {
		rep, err := MeasureSnapshot(tc.pairs, 100)
		if err != nil {
			t.Fatal(err)
		}
		sum := 0
		for _, ts := range rep.Types {
			if ts.Resources != tc.want[ts.Type] {
				t.Errorf("%d pairs: %d %s, want %d", tc.pairs, ts.Resources, ts.Type, tc.want[ts.Type])
			}
			if ts.Bytes <= 0 {
				t.Errorf("%d pairs: %s has %d bytes", tc.pairs, ts.Type, ts.Bytes)
			}
			sum += ts.Bytes
		}
		if len(rep.Types) != 4 || sum != rep.Bytes || rep.EnvoyBytes != rep.Bytes {
			t.Errorf("%d pairs: types %+v, bytes %d (sum %d), envoy %d", tc.pairs, rep.Types, rep.Bytes, sum, rep.EnvoyBytes)
		}
	}
}

// TestRunPushTiny runs the real control plane with three sidecar streams:
// every phase ends with every stream acknowledging, and each sidecar got
// what the phase changes (three types first, the assignments on a
// failover, three types when a pair joins).
func TestRunPushTiny(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := RunPush(ctx, PushOptions{Pairs: 3, Sidecars: 3, Timeout: 30 * time.Second}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Phases) != 3 {
		t.Fatalf("%d phases, want 3", len(rep.Phases))
	}
	for i, want := range []int{3, 1, 3} {
		ph := rep.Phases[i]
		if ph.Responses < want || ph.BytesPerSidecar <= 0 || ph.LastACK <= 0 || ph.P50ACK > ph.LastACK {
			t.Errorf("phase %q: %+v, want at least %d responses and bytes", ph.Name, ph, want)
		}
	}
	snap, err := MeasureSnapshot(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The first push carries every listener, cluster and assignment: at
	// least their marshalled size (the route is not subscribed).
	var subscribed int
	for _, ts := range snap.Types {
		if ts.Type != shortName(resource.RouteType) {
			subscribed += ts.Bytes
		}
	}
	if rep.Phases[0].BytesPerSidecar < subscribed {
		t.Errorf("first push %d B per sidecar, want at least the resources' %d B", rep.Phases[0].BytesPerSidecar, subscribed)
	}
}

func TestACKLines(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	for _, tt := range []struct {
		name string
		line string
		want ackLine
		ok   bool
	}{
		{"round trip", strings.TrimSuffix(formatACK(at, 7, resource.EndpointType, "0a1b2c", 40433), "\n"),
			ackLine{at: at, i: 7, typ: resource.EndpointType, version: "0a1b2c", size: 40433}, true},
		{"too few fields", "1 2 t v", ackLine{}, false},
		{"bad time", "x 2 t v 5", ackLine{}, false},
		{"negative sidecar", "1 -2 t v 5", ackLine{}, false},
		{"bad size", "1 2 t v z", ackLine{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseACK(tt.line)
			if (err == nil) != tt.ok || !got.at.Equal(tt.want.at) || got.i != tt.want.i || got.typ != tt.want.typ ||
				got.version != tt.want.version || got.size != tt.want.size {
				t.Errorf("parseACK(%q) = %+v, %v; want %+v, ok %v", tt.line, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestSidecarAcked(t *testing.T) {
	t1, t2 := time.Unix(10, 0), time.Unix(20, 0)
	s := newSidecar("s")
	s.record(resource.ListenerType, "l1", t1, 10)
	s.record(resource.EndpointType, "e2", t2, 10)
	both := []string{resource.ListenerType, resource.EndpointType}
	for _, tt := range []struct {
		name   string
		types  []string
		before map[string]string
		ok     bool
		last   time.Time
	}{
		{"any version of both", both, nil, true, t2},
		{"a type never acknowledged", []string{resource.ClusterType}, nil, false, time.Time{}},
		{"the assignments changed", []string{resource.EndpointType}, map[string]string{resource.EndpointType: "e1"}, true, t2},
		{"the listeners did not", both, map[string]string{resource.ListenerType: "l1", resource.EndpointType: "e1"}, false, time.Time{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			last, ok, err := s.acked(tt.types, tt.before)
			if err != nil || ok != tt.ok || !last.Equal(tt.last) {
				t.Errorf("acked = %v, %v, %v; want %v, %v", last, ok, err, tt.last, tt.ok)
			}
		})
	}
}

// TestRunSidecarsReportsEveryACK: the sidecar process's side writes a
// parseable line for each sidecar's listeners, clusters and assignments.
func TestRunSidecarsReportsEveryACK(t *testing.T) {
	cfg := xds.DefaultConfig()
	cfg.GRPC, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	srv, err := xds.New(cfg, telemetry.Discard(), xds.NewMemoryView(ModelMembers(2)...), xds.Options{PairLive: zeroLive})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = srv.Run(ctx) })
	var out telemetrytest.LogBuffer
	sctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	wg.Go(func() { ran <- RunSidecars(sctx, srv.GRPCAddr(), 2, &out) })
	want := []string{resource.ListenerType, resource.ClusterType, resource.EndpointType}
	for {
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line == "" {
				continue
			}
			l, err := parseACK(line)
			if err != nil {
				t.Fatal(err)
			}
			seen[strconv.Itoa(l.i)+" "+l.typ] = true
		}
		all := true
		for i := range 2 {
			for _, typ := range want {
				all = all && seen[strconv.Itoa(i)+" "+typ]
			}
		}
		if all {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not every sidecar acknowledged every type; got:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	stop()
	if err := <-ran; err != nil {
		t.Errorf("RunSidecars: %v", err)
	}
}
